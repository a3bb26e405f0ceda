"""Encoding metrics, written once and used everywhere (DESIGN.md section 5).

* :func:`pearson_r`: per-vertex Pearson r across images, vectorised.
* :func:`within_roi_r`: r after removing, per image, the ROI mean from both
  prediction and truth; it measures retinotopic specificity, which plain r
  flatters (DESIGN.md section 6).
* :func:`challenge_score`: the Algonauts score, ``max(r, 0)^2 / NC x 100``
  capped at 100, averaged over vertices with a positive noise ceiling.
* :func:`roi_summary`: mean and median r per ROI and ROI class, per hemisphere.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .rois import HEMIS, ROI_CLASSES, UNKNOWN


def pearson_r(pred: np.ndarray, true: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Pearson r of each column (vertex) of ``pred`` with the same column of ``true``.

    Both are (images, vertices). Columns with zero variance give NaN.
    Computed in float64, in column chunks, so memory-mapped inputs stay on disk.
    """
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.shape != true.shape or pred.ndim != 2:
        raise ValueError(f"pred {pred.shape} and true {true.shape} must be equal 2-D shapes")
    out = np.empty(pred.shape[1])
    for start in range(0, pred.shape[1], chunk):
        p = np.asarray(pred[:, start:start + chunk], np.float64)
        t = np.asarray(true[:, start:start + chunk], np.float64)
        scale_p, scale_t = (p * p).sum(0), (t * t).sum(0)
        p = p - p.mean(0)
        t = t - t.mean(0)
        ss_p, ss_t = (p * p).sum(0), (t * t).sum(0)
        # constant up to rounding (e.g. after removing a mean): no correlation to speak of
        varies = (ss_p > 1e-20 * scale_p) & (ss_t > 1e-20 * scale_t) & (ss_p > 0) & (ss_t > 0)
        denom = np.sqrt(np.where(varies, ss_p * ss_t, 1.0))
        out[start:start + chunk] = np.where(varies, (p * t).sum(0) / denom, np.nan)
    return out


def within_roi_r(pred: np.ndarray, true: np.ndarray, roi_mask: np.ndarray) -> np.ndarray:
    """Per-vertex r inside one ROI after removing each image's ROI mean from both."""
    p = _remove_row_mean(np.asarray(pred[:, roi_mask], np.float64))
    t = _remove_row_mean(np.asarray(true[:, roi_mask], np.float64))
    return pearson_r(p, t)


def _remove_row_mean(x: np.ndarray) -> np.ndarray:
    """x minus each row's mean, with rounding residue set to exactly 0."""
    out = x - x.mean(1, keepdims=True)
    out[np.abs(out) <= 1e-12 * (np.abs(x).max() + 1e-300)] = 0.0
    return out


def noise_normalised(r: np.ndarray, noise_ceiling: np.ndarray) -> np.ndarray:
    """Per-vertex ``max(r, 0)^2 / NC x 100`` capped at 100; NaN where NC <= 0 or r is NaN."""
    r = np.nan_to_num(np.asarray(r, float), nan=0.0)
    nc = np.asarray(noise_ceiling, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.minimum(np.maximum(r, 0) ** 2 / nc * 100, 100)
    return np.where(nc > 0, score, np.nan)


def challenge_score(r: np.ndarray, noise_ceiling: np.ndarray) -> float:
    """The Algonauts challenge score of one hemisphere (mean over vertices with NC > 0)."""
    return float(np.nanmean(noise_normalised(r, noise_ceiling)))


def roi_summary(values: dict[str, np.ndarray], labels: dict[str, dict[str, np.ndarray]],
                mappings: dict[str, dict[int, str]], name: str = "r") -> pd.DataFrame:
    """Mean and median of a per-vertex value per ROI, per class and over all vertices.

    ``values`` maps hemi -> per-vertex array; ``labels`` and ``mappings`` are
    a :class:`~model.subject.Subject`'s. One row per (hemi, class, roi).
    """
    rows = []
    for hemi in HEMIS:
        v = np.asarray(values[hemi], float)
        rows.append(_row(hemi, "all", "all", v))
        for roi_class in ROI_CLASSES:
            lab = labels[roi_class][hemi]
            rows.append(_row(hemi, roi_class, "all", v[lab > 0]))
            for label, roi in sorted(mappings[roi_class].items()):
                if roi != UNKNOWN and (lab == label).any():
                    rows.append(_row(hemi, roi_class, roi, v[lab == label]))
    return pd.DataFrame(rows).rename(columns={"mean": f"mean_{name}", "median": f"median_{name}"})


def _row(hemi: str, roi_class: str, roi: str, v: np.ndarray) -> dict:
    finite = v[np.isfinite(v)]
    return {"hemi": hemi, "class": roi_class, "roi": roi, "n": int(v.size),
            "mean": float(finite.mean()) if finite.size else np.nan,
            "median": float(np.median(finite)) if finite.size else np.nan}
