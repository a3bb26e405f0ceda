"""Ensembles of runs: per-vertex weighted sums of trained runs' predictions, readable as a run.

``tbe ensemble --runs RUN... --out ENS`` combines complete runs of one
subject that share one validation split (and were trained on the same
data). The original project's published numbers came from such ensembles:
runs over backbone layers (``--enc-output-layer 1,3,5,7``) and seeds,
combined per vertex by their validation r.

Weights
-------
Per vertex ``v``, with ``r_m[v]`` member ``m``'s validation r
(:data:`WEIGHTINGS`):

* ``softmax``: ``w_m[v] = softmax_m(temperature * r_m[v])``. Temperature 0
  gives equal weights (``mean``); a very large one puts all weight on the
  best member (``best``). The original used a temperature of 40.
* ``best``: all weight on the member with the highest validation r (ties: the
  one listed first).
* ``mean``: equal weights.

Weights sum to 1 at every vertex. (The original's wrapper averaged the runs
of each layer, softmaxed across layers, and then gave every run of a layer
that layer's weight, so its weights summed to the number of runs per layer:
r was unaffected, the scale of the predictions was not.) A member whose r is
NaN at a vertex gets no weight there; a vertex where every member's r is NaN
(a vertex without data) gets equal weights.

Validation r: cross-fitted
--------------------------
Weights chosen on the validation images and scored on the same images
flatter the ensemble (with ``best``, the maximum of noisy r is biased up).
So the ensemble's validation r (``val_r`` in metrics.json, and
``{hemi}_val_corr.npy``) is **cross-fitted**: the validation images are split
into two halves (seeded, :func:`validation_halves`); weights chosen from the
members' r on one half combine the predictions of the other half, where r is
measured; both ways, the two r averaged per vertex. The in-sample r (weights
chosen on all validation images and scored on them) is reported too, named
so (``val_r_in_sample``, ``{hemi}_val_corr_in_sample.npy``); the test
predictions use those all-image weights (``weights.npy``). Each member's own
validation r also chose its best epoch on these images, as every run's does.

The ensemble directory
----------------------
```
ENS/ensemble.json                members (absolute paths), weighting, temperature, subject, data fingerprint
ENS/weights.npy                  (members, vertices) per-vertex member weights, lh vertices then rh
ENS/val_indices.npy              the members' shared validation split
ENS/{lh,rh}_val_corr.npy         cross-fitted validation r per vertex
ENS/{lh,rh}_val_corr_in_sample.npy
ENS/{lh,rh}_pred_test.npy        the weighted sum of the members' test predictions (float32)
ENS/{lh,rh}_best_member.npy      per vertex, the member (index in ensemble.json) with the highest validation r
ENS/{lh,rh}_best_layer.npy       its --enc-output-layer, when members differ in it: the preferred backbone layer
ENS/metrics.json                 written last, as for a run; manifest.json
```
Everything that reads a run reads it (:func:`model.run.read_config`,
:func:`model.run.open_run`).

Features: every member from its own backbone
---------------------------------------------
Members with one backbone configuration form a *feature group*; the
ensemble's encoder input is the groups' tokens side by side along the
channels ``(B, T, sum C_g)`` and each member reads its group's slice
(:class:`EnsembleEncoder`). A seed ensemble therefore reads one feature
cache entry, a layer ensemble one per layer, and every member still sees
exactly the features it was trained on. Many images are read lazily, batch
by batch (:class:`StackedFeatures`). Maps (attention, attributions) run the
images through every group's backbone (:class:`StackedBackbone`), which needs
their tokens on one grid (the same patch grid of the same image size, as in
a layer ensemble of one ViT); otherwise they are refused, naming the member.

Maps of an ensemble
-------------------
Decoder attention: per member, the last decoder layer's cross-attention
averaged over heads (members' heads do not correspond); the ensemble's map
of the ROI query ``q`` is ``sum_m W_m[q] A_m[q]``, where ``W_m[q]`` is the
mean of member ``m``'s per-vertex weights over ``q``'s vertices (these sum to
1 over members). It is stored as one layer and one head, and needs members
with decoder attention and the same ROI queries. Attributions explain the
ensemble's prediction itself (the weighted sum, through every member);
token-level ones attribute to the stacked tokens, summed over all channels.
The sanity cascade randomises the same part in every member at each step.
"""
from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.special import softmax
from torch import nn

from .errors import InputError, OptionError, check_fields, positive_int
from .files import atomic_directory, load_npy, read_rows, save_npy, usable_directory, write_json
from .interface import Capabilities
from .metrics import pearson_r, roi_summary
from .rois import HEMIS
from .run import (CONFIG, ENSEMBLE, METRICS, PRED_TEST, VAL_CORR, VAL_INDICES, VAL_PRED, Run, RunConfig, check_trained_on,
                  is_ensemble, open_run, read_config, read_metrics, read_validated_json)
