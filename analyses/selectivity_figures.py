"""Seaborn figures of the selectivity, localizer and calibration tables."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns

from model.figures import colour_scale, figure, save_figure
from model.rois import HEMIS

DPI = 100


def _save(fig, out: str | Path) -> Path:
    return save_figure(fig, out, dpi=DPI)


def _marks(part: pd.DataFrame) -> pd.Series:
    """'*' for a significant preference the run also predicts reliably, '†' for one it does not."""
    significant = part["significant"].astype(bool)
    supported = part["supported"].astype(bool) if "supported" in part else significant
    return pd.Series(np.where(supported, "*", np.where(significant, "†", "")), index=part.index)


def plot_selectivity(table: pd.DataFrame, out: str | Path) -> Path:
    """Heatmaps of d-prime (ROI x category), one per source and hemisphere, with significance marks."""
    sources = list(dict.fromkeys(table["source"]))
    rois = list(dict.fromkeys(table["roi"]))
    categories = list(dict.fromkeys(table["category"]))
    scale = colour_scale(table["d_prime"], signed=True, percentile=98)
    fig = figure(figsize=(2.2 + 0.9 * len(categories) * len(HEMIS), 0.8 + 0.28 * len(rois) * len(sources)))
    axes = fig.subplots(len(sources), len(HEMIS), squeeze=False, sharey=True)
    for i, source in enumerate(sources):
        for j, hemi in enumerate(HEMIS):
            part = table[(table["source"] == source) & (table["hemi"] == hemi)].assign(mark=_marks)
            d = part.pivot(index="roi", columns="category", values="d_prime").reindex(index=rois, columns=categories)
            notes = part.pivot(index="roi", columns="category", values="mark").reindex(index=rois, columns=categories)
            sns.heatmap(d, ax=axes[i, j], **scale.imshow_kwargs(), center=0, annot=notes.fillna(""),
                        fmt="", cbar=j == len(HEMIS) - 1, cbar_kws={"label": "d'"}, linewidths=0.3, linecolor="white")
            axes[i, j].set_title(f"{source}, {hemi}", fontsize=10)
            axes[i, j].set_xlabel("")
            axes[i, j].set_ylabel("" if j else "ROI")
    fig.suptitle("Category selectivity (d', category vs rest): * FDR-significant"
                 + (", † significant but the ROI is not reliably predicted" if "predicted" in sources else ""),
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, out)


def plot_attention(table: pd.DataFrame, out: str | Path) -> Path:
    """Attention mass on each category relative to chance (log2 ratio), ROI x category per hemisphere."""
    rois = list(dict.fromkeys(table["roi"]))
    categories = list(dict.fromkeys(table["category"]))
    fig = figure(figsize=(2 + 0.9 * len(categories) * len(HEMIS), 0.6 + 0.28 * len(rois)))
    axes = fig.subplots(1, len(HEMIS), squeeze=False, sharey=True)
    scale = colour_scale(np.log2(table["ratio"]), signed=True)
    for j, hemi in enumerate(HEMIS):
        part = table[table["hemi"] == hemi]
        ratio = np.log2(part.pivot(index="roi", columns="category", values="ratio").reindex(index=rois, columns=categories))
        notes = part.assign(mark=_marks).pivot(index="roi", columns="category", values="mark")
        sns.heatmap(ratio, ax=axes[0, j], **scale.imshow_kwargs(), center=0,
                    annot=notes.reindex(index=rois, columns=categories).fillna(""),
                    fmt="", cbar=j == len(HEMIS) - 1, cbar_kws={"label": "log2(mass / chance)"})
        axes[0, j].set_title(hemi)
    fig.suptitle("Attention on category masks; * FDR-significant")
    return _save(fig, out)


def plot_calibration(table: pd.DataFrame, out: str | Path, alpha: float) -> Path:
    """False-positive rates with their exact binomial intervals, against the nominal level."""
    rates = table[table["kind"] == "false_positive_rate"].reset_index(drop=True)
    fig = figure(figsize=(7, 0.6 + 0.45 * len(rates)))
    ax = fig.subplots()
    y = np.arange(len(rates))
    sns.scatterplot(x=rates["rate"], y=y, ax=ax, color="k", zorder=3)
    ax.errorbar(rates["rate"], y, xerr=[rates["rate"] - rates["rate_ci_low"], rates["rate_ci_high"] - rates["rate"]],
                fmt="none", color="k")
    ax.axvline(alpha, color="tab:red", ls="--", label=f"nominal {alpha}")
    ax.set_yticks(y, [f"{t} [{s}]" for t, s in zip(rates["test"], rates["source"])])
    ax.invert_yaxis()
    ax.set_xlabel("rate of significant results (95% Clopper-Pearson, effective n)")
    ax.legend(loc="lower right")
    return _save(fig, out)
