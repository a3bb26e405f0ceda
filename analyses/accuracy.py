"""Encoding accuracy per vertex and per ROI, and the comparison of two encoders.

Test predictions (``RUN/{lh,rh}_pred_test.npy``) are scored against a
reference (:class:`model.scoring.challenge.Reference`: a virtual subject's ground
truth, or the user's test fMRI and noise ceilings); without one, the run's
per-vertex validation r is all there is. Metrics come from
:mod:`model.metrics`; this module arranges them per ROI, next to the noise
ceiling, and compares encoders with a bootstrap over test images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from model.errors import InputError
from model.metrics import challenge_vertex_scores, noise_normalised, pearson_r
from model.rois import HEMIS, NON_STREAM_CLASSES, ROI_TO_CLASS, UNKNOWN
from model.scoring import Reference, check_shapes, file_reference, virtual_reference
from model.subject import Subject


@dataclass
class VertexScores:
    """Per-vertex accuracy of one encoder, per hemisphere.

    ``r`` is against the measured test responses when a reference is known,
    else the validation r; ``r_clean`` against noise-free responses (virtual
    subjects). Where noise ceilings are known, ``challenge`` is the per-vertex
    challenge score (the challenge's definition, :func:`model.metrics.challenge_vertex_scores`:
    a vertex without a ceiling scores 100 whenever r > 0) and ``score`` our
    variant (percent of the ceiling, NaN where the ceiling is 0:
    :func:`model.metrics.noise_normalised`); tables name them
    ``challenge_score_*`` and ``score_nc_positive_*``.
    """

    name: str
    split: str  # "test" or "val"
    r: dict[str, np.ndarray]
    val_r: dict[str, np.ndarray]
    pred: dict[str, np.ndarray] = field(default_factory=dict)
    r_clean: dict[str, np.ndarray] | None = None
    score: dict[str, np.ndarray] | None = None
    challenge: dict[str, np.ndarray] | None = None


def find_reference(subject: Subject, test_fmri: str | Path | None = None,
                   noise_ceiling: str | Path | None = None) -> Reference | None:
    """The reference test predictions are scored against: the user's files, else a virtual subject's truth."""
    if test_fmri:
        return file_reference(test_fmri, noise_ceiling or None)
    if subject.truth is not None:
        return virtual_reference(subject)
    return None


def _load_run_arrays(run_dir: Path, stem: str) -> dict[str, np.ndarray]:
    from model.runs import load_run_array

    return {hemi: load_run_array(run_dir, f"{{hemi}}_{stem}.npy", hemi) for hemi in HEMIS}


def vertex_scores(run_dir: str | Path, reference: Reference | None, name: str | None = None) -> VertexScores:
    """Per-vertex r (and r against clean responses, and % of the ceiling) of one run."""
    run_dir = Path(run_dir)
    val_r = _load_run_arrays(run_dir, "val_corr")
    if reference is None:
        return VertexScores(name or run_dir.name, "val", val_r, val_r)
    pred = _load_run_arrays(run_dir, "pred_test")
    check_shapes(pred, reference, str(run_dir))
    r = {h: pearson_r(pred[h], reference.measured[h]) for h in HEMIS}
    r_clean = {h: pearson_r(pred[h], reference.clean[h]) for h in HEMIS} if reference.clean is not None else None
    ceiling = reference.noise_ceiling
    score = {h: noise_normalised(r[h], ceiling[h]) for h in HEMIS} if ceiling is not None else None
    challenge = {h: challenge_vertex_scores(r[h], ceiling[h]) for h in HEMIS} if ceiling is not None else None
    return VertexScores(name or run_dir.name, "test", r, val_r, pred, r_clean, score, challenge)


def run_scores(runs: list[str | Path], reference: Reference | None) -> list[VertexScores]:
    """:func:`vertex_scores` of several runs, named by their architecture (and folder, where those repeat)."""
    from model.runs import read_config

    archs = [read_config(run).encoder_arch for run in runs]
    names = [a if archs.count(a) == 1 else f"{a} ({Path(run).name})" for a, run in zip(archs, runs)]
    names = [n if names[:i].count(n) == 0 else f"{n} #{names[:i].count(n) + 1}" for i, n in enumerate(names)]
    return [vertex_scores(run, reference, name) for run, name in zip(runs, names)]


def roi_masks(subject: Subject, rois: list[str] | None = None) -> dict[tuple[str, str], np.ndarray]:
    """(hemi, ROI) -> vertex mask for every non-stream ROI with vertices (or the named ones), plus 'all'."""
    wanted = rois or [name for cls in NON_STREAM_CLASSES for _, name in sorted(subject.mappings[cls].items())
                      if name != UNKNOWN]
    for roi in wanted:
        if roi != "all" and roi not in ROI_TO_CLASS:
            raise InputError("rois", f"unknown ROI name {roi!r}; known: {', '.join(ROI_TO_CLASS)}")
    out = {}
    for hemi in HEMIS:
        out[(hemi, "all")] = np.ones(subject.n_vertices(hemi), bool)
        for roi in wanted:
            if roi == "all":
                continue
            mask = subject.roi_mask(roi, hemi)
            if mask.any():
                out[(hemi, roi)] = mask
    return out


def roi_table(scores: list[VertexScores], subject: Subject, reference: Reference | None,
              rois: list[str] | None = None) -> pd.DataFrame:
    """One row per (hemi, ROI): vertex count, the ceiling, and each encoder's mean r (and % of ceiling).

    Columns: ``hemi, class, roi, n_vertices``, ``r_ceiling`` (mean sqrt of
    the noise ceiling, the best r a perfect model could reach) where known,
    then per encoder ``r_<name>``, ``r_clean_<name>``, and the mean per-vertex
    scores ``challenge_score_<name>`` (the challenge's definition) and
    ``score_nc_positive_<name>`` (ours: vertices with a noise ceiling > 0).
    """
    rows = []
    for (hemi, roi), mask in roi_masks(subject, rois).items():
        row = {"hemi": hemi, "class": ROI_TO_CLASS.get(roi, "all"), "roi": roi, "n_vertices": int(mask.sum())}
        if reference is not None and reference.noise_ceiling is not None:
            row["r_ceiling"] = _mean(np.sqrt(np.clip(reference.noise_ceiling[hemi][mask], 0, None)))
        for s in scores:
            row[f"r_{s.name}"] = _mean(s.r[hemi][mask])
            if s.r_clean is not None:
                row[f"r_clean_{s.name}"] = _mean(s.r_clean[hemi][mask])
            if s.challenge is not None:
                row[f"challenge_score_{s.name}"] = _mean(s.challenge[hemi][mask])
            if s.score is not None:
                row[f"score_nc_positive_{s.name}"] = _mean(s.score[hemi][mask])
        rows.append(row)
    return pd.DataFrame(rows)


def bootstrap_difference(a: VertexScores, b: VertexScores, reference: Reference, subject: Subject,
                         rois: list[str] | None = None, n_boot: int = 200, seed: int = 0,
                         level: float = 0.95) -> pd.DataFrame:
    """Mean r of ``a`` minus that of ``b`` per (hemi, ROI), with a bootstrap interval over test images.

    Test images are resampled with replacement ``n_boot`` times; each time
    both encoders' per-vertex r are recomputed on the same images, so the
    interval reflects which images happened to be in the test set.
    """
    if not a.pred or not b.pred:
        raise InputError("ridge_run", "comparing encoders needs test predictions and a reference")
    masks = roi_masks(subject, rois)
    rng = np.random.default_rng(seed)
    n_images = next(iter(reference.measured.values())).shape[0]
    samples = {key: np.empty(n_boot) for key in masks}
    for i in range(n_boot):
        idx = rng.integers(0, n_images, n_images)
        for hemi in HEMIS:
            measured = reference.measured[hemi][idx]
            diff = pearson_r(a.pred[hemi][idx], measured) - pearson_r(b.pred[hemi][idx], measured)
            for (h, roi), mask in masks.items():
                if h == hemi:
                    samples[(h, roi)][i] = _mean(diff[mask])
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    rows = []
    for (hemi, roi), mask in masks.items():
        s = samples[(hemi, roi)]
        observed = _mean(a.r[hemi][mask] - b.r[hemi][mask])
        rows.append({"hemi": hemi, "roi": roi, "difference": observed,
                     "difference_ci_low": float(np.nanpercentile(s, lo)) if n_boot else np.nan,
                     "difference_ci_high": float(np.nanpercentile(s, hi)) if n_boot else np.nan})
    table = pd.DataFrame(rows)
    table["excludes_zero"] = (table.difference_ci_low > 0) | (table.difference_ci_high < 0)
    return table


def _mean(x: np.ndarray) -> float:
    x = np.asarray(x, float)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def read_metrics(run_dir: str | Path) -> dict:
    """A run's ``metrics.json`` (:func:`model.runs.layout.read_metrics`)."""
    from model.runs import read_metrics as read

    return read(run_dir)


def summary_row(scores: dict) -> dict:
    """One row of an accuracy table from :func:`model.scoring.challenge.score`'s output.

    ``challenge score`` (the challenge's definition) and ``score_nc_positive``
    (ours), then r per ROI class (early visual, category ROIs, all) against
    the measured and, where known, the clean responses, and the within-ROI r
    averaged over the early visual ROIs; hemispheres averaged.
    """
    hemis = scores["hemis"]
    row = {"challenge score": scores.get("challenge_score", np.nan),
           "score_nc_positive": scores.get("score_nc_positive", np.nan)}
    for group, label in (("early visual", "EV"), ("category ROIs", "category"), ("all", "all")):
        row[f"r {label}"] = float(np.mean([hemis[h]["r"][group] for h in HEMIS]))
        if all("r_clean" in hemis[h] for h in HEMIS):
            row[f"r_clean {label}"] = float(np.mean([hemis[h]["r_clean"][group] for h in HEMIS]))
    row["within-ROI r EV"] = float(np.mean([np.mean(list(hemis[h]["within_roi_r"].values())) for h in HEMIS]))
    return row


def compare_scores(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """:func:`model.scoring.challenge.score_table` outputs of several encoders side by side: (measure, group) x (encoder, hemi)."""
    both = pd.concat({name: t for name, t in tables.items()}, names=["encoder"]).reset_index(level=0)
    return both.pivot_table(index=["measure", "group"], columns=["encoder", "hemi"], values="value", sort=False)


def surface_maps(scores: list[VertexScores]) -> list[tuple[dict[str, np.ndarray], str, str, dict]]:
    """What goes on the surface: (per-hemi values, file stem, title, plot options).

    The first encoder's r, its difference from the second (if any), and its
    percent of the noise ceiling (if known).
    """
    first = scores[0]
    stem = first.name.replace(" ", "_").replace("(", "").replace(")", "")
    maps = [(first.r, f"{stem}_{first.split}_r", f"{first.name}: {first.split} r", {"signed": True})]
    for other in scores[1:]:
        diff = {h: first.r[h] - other.r[h] for h in HEMIS}
        maps.append((diff, f"{stem}_minus_{other.name.split()[0]}_r", f"{first.name} - {other.name}: {first.split} r",
                     {"signed": True}))
    if first.score is not None:
        maps.append((first.score, f"{stem}_percent_of_ceiling", f"{first.name}: % of noise ceiling (vertices with NC > 0)",
                     {"signed": False, "vmin": 0.0, "vmax": 100.0}))
    return maps
