"""Score test predictions: challenge score, r per ROI class, within-ROI r.

Two noise-normalised scores are reported, always under their own names
(:data:`model.metrics.SCORE_NAMES`): ``challenge_score``, exactly the Algonauts
2023 challenge's (every vertex; see :func:`model.metrics.challenge_score`),
and ``score_nc_positive``, our variant over vertices with a noise ceiling
> 0. A subject's scores pool both hemispheres' vertices, and
:func:`pool_scores` pools several subjects' vertices, as the leaderboard did.

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

from ..errors import InputError
from ..files import load_npy
from ..metrics import SCORE_NAMES, challenge_vertex_scores, noise_normalised, pearson_r, within_roi_r
from ..rois import EARLY_VISUAL, HEMIS, NON_STREAM_CLASSES
from ..subject import Subject
from ..truth import require_truth

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
    truth = require_truth(subject)
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


#: the two noise-normalised scores: name -> per-vertex score of r and the noise ceiling
SCORES = {"challenge_score": challenge_vertex_scores, "score_nc_positive": noise_normalised}


def score(pred: dict[str, np.ndarray], subject: Subject, ref: Reference) -> dict:
    """Scores of test predictions (per hemisphere, vertices in the subject's order).

    Returns a dict with, where noise ceilings are known, ``challenge_score``
    (the challenge's definition) and ``score_nc_positive`` (ours: only
    vertices with a noise ceiling > 0), each the mean over both hemispheres'
    vertices pooled, with ``n_scored`` (vertices entering each mean, for
    :func:`pool_scores`) and ``score_names``; per hemisphere the same two
    scores, group means of r against the measured (``r``) and clean
    (``r_clean``) responses, and within-ROI r per early visual ROI
    (``within_roi_r``, against clean responses where known).
    """
    out: dict = {"reference": ref.source, "subj": subject.subj, "hemis": {}}
    per_vertex: dict[str, list[np.ndarray]] = {name: [] for name in SCORES}
    for hemi in HEMIS:
        p = pred[hemi]
        h: dict = {}
        r = pearson_r(p, ref.measured[hemi])
        groups = vertex_groups(subject, hemi)
        h["r"] = {name: _nanmean(r[m]) for name, m in groups.items()}
        if ref.noise_ceiling is not None:
            for name, per_vertex_score in SCORES.items():
                values = per_vertex_score(r, ref.noise_ceiling[hemi])
                per_vertex[name].append(values)
                h[name] = _nanmean(values)
        best = ref.clean[hemi] if ref.clean is not None else ref.measured[hemi]
        if ref.clean is not None:
            rc = pearson_r(p, ref.clean[hemi])
            h["r_clean"] = {name: _nanmean(rc[m]) for name, m in groups.items()}
        h["within_roi_r"] = {roi: _nanmean(within_roi_r(p, best, subject.roi_mask(roi, hemi)))
                             for roi in EARLY_VISUAL if subject.roi_mask(roi, hemi).sum() > 2}
        out["hemis"][hemi] = h
    if ref.noise_ceiling is not None:
        for name in SCORES:
            both = np.concatenate(per_vertex[name])
            out[name] = _nanmean(both)
            out.setdefault("n_scored", {})[name] = int(np.isfinite(both).sum())
        out["score_names"] = dict(SCORE_NAMES)
    return out


def pool_scores(scores: list[dict]) -> dict:
    """The scores of several subjects pooled over all their vertices, as the leaderboard pooled them.

    Each subject's mean is weighted by the number of vertices it was taken
    over (``n_scored``), which equals the mean over every vertex of every
    subject and hemisphere appended together.
    """
    out: dict = {"subjects": [s.get("subj") for s in scores]}
    for name in SCORES:
        parts = [(s[name], s["n_scored"][name]) for s in scores if name in s and s["n_scored"][name] > 0]
        if len(parts) == len(scores) and parts:
            total = sum(n for _, n in parts)
            out[name] = float(sum(v * n for v, n in parts) / total)
            out.setdefault("n_scored", {})[name] = int(total)
    if "challenge_score" in out:
        out["score_names"] = dict(SCORE_NAMES)
    return out


def score_table(scores: dict) -> pd.DataFrame:
    """One row per (hemi, measure, group) from :func:`score`'s output (both named scores as measures)."""
    rows = []
    for hemi, h in scores["hemis"].items():
        for measure in ("r", "r_clean", "within_roi_r"):
            for group, value in h.get(measure, {}).items():
                rows.append({"hemi": hemi, "measure": measure, "group": group, "value": value})
        for name in SCORES:
            if name in h:
                rows.append({"hemi": hemi, "measure": name, "group": "all", "value": h[name]})
    for name in SCORES:
        if name in scores:
            rows.append({"hemi": "both", "measure": name, "group": "all", "value": scores[name]})
    return pd.DataFrame(rows)


def score_lines(scores: dict) -> list[str]:
    """The two scores as lines of text, each with its full name (for the command line and logs)."""
    return [f"{SCORE_NAMES[name]}: {scores[name]:.2f}" for name in SCORES if name in scores]


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, float)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")