from .subject import Subject, load_subject

log = logging.getLogger(__name__)

ENSEMBLE_FORMAT = 1
ENSEMBLE_WEIGHTS = "weights.npy"
VAL_CORR_IN_SAMPLE = "{hemi}_val_corr_in_sample.npy"
BEST_MEMBER = "{hemi}_best_member.npy"
BEST_LAYER = "{hemi}_best_layer.npy"
DEFAULT_TEMPERATURE = 40.0
#: seed of the split of the validation images into the two halves of the cross-fitting
HALVES_SEED = 0
#: vertices processed at once (bounds memory: members x validation images x this many values)
VERTEX_CHUNK = 4096
#: what metrics.json says about its two validation r
VAL_R_NOTE = ("val_r is cross-fitted: member weights chosen on one half of the validation images, r measured on the "
              "other half, both ways, averaged per vertex. val_r_in_sample chooses the weights on the very images it "
              "scores them on, which flatters the ensemble.")


# --------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------

def _softmax(r: np.ndarray, temperature: float) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        return softmax(np.where(np.isfinite(r), temperature * np.nan_to_num(r), -np.inf), axis=0)


def _best(r: np.ndarray, temperature: float) -> np.ndarray:
    w = np.zeros_like(r)
    w[np.argmax(np.where(np.isfinite(r), r, -np.inf), axis=0), np.arange(r.shape[1])] = 1.0
    return w


def _mean(r: np.ndarray, temperature: float) -> np.ndarray:
    finite = np.isfinite(r)
    return finite / np.maximum(finite.sum(0), 1)


@dataclass(frozen=True)
class Weighting:
    """How per-vertex member weights follow from the members' validation r ``(members, vertices)``."""

    weights: Callable[[np.ndarray, float], np.ndarray]
    description: str


WEIGHTINGS: dict[str, Weighting] = {
    "softmax": Weighting(_softmax, "softmax(temperature x validation r) over members, per vertex"),
    "best": Weighting(_best, "the member with the highest validation r, per vertex"),
    "mean": Weighting(_mean, "equal weights (over the members with a validation r at the vertex)"),
}


