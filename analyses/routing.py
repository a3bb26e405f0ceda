"""``tbe routing``: how each ROI query routes the image (by location, content, both or neither), per hemisphere.

The measures and tests are :mod:`interpret.routing`'s, on the decoder's
cross-attention (last layer, heads averaged) of a set of images: a split of
the run's subject (``val`` by default; a virtual subject's category masks
come with it), any folder of images (no masks: only the location test), or
a labels file with masks (:mod:`analyses.stimuli`, as ``tbe selectivity``
takes it; the content test uses the images whose every category's mask is
known). Where there are
masks, each token's share of the image's luminance contrast energy
(:func:`analyses.attention_selectivity.token_contrast`, the attention
selectivity's low-level control) is partialled out of the content measures,
so that a query drawn to high-contrast tokens (text, above all) is not
called word-routed.

On a virtual subject a ``planted`` column says how each ROI was made to
respond: ``location`` (pRFs, early visual), ``content`` (a category),
``none``. Where the run's subject has held-out fMRI, ``reliable`` and
``r_heldout`` say, as in ``tbe selectivity``, whether the run predicts the
ROI (Pearson r over held-out images, BH-FDR at ``alpha``). They do not
change the label, which describes the attention only: a null ROI's query,
trained on noise, still attends, and its attention still moves with the
image.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from interpret.maps import select_images
from interpret.routing import COLUMNS, RoutingSettings, routing_table, token_positions_deg
from model.errors import InputError, OptionError
from model.figures import figure, save_figure
from model.files import write_csv
from model.images import list_images
from model.rois import ROI_TO_CLASS
from model.runs import Run, open_runs
from model.vision import CATEGORIES

from .attention_selectivity import token_attention, token_contrast, token_coverage
from .responses import features_for, heldout_responses, reliability
from .stimuli import StimulusOptions, StimulusSet, check_subject, labelled_stimuli, masks_to_grid, subject_rows

log = logging.getLogger(__name__)

#: How a virtual subject's planted preference routes: pRFs by location, a category by content.
PLANTED_ROUTING = {"prf": "location", **{c: "content" for c in CATEGORIES}}
#: Columns of routing.csv.
TABLE_COLUMNS = ["hemi", "roi", "roi_class", "planted", *COLUMNS, "reliable", "r_heldout"]


@dataclass
class RoutingImages:
    """The images of one routing analysis: paths, their subject rows (or None) and category masks (or None)."""

    name: str
    paths: list[Path]
    rows: list[tuple[str, int] | None] | None
    masks: np.ndarray | None  # (image, category, S, S) cell fractions
    categories: tuple[str, ...]


def split_images(run: Run, split: str, n_images: int) -> RoutingImages:
    """The first ``n_images`` of the run's validation or test images, with a virtual subject's masks."""
    paths = select_images(run, split, n_images)
    if split == "val":
        rows = [("train", int(i)) for i in run.val_indices[:len(paths)]]
    else:
        rows = [("test", i) for i in range(len(paths))]
    masks = None
    if run.subject.truth is not None:
        names = [p.name for p in paths]  # full-resolution masks a batch at a time, each reduced to the grid
        masks = np.concatenate([masks_to_grid(m) for m in run.subject.truth.mask_batches(rows[0][0], names)])
    return RoutingImages(f"{run.subject.root.name} {split} images", paths, rows, masks, tuple(CATEGORIES))


def choose_images(run: Run, stimuli: StimulusOptions | None = None, split: str | None = None,
                  n_images: int | None = None) -> RoutingImages:
    """A labels file (masks where it has them), else a folder of images (no masks), else a split (default val)."""
    stimuli = stimuli or StimulusOptions()
    if n_images is not None and n_images < 2:
        raise OptionError("n_images", f"must be at least 2 (the measures compare images), got {n_images}")
    if split is not None and (stimuli.images is not None or stimuli.labels is not None):
        raise OptionError("split", "give either `split` or `images`/`labels`, not both")
    if stimuli.labels is not None:
        labelled = labelled_stimuli(run, stimuli).subset(slice(n_images))
        return RoutingImages(labelled.name, labelled.paths, labelled.fmri_rows, labelled.masks, labelled.categories)
    for parameter, value in (("categories", stimuli.categories), ("partial_masks", stimuli.partial_masks)):
        if value:
            raise OptionError(parameter, "applies to a labels file: give `labels` too")
    if stimuli.images is not None:
        paths = list_images(stimuli.images)[slice(n_images)]
        if len(paths) < 2:
            raise InputError(stimuli.images, "holds one image: the routing measures compare at least two")
        check_subject(run, StimulusSet(str(stimuli.images), paths, (), np.zeros((len(paths), 0), bool)))
        return RoutingImages(str(stimuli.images), paths, subject_rows(run, paths), None, ())
    return split_images(run, split or "val", n_images or 10**9)


def add_planted(table: pd.DataFrame, run: Run) -> pd.DataFrame:
    """The routing a virtual subject planted for each ROI ('' for real subjects and unplanted ROIs)."""
    truth = run.subject.truth
    if truth is None:
        return table.assign(planted="")
    preferences = truth.preferences()
    planted = ["" if roi not in preferences else PLANTED_ROUTING.get(preferences[roi] or "", "none")
               for roi in table["roi"]]
    return table.assign(planted=planted)


def attention_of(run: Run, chosen: RoutingImages, cache_dir: str | Path | None = None) -> tuple[np.ndarray, list]:
    """Head-averaged last-layer attention ``(image, query, token)`` of ``chosen`` and the queries' (hemi, roi)."""
    if not run.model.capabilities.decoder_attention:
        raise OptionError("run", f"routing needs the decoder's attention; this run is {run.config.encoder_arch!r}")
    return token_attention(run, features_for(run, chosen.paths, chosen.rows, cache_dir))


