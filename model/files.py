"""Atomic file writes, checked reads, locks and content digests.

A reader must never see a half-written file or directory: everything is
written under a temporary name in the same directory and renamed into place
only once complete (a rename is atomic on POSIX file systems). A temporary
directory holds an OS lock for as long as its writer lives, so leftovers of
killed writers can be told from work in progress and removed.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mmap
import os
import re
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .errors import InputError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the suite targets POSIX systems
    fcntl = None

PARTIAL_MARK = ".partial-"
#: held by the writer of a temporary directory (see :func:`atomic_directory`)
PARTIAL_LOCK = ".writer.lock"
#: a temporary directory without its lock file is left alone this long (it may be just starting)
PARTIAL_GRACE_SECONDS = 3600
#: errors that mean "the disk (or the quota, or the file-size limit) is full"
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


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
    content is complete; otherwise an existing ``path`` is an error. The
    temporary directory holds a lock file locked by this process; if the
    process dies (even by kill -9) the lock is released and
    :func:`remove_stale_partials` may remove the leftover.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{PARTIAL_MARK}", dir=path.parent))
    lock = FileLock(tmp / PARTIAL_LOCK)
    try:
        lock.acquire()
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        (tmp / PARTIAL_LOCK).unlink(missing_ok=True)  # the finished directory carries no lock file
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        lock.release()


def remove_stale_partials(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary directories of dead writers in ``folder``; returns those removed.

    A temporary directory whose writer is alive (its lock is held, e.g. by a
    DDP rank or another job extracting the same features) is left alone; so
    is one without a lock file younger than an hour (its writer may be
    starting). Lock files are OS locks, released by the kernel when their
    process dies, so this also works for a process killed with kill -9.
    """
    removed = []
    for path in Path(folder).glob(f".*{PARTIAL_MARK}*"):
        if not path.is_dir():
            continue
        lock = FileLock(path / PARTIAL_LOCK)
        if (path / PARTIAL_LOCK).is_file():
            try:
                if not lock.try_acquire(create=False):
                    continue  # a live writer
            except OSError:
                continue  # e.g. a read-only cache: nothing can be removed anyway
        elif time.time() - path.stat().st_mtime < PARTIAL_GRACE_SECONDS:
            continue
        try:
            shutil.rmtree(path)
            removed.append(path)
        except OSError:
            pass  # e.g. removed by another process at the same time
        finally:
            lock.release()
    return removed