def check_weighting(weighting: str, temperature: float) -> None:
    """One clear error for an unknown weighting or a temperature that is not a number >= 0."""
    if weighting not in WEIGHTINGS:
        raise OptionError("weighting", f"unknown weighting {weighting!r}; choose from {', '.join(WEIGHTINGS)}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise OptionError("temperature", f"must be a number >= 0, got {temperature}")


def member_weights(r: np.ndarray, weighting: str = "softmax", temperature: float = DEFAULT_TEMPERATURE) -> np.ndarray:
    """Per-vertex member weights ``(members, vertices)`` from validation r ``(members, vertices)``; they sum to 1.

    NaN r gets no weight; a vertex where every member's r is NaN gets equal weights.
    """
    check_weighting(weighting, temperature)
    r = np.asarray(r, np.float64)
    w = WEIGHTINGS[weighting].weights(r, float(temperature))
    w[:, ~np.isfinite(r).any(0)] = 1.0 / len(r)
    return w


def combine(preds: Sequence[np.ndarray], weights: np.ndarray, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
    """``sum_m weights[m] * preds[m][rows]`` in float64: (rows, vertices)."""
    out = np.zeros(np.asarray(preds[0][rows]).shape, np.float64)
    for p, w in zip(preds, weights):
        out += np.asarray(p[rows], np.float64) * w
    return out


def validation_halves(n_val: int, seed: int = HALVES_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Positions (within the validation split) of the two halves of the cross-fitting, seeded and sorted."""
    if n_val < 4:
        raise OptionError("runs", f"cross-fitting needs at least 4 validation images (2 per half); the runs have {n_val}")
    order = np.random.default_rng(seed).permutation(n_val)
    return np.sort(order[: n_val // 2]), np.sort(order[n_val // 2:])


@dataclass
class ValidationResult:
    """Per-vertex results on the validation images of one hemisphere."""

    weights: np.ndarray  # (members, vertices), chosen on all validation images
    members_r: np.ndarray  # (members, vertices): each member's r on all validation images
    in_sample: np.ndarray  # ensemble r with ``weights``, on the images they were chosen on
    cross_fitted: np.ndarray  # ensemble r with weights chosen on the other half, averaged over both halves


def cross_fit(preds: Sequence[np.ndarray], true: np.ndarray, weighting: str = "softmax",
              temperature: float = DEFAULT_TEMPERATURE, halves: tuple[np.ndarray, np.ndarray] | None = None,
              chunk: int = VERTEX_CHUNK) -> ValidationResult:
    """Weights, in-sample and cross-fitted r of an ensemble on validation images.

    ``preds`` are the members' validation predictions (images x vertices,
    memory-mapped is fine) and ``true`` the measured responses; vertices are
    processed ``chunk`` at a time. The cross-fitted r of a vertex is the mean
    (NaN-aware) of ``r(half B | weights from half A)`` and ``r(half A | weights
    from half B)``: no image ever scores weights it helped choose.
    """
    n_images, n_vertices = np.asarray(true).shape
    halves = validation_halves(n_images) if halves is None else halves
    m = len(preds)
    result = ValidationResult(np.empty((m, n_vertices)), np.empty((m, n_vertices)), np.empty(n_vertices),
                              np.empty(n_vertices))
    for start in range(0, n_vertices, chunk):
        cols = slice(start, start + chunk)
        p = [np.asarray(x[:, cols], np.float64) for x in preds]
        t = np.asarray(true[:, cols], np.float64)
        r_all = np.stack([pearson_r(x, t) for x in p])
        w = member_weights(r_all, weighting, temperature)
        result.members_r[:, cols], result.weights[:, cols] = r_all, w
        result.in_sample[cols] = pearson_r(combine(p, w), t)
        folds = []
        for fit, held in (halves, halves[::-1]):
            w_fit = member_weights(np.stack([pearson_r(x[fit], t[fit]) for x in p]), weighting, temperature)
            folds.append(pearson_r(combine(p, w_fit, held), t[held]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a vertex NaN in both halves stays NaN, as meant
            result.cross_fitted[cols] = np.nanmean(np.stack(folds), axis=0)
    return result


# --------------------------------------------------------------------------
# The ensemble's configuration (ensemble.json)
# --------------------------------------------------------------------------

@dataclass
class EnsembleConfig:
    """What ``ensemble.json`` holds; it has the fields every reader of a run's configuration uses."""

    members: list[str]
    weighting: str
    temperature: float
    data_dir: str
    subj: int
    n_vertices: dict[str, int]
    data_fingerprint: dict[str, str] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    halves_seed: int = HALVES_SEED
    encoder_arch: str = "ensemble"
    format: int = ENSEMBLE_FORMAT

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """:class:`~model.errors.OptionError` naming the first bad field."""
        check_fields("", self, (
            ("members", lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(x, str) for x in v),
             "must list at least one run directory"),
            ("weighting", lambda v: v in WEIGHTINGS, f"must be one of {', '.join(WEIGHTINGS)}"),
            ("temperature", lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v >= 0, "must be a number >= 0"),
            ("subj", positive_int, "must be a subject number >= 1"),
            ("encoder_arch", lambda v: v == "ensemble", "must be 'ensemble'"),
            ("format", lambda v: v == ENSEMBLE_FORMAT, f"must be {ENSEMBLE_FORMAT} (a newer version wrote it?)"),
        ))


def read_ensemble_config(ens: str | Path) -> EnsembleConfig:
    """An ensemble's ``ensemble.json``, parsed and validated; any problem names the file."""
    return read_validated_json(Path(ens) / ENSEMBLE, lambda d: EnsembleConfig(**d), "ensemble configuration",
                               "not an ensemble directory")


# --------------------------------------------------------------------------
# Members
# --------------------------------------------------------------------------

@dataclass
class Member:
    """A complete run listed in ``--runs``."""

    path: Path
    config: RunConfig
    label: str


def _labels(paths: list[Path]) -> list[str]:
    """Short names: the folder name, with its parent where names repeat."""
    names = [p.name for p in paths]
    return [n if names.count(n) == 1 else f"{p.parent.name}/{n}" for n, p in zip(names, paths)]


def check_members(runs: Sequence[str | Path], data_dir: str | Path | None = None
                  ) -> tuple[Subject, list[Member], np.ndarray]:
    """Complete runs of one subject, trained on the same data with one validation split; else one error naming the run.

    Returns the subject (from ``data_dir``, default the first run's), the
    members and their shared validation indices.
    """
    if not runs:
        raise OptionError("runs", "list at least one run directory")
    paths = [Path(r).expanduser().resolve() for r in runs]
    seen: set[Path] = set()
    for path in paths:
        if path in seen:
            raise InputError(path, "listed twice")
        seen.add(path)
        if is_ensemble(path):
            raise InputError(path, "is an ensemble; list its member runs instead (ensembles are not nested)")
        if not path.is_dir():
            raise InputError(path, "no such run directory")
    members = []
    for path, label in zip(paths, _labels(paths)):
        config = read_config(path)
        read_metrics(path)
        members.append(Member(path, config, label))
    first = members[0]
    for m in members[1:]:
        if m.config.subj != first.config.subj:
            raise InputError(m.path, f"is a run of subject {m.config.subj}, {first.path} one of subject {first.config.subj}; "
                                     "members of an ensemble must be runs of one subject")
        if dict(m.config.n_vertices) != dict(first.config.n_vertices):
            raise InputError(m.path / CONFIG, f"was trained on {m.config.n_vertices} vertices, {first.path} on "
                                              f"{first.config.n_vertices}; members must predict the same vertices")
        a, b = m.config.data_fingerprint, first.config.data_fingerprint
        if a and b and a != b:
            part = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))[0]
            raise InputError(m.path / CONFIG, f"was trained on other data than {first.path} ({part} differs); "
                                              "members must share the training data")
    subject = load_subject(data_dir if data_dir is not None else first.config.data_dir, first.config.subj)
    val_idx = None
    for m in members:
        check_trained_on(m.path, m.config, subject)
        idx = load_npy(m.path / VAL_INDICES, ndim=1, kinds="iu", what="validation indices")
        if val_idx is None:
            val_idx = idx
        elif idx.shape != val_idx.shape or not np.array_equal(idx, val_idx):
            raise InputError(m.path / VAL_INDICES, f"holds other validation images than {first.path}'s (another split: "
                                                   "`train.split_seed` or `train.val_fraction`); members must share one validation split")
    return subject, members, np.asarray(val_idx)


