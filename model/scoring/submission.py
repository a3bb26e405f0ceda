"""The Algonauts 2023 challenge's submission archive (``tbe submit``).

The layout, from the challenge's development kit (github.com/gifale95/algonauts_2023,
``algonauts_2023_challenge_tutorial.ipynb`` cells 78-82, and its README): a zip
whose top level holds one folder per subject, ``subj01`` ... ``subj08``, each
with ``lh_pred_test.npy`` and ``rh_pred_test.npy``: float32 arrays of test
images x challenge vertices (every challenge vertex, not an ROI). There is
no wrapper folder; the tutorial warns that one (or folders lost in zipping)
breaks the scoring. float32 is required: float64 would exceed the 300 MB
limit. Directory entries are written, as ``zip -r`` writes them. All eight
subjects are needed (the scoring program reads subj01 to subj08 in turn).

Each run (or ensemble) supplies the predictions of the subject it was trained
on (``RUN/{lh,rh}_pred_test.npy``). Every check comes before the archive is
written, and it is written atomically (:func:`model.files.atomic_path`).
"""
from __future__ import annotations

import io
import logging
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError, OptionError
from ..files import atomic_path, load_npy
from ..rois import HEMIS
from ..runs import PRED_TEST, expand_subjects, read_config, read_metrics

log = logging.getLogger(__name__)

CHALLENGE_SUBJECTS = tuple(range(1, 9))
#: subject -> (test images, lh vertices, rh vertices) of the Algonauts 2023 challenge data
CHALLENGE_SIZES = {1: (159, 19004, 20544), 2: (159, 19004, 20544), 3: (293, 19004, 20544), 4: (395, 19004, 20544),
                   5: (159, 19004, 20544), 6: (293, 18978, 20220), 7: (159, 19004, 20544), 8: (395, 18981, 20530)}


def subject_folder(subj: int) -> str:
    """``subj01`` ...: a subject's folder name in the data and in the archive."""
    return f"subj{subj:02d}"


@dataclass
class Entry:
    """One subject's test predictions and the run they came from."""

    subj: int
    run: Path
    preds: dict[str, np.ndarray]


def collect(runs: Sequence[str | Path], allow_partial: bool = False) -> list[Entry]:
    """Each run's (or ensemble's) test predictions, checked; one error naming the run or file at the first problem.

    A folder of subject runs (``DIR/subjXX``, as ``tbe train --subj 1-8``
    writes them) stands for its subjects. Refused: a subject outside 1-8, a
    subject given twice, a missing subject (unless ``allow_partial``), an
    array that is not float32, of another shape than the subject's test
    images x vertices, or holding NaN or infinite values.
    """
    if not runs:
        raise OptionError("runs", "list the runs (or ensembles) to submit, one per subject")
    entries: dict[int, Entry] = {}
    for run in [p for r in runs for p in expand_subjects(r)]:
        config = read_config(run)
        n_test = read_metrics(run).get("n_test")
        subj = int(config.subj)
        if subj not in CHALLENGE_SUBJECTS:
            raise InputError(run, f"is a run of subject {subj}; the challenge has subjects 1 to 8")
        if subj in entries:
            raise InputError(run, f"is a second run of subject {subj} (the first: {entries[subj].run}); give one per subject")
        preds = {}
        for hemi in HEMIS:
            path = Path(run) / PRED_TEST.format(hemi=hemi)
            arr = load_npy(path, ndim=2, what="test predictions")
            if arr.dtype != np.float32:
                raise InputError(path, f"holds {arr.dtype} values; the challenge needs float32 (float64 exceeds its size limit)")
            expected = (n_test, int(config.n_vertices[hemi]))
            if arr.shape != expected:
                raise InputError(path, f"has shape {arr.shape}; subject {subj} needs {expected[0]} test images x "
                                       f"{expected[1]} {hemi} vertices")
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            if bad:
                raise InputError(path, f"holds {bad} NaN or infinite values")
            preds[hemi] = arr
        official = CHALLENGE_SIZES[subj]
        if (n_test, config.n_vertices["lh"], config.n_vertices["rh"]) != official:
            log.warning("%s: subject %d has %d test images x %d/%d vertices, the challenge's %d x %d/%d: "
                        "an archive the challenge would not accept (fine for a virtual subject)", run, subj, n_test,
                        config.n_vertices["lh"], config.n_vertices["rh"], *official)
        entries[subj] = Entry(subj, Path(run), preds)
    missing = [s for s in CHALLENGE_SUBJECTS if s not in entries]
    if missing and not allow_partial:
        raise OptionError("runs", f"no run for subject{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}; "
                                   "the challenge needs all eight (pass `allow_partial` for a partial archive)")
    return [entries[s] for s in sorted(entries)]


def write_submission(entries: Sequence[Entry], out: str | Path) -> Path:
    """The archive ``out`` (.zip): ``subjXX/{lh,rh}_pred_test.npy`` at its top level, written atomically."""
    out = Path(out)
    if out.suffix != ".zip":
        raise InputError(out, "the submission is a zip archive: use a .zip file name")
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for entry in entries:
                folder = subject_folder(entry.subj)
                zf.writestr(zipfile.ZipInfo(f"{folder}/", date_time=time.localtime()[:6]), b"")
                for hemi in HEMIS:
                    buffer = io.BytesIO()
                    np.save(buffer, entry.preds[hemi], allow_pickle=False)
                    zf.writestr(f"{folder}/{hemi}_pred_test.npy", buffer.getvalue())
    return out


def read_submission(path: str | Path) -> dict[int, dict[str, np.ndarray]]:
    """An archive's arrays by subject and hemisphere (no pickles; for checking what was written)."""
    out: dict[int, dict[str, np.ndarray]] = {}
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            folder, _, file = name.partition("/")
            if file.endswith("_pred_test.npy"):
                arr = np.load(io.BytesIO(zf.read(name)), allow_pickle=False)
                out.setdefault(int(folder[4:]), {})[file.split("_")[0]] = arr
    return out