class FileLock:
    """An exclusive OS lock (``fcntl.flock``) on a file; the kernel releases it when the process dies.

    Parameters
    ----------
    path : path
        The lock file (created if missing). The holder's process id is
        written into it, for messages.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.fd: int | None = None

    def try_acquire(self, create: bool = True) -> bool:
        """Take the lock without waiting; False if another process holds it."""
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        try:
            fd = os.open(self.path, flags, 0o666 & ~_umask())
        except FileNotFoundError:
            if create:
                raise
            return False
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
        self.fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return True

    def acquire(self) -> None:
        """Take the lock without waiting; :class:`BlockingIOError` if it is held."""
        if not self.try_acquire():
            raise BlockingIOError(errno.EWOULDBLOCK, "locked by another process", str(self.path))

    def holder(self) -> str:
        """The process id written by the holder ('' if unknown)."""
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def usable_directory(path: str | os.PathLike, where: str | os.PathLike | None = None, write: bool = True) -> Path:
    """Check that ``path`` is, or can be created as, a folder (that this process can write to).

    Nothing is left behind. Raises :class:`InputError` naming ``where``
    (default ``path``) when ``path`` or an ancestor is a file, or, with
    ``write``, when the nearest existing folder cannot be written to
    (read-only file system, permissions): found by creating and removing a
    temporary file, which also works for root on a read-only mount.
    """
    path = Path(path)
    where = where if where is not None else path
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file, not a folder" if existing == path else f"lies under {existing}, which is a file, not a folder"
        raise InputError(where, what)
    if write:
        try:
            with tempfile.TemporaryFile(dir=existing, prefix=f".tbe-write-test{PARTIAL_MARK}"):
                pass
        except OSError as exc:
            raise InputError(where, f"cannot write in {existing} ({exc.strerror or exc})") from None
    return path


def describe_os_error(exc: OSError) -> tuple[str, str]:
    """(file, problem) for an :class:`OSError`, in one line."""
    where = exc.filename if exc.filename is not None else "file system"
    problem = exc.strerror or str(exc)
    if exc.errno in NO_SPACE:
        problem = f"{problem}: no room to write it (free disk space or quota, or write elsewhere)"
    return str(where), problem


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


def load_npy(path: str | os.PathLike, ndim: int | None = None, kinds: str | None = None,
             shape: tuple[int | None, ...] | None = None, mmap: bool = False, what: str = "") -> np.ndarray:
    """A plain numeric ``.npy`` array, checked; any problem is one :class:`InputError` naming the file.

    Parameters
    ----------
    path : path
        The file.
    ndim : int, optional
        Required number of dimensions.
    kinds : str, optional
        Allowed dtype kinds (numpy's one-letter codes, e.g. ``'f'``, ``'iu'``).
    shape : tuple, optional
        Required shape; ``None`` entries match any length.
    mmap : bool
        Memory-map instead of reading (large fMRI and features).
    what : str
        Named in messages, e.g. ``'test predictions'``.

    Pickled content (an object array, or a pickle named ``.npy``) is refused
    without being unpickled.
    """
    path = Path(path)
    label = f"{what} " if what else ""
    if not path.exists():
        raise InputError(path, f"missing {label}file")
    if not path.is_file():
        raise InputError(path, f"not a file ({label}expected a .npy array)")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        kind = "a Python pickle" if magic[:1] == b"\x80" else "not a .npy file"
        raise InputError(path, f"{kind}; refused (only plain numeric .npy arrays are read, never pickles)")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickled" in str(exc):
            raise InputError(path, "holds pickled Python objects; refused (only plain numeric .npy arrays are read)") from None
        raise InputError(path, f"truncated or corrupt .npy file ({_first_line(exc)})") from None
    except (OSError, EOFError) as exc:
        raise InputError(path, f"unreadable .npy file ({_first_line(exc)})") from None
    if ndim is not None and arr.ndim != ndim:
        raise InputError(path, f"expected a {ndim}-D {label}array, found shape {arr.shape}")
    if kinds is not None and arr.dtype.kind not in kinds:
        raise InputError(path, f"unexpected dtype {arr.dtype} for {label or 'this '}array")
    if shape is not None and (len(shape) != arr.ndim or any(s is not None and s != a for s, a in zip(shape, arr.shape))):
        want = "x".join("any" if s is None else str(s) for s in shape)
        raise InputError(path, f"{label}array has shape {arr.shape}, expected {want}")
    return arr


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors, atomically and byte-for-byte reproducibly.

    safetensors writes its metadata map in an arbitrary order that changes
    from process to process; the header is rewritten with sorted metadata
    keys (and tensors in data order), so identical content gives identical
    files and a checksum can prove two runs identical. A full disk is an
    :class:`OSError` naming the file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as exc:  # I/O errors come back as text from the Rust writer
            code = re.search(r"(?:os error|code:) (\d+)", str(exc))
            if code:
                raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from None
            raise
        _canonical_safetensors_header(tmp)


def _canonical_safetensors_header(path: Path) -> None:
    with open(path, "r+b") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        canonical = {}
        if "__metadata__" in header:
            canonical["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
        for name in sorted(header, key=lambda k: (header[k]["data_offsets"][0], k)):
            canonical[name] = header[name]
        text = json.dumps(canonical, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:  # cannot happen for a reordering; refuse rather than corrupt
            raise ValueError(f"{path}: canonical safetensors header is longer than the original")
        f.seek(8)
        f.write(text + b" " * (size - len(text)))


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


# --------------------------------------------------------------------------
# Fingerprints: cheap content digests of data files
# --------------------------------------------------------------------------

#: files up to this size are hashed whole
FULL_HASH_BYTES = 64 * 2**20
#: larger files: this many evenly spaced blocks of SAMPLE_BLOCK_BYTES (first and last included) and the size
SAMPLE_BLOCKS = 16
SAMPLE_BLOCK_BYTES = 2**20


def file_fingerprint(path: str | Path, root: str | Path | None = None, full_limit: int = FULL_HASH_BYTES) -> dict[str, Any]:
    """Size and BLAKE2b of a file: of all its bytes up to ``full_limit``, else of evenly spaced blocks.

    A sampled hash reads :data:`SAMPLE_BLOCKS` blocks of
    :data:`SAMPLE_BLOCK_BYTES` (first and last included) and the size; it
    tells files apart that differ anywhere in those blocks or in length,
    which an edited, truncated or regenerated fMRI file does.
    """
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        if size <= full_limit:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
            method = "full"
        else:
            last = size - SAMPLE_BLOCK_BYTES
            for k in range(SAMPLE_BLOCKS):
                f.seek(last * k // (SAMPLE_BLOCKS - 1))
                h.update(f.read(SAMPLE_BLOCK_BYTES))
            h.update(str(size).encode())
            method = f"sampled: {SAMPLE_BLOCKS} blocks of {SAMPLE_BLOCK_BYTES} bytes and the size"
    name = str(path.relative_to(root)) if root is not None else str(path)
    return {"path": name, "bytes": size, "blake2b": h.hexdigest(), "hashed": method}


def image_list_fingerprint(folder: str | Path) -> dict[str, Any]:
    """An image folder by its file names and sizes (not its pixels): count, total bytes and a digest."""
    folder = Path(folder)
    entries = sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    h = hashlib.blake2b(digest_size=16)
    for name, size in entries:
        h.update(f"{name}\0{size}\n".encode())
    return {"path": folder.name, "n_files": len(entries), "bytes": sum(s for _, s in entries),
            "blake2b": h.hexdigest(), "hashed": "file names and sizes"}
