"""ROI responses to a stimulus set: predicted by a run, and measured where the images have fMRI.

A selectivity test asks about an ROI's response, so every vertex map is
first averaged over each ROI's vertices (per image, per hemisphere). ROIs
are those of the floc and prf classes (the ``rois_all`` ROIs without the
unassigned vertices), in each hemisphere where they exist.

Predictions for the subject's own images reuse the feature cache entries
written at training time. *Reliability* says whether the run predicts an
ROI at all: the correlation, over the held-out images, of the ROI-mean
prediction with the ROI-mean measurement. A selectivity claim about the
brain from predicted responses needs both: a selective prediction and a
reliable one.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from model.metrics import reliability_test
from model.rois import HEMIS, NON_STREAM_CLASSES, ROI_CLASSES, ROI_TO_CLASS
from model.runs import Run, predict
from model.subject import Subject

log = logging.getLogger(__name__)

#: ROI classes whose ROIs are tested (the floc classes and early visual cortex).
SELECTIVITY_CLASSES: tuple[str, ...] = NON_STREAM_CLASSES


def roi_names(classes: Sequence[str] = SELECTIVITY_CLASSES) -> list[str]:
    """ROI names of ``classes`` in the Algonauts order."""
    return [roi for c in classes for roi in ROI_CLASSES[c]]


def roi_means(values: dict[str, np.ndarray], subject: Subject,
              classes: Sequence[str] = SELECTIVITY_CLASSES) -> xr.DataArray:
    """Per-image ROI means ``(image, hemi, roi)`` of per-vertex values ``{hemi: (N, V)}``.

    An ROI absent from a hemisphere is NaN there; vertices that are NaN
    (e.g. missing in the fMRI) are left out of the mean.
    """
    rois = roi_names(classes)
    n = len(next(iter(values.values())))
    out = np.full((n, len(HEMIS), len(rois)), np.nan, np.float64)
    for h, hemi in enumerate(HEMIS):
        v = np.asarray(values[hemi], np.float64)
        for r, roi in enumerate(rois):
            mask = subject.roi_mask(roi, hemi)
            if mask.any():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # an image without fMRI is all NaN: NaN, as meant
                    out[:, h, r] = np.nanmean(v[:, mask], axis=1)
    return xr.DataArray(out, dims=("image", "hemi", "roi"),
                        coords={"hemi": list(HEMIS), "roi": rois, "roi_class": ("roi", [ROI_TO_CLASS[r] for r in rois])})


# --------------------------------------------------------------------------
# Features and predictions
# --------------------------------------------------------------------------

def features_for(run: Run, paths: Sequence[Path], rows: Sequence[tuple[str, int] | None] | None = None,
                 cache_dir: str | Path | None = None):
    """The run's encoder input ``(N, tokens, C)`` for ``paths`` (:meth:`model.runs.run.Run.features`), read by rows.

    When every image is one of the subject's (``rows`` gives its split and
    index) and the split's features are already cached (training computed
    them), those rows are read from the cache instead of recomputing.
    Nothing is held in memory: read the rows a batch needs with
    :func:`model.files.read_rows` (``np.asarray`` reads them all).
    """
    return run.features(list(paths), cache_dir, device=str(run.device), rows=rows, desc="stimulus features")


#: Images predicted at a time by :func:`predicted_roi_means` (a multiple of :func:`model.runs.predictions.predict`'s batch)
PREDICT_CHUNK = 256


def predicted_vertices(run: Run, features) -> dict[str, np.ndarray]:
    """The run's predictions ``{hemi: (N, V)}``."""
    pred = predict(run.model, features)
    return {hemi: pred[:, run.hemi_slice(hemi)] for hemi in HEMIS}


def predicted_roi_means(run: Run, features, classes: Sequence[str] = SELECTIVITY_CLASSES) -> xr.DataArray:
    """:func:`roi_means` of :func:`predicted_vertices`, predicted :data:`PREDICT_CHUNK` images at a time.

    Only the ROI means of every image are kept, never every vertex of every
    image (160 kB per image at NSD's size), so memory does not grow with the
    images beyond ``(image, hemi, roi)``.
    """
    parts = []
    for start in range(0, len(features), PREDICT_CHUNK):
        idx = np.arange(start, min(start + PREDICT_CHUNK, len(features)))
        pred = predict(run.model, features, idx)
        parts.append(roi_means({hemi: pred[:, run.hemi_slice(hemi)] for hemi in HEMIS}, run.subject, classes))
    return xr.concat(parts, dim="image") if len(parts) > 1 else parts[0]


