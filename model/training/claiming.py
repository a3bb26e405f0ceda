"""Claiming a run directory for a training job: one writer at a time, restartable, nothing half-written.

A job holds an OS lock on ``RUN/.lock`` (``fcntl.flock``) from before it
looks at the directory until it ends; the kernel releases it when the
process dies, even by kill -9. A second job on the same directory fails at
once with one line. The lock file itself stays (empty but for the holder's
process id); it is not a run file.

What a job may start from:

* a missing or empty directory: a fresh run;
* a run stopped before its first checkpoint (it holds only files written
  before it, e.g. ``config.json`` and ``val_indices.npy``: killed while
  features were extracted or during the first epoch): a plain re-run
  starts it over, and so does ``--resume``;
* an interrupted run (a checkpoint, no ``metrics.json``): only ``--resume``
  continues it, with the same settings and data;
* anything else (a complete run, foreign files) is refused.

If a job fails, a fresh run removes everything it wrote (the directory too,
if it created it) unless a checkpoint makes it resumable; a diverged run
(non-finite loss) is removed even then, since resuming it would diverge
again. A resumed run is left as it was.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import InputError
from ..files import PARTIAL_MARK, FileLock, usable_directory
from ..runs import CHECKPOINT, CONFIG, LOCK, METRICS, RESULT_FILES, RUN_FILES, WEIGHTS, RunConfig, read_config

log = logging.getLogger(__name__)

#: what a run holds before its first checkpoint: a re-run may start it over
BEFORE_FIRST_CHECKPOINT = set(RUN_FILES) - set(RESULT_FILES)


class DivergedError(InputError):
    """Training produced a non-finite loss or prediction; the run is discarded."""


@dataclass
class Claim:
    """A run directory held by this job."""

    path: Path
    resuming: bool  # continue from the checkpoint (if there is one)
    previous: RunConfig | None  # the config.json found when resuming


@contextlib.contextmanager
def claim_run_directory(out: str | Path, config: RunConfig, resume: bool, writer: bool = True) -> Iterator[Claim]:
    """Hold ``out`` for a training job: lock it, check what it holds, and clean up after a failure.

    Parameters
    ----------
    out : path
        The run directory.
    config : RunConfig
        The job's settings (compared with the run's when resuming).
    resume : bool
        ``--resume``: continue an interrupted run.
    writer : bool
        False for the other processes of a DDP job: they write nothing and
        only read what the writer (rank 0) found.
    """
    out = Path(out)
    if resume and not (out / CONFIG).is_file():
        raise InputError(out, "nothing to resume (no config.json: not a run directory)" if out.exists()
                         else "nothing to resume (no such run directory)")
    if not writer:
        yield Claim(out, resume, read_config(out) if resume else None)
        return
    usable_directory(out)
    created = _make_directories(out)
    lock = FileLock(out / LOCK)
    new_lock_file = not lock.path.exists()
    try:
        if not lock.try_acquire():
            holder = lock.holder()
            raise InputError(out, f"another tbe job{f' (process {holder})' if holder else ''} is writing this run directory; "
                                  "wait for it to end or choose another `out`")
    except BaseException:
        _remove_created(created)
        raise
    claim = None
    try:
        _remove_partials(out)
        claim = _check_contents(out, config, resume)
        yield claim
    except BaseException as exc:
        if claim is None and new_lock_file and not (out / CONFIG).exists():
            (out / LOCK).unlink(missing_ok=True)  # refused a folder that is not a run: leave it as it was
        if claim is not None and _discard_after(out, claim, exc):
            _remove_run_files(out)
            (out / LOCK).unlink(missing_ok=True)
            _remove_created(created)
        raise
    finally:
        lock.release()


def _make_directories(out: Path) -> list[Path]:
    """Create ``out`` and missing parents; returns those created, deepest first."""
    missing = []
    path = out
    while not path.exists():
        missing.append(path)
        path = path.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(out, f"cannot create the run directory ({exc.strerror or exc})") from None
    return missing


def _remove_created(created: list[Path]) -> None:
    for path in created:  # deepest first; stop at the first that is not empty
        try:
            path.rmdir()
        except OSError:
            return


def _remove_partials(out: Path) -> None:
    """Temporary files of killed writers (the lock proves no one else writes here)."""
    for path in out.glob(f".*{PARTIAL_MARK}*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _check_contents(out: Path, config: RunConfig, resume: bool) -> Claim:
    names = {p.name for p in out.iterdir()} - {LOCK}
    if resume:
        previous = read_config(out)
        _check_same_settings(out / CONFIG, config, previous)
        if not names & {CHECKPOINT, WEIGHTS}:
            log.info("%s: stopped before its first checkpoint; starting from the first epoch", out)
        return Claim(out, True, previous)
    if not names:
        return Claim(out, False, None)
    if names <= BEFORE_FIRST_CHECKPOINT and CONFIG in names:
        log.info("%s: a run stopped before its first checkpoint; starting it over", out)
        _remove_run_files(out)
        return Claim(out, False, None)
    if METRICS in names:
        hint = "it holds a complete run; choose another `out`"
    elif CHECKPOINT in names:
        hint = "it holds an interrupted run: add `resume`"
    else:
        hint = "choose another `out`"
    raise InputError(out, f"run directory is not empty; {hint}")


def settings_differences(config: RunConfig, previous: RunConfig) -> list[str]:
    """The fields of :meth:`RunConfig.comparable` on which ``previous`` (a run's ``config.json``) differs from ``config``.

    ``config`` must be filled in as training fills it (``model.training.loop.resolve_config``).
    """
    mine, theirs = config.comparable(), previous.comparable()
    if not theirs.get("data_fingerprint"):  # a run from before fingerprints were recorded
        mine.pop("data_fingerprint"), theirs.pop("data_fingerprint")
    return [k for k in mine if mine[k] != theirs.get(k)]


def _check_same_settings(where: Path, config: RunConfig, previous: RunConfig) -> None:
    diff = settings_differences(config, previous)
    if diff:
        raise InputError(where, f"`resume` with different settings or data ({', '.join(diff)}); use a new `out`")


def _discard_after(out: Path, claim: Claim, exc: BaseException) -> bool:
    """Whether a failed job's run directory goes: a fresh run that nothing can resume, or a diverged one."""
    if claim.resuming:
        return False
    return isinstance(exc, DivergedError) or not (out / CHECKPOINT).is_file()


def _remove_run_files(out: Path) -> None:
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    _remove_partials(out)