def analyse(run: Run, chosen: RoutingImages, settings: RoutingSettings = RoutingSettings(), seed: int = 0,
            cache_dir: str | Path | None = None, attention: tuple[np.ndarray, list] | None = None) -> pd.DataFrame:
    """The routing table (:data:`TABLE_COLUMNS`) of every ROI query of ``run`` over ``chosen`` images.

    ``attention``: :func:`attention_of` if already computed.
    """
    att, queries = attention if attention is not None else attention_of(run, chosen, cache_dir)
    backbone = run.shared_backbone
    coverage = control = None
    if chosen.masks is not None:
        coverage, _ = token_coverage(chosen.masks, backbone)
        control = token_contrast(chosen.paths, chosen.masks.shape[-1], backbone)
    positions = token_positions_deg(tuple(backbone.grid), backbone.patch, backbone.image_side)
    table = routing_table(att, tuple(backbone.grid), positions, coverage, chosen.categories, settings, seed, control)
    table.insert(0, "hemi", [h for h, _ in queries])
    table.insert(1, "roi", [r for _, r in queries])
    table.insert(2, "roi_class", [ROI_TO_CLASS.get(r, "") for _, r in queries])
    table = add_reliability(add_planted(table, run), run, settings.alpha, cache_dir)
    return table[TABLE_COLUMNS]


def add_reliability(table: pd.DataFrame, run: Run, alpha: float, cache_dir: str | Path | None = None) -> pd.DataFrame:
    """``reliable`` and ``r_heldout`` of each ROI, as ``tbe selectivity`` reports them ('' and NaN where unknown).

    They do not change the label, which describes the query's attention; they
    say whether that attention belongs to a query that predicts its ROI.
    """
    _, predicted, measured = heldout_responses(run, cache_dir)
    if predicted is None:
        return table.assign(reliable="", r_heldout=np.nan)
    known = reliability(predicted, measured, alpha).set_index(["hemi", "roi"])
    keys = list(zip(table["hemi"], table["roi"]))
    return table.assign(reliable=[bool(known.loc[k, "reliable"]) if k in known.index else "" for k in keys],
                        r_heldout=[float(known.loc[k, "r_heldout"]) if k in known.index else np.nan for k in keys])


def plot_examples(att: np.ndarray, queries: list, table: pd.DataFrame, grid: tuple[int, int], out: str | Path,
                  n_images: int = 3) -> Path:
    """One query of each label (the clearest): its mean map over images, then its maps on the first images.

    A location-routed query looks alike in every image; a content-routed one
    moves with what each image shows.
    """
    rows = []
    for label in ("location", "content", "both", "neither"):
        part = table[table["routing"] == label]
        if len(part):
            key = "location_index" if label == "location" else "content_index"
            best = part[key].fillna(-np.inf).idxmax() if label != "neither" else part.index[0]
            rows.append((label, best))
    n_images = min(n_images, len(att))
    fig = figure(figsize=(1.9 * (n_images + 1), 1.9 * max(1, len(rows))))
    axes = np.atleast_2d(fig.subplots(max(1, len(rows)), n_images + 1, squeeze=False))
    for r, (label, q) in enumerate(rows):
        maps = att[:, q].reshape(len(att), *grid)
        for c, m in enumerate([maps.mean(0), *maps[:n_images]]):
            axes[r, c].imshow(m, cmap="magma")
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        axes[r, 0].set_title(f"{label}: {queries[q][0]} {queries[q][1]} (mean)", fontsize=7)
        for c in range(1, n_images + 1):
            axes[r, c].set_title(f"image {c}", fontsize=7)
    return save_figure(fig, out)


