"""Figures: maps over their images, and the check tables."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from matplotlib.cm import ScalarMappable
from matplotlib.ticker import MaxNLocator

from model.figures import ColourScale, colour_scale, figure, is_signed, save_figure

from .maps import per_roi_variables


def map_variables(ds: xr.Dataset) -> list[str]:
    """The per-ROI map variables of a maps dataset (head averages, not single heads), attention first."""
    return sorted(per_roi_variables(ds), key=lambda n: (n != "attention_mean", n))


def rois_with_maps(ds: xr.Dataset, hemi: str) -> list[str]:
    """Targets (not ``unknown``) with a finite map in ``hemi`` for at least one map variable.

    A single vertex (``vertex:lh:123``) has attributions but no decoder
    query, hence no attention map: it is kept, and its attention panel says so.
    """
    names = map_variables(ds)
    return [str(r) for r in ds.roi.values if r != "unknown"
            and any(np.isfinite(ds[n].sel(hemi=hemi, roi=r)).all() for n in names)]


#: What the colours of a signed map mean (a sign legend for overlays)
SIGN_LEGEND = "red raises the predicted response, blue lowers it"


def _panel_scale(maps: list[np.ndarray], signed: bool) -> ColourScale:
    return colour_scale(np.concatenate([m.ravel() for m in maps]) if maps else np.zeros(1), signed=signed)


def draw_map(ax, img: np.ndarray, m: np.ndarray, scale: ColourScale):
    """A map over its image, stretched to the image's extent; returns the artist (for a colour bar).

    Signed maps fade into the image where they are near 0 (opacity grows with
    ``|value|``), so the diverging map's white middle does not veil the image.
    """
    side = img.shape[0]
    ax.imshow(img)
    if scale.signed:
        alpha = 0.85 * np.sqrt(np.clip(np.abs(m) / scale.vmax, 0, 1))
        shown = ax.imshow(m, alpha=alpha, extent=(0, side, side, 0), interpolation="bilinear", **scale.imshow_kwargs())
    else:
        shown = ax.imshow(m, alpha=0.6, extent=(0, side, side, 0), interpolation="bilinear", **scale.imshow_kwargs())
    ax.set_xticks([]), ax.set_yticks([])
    return shown


def overlay(ds: xr.Dataset, image: torch.Tensor | np.ndarray, image_index: int, hemi: str, rois: list[str],
            out: str | Path, methods: list[str] | None = None, shared_scale: bool = True) -> Path:
    """One image with each target's maps side by side: rows are ROIs (or vertices), columns the image and each method.

    Colours follow :func:`model.figures.colour_scale`: attention (never
    negative) on a sequential scale from 0, signed attributions on a
    diverging scale centred on 0 (:data:`SIGN_LEGEND`). With
    ``shared_scale`` every method's maps share one scale, given by a colour
    bar under its column, so rows can be compared; otherwise each panel has
    its own scale and colour bar. Attention panels show their focus (0 =
    uniform, :func:`interpret.focus.focus`); a target without a map for a
    method (the attention of a single vertex) says so.
    """
    from .focus import focus

    methods = methods or map_variables(ds)
    img = image.permute(1, 2, 0).numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    maps = {(roi, name): ds[name].sel(hemi=hemi, roi=roi).isel(image=image_index).values
            for roi in rois for name in methods}
    signed = {name: is_signed([maps[roi, name] for roi in rois]) for name in methods}
    column_scale = {name: _panel_scale([maps[roi, name] for roi in rois if np.isfinite(maps[roi, name]).all()],
                                       signed[name]) for name in methods}
    fig = figure(figsize=(2.3 * (len(methods) + 1), 2.2 * len(rois) + 0.9))
    axes = fig.subplots(len(rois), len(methods) + 1, squeeze=False)
    for row, roi in enumerate(rois):
        axes[row, 0].imshow(img)
        axes[row, 0].set_ylabel(f"{hemi} {roi}", fontsize=9)
        for col, name in enumerate(methods, start=1):
            ax, m = axes[row, col], maps[roi, name]
            if not np.isfinite(m).all():
                ax.imshow(img, alpha=0.3)
                ax.text(0.5, 0.5, "no map\n(no query for\na single vertex)" if roi.startswith("vertex:") else "no map",
                        transform=ax.transAxes, ha="center", va="center", fontsize=7)
                continue
            scale = column_scale[name] if shared_scale else _panel_scale([m], signed[name])
            shown = draw_map(ax, img, m, scale)
            if name.startswith("attention"):
                ax.text(0.02, 0.02, f"focus {float(focus(m)):.2f}", transform=ax.transAxes, fontsize=6,
                        color="white", bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "lw": 0})
            if not shared_scale:
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
    for col, name in enumerate(methods, start=1):
        title = name.replace("_", " ")
        axes[0, col].set_title(title + ("\n(signed)" if signed[name] else ""), fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    axes[0, 0].set_title(str(ds.image.values[image_index]), fontsize=7)
    fig.tight_layout(rect=(0, 0.14 if shared_scale else 0.04, 1, 1))
    if shared_scale:
        for col, name in enumerate(methods, start=1):
            box = axes[-1, col].get_position()
            cax = fig.add_axes((box.x0, 0.075, box.width, 0.015))
            bar = fig.colorbar(ScalarMappable(column_scale[name].norm, column_scale[name].cmap), cax=cax,
                               orientation="horizontal")
            bar.ax.tick_params(labelsize=6)
            bar.locator = MaxNLocator(3)
            bar.update_ticks()
    if any(signed.values()):
        fig.text(0.01, 0.005, f"signed maps: {SIGN_LEGEND}; "
                 + ("one colour scale per column" if shared_scale else "each panel on its own scale"), fontsize=7)
    elif not shared_scale:
        fig.text(0.01, 0.005, "each panel on its own scale", fontsize=7)
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


def plot_attention_use(table: pd.DataFrame, out: str | Path) -> Path:
    """Each ROI query's deletion ratio and specificity with their intervals and minimums; unreliable ROIs in grey."""
    from model.scoring import MIN_RATIO, MIN_SPECIFICITY

    rows = table.reset_index(drop=True)
    fig = figure(figsize=(8, 0.2 * len(rows) + 1.4))
    axes = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(rows))[::-1]
    colours = np.where(rows["reliable"].astype(bool).to_numpy(), "tab:blue", "0.7")
    for ax, name, minimum, label in ((axes[0], "deletion_ratio", MIN_RATIO, "vs a random 20%"),
                                     (axes[1], "specificity", MIN_SPECIFICITY, "vs the other queries' top 20%")):
        err = np.clip([rows[name] - rows[f"{name}_ci_low"], rows[f"{name}_ci_high"] - rows[name]], 0, None)
        ax.errorbar(rows[name], y, xerr=np.nan_to_num(err), fmt="none", ecolor="0.6", lw=0.8)
        ax.scatter(rows[name], y, c=colours, zorder=3, s=14)
        ax.axvline(minimum, color="k", ls="--", lw=0.8, label=f"faithful from {minimum:g}")
        ax.axvline(1, color="0.8", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(f"{name.replace('_', ' ')} ({label})", fontsize=8)
        ax.legend(fontsize=7)
    axes[0].set_yticks(y, [f"{h} {r}" for h, r in zip(rows["hemi"], rows["roi"])], fontsize=6)
    fig.supxlabel("change of the ROI's prediction when its query's top-attended 20% of tokens are replaced, relative "
                  "(95% bootstrap interval of the ratio; grey: not reliably predicted)", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out)
