"""Per-vertex member weights of an ensemble of runs, and its cross-fitted validation r.

How an ensemble (:mod:`model.runs.ensembles`) combines its members' predictions.

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
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy.special import softmax

from ..errors import OptionError
from ..metrics import pearson_r

DEFAULT_TEMPERATURE = 40.0
#: seed of the split of the validation images into the two halves of the cross-fitting
HALVES_SEED = 0
#: vertices processed at once (bounds memory: members x validation images x this many values)
VERTEX_CHUNK = 4096


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