def _member_arrays(members: list[Member], template: str, hemi: str, n_rows: int, n_vertices: int, what: str
                   ) -> list[np.ndarray]:
    out = []
    for m in members:
        path = m.path / template.format(hemi=hemi)
        if template == VAL_PRED and not path.is_file():
            raise InputError(path, "missing validation predictions (runs write them since ensembles exist); "
                                   "train the run again to use it in an ensemble")
        arr = load_npy(path, ndim=2, kinds="f", shape=(n_rows, n_vertices), mmap=True, what=what)
        out.append(arr)
    return out


# --------------------------------------------------------------------------
# Making an ensemble
# --------------------------------------------------------------------------

def make_ensemble(runs: Sequence[str | Path], out: str | Path, weighting: str = "softmax",
                  temperature: float = DEFAULT_TEMPERATURE, data_dir: str | Path | None = None) -> Path:
    """Combine complete runs into the ensemble directory ``out`` (written atomically; see the module docstring).

    Every check (weighting, members, data, arrays) comes before anything is
    written; ``out`` must not exist or be empty.
    """
    from .manifest import MANIFEST
    from .train import Targets, validation_means

    check_weighting(weighting, temperature)
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(out, "exists and is not empty; choose another `out`")
    usable_directory(out.parent, where=out)
    subject, members, val_idx = check_members(runs, data_dir)
    targets = Targets.of_subject(subject)
    true = targets.rows(val_idx)
    halves = validation_halves(len(val_idx))
    bounds = [slice(0, subject.n_vertices("lh")), slice(subject.n_vertices("lh"), true.shape[1])]
    results, test = {}, {}
    for hemi, cols in zip(HEMIS, bounds):
        v = subject.n_vertices(hemi)
        val_preds = _member_arrays(members, VAL_PRED, hemi, len(val_idx), v, "validation predictions")
        test_preds = _member_arrays(members, PRED_TEST, hemi, subject.n_test, v, "test predictions")
        results[hemi] = cross_fit(val_preds, true[:, cols], weighting, temperature, halves)
        test[hemi] = combine(test_preds, results[hemi].weights).astype(np.float32)
        if not np.isfinite(test[hemi]).all():
            bad = next(m for m, p in zip(members, test_preds) if not np.isfinite(np.asarray(p)).all())
            raise InputError(bad.path / PRED_TEST.format(hemi=hemi), "holds NaN or infinite predictions")
    weights = np.concatenate([results[h].weights for h in HEMIS], axis=1)
    cross = np.concatenate([results[h].cross_fitted for h in HEMIS])
    in_sample = np.concatenate([results[h].in_sample for h in HEMIS])
    members_r = np.concatenate([results[h].members_r for h in HEMIS], axis=1)
    for r in (cross, in_sample, members_r):
        r[..., ~targets.valid] = np.nan
    best = np.argmax(np.where(np.isfinite(members_r), members_r, -np.inf), axis=0)
    layers = [m.config.backbone.layer for m in members]
    config = EnsembleConfig([str(m.path) for m in members], weighting, float(temperature), str(subject.root.resolve().parent),
                            subject.subj, {h: subject.n_vertices(h) for h in HEMIS}, subject.fingerprint(),
                            [m.label for m in members])
    member_means = [validation_means(r, targets.valid, bounds) for r in members_r]
    cross_means = validation_means(cross, targets.valid, bounds)
    best_member = int(np.argmax([mm["mean"] for mm in member_means]))
    metrics = {
        "kind": "ensemble", "encoder_arch": "ensemble", "readout_res": _common(m.config.readout_res for m in members),
        "backbone": f"ensemble of {len(members)} runs ({weighting}"
                    + (f", temperature {temperature:g}" if weighting == "softmax" else "") + "): "
                    + "; ".join(m.label for m in members),
        "weighting": weighting, "temperature": float(temperature), "n_members": len(members),
        "n_train": int(subject.n_train - len(val_idx)), "n_val": int(len(val_idx)), "n_test": int(subject.n_test),
        "best_epoch": None, "history": [],
        "val_r": cross_means, "val_r_cross_fitted": cross_means,
        "val_r_in_sample": validation_means(in_sample, targets.valid, bounds),
        "members": [{"path": str(m.path), "label": m.label, "val_r": mm} for m, mm in zip(members, member_means)],
        "best_member": members[best_member].label, "best_member_val_r": member_means[best_member]["mean"],
        "val_r_gain_over_best_member": cross_means["mean"] - member_means[best_member]["mean"],
        "halves": {"seed": HALVES_SEED, "sizes": [len(halves[0]), len(halves[1])]},
        "note": VAL_R_NOTE,
        "val_roi_summary": roi_summary({h: cross[s] for h, s in zip(HEMIS, bounds)}, subject.labels,
                                       subject.mappings, name="val_r").to_dict(orient="records"),
    }
    with atomic_directory(out, overwrite=out.exists()) as tmp:
        write_json(tmp / ENSEMBLE, config.to_dict())
        save_npy(tmp / ENSEMBLE_WEIGHTS, weights)
        save_npy(tmp / VAL_INDICES, val_idx)
        for hemi, s in zip(HEMIS, bounds):
            save_npy(tmp / VAL_CORR.format(hemi=hemi), cross[s].astype(np.float32))
            save_npy(tmp / VAL_CORR_IN_SAMPLE.format(hemi=hemi), in_sample[s].astype(np.float32))
            save_npy(tmp / PRED_TEST.format(hemi=hemi), test[hemi])
            save_npy(tmp / BEST_MEMBER.format(hemi=hemi), best[s].astype(np.int16))
            if len(set(layers)) > 1:
                save_npy(tmp / BEST_LAYER.format(hemi=hemi), np.asarray(layers)[best[s]].astype(np.int16))
        write_json(tmp / MANIFEST, ensemble_manifest(config, members))
        write_json(tmp / METRICS, metrics)
    log.info("ensemble of %d runs: cross-fitted validation r %.4f (in-sample %.4f; best member %s %.4f)",
             len(members), cross_means["mean"], metrics["val_r_in_sample"]["mean"], metrics["best_member"],
             metrics["best_member_val_r"])
    return out


