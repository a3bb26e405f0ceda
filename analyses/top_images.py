"""Each ROI's top and bottom images: the ones its predicted response ranks highest and lowest.

For chosen ROIs (per hemisphere), over a set of images (a split of the
run's subject, any folder, or a labels CSV as ``tbe routing`` takes them):
the ``k`` images with the highest and the lowest predicted ROI-mean
response, with the measured response where the image has fMRI, as a table,
and a figure of each image with the ROI query's attention (last layer, heads
averaged) over it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from model.errors import InputError
from model.figures import figure, save_figure
from model.run import Run

from .attention_selectivity import token_attention
from .responses import features_for, measured_vertices, predicted_vertices, roi_means
from .routing import RoutingImages

#: Columns of :func:`top_images`.
COLUMNS = ["hemi", "roi", "direction", "rank", "image", "predicted", "measured"]


def top_images(run: Run, chosen: RoutingImages, rois: Sequence[str], k: int = 5,
               cache_dir: str | Path | None = None) -> tuple[pd.DataFrame, dict]:
    """The ``k`` top and bottom images of each hemi x ROI in ``rois`` by predicted ROI-mean response.

    Returns the table (:data:`COLUMNS`; ``measured`` NaN where an image has
    no fMRI) and, when the run is a transformer, ``{(hemi, roi): (image,
    token) attention}`` of those ROIs' queries over all the images (else an
    empty dict).
    """
    if k < 1:
        raise InputError("--k", f"must be at least 1, got {k}")
    features = features_for(run, chosen.paths, chosen.rows, cache_dir)
    predicted = roi_means(predicted_vertices(run, features), run.subject)
    unknown = [r for r in rois if r not in predicted.roi.values]
    if unknown:
        raise InputError("--rois", f"unknown ROI {unknown[0]!r}; choose from {', '.join(map(str, predicted.roi.values))}")
    measured = None
    if chosen.rows is not None:
        values = measured_vertices(run, chosen.rows)
        measured = roi_means(values, run.subject) if values is not None else None
    names = [p.name for p in chosen.paths]
    rows = []
    for hemi in predicted.hemi.values:
        for roi in rois:
            x = predicted.sel(hemi=hemi, roi=roi).values
            if not np.isfinite(x).any():
                continue
            m = measured.sel(hemi=hemi, roi=roi).values if measured is not None else np.full(len(x), np.nan)
            order = np.argsort(-x, kind="stable")
            for direction, picked in (("top", order[:k]), ("bottom", order[::-1][:k])):
                for rank, i in enumerate(picked, 1):
                    rows.append({"hemi": str(hemi), "roi": roi, "direction": direction, "rank": rank,
                                 "image": names[i], "predicted": float(x[i]), "measured": float(m[i])})
    attention = {}
    if run.model.capabilities.decoder_attention:
        att, queries = token_attention(run, features)
        attention = {key: att[:, q] for q, key in enumerate(queries) if key[1] in rois}
    return pd.DataFrame(rows, columns=COLUMNS), attention


def plot_top_images(table: pd.DataFrame, chosen: RoutingImages, attention: dict, grid: tuple[int, int],
                    image_side: int, patch: int, hemi: str, out: str | Path) -> Path:
    """Rows: ROIs of ``hemi``; columns: its top images then its bottom images, each with the query's attention."""
    part = table[table["hemi"] == hemi]
    rois = list(dict.fromkeys(part["roi"]))
    k = int(part["rank"].max()) if len(part) else 1
    index = {p.name: i for i, p in enumerate(chosen.paths)}
    fig = figure(figsize=(1.5 * 2 * k, 1.6 * max(1, len(rois))))
    axes = np.atleast_2d(fig.subplots(max(1, len(rois)), 2 * k, squeeze=False))
    extent = grid[1] * patch * 1.0 / image_side  # the token grid covers the padded input
    for r, roi in enumerate(rois):
        rows = part[part["roi"] == roi].sort_values(["direction", "rank"], ascending=[False, True])
        for c, row in enumerate(rows.itertuples()):
            ax = axes[r, c]
            img = np.asarray(Image.open(chosen.paths[index[row.image]]).convert("RGB").resize((image_side, image_side)))
            ax.imshow(img)
            if (hemi, roi) in attention:
                m = attention[(hemi, roi)][index[row.image]].reshape(grid)
                ax.imshow(m, cmap="inferno", alpha=0.55, extent=(0, extent * image_side, extent * image_side, 0))
                ax.set_xlim(0, image_side), ax.set_ylim(image_side, 0)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{row.direction} {row.rank}: {row.predicted:.2f}", fontsize=6)
        axes[r, 0].set_ylabel(f"{hemi} {roi}", fontsize=7)
    fig.suptitle("Top and bottom images by predicted response, with the query's attention", fontsize=9)
    return save_figure(fig, out)


__all__ = ["COLUMNS", "plot_top_images", "top_images"]