def measured_vertices(run: Run, rows: Sequence[tuple[str, int] | None]) -> dict[str, np.ndarray] | None:
    """Measured responses ``{hemi: (N, V)}`` where an image has fMRI (NaN rows elsewhere), or None.

    Training (and validation) images have the training fMRI; test images
    have fMRI only in a virtual subject's ground truth.
    """
    truth = run.subject.truth
    test = {hemi: truth.array("test_fmri", hemi) for hemi in HEMIS} if truth is not None else None
    sources = {"train": run.subject.fmri, "test": test}
    if not any(r is not None and sources[r[0]] is not None for r in rows):
        return None
    out = {}
    for hemi in HEMIS:
        v = np.full((len(rows), run.subject.n_vertices(hemi)), np.nan, np.float32)
        for i, r in enumerate(rows):
            if r is not None and sources[r[0]] is not None:
                v[i] = sources[r[0]][hemi][r[1]]
        out[hemi] = v
    return out


def measured_roi_means(run: Run, rows: Sequence[tuple[str, int] | None],
                       classes: Sequence[str] = SELECTIVITY_CLASSES) -> xr.DataArray | None:
    """:func:`roi_means` of :func:`measured_vertices` (NaN where an image has no fMRI), :data:`PREDICT_CHUNK`
    images at a time; None when no image has fMRI."""
    parts, known = [], False
    for start in range(0, len(rows), PREDICT_CHUNK):
        chunk = list(rows[start:start + PREDICT_CHUNK])
        values = measured_vertices(run, chunk)
        known |= values is not None
        if values is None:  # no image of this chunk has fMRI
            values = {hemi: np.full((len(chunk), run.subject.n_vertices(hemi)), np.nan, np.float32) for hemi in HEMIS}
        parts.append(roi_means(values, run.subject, classes))
    if not known:
        return None
    return xr.concat(parts, dim="image") if len(parts) > 1 else parts[0]


# --------------------------------------------------------------------------
# Held-out images and reliability
# --------------------------------------------------------------------------

def heldout_rows(run: Run) -> list[tuple[str, int]]:
    """(split, index) of images with fMRI that the run never trained on: validation rows, and a
    virtual subject's test images."""
    rows = [("train", int(i)) for i in run.val_indices]
    if run.subject.truth is not None:
        rows += [("test", i) for i in range(run.subject.n_test)]
    return rows


def heldout_responses(run: Run, cache_dir: str | Path | None = None
                      ) -> tuple[list[tuple[str, int]], xr.DataArray | None, xr.DataArray | None]:
    """Rows, predicted and measured ROI means of every held-out image with fMRI (None, None if none)."""
    rows = heldout_rows(run)
    if not rows:
        log.info("no held-out images with fMRI (no validation split): reliability not assessed")
        return rows, None, None
    paths = [run.subject.images(split)[i] for split, i in rows]
    predicted = predicted_roi_means(run, features_for(run, paths, rows, cache_dir))
    measured = measured_roi_means(run, rows)
    return rows, predicted, measured


def reliability(predicted: xr.DataArray, measured: xr.DataArray, alpha: float = 0.05) -> pd.DataFrame:
    """Does the run predict each ROI? Pearson r over held-out images, one-sided p, BH-FDR.

    Returns one row per hemi x ROI (those present in ``predicted``) with
    ``r_heldout``, ``p_reliable``, ``p_reliable_fdr``, ``reliable`` and
    ``n_heldout`` (:func:`model.metrics.reliability_test`).
    """
    keys, x, y = [], [], []
    for hemi in predicted.hemi.values:
        for roi in predicted.roi.values:
            values = predicted.sel(hemi=hemi, roi=roi).values
            if not np.isfinite(values).any():
                continue  # the ROI does not exist in this hemisphere
            keys.append({"hemi": str(hemi), "roi": str(roi)})
            x.append(values), y.append(measured.sel(hemi=hemi, roi=roi).values)
    columns = ["hemi", "roi", "r_heldout", "p_reliable", "n_heldout", "p_reliable_fdr", "reliable"]
    if not keys:
        return pd.DataFrame(columns=columns)
    test = reliability_test(np.stack(x, 1), np.stack(y, 1), alpha)
    return pd.concat([pd.DataFrame(keys), test], axis=1)[columns]
