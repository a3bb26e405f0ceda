"""Each ROI's top and bottom images: the ones its predicted response ranks highest and lowest.

For chosen ROIs (per hemisphere), over a set of images (a split of the
run's subject, any folder, or a labels CSV as ``tbe routing`` takes them):
the ``k`` images with the highest and the lowest predicted ROI-mean
response, with the measured response where the image has fMRI, as a table,
and a figure of each image with the ROI query's attention (last layer, heads
averaged) over it and, under it, the attribution of the ROI's predicted
response to the image (:func:`top_attributions`: only the shown images are
explained, by default at the decoder's input tokens, which is cheap).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.cm import ScalarMappable
from PIL import Image
from scipy.stats import spearmanr

from interpret.attribution import Settings, attribute, method
from interpret.maps import MapGrid, load_images, roi_targets
from interpret.overlay import draw_map
from model.errors import OptionError
from model.figures import colour_scale, figure, save_figure
from model.runs import Run

from .attention_selectivity import token_attention
from .responses import features_for, measured_roi_means, predicted_roi_means
from .routing import RoutingImages

#: Columns of :func:`top_images`.
COLUMNS = ["hemi", "roi", "direction", "rank", "image", "predicted", "measured"]
#: Columns :func:`top_attributions` adds: the method, and how alike the attribution's magnitude and the attention are
ATTRIBUTION_COLUMNS = ["attribution", "attribution_attention_r"]
#: The attribution of each shown image by default: integrated gradients at the decoder input (the backbone tokens):
#: the cheapest honest choice, since it never runs the backbone (``n_steps`` decoder passes per image and ROI) and
#: its maps sum to the response's change from the mean token (completeness), where a pixel gradient through the
#: backbone costs a backbone pass per image and gives no such account. Any pixel method can be asked for instead.
DEFAULT_ATTRIBUTION = "token_integrated_gradients"


def top_images(run: Run, chosen: RoutingImages, rois: Sequence[str], k: int = 5,
               cache_dir: str | Path | None = None) -> tuple[pd.DataFrame, dict]:
    """The ``k`` top and bottom images of each hemi x ROI in ``rois`` by predicted ROI-mean response.

    Returns the table (:data:`COLUMNS`; ``measured`` NaN where an image has
    no fMRI) and, when the run is a transformer, ``{(hemi, roi): (image,
    token) attention}`` of those ROIs' queries over all the images (else an
    empty dict).
    """
    if k < 1:
        raise OptionError("k", f"must be at least 1, got {k}")
    features = features_for(run, chosen.paths, chosen.rows, cache_dir)
    predicted = predicted_roi_means(run, features)
    unknown = [r for r in rois if r not in predicted.roi.values]
    if unknown:
        raise OptionError("rois", f"unknown ROI {unknown[0]!r}; choose from {', '.join(map(str, predicted.roi.values))}")
    measured = measured_roi_means(run, chosen.rows) if chosen.rows is not None else None
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


def top_attributions(run: Run, chosen: RoutingImages, table: pd.DataFrame, attention: dict | None = None,
                     attribution: str = DEFAULT_ATTRIBUTION, settings: Settings = Settings(),
                     cache_dir: str | Path | None = None, map_size: int | None = None
                     ) -> tuple[pd.DataFrame, dict, MapGrid]:
    """The attribution of each shown image's ROI response: ``table`` (of :func:`top_images`) with its maps.

    Each image of ``table`` is explained for the ROI it is shown for: the
    ROI-mean predicted response of each hemisphere, attributed to the
    image's pixels (or tokens) by ``attribution``, a method of
    :data:`interpret.attribution.METHODS` other than ``attention``, with
    ``settings``. Only those images are run (2k per ROI, in batches of
    ``settings.internal_batch_size``), not the whole image set.

    Returns
    -------
    table : DataFrame
        ``table`` with :data:`ATTRIBUTION_COLUMNS`: the method, and the
        Spearman r over the map's cells between the attribution's magnitude
        and the ROI query's attention (``attention`` of :func:`top_images`;
        NaN without it): whether the query looks where the pixels drive it.
    maps : dict
        ``{(hemi, roi, image): (size, size) map}`` on ``grid``.
    grid : MapGrid
        The grid of the maps over each image (:class:`interpret.maps.MapGrid`).
    """
    spec, _ = method(attribution)
    if spec.needs_attention:
        raise OptionError("attribution", f"{attribution} is the attention already shown; choose an attribution method")
    settings.check()
    backbone = run.shared_backbone
    grid = MapGrid.for_backbone(backbone, map_size)
    index = {p.name: i for i, p in enumerate(chosen.paths)}
    maps: dict = {}
    shown_for: dict = {}
    for hemi, roi, name in zip(table["hemi"], table["roi"], table["image"]):
        shown_for.setdefault(roi, []).append((hemi, name))
    for roi in shown_for:
        targets = roi_targets(run, [roi])
        shown = [index[name] for name in dict.fromkeys(table.loc[table["roi"] == roi, "image"])]
        for start in range(0, len(shown), settings.internal_batch_size):
            part = shown[start:start + settings.internal_batch_size]
            paths = [chosen.paths[i] for i in part]
            rows = [chosen.rows[i] for i in part] if chosen.rows is not None else None
            ds = attribute(run, backbone, load_images(backbone, paths), features_for(run, paths, rows, cache_dir),
                           targets, [attribution], grid, [p.name for p in paths], settings)
            for hemi, name in shown_for[roi]:
                if name in ds.image.values:
                    maps[(hemi, roi, name)] = ds[attribution].sel(image=name, hemi=hemi, roi=roi).values
    r = []
    for row in table.itertuples():
        m = maps.get((row.hemi, row.roi, row.image))
        a = attention_on_grid(attention, grid, row.hemi, row.roi, index[row.image]) if attention else None
        r.append(float(spearmanr(np.abs(m).ravel(), a.ravel())[0]) if m is not None and a is not None else np.nan)
    return table.assign(attribution=attribution, attribution_attention_r=r), maps, grid


def attention_on_grid(attention: dict, grid: MapGrid, hemi: str, roi: str, image: int) -> np.ndarray | None:
    """The query's token attention on one image, laid on the map grid over the image (None: no query)."""
    if (hemi, roi) not in attention:
        return None
    return grid.from_tokens(torch.as_tensor(attention[(hemi, roi)][image], dtype=torch.float32)).numpy()