def plot_routing(table: pd.DataFrame, out: str | Path, settings: RoutingSettings | None = None) -> Path:
    """Location index (with its interval) and content index per ROI, one panel per hemisphere, coloured by label.

    With ``settings``, dashed lines mark the minimum indices that count as routing.
    """
    colours = {"location": "tab:blue", "content": "tab:orange", "both": "tab:purple", "neither": "tab:gray"}
    hemis = list(dict.fromkeys(table["hemi"]))
    fig = figure(figsize=(max(6.0, 0.28 * table["roi"].nunique() + 2), 3.2 * len(hemis)))
    axes = np.atleast_1d(fig.subplots(len(hemis), 1, squeeze=False)[:, 0])
    for ax, hemi in zip(axes, hemis):
        part = table[table["hemi"] == hemi].reset_index(drop=True)
        x = np.arange(len(part))
        err = np.clip([part.location_index - part.location_ci_low, part.location_ci_high - part.location_index], 0, None)
        ax.errorbar(x - 0.15, part.location_index, yerr=err, fmt="none", ecolor="0.4", lw=0.8)
        ax.scatter(x - 0.15, part.location_index, c=[colours[r] for r in part.routing], marker="o", label="location index")
        ax.scatter(x + 0.15, part.content_index, c=[colours[r] for r in part.routing], marker="^", label="content index")
        ax.set_xticks(x, part.roi, rotation=90, fontsize=7)
        ax.set_ylabel(f"{hemi}: index")
        ax.axhline(0, color="0.8", lw=0.6)
        if settings is not None:
            ax.axhline(settings.min_location, color="tab:blue", lw=0.6, ls="--")
            ax.axhline(settings.min_content, color="tab:orange", lw=0.6, ls="--")
        handles = [ax.scatter([], [], c=c, label=k) for k, c in colours.items()]
        ax.legend(handles=handles, fontsize=7, ncol=4, loc="upper right", title="o location  ^ content", title_fontsize=7)
    fig.suptitle("How each ROI query routes the image")
    return save_figure(fig, out)


def run_routing(run_dir: str | Path | Sequence[str | Path], data_dir: str | Path | None, out_dir: str | Path,
                settings: RoutingSettings = RoutingSettings(), stimuli: StimulusOptions | None = None,
                split: str | None = None, n_images: int | None = None,
                seed: int = 0, cache_dir: str | Path | None = None, device: str = "cpu") -> pd.DataFrame:
    """Write ``routing.csv`` and ``routing.png`` for a run; returns the table.

    Parameters
    ----------
    run_dir, data_dir : path
        A complete transformer run (or a list of runs: their attention averaged,
        :func:`model.runs.opening.open_runs`) and its data (None: the run's).
    out_dir : path
        Folder for the table and figure.
    settings : RoutingSettings
        Permutations, bootstrap resamples, FDR level and confidence.
    stimuli : StimulusOptions, optional
        A labels file (:mod:`analyses.stimuli`) with its folder, categories
        and masks; or, without labels, a folder of images (no masks).
    split : {'val', 'test'}, optional
        The subject's images to use when no folder is given (default ``val``).
    n_images : int, optional
        Use the first ``n_images`` only.
    seed : int
        Seed of the shifts, shuffles and resamples.
    cache_dir : path, optional
        Feature cache.
    device : str
        Where the backbone and the encoder run (``auto``: CUDA, then MPS, then CPU).
    """
    settings.check()
    run = open_runs(run_dir, data_dir, device)
    chosen = choose_images(run, stimuli, split, n_images)
    log.info("routing of %d queries over %d images (%s)%s", len(run.queries.rois), len(chosen.paths), chosen.name,
             "" if chosen.masks is not None else "; no category masks: content not tested")
    if chosen.masks is not None:
        known = int(np.isfinite(chosen.masks).all((1, 2, 3)).sum())
        if known < len(chosen.paths):
            log.warning("content test over the %d of %d images whose every category's mask is known%s", known,
                        len(chosen.paths), " (fewer than two: content not tested)" if known < 2 else "")
    table = analyse(run, chosen, settings, seed, cache_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "routing.csv", table)
    plot_routing(table, out / "routing.png", settings)
    return table


def confusion(table: pd.DataFrame) -> pd.DataFrame:
    """Planted routing (rows: location, content, none) against measured labels (columns), counting hemi x ROI queries."""
    known = table[table["planted"] != ""]
    return pd.crosstab(known["planted"], known["routing"]).reindex(
        index=["location", "content", "none"], columns=["location", "content", "both", "neither"], fill_value=0)
