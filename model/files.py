"""Atomic file writes and content digests.

A reader must never see a half-written file or directory: everything is
written under a temporary name in the same directory and renamed into place
only once complete (a rename is atomic on POSIX file systems).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

PARTIAL_MARK = ".partial-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{PARTIAL_MARK}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from collaborators
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` once the block succeeds.

    With ``overwrite`` an existing ``path`` is replaced only after the new
    content is complete; otherwise an existing ``path`` is an error.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{PARTIAL_MARK}", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save an array as ``.npy`` (never pickled), atomically."""
    array = np.asarray(array)
    if array.dtype.hasobject:
        raise TypeError("refusing to save an object array: it would be pickled")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


def digest_files(paths: Iterable[str | os.PathLike]) -> str:
    """A content digest of a list of files (names and bytes, in order)."""
    h = hashlib.blake2b(digest_size=16)
    for p in paths:
        p = Path(p)
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\1")
    return h.hexdigest()


def digest_json(obj: Any) -> str:
    """A digest of a JSON-serialisable object (key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, default=_json_default)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def write_csv(path: str | os.PathLike, table) -> Path:
    """Write a pandas table as CSV (no index), atomically; returns the path."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return Path(path)


def read_rows(array: np.ndarray, idx) -> np.ndarray:
    """``array[idx]`` (``idx`` a slice or 1-D integer array of rows) as a new in-memory array.

    A memory-mapped .npy array is read with plain file reads, not through
    its map: pages faulted in through a map count towards the process's
    resident memory, and the kernel maps far more than the rows asked for,
    so an epoch over a memory-mapped fMRI would grow the process by about
    the file's size. File reads leave those pages to the shared, reclaimable
    page cache.
    """
    if not (isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.flags.c_contiguous):
        return np.array(array[idx])
    positions = np.arange(array.shape[0])[idx]
    if positions.ndim != 1:
        return np.array(array[idx])
    out = np.empty((len(positions), *array.shape[1:]), array.dtype)
    if out.size == 0:
        return out
    row_bytes = out.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))
    raw = out.reshape(len(positions), -1).view(np.uint8)
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1  # runs of consecutive rows: one read each
    with open(array.filename, "rb", buffering=0) as f:
        for run in np.split(np.arange(len(positions)), breaks):
            f.seek(array.offset + int(positions[run[0]]) * row_bytes)
            _read_exactly(f, memoryview(raw[run[0]:run[-1] + 1]).cast("B"), array.filename)
    return out


def _read_exactly(f, view: memoryview, name: str) -> None:
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise OSError(f"{name}: file ended early (truncated?)")
        done += n