def plot_top_images(table: pd.DataFrame, chosen: RoutingImages, attention: dict, grid: MapGrid, hemi: str,
                    out: str | Path, attributions: dict | None = None) -> Path:
    """Per ROI of ``hemi``: its top then its bottom images with the query's attention, and under them their attributions.

    ``attention`` and ``grid``: of :func:`top_images` and
    :func:`top_attributions` (``MapGrid.for_backbone`` of the run's
    backbone); ``attributions``: the maps of :func:`top_attributions`
    (None: attention only). Each row shares one colour scale
    (:func:`model.figures.colour_scale`), shown by the colour bar at its end.
    """
    part = table[table["hemi"] == hemi]
    rois = list(dict.fromkeys(part["roi"]))
    k = int(part["rank"].max()) if len(part) else 1
    index = {p.name: i for i, p in enumerate(chosen.paths)}
    method_name = str(part["attribution"].iloc[0]) if attributions and "attribution" in part else "attribution"
    panels = [(roi, kind) for roi in rois for kind in ("attention", "attribution")
              if (kind == "attention" and (hemi, roi) in attention) or (kind == "attribution" and attributions)]
    panels = panels or [(roi, "image") for roi in rois]
    fig = figure(figsize=(1.5 * 2 * k + 0.8, 1.6 * max(1, len(panels))))
    axes = np.atleast_2d(fig.subplots(max(1, len(panels)), 2 * k, squeeze=False))
    side = grid.image_side
    for r, (roi, kind) in enumerate(panels):
        rows = list(part[part["roi"] == roi].sort_values(["direction", "rank"], ascending=[False, True]).itertuples())
        if kind == "attention":
            shown = [attention_on_grid(attention, grid, hemi, roi, index[row.image]) for row in rows]
        elif kind == "attribution":
            shown = [attributions[(hemi, roi, row.image)] for row in rows]
        else:
            shown = [None for _ in rows]
        scale = colour_scale(np.concatenate([m.ravel() for m in shown if m is not None] or [np.zeros(1)]))
        for c, (row, m) in enumerate(zip(rows, shown)):
            ax = axes[r, c]
            img = np.asarray(Image.open(chosen.paths[index[row.image]]).convert("RGB").resize((side, side)))
            if m is None:
                ax.imshow(img)
            else:
                draw_map(ax, img, m, scale)
            ax.set_xticks([]), ax.set_yticks([])
            if kind != "attribution":
                ax.set_title(f"{row.direction} {row.rank}: {row.predicted:.2f}", fontsize=6)
        what = {"attention": "attention", "attribution": method_name.replace("_", " "), "image": ""}[kind]
        axes[r, 0].set_ylabel(f"{hemi} {roi}\n{what}", fontsize=7)
        if kind != "image":
            bar = fig.colorbar(ScalarMappable(scale.norm, scale.cmap), ax=list(axes[r]), fraction=0.02, pad=0.01)
            bar.ax.tick_params(labelsize=5)
    fig.suptitle("Top and bottom images by predicted response, with the query's attention"
                 + (f" and the {method_name.replace('_', ' ')} of the ROI's response" if attributions else ""),
                 fontsize=9)
    return save_figure(fig, out)


__all__ = ["ATTRIBUTION_COLUMNS", "COLUMNS", "DEFAULT_ATTRIBUTION", "plot_top_images", "top_attributions",
           "top_images"]
