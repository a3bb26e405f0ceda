"""Score test predictions: challenge score, r per ROI class, within-ROI r.

References come from a virtual subject's ground truth (the noisy test
responses, the clean ones, and the noise ceilings) or from user-supplied
files ``{lh,rh}_test_fmri.npy`` and ``{lh,rh}_noise_ceiling.npy`` (fraction,
or percent as NSD distributes them; values above 1.5 are read as percent).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError
from .files import load_npy
from .metrics import challenge_score, pearson_r, within_roi_r
from .rois import EARLY_VISUAL, HEMIS, NON_STREAM_CLASSES
from .subject import Subject

log = logging.getLogger(__name__)


@dataclass
class Reference:
    """What test predictions are compared with, per hemisphere."""

    measured: dict[str, np.ndarray]  # (test images, vertices)
    noise_ceiling: dict[str, np.ndarray] | None = None  # fraction per vertex
    clean: dict[str, np.ndarray] | None = None  # noise-free responses (virtual subjects only)
    source: str = ""


def virtual_reference(subject: Subject) -> Reference:
    """The ground truth of a virtual subject (an error naming the folder for a real one)."""
    truth = subject.truth
    if truth is None:
        raise InputError(subject.root / "ground_truth",
                         "missing: this is not a virtual subject (no ground truth to compare with)")
    return Reference({h: truth.array("test_fmri", h) for h in HEMIS},
                     {h: truth.array("noise_ceiling", h) for h in HEMIS},
                     {h: truth.array("test_clean", h) for h in HEMIS},
                     source=str(truth.folder))


def file_reference(test_fmri_dir: str | Path, noise_ceiling_dir: str | Path | None = None) -> Reference:
    """User-supplied test fMRI (and optionally noise ceilings), named as in the Algonauts release."""
    measured, ceiling = {}, {} if noise_ceiling_dir else None
    for hemi in HEMIS:
        measured[hemi] = _load(Path(test_fmri_dir) / f"{hemi}_test_fmri.npy", ndim=2)
        if noise_ceiling_dir:
            path = Path(noise_ceiling_dir) / f"{hemi}_noise_ceiling.npy"
            nc = _load(path, ndim=1)
            if np.nanmax(nc) > 1.5:
                log.info("%s: values above 1.5, read as percent", path)
                nc = nc / 100
            ceiling[hemi] = nc
    return Reference(measured, ceiling, None, source=str(test_fmri_dir))


def _load(path: Path, ndim: int) -> np.ndarray:
    return load_npy(path, ndim=ndim, kinds="fiu").astype(np.float64)


def check_shapes(pred: dict[str, np.ndarray], ref: Reference, where: str) -> None:
    for hemi in HEMIS:
        if pred[hemi].shape != ref.measured[hemi].shape:
            raise InputError(where, f"{hemi} predictions have shape {pred[hemi].shape}, the reference has {ref.measured[hemi].shape}")
        if ref.noise_ceiling is not None and ref.noise_ceiling[hemi].shape != (pred[hemi].shape[1],):
            raise InputError(where, f"{hemi} noise ceiling has {ref.noise_ceiling[hemi].shape[0]} entries for {pred[hemi].shape[1]} vertices")


def vertex_groups(subject: Subject, hemi: str) -> dict[str, np.ndarray]:
    """Named vertex sets: each non-stream ROI class, early visual, category ROIs, all."""
    groups = {"all": np.ones(subject.n_vertices(hemi), bool)}
    for roi_class in NON_STREAM_CLASSES:
        groups[roi_class] = subject.labels[roi_class][hemi] > 0
    groups["early visual"] = groups["prf-visualrois"]
    groups["category ROIs"] = np.any([groups[c] for c in NON_STREAM_CLASSES if c != "prf-visualrois"], axis=0)
    return groups


def score(pred: dict[str, np.ndarray], subject: Subject, ref: Reference) -> dict:
    """Scores of test predictions (per hemisphere, vertices in the subject's order).

    Returns a dict with ``challenge_score`` (mean over hemispheres, if noise
    ceilings are known), per-hemisphere group means of r against the measured
    (``r``) and clean (``r_clean``) responses, and within-ROI r per early
    visual ROI (``within_roi_r``, against clean responses where known).
    """
    out: dict = {"reference": ref.source, "hemis": {}}
    for hemi in HEMIS:
        p = pred[hemi]
        h: dict = {}
        r = pearson_r(p, ref.measured[hemi])
        groups = vertex_groups(subject, hemi)
        h["r"] = {name: _nanmean(r[m]) for name, m in groups.items()}
        if ref.noise_ceiling is not None:
            h["challenge_score"] = challenge_score(r, ref.noise_ceiling[hemi])
        best = ref.clean[hemi] if ref.clean is not None else ref.measured[hemi]
        if ref.clean is not None:
            rc = pearson_r(p, ref.clean[hemi])
            h["r_clean"] = {name: _nanmean(rc[m]) for name, m in groups.items()}
        h["within_roi_r"] = {roi: _nanmean(within_roi_r(p, best, subject.roi_mask(roi, hemi)))
                             for roi in EARLY_VISUAL if subject.roi_mask(roi, hemi).sum() > 2}
        out["hemis"][hemi] = h
    if ref.noise_ceiling is not None:
        out["challenge_score"] = float(np.mean([out["hemis"][h]["challenge_score"] for h in HEMIS]))
    return out


def score_table(scores: dict) -> pd.DataFrame:
    """One row per (hemi, measure, group) from :func:`score`'s output."""
    rows = []
    for hemi, h in scores["hemis"].items():
        for measure in ("r", "r_clean", "within_roi_r"):
            for group, value in h.get(measure, {}).items():
                rows.append({"hemi": hemi, "measure": measure, "group": group, "value": value})
        if "challenge_score" in h:
            rows.append({"hemi": hemi, "measure": "challenge_score", "group": "all", "value": h["challenge_score"]})
    return pd.DataFrame(rows)


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, float)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")
