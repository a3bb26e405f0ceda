"""Encoding metrics, written once and used everywhere (DESIGN.md section 5).

* :func:`pearson_r`: per-vertex Pearson r across images, vectorised.
* :func:`within_roi_r`: r after removing, per image, the ROI mean from both
  prediction and truth; it measures retinotopic specificity, which plain r
  flatters (DESIGN.md section 6).
* :func:`noise_ceiling`: the Algonauts noise ceiling from NSD's ncsnr and the
  number of trials behind each test image.
* :func:`challenge_score`: **the** challenge score, exactly as the Algonauts
  2023 challenge computed it (every vertex; a ceiling of 0 becomes 1e-14);
  :func:`challenge_vertex_scores` gives it per vertex.
* :func:`score_nc_positive`: our variant, the same per-vertex score averaged
  only over vertices with a positive noise ceiling (:func:`noise_normalised`
  per vertex). It is *not* comparable with the leaderboard; every output
  names it ``score_nc_positive`` so it is never taken for the challenge score.
* :func:`roi_summary`: mean and median r per ROI and ROI class, per hemisphere.
* :func:`reliability_test`: does a run predict an ROI at all? r of its
  ROI-mean prediction with the ROI-mean measurement over held-out images,
  one-sided p of r above :data:`MIN_RELIABLE_R`, BH-FDR over the ROIs.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

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


#: what the challenge's code put in place of a noise ceiling of 0 (03_test_encoding.py:90-92)
CHALLENGE_NC_FLOOR = 1e-14
#: the names every output gives the two scores (JSON keys, table measures), and how they read in text
SCORE_NAMES = {
    "challenge_score": "challenge score (Algonauts 2023 definition: every vertex, a noise ceiling of 0 counted as 1e-14)",
    "score_nc_positive": "score over vertices with a noise ceiling > 0 (ours; not the challenge's, not comparable "
                         "with the leaderboard)",
}


def noise_ceiling(ncsnr: np.ndarray, trials: dict[int, int]) -> np.ndarray:
    """The Algonauts noise ceiling (a fraction) of each vertex from its ncsnr.

    ``NC = ncsnr^2 / (ncsnr^2 + k)``, ``k = (A/3 + B/2 + C/1) / (A + B + C)``,
    where A, B, C are the numbers of test images averaged over 3, 2 and 1
    trials: ``trials`` maps a trial count to its number of images (``{3: 159}``
    when every image has three trials, giving ``k = 1/3``). As in the
    challenge's data preparation (github.com/gifale95/algonauts_2023,
    code/01_challenge_data_preparation/challenge_data_preparation.py:240-254).
    """
    if not trials or any(int(n) < 1 or int(c) < 0 for n, c in trials.items()) or sum(trials.values()) == 0:
        raise ValueError(f"trials must map trial counts >= 1 to image counts, got {trials}")
    k = sum(count / n for n, count in trials.items()) / sum(trials.values())
    snr2 = np.asarray(ncsnr, float) ** 2
    return snr2 / (snr2 + k)


def challenge_vertex_scores(r: np.ndarray, noise_ceiling: np.ndarray) -> np.ndarray:
    """Per-vertex challenge score (percent), exactly as the Algonauts 2023 challenge computed it.

    From the challenge's development kit (github.com/gifale95/algonauts_2023,
    code/02_baseline_encoding_model/03_test_encoding.py:56-103; Gifford et
    al. 2023, arXiv:2301.03198): negative r becomes 0 (:80), r is squared
    (:84), a noise ceiling of exactly 0 becomes 1e-14 (:90-92) so such a
    vertex scores 100 whenever r > 0, ``r^2 / NC x 100`` (:96), capped at 100
    (:102). A NaN r (a constant prediction) stays NaN, as in the devkit.
    """
    r = np.array(r, float)
    nc = np.array(noise_ceiling, float)
    r[r < 0] = 0
    nc[nc == 0] = CHALLENGE_NC_FLOOR
    with np.errstate(divide="ignore", invalid="ignore"):
        score = r ** 2 / nc * 100
    score[score > 100] = 100
    return score


def challenge_score(r: np.ndarray, noise_ceiling: np.ndarray) -> float:
    """The challenge score of a set of vertices: the mean of :func:`challenge_vertex_scores` over all of them.

    The leaderboard's number is this mean over every vertex of both
    hemispheres of all eight subjects appended together (the official
    CodaLab scoring output: "the mean noise-normalized encoding accuracy
    across all vertices ... from all subjects and hemispheres appended
    together"), not a mean of per-subject or per-hemisphere means: pass the
    pooled arrays (:func:`model.scoring.challenge.pool_scores` pools scored subjects).

    A loose end: the devkit leaves NaN r (constant predictions) NaN and does
    not say how the leaderboard averaged them; we leave such vertices out
    (``nanmean``). Recomputing a published result from its 16 reported
    subject-hemisphere means pools to 52.336 where the leaderboard says
    52.316, so some detail of the official mean is unknown (it is < 0.03
    points; counting NaN vertices as 0 would be one explanation).
    """
    per_vertex = challenge_vertex_scores(r, noise_ceiling)
    return float(np.nanmean(per_vertex)) if np.isfinite(per_vertex).any() else float("nan")


def noise_normalised(r: np.ndarray, noise_ceiling: np.ndarray) -> np.ndarray:
    """Per-vertex ``max(r, 0)^2 / NC x 100`` capped at 100; NaN where NC <= 0; NaN r counted as 0.

    The per-vertex score of our variant (:func:`score_nc_positive`); where the
    noise ceiling is positive it equals :func:`challenge_vertex_scores`.
    """
    r = np.nan_to_num(np.asarray(r, float), nan=0.0)
    nc = np.asarray(noise_ceiling, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.minimum(np.maximum(r, 0) ** 2 / nc * 100, 100)
    return np.where(nc > 0, score, np.nan)


def score_nc_positive(r: np.ndarray, noise_ceiling: np.ndarray) -> float:
    """Our variant of the score: mean of :func:`noise_normalised` over vertices with a noise ceiling > 0.

    Not the challenge's score (which counts every vertex, see
    :func:`challenge_score`): where many vertices have no ceiling the two
    differ by points, so the two are always named apart.
    """
    per_vertex = noise_normalised(r, noise_ceiling)
    return float(np.nanmean(per_vertex)) if np.isfinite(per_vertex).any() else float("nan")


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


#: ROI-mean r over held-out images that a run must exceed (significantly) to count as predicting the ROI
MIN_RELIABLE_R = 0.2


def reliability_test(predicted: np.ndarray, measured: np.ndarray, alpha: float = 0.05,
                     minimum_r: float = MIN_RELIABLE_R) -> pd.DataFrame:
    """Does the run predict each column (ROI) at all? One row per column.

    ``predicted`` and ``measured`` are (images, ROIs) ROI means over held-out
    images (NaN where an image has no measurement). Returns ``r_heldout``
    (Pearson r over the images with both), ``p_reliable`` (one-sided, of r
    above ``minimum_r``: Fisher's z, ``(atanh r - atanh minimum_r) sqrt(n -
    3)``; with ``minimum_r`` 0 the exact test of r > 0), ``p_reliable_fdr``
    (Benjamini-Hochberg over the columns with a p), ``reliable``
    (``p_reliable_fdr < alpha``) and ``n_heldout``. Significance alone calls
    a chance correlation of 0.12 over 300 images of pure-noise vertices
    reliable once 40 real ROIs sit beside it in the FDR; the minimum asks
    for a prediction worth the name (r 0.2: 4% of the ROI mean's variance).
    A column with fewer than four images or a constant side has NaN r and p
    and is not reliable.
    """
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    n_rois = predicted.shape[1]
    r, p, n = np.full(n_rois, np.nan), np.full(n_rois, np.nan), np.zeros(n_rois, int)
    for j in range(n_rois):
        x, y = predicted[:, j], measured[:, j]
        ok = np.isfinite(x) & np.isfinite(y)
        n[j] = int(ok.sum())
        if ok.sum() >= 4 and np.ptp(x[ok]) > 0 and np.ptp(y[ok]) > 0:
            res = stats.pearsonr(x[ok], y[ok], alternative="greater")
            r[j] = float(res.statistic)
            if minimum_r > 0:
                z = (np.arctanh(np.clip(r[j], -0.999999, 0.999999)) - np.arctanh(minimum_r)) * np.sqrt(n[j] - 3)
                p[j] = float(stats.norm.sf(z))
            else:
                p[j] = float(res.pvalue)
    p_fdr = np.full(n_rois, np.nan)
    if np.isfinite(p).any():
        p_fdr[np.isfinite(p)] = stats.false_discovery_control(p[np.isfinite(p)], method="bh")
    return pd.DataFrame({"r_heldout": r, "p_reliable": p, "p_reliable_fdr": p_fdr,
                         "reliable": np.nan_to_num(p_fdr, nan=1.0) < alpha, "n_heldout": n})
