"""The run directory's layout: the name of every file a run (or an ensemble of runs) holds, and reading them.

```
RUN/config.json            what was trained, on what data and features, how (JSON)
RUN/manifest.json          what produced it: code, environment, seeds, data and weights digests
RUN/model.safetensors      encoder weights (the backbone is referenced, not copied)
RUN/checkpoint.safetensors last epoch's weights + optimizer, for --resume
RUN/val_indices.npy        the validation rows of the training fMRI
RUN/metrics.json           written last: its presence means the run is complete
RUN/{lh,rh}_val_corr.npy   per-vertex validation r
RUN/{lh,rh}_val_pred.npy   validation predictions (float32, validation images x vertices, rows as val_indices.npy)
RUN/{lh,rh}_pred_test.npy  the challenge submission (float32, test images x vertices)
RUN/.lock                  held (an OS lock) by the job writing the run
```
Every file is written atomically.

An *ensemble* of runs (:mod:`model.runs.ensembles`, ``tbe ensemble``) is a run
directory too: ``ensemble.json`` in place of ``config.json``, and the same
``metrics.json``, ``val_indices.npy``, per-vertex ``val_corr`` and
``pred_test`` files. :func:`~model.runs.configs.read_config` and
:func:`~model.runs.opening.open_run` read either kind, so every command that
reads a run reads an ensemble.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..files import load_npy

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.json"
VAL_INDICES = "val_indices.npy"
VAL_CORR = "{hemi}_val_corr.npy"
VAL_PRED = "{hemi}_val_pred.npy"
PRED_TEST = "{hemi}_pred_test.npy"
TEST_SCORES = "test_scores.json"
MANIFEST = "manifest.json"
LOCK = ".lock"
#: what marks an ensemble of runs (:mod:`model.runs.ensembles`); it has no config.json
ENSEMBLE = "ensemble.json"
#: the folder of one subject's run in a multi-subject folder (``tbe train --subj 1-8 --out DIR``: DIR/subj01)
SUBJECT_FOLDER = re.compile(r"subj\d\d")
#: files a training job writes from its first checkpoint on
RESULT_FILES = (WEIGHTS, CHECKPOINT, METRICS,
                *(t.format(hemi=h) for t in (VAL_CORR, VAL_PRED, PRED_TEST) for h in ("lh", "rh")))
#: every file a training job writes into a run directory (those not in RESULT_FILES come before the first checkpoint)
RUN_FILES = (CONFIG, MANIFEST, VAL_INDICES, *RESULT_FILES)


def is_ensemble(run: str | Path) -> bool:
    """Whether ``run`` is an ensemble of runs (it holds ``ensemble.json``, not ``config.json``)."""
    return (Path(run) / ENSEMBLE).is_file() and not (Path(run) / CONFIG).is_file()


def is_run(path: str | Path) -> bool:
    """Whether ``path`` is a run or an ensemble directory (complete or not)."""
    return (Path(path) / CONFIG).is_file() or is_ensemble(path)


def expand_subjects(path: str | Path) -> list[Path]:
    """A run (or ensemble) as ``[path]``; a folder of subject runs (``subjXX/``, ``tbe train --subj``) as those runs.

    Anything else comes back as ``[path]``, for the reader to refuse with its own message.
    """
    path = Path(path)
    if is_run(path) or not path.is_dir():
        return [path]
    found = sorted(p for p in path.iterdir() if p.is_dir() and SUBJECT_FOLDER.fullmatch(p.name) and is_run(p))
    return found or [path]


def read_metrics(run: str | Path) -> dict:
    """A complete run's ``metrics.json``; a missing or corrupt file is one error naming it."""
    path = Path(run) / METRICS
    if not path.is_file():
        raise InputError(path, "missing: training did not finish (continue it with tbe train `resume`)")
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(path, f"unreadable ({type(exc).__name__})") from None
    if not isinstance(metrics, dict):
        raise InputError(path, "expected a JSON object")
    return metrics


def load_run_array(run: str | Path, template: str, hemi: str, n_vertices: int | None = None,
                   n_rows: int | None = None) -> np.ndarray:
    """A per-hemisphere array of a run (``VAL_CORR``, ``VAL_PRED`` or ``PRED_TEST``), checked against the expected shape."""
    path = Path(run) / template.format(hemi=hemi)
    what = {PRED_TEST: "test predictions", VAL_PRED: "validation predictions"}.get(template, "per-vertex values")
    ndim = 2 if template in (PRED_TEST, VAL_PRED) else 1
    shape = (n_rows, n_vertices) if ndim == 2 else (n_vertices,)
    return load_npy(path, ndim=ndim, kinds="f", shape=shape, what=what)


#: the files an ensemble holds besides a run's (:mod:`model.runs.ensembles`)
ENSEMBLE_WEIGHTS = "weights.npy"
VAL_CORR_IN_SAMPLE = "{hemi}_val_corr_in_sample.npy"
BEST_MEMBER = "{hemi}_best_member.npy"
BEST_LAYER = "{hemi}_best_layer.npy"
