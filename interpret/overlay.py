"""Figures: maps over their images, and the check tables."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from model.figures import figure, save_figure

from .maps import per_roi_variables


def map_variables(ds: xr.Dataset) -> list[str]:
    """The per-ROI map variables of a maps dataset (head averages, not single heads), attention first."""
    return sorted(per_roi_variables(ds), key=lambda n: (n != "attention_mean", n))


def rois_with_maps(ds: xr.Dataset, hemi: str) -> list[str]:
    """ROIs (not ``unknown``) that have finite maps in ``hemi`` for every map variable."""
    names = map_variables(ds)
    return [str(r) for r in ds.roi.values if r != "unknown"
            and all(np.isfinite(ds[n].sel(hemi=hemi, roi=r)).all() for n in names)]


def overlay(ds: xr.Dataset, image: torch.Tensor | np.ndarray, image_index: int, hemi: str, rois: list[str],
            out: str | Path, methods: list[str] | None = None) -> Path:
    """One image with each ROI's maps side by side: rows are ROIs, columns the image and each method."""
    methods = methods or map_variables(ds)
    img = image.permute(1, 2, 0).numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    side = img.shape[0]
    fig = figure(figsize=(2.2 * (len(methods) + 1), 2.2 * len(rois)))
    axes = fig.subplots(len(rois), len(methods) + 1, squeeze=False)
    for row, roi in enumerate(rois):
        axes[row, 0].imshow(img)
        axes[row, 0].set_ylabel(f"{hemi} {roi}", fontsize=9)
        for col, name in enumerate(methods, start=1):
            ax = axes[row, col]
            ax.imshow(img)
            m = ds[name].sel(hemi=hemi, roi=roi).isel(image=image_index).values
            if np.isfinite(m).all():
                shown = np.abs(m) if name != "attention_mean" and m.min() < 0 else m
                ax.imshow(shown, cmap="inferno", alpha=0.6, extent=(0, side, side, 0), interpolation="bilinear")
            if row == 0:
                ax.set_title(name.replace("_", " "), fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    axes[0, 0].set_title(str(ds.image.values[image_index]), fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out)


def plot_sanity(table: pd.DataFrame, out: str | Path) -> Path:
    """Rank correlation with the original maps as the decoder is randomised from the top."""
    fig = figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for name, rows in table.groupby("method"):
        ax.plot(rows["step"], rows["rank_correlation"], marker="o", label=name + (" (flagged)" if rows["flagged"].iloc[0] else ""))
    steps = table.drop_duplicates("step").sort_values("step")
    ax.set_xticks(steps["step"], steps["randomised"], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("rank correlation with original")
    ax.set_xlabel("randomised (cumulative, from the top)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=7)
    return save_figure(fig, out)


def plot_localization(table: pd.DataFrame, out: str | Path) -> Path:
    """Each localization measure per method, next to its chance level."""
    measures = [m for m in ("same_quadrant", "coverage_correlation", "pointing_game", "relevance_mass") if m in set(table.measure)]
    fig = figure(figsize=(3.2 * len(measures), 3.2))
    axes = fig.subplots(1, len(measures), squeeze=False)
    for ax, measure in zip(axes[0], measures):
        rows = table[table.measure == measure].groupby("method")[["value", "chance"]].mean()
        x = np.arange(len(rows))
        ax.bar(x, rows["value"], color="tab:blue", label="map")
        ax.scatter(x, rows["chance"], color="black", marker="_", s=300, label="chance", zorder=3)
        ax.set_xticks(x, rows.index, rotation=40, ha="right", fontsize=7)
        ax.set_title(measure.replace("_", " "), fontsize=9)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out)


def plot_faithfulness(table: pd.DataFrame, out: str | Path) -> Path:
    """Deletion (lower is better) and insertion (higher is better) AUCs per method."""
    means = table.groupby("method")[["deletion_auc", "insertion_auc"]].mean()
    fig = figure(figsize=(6, 3.2))
    ax = fig.subplots()
    x = np.arange(len(means))
    ax.bar(x - 0.2, means["deletion_auc"], width=0.4, label="deletion AUC (lower: more faithful)")
    ax.bar(x + 0.2, means["insertion_auc"], width=0.4, label="insertion AUC (higher: more faithful)")
    ax.set_xticks(x, means.index, rotation=30, ha="right", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out)