def _common(values) -> str:
    values = set(values)
    return values.pop() if len(values) == 1 else "mixed"


def ensemble_manifest(config: EnsembleConfig, members: list[Member]) -> dict:
    """What made the ensemble: this process's environment, the data, and each member's own manifest's digest."""
    from .files import digest_json
    from .manifest import MANIFEST, data_fingerprint, software_manifest

    manifest = software_manifest("ensemble")
    listed = []
    for m in members:
        entry: dict = {"path": str(m.path), "manifest": None}
        try:
            own = json.loads((m.path / MANIFEST).read_text())
            entry.update({"manifest": MANIFEST, "manifest_digest": digest_json(own), "seeds": own.get("seeds"),
                          "backbone": own.get("backbone"), "feature_cache": own.get("feature_cache")})
        except (OSError, ValueError):
            entry["note"] = "no readable manifest.json"
        listed.append(entry)
    manifest.update({"data": data_fingerprint(config.data_dir, config.subj), "members": listed,
                     "ensemble": {"weighting": config.weighting, "temperature": config.temperature}})
    return manifest


# --------------------------------------------------------------------------
# The ensemble as an encoder
# --------------------------------------------------------------------------

class EnsembleEncoder(nn.Module):
    """Member encoders, each reading its slice of the stacked tokens, combined per vertex.

    ``forward(features (B, T, C)) -> {'pred': sum_m weights[m] * pred_m}``;
    with ``return_attention`` also ``'attention'`` (B, 1 layer, 1 head, Q, T):
    the members' head-averaged last-layer cross-attention, weighted per ROI
    query by the mean of its vertices' member weights (see the module
    docstring). ``channels[m]`` is member ``m``'s (start, stop) among the
    stacked token channels; ``memberships`` (vertices x queries) are the
    members' shared ROI queries, or None when they differ (no attention then).
    """

    def __init__(self, members: Sequence[nn.Module], weights: np.ndarray | torch.Tensor,
                 channels: Sequence[tuple[int, int]], memberships: np.ndarray | None = None):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.channels = [tuple(int(c) for c in ch) for ch in channels]
        w = torch.as_tensor(np.asarray(weights, np.float32) if not torch.is_tensor(weights) else weights, dtype=torch.float32)
        if w.shape[0] != len(self.members):
            raise ValueError(f"{w.shape[0]} rows of weights for {len(self.members)} members")
        self.register_buffer("weights", w)
        width = max(hi for _, hi in self.channels)
        mean = torch.zeros(width)
        for member, (lo, hi) in zip(self.members, self.channels):
            mean[lo:hi] = member.feature_mean.detach().float().cpu()
        self.register_buffer("feature_mean", mean)  # zero after each member's standardisation: the token baseline
        attention = memberships is not None and all(m.capabilities.decoder_attention for m in self.members)
        self._capabilities = Capabilities(decoder_attention=attention,
                                          restrict_vertices=all(m.capabilities.restrict_vertices for m in self.members))
        if memberships is not None:
            member_of = torch.as_tensor(np.asarray(memberships, np.float32))  # (V, Q)
            counts = member_of.sum(0)
            per_query = (w @ member_of) / counts.clamp_min(1)
            per_query[:, counts == 0] = 1.0 / len(self.members)
            self.register_buffer("query_weights", per_query)  # (members, queries)

    @property
    def capabilities(self) -> Capabilities:
        """Decoder attention when every member has it on shared queries; restriction when every member can."""
        return self._capabilities

    def forward(self, features: torch.Tensor, return_attention: bool = False) -> dict[str, torch.Tensor]:
        if return_attention and not self.capabilities.decoder_attention:
            raise TypeError("this ensemble has no decoder attention (members without it, or with other ROI queries)")
        pred, attention = None, None
        for m, (member, (lo, hi)) in enumerate(zip(self.members, self.channels)):
            x = features[..., lo:hi]
            out = member(x, return_attention=True) if return_attention else member(x)
            part = out["pred"].float() * self.weights[m]
            pred = part if pred is None else pred + part
            if return_attention:
                a = out["attention"][:, -1].float().mean(1) * self.query_weights[m][None, :, None]  # (B, Q, T)
                attention = a if attention is None else attention + a
        result = {"pred": pred}
        if return_attention:
            result["attention"] = attention[:, None, None]
        return result

    def randomisation_steps(self) -> list[tuple[str, list[nn.Module]]]:
        """Each step randomises the same part in every member: members of one architecture (the same parts)."""
        steps = [m.randomisation_steps() for m in self.members]
        names = [part for part, _ in steps[0]]
        if any([part for part, _ in s] != names for s in steps):
            raise OptionError("run", "the sanity cascade of an ensemble needs members of one architecture "
                                     "(the same decoder parts in each)")
        return [(part, [module for s in steps for module in s[i][1]]) for i, part in enumerate(names)]

    def restricted(self, vertices: np.ndarray) -> "EnsembleEncoder":
        """A copy predicting only ``vertices``, with identical values (``capabilities.restrict_vertices``)."""
        if not self.capabilities.restrict_vertices:
            raise TypeError("a member of this ensemble cannot be restricted to vertices")
        return EnsembleEncoder([m.restricted(vertices) for m in self.members], self.weights[:, torch.as_tensor(vertices)],
                               self.channels)


class StackedFeatures:
    """Token features of several feature groups side by side along the channels, read by rows on demand.

    Indexing by rows (a slice or an integer array) reads those rows of every
    part (:func:`~model.files.read_rows`) and concatenates them, so a large
    set is never held whole; ``np.asarray`` gives all of it.
    """

    def __init__(self, parts: Sequence[np.ndarray]):
        self.parts = list(parts)
        n, tokens = self.parts[0].shape[:2]
        for p in self.parts[1:]:
            if p.shape[:2] != (n, tokens):
                raise ValueError(f"feature groups disagree: {p.shape[:2]} and {(n, tokens)} (images, tokens)")
        self.shape = (n, tokens, sum(int(p.shape[2]) for p in self.parts))
        self.dtype = np.result_type(*[p.dtype for p in self.parts])
        self.ndim = 3

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, (int, np.integer)):
            return self[np.array([idx])][0]
        return np.concatenate([read_rows(p, idx).astype(self.dtype, copy=False) for p in self.parts], axis=-1)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[slice(None)]
        return out if dtype is None else out.astype(dtype, copy=False)


class StackedBackbone(nn.Module):
    """Several backbones whose tokens share one grid: images -> their tokens side by side (B, T, sum C).

    Each backbone normalises and pads the [0, 1] image itself, so
    :meth:`preprocess` passes images through. Grid, sizes, patch and the
    mean colour are the first backbone's; its prefix tokens and
    self-attention (the backbone's own attention maps) the deepest one's.
    """

    def __init__(self, backbones: Sequence[nn.Module], owners: Sequence[str | Path]):
        super().__init__()
        first = backbones[0]
        for b, owner in zip(backbones[1:], owners[1:]):
            if (b.image_side, b.input_size, tuple(b.grid), b.patch) != (first.image_side, first.input_size,
                                                                            tuple(first.grid), first.patch):
                raise InputError(owner, f"its backbone gives {b.grid[0]}x{b.grid[1]} tokens of {b.input_size} px inputs, "
                                        f"{owners[0]}'s {first.grid[0]}x{first.grid[1]} of {first.input_size} px: maps of an "
                                        "ensemble need members whose tokens lie on one grid (its predictions, scores "
                                        "and submissions do not)")
        self.backbones = nn.ModuleList(backbones)
        self._deepest = int(np.argmax([b.block_index for b in backbones]))
        deepest = backbones[self._deepest]
        self.config, self.depth, self.block_index = first.config, deepest.depth, deepest.block_index
        self.image_side, self.input_size, self.patch, self.grid = first.image_side, first.input_size, first.patch, first.grid
        self.dim = sum(b.dim for b in backbones)
        self.prefix_tokens, self.has_class_token = deepest.prefix_tokens, deepest.has_class_token
        self.self_attention = deepest.self_attention
        self.register_buffer("mean", first.mean.clone(), persistent=False)
        self.register_buffer("std", first.std.clone(), persistent=False)

    def record_attention(self, record):
        """The deepest backbone's self-attention (:meth:`~model.interface.TokenBackbone.record_attention`)."""
        return self.backbones[self._deepest].record_attention(record)

    def train(self, mode: bool = True) -> "StackedBackbone":
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(b.preprocess(images)) for b in self.backbones], dim=-1)

    def describe(self) -> str:
        return f"{len(self.backbones)} feature sets side by side: " + "; ".join(b.describe() for b in self.backbones)


# --------------------------------------------------------------------------
# Opening an ensemble as a run
# --------------------------------------------------------------------------

@dataclass
class EnsembleRun(Run):
    """An opened ensemble: a :class:`~model.run.Run` whose model is an :class:`EnsembleEncoder`.

    ``members`` are the opened member runs; ``groups[g]`` the index of the
    first member of feature group ``g`` (whose backbone and features the
    group shares). ``config`` is the :class:`EnsembleConfig`.
    """

    members: list[Run] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)

    @cached_property
    def val_indices(self) -> np.ndarray:
        """The members' shared validation split (checked when opened; an ensemble held in memory has no directory)."""
        return self.members[0].val_indices

    def backbone(self, device: str = "cpu"):
        """The members' backbones, one per feature group (stacked when several; see :class:`StackedBackbone`)."""
        reps = [self.members[g] for g in self.groups]
        if len(reps) == 1:
            return reps[0].shared_backbone
        return StackedBackbone([r.shared_backbone for r in reps], [str(r.path) for r in reps])

    def features(self, paths, cache_dir=None, device: str = "auto", rows=None, desc: str = "features"):
        """Every feature group's tokens of these images, side by side (lazily, :class:`StackedFeatures`)."""
        parts = [self.members[g].features(paths, cache_dir, device, rows, f"{desc} ({self.members[g].path.name})")
                 for g in self.groups]
        return parts[0] if len(parts) == 1 else StackedFeatures(parts)


def feature_groups(configs: Sequence[RunConfig]) -> tuple[list[int], list[tuple[int, int]]]:
    """The first member of each distinct backbone configuration, and each member's channels among the stacked tokens."""
    keys, firsts, starts, channels = [], [], [], []
    width = 0
    for i, c in enumerate(configs):
        key = json.dumps({"backbone": c.backbone.to_dict(), "key": c.feature_key}, sort_keys=True)
        if key not in keys:
            keys.append(key), firsts.append(i), starts.append(width)
            width += int(c.feature_dim)
        g = keys.index(key)
        channels.append((starts[g], starts[g] + int(c.feature_dim)))
    return firsts, channels


def open_ensemble(ens: str | Path, data_dir: str | Path | None = None, device: str | torch.device = "cpu") -> EnsembleRun:
    """Open an ensemble directory and every member (each checked as :func:`~model.run.open_run` checks a run), on ``device``."""
    ens = Path(ens)
    config = read_ensemble_config(ens)
    if not (ens / METRICS).is_file():
        raise InputError(ens, "incomplete ensemble (no metrics.json); make it again with tbe ensemble")
    where = data_dir if data_dir is not None else config.data_dir
    members = []
    for path in config.members:
        if not Path(path).is_dir():
            raise InputError(path, f"missing: a member of the ensemble {ens} (ensemble.json lists it)")
        members.append(open_run(path, where, device))
    subject = members[0].subject
    for m in members[1:]:
        if m.config.subj != config.subj or m.val_indices.shape != members[0].val_indices.shape \
                or not np.array_equal(m.val_indices, members[0].val_indices):
            raise InputError(m.path, f"no longer fits the ensemble {ens} (other subject or validation split)")
    check_trained_on(ens, config, subject)
    n_total = sum(subject.n_vertices(h) for h in HEMIS)
    weights = load_npy(ens / ENSEMBLE_WEIGHTS, ndim=2, kinds="f", shape=(len(members), n_total), what="member weights")
    shared = all(m.queries.names == members[0].queries.names for m in members)
    queries = members[0].queries if shared else _roi_queries(subject)
    firsts, channels = feature_groups([m.config for m in members])
    model = EnsembleEncoder([m.model for m in members], weights, channels,
                            members[0].queries.memberships if shared else None).to(members[0].device).eval()
    return EnsembleRun(ens, config, subject, queries, model, members[0].device, members=members, groups=firsts)


def open_runs(runs: str | Path | Sequence[str | Path], data_dir: str | Path | None = None,
              device: str | torch.device = "cpu") -> Run:
    """One run (or ensemble) as :func:`~model.run.open_run` opens it; several runs as one equal-weight ensemble.

    Several runs are opened as an :class:`EnsembleRun` held in memory
    (nothing is written): every vertex weighs each member ``1/M``, so its
    predictions are the members' mean and the attention map of each ROI
    query is the mean of the members' head-averaged last-layer maps (see
    :class:`EnsembleEncoder`). This is what ``tbe interpret --run A B``
    and the other attention tools open. The runs must be ones
    :func:`check_members` accepts (one subject and its data, one validation
    split, none an ensemble), with the same ROI queries and one token grid
    (else their maps cannot be averaged); otherwise one error names the run.
    """
    if isinstance(runs, (str, Path)) or len(runs) == 1:
        return open_run(runs if isinstance(runs, (str, Path)) else runs[0], data_dir, device)
    subject, listed, _ = check_members(runs, data_dir)
    first = listed[0]
    for m in listed[1:]:
        if tuple(m.config.grid) != tuple(first.config.grid):
            raise InputError(m.path, f"gives a {m.config.grid[0]}x{m.config.grid[1]} token grid, {first.path} a "
                                     f"{first.config.grid[0]}x{first.config.grid[1]} one: attention maps on other grids "
                                     "cannot be averaged")
        if list(m.config.queries) != list(first.config.queries):
            raise InputError(m.path, f"has other ROI queries ({m.config.readout_res}) than {first.path} "
                                     f"({first.config.readout_res}): their attention maps cannot be averaged")
    members = [open_run(m.path, subject.root.parent, device) for m in listed]
    n_total = sum(subject.n_vertices(h) for h in HEMIS)
    weights = np.full((len(members), n_total), 1.0 / len(members))
    firsts, channels = feature_groups([m.config for m in members])
    model = EnsembleEncoder([m.model for m in members], weights, channels,
                            members[0].queries.memberships).to(members[0].device).eval()
    config = EnsembleConfig([str(m.path) for m in listed], "mean", 0.0, str(subject.root.parent), subject.subj,
                            {h: subject.n_vertices(h) for h in HEMIS}, subject.fingerprint(), [m.label for m in listed])
    path = Path(" + ".join(str(m.path) for m in listed))  # a name for the maps' attributes, not a directory
    return EnsembleRun(path, config, subject, members[0].queries, model, members[0].device, members=members,
                       groups=firsts)


def _roi_queries(subject: Subject):
    from .readout import build_queries

    return build_queries(subject, "rois_all")
