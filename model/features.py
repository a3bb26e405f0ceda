"""The feature cache: backbone features computed once, reused by every run.

An entry is keyed by everything that changes the features (backbone name,
weights digest, block, feature kind, input size, precision, and a digest of
the image files' bytes), holds ``features.npy`` (images x tokens x channels, float16,
memory-mapped on read) and ``meta.json``, and is written under a temporary
name and renamed into place only when complete, so an interrupted
extraction never leaves an entry that looks complete.

Writing never goes through a memory map (a full disk would kill the process
with SIGBUS): the file is preallocated, then written with plain writes, and
a full disk is one clear error. Leftovers of killed extractions are removed
by the next extraction (:func:`model.files.remove_stale_partials`). Every
entry is verified when opened: its meta.json, the array's shape against
meta.json and the file size, and digests of :data:`SAMPLED_ROWS` rows
stored at write time (catching zeroed or overwritten files); a damaged entry
is rebuilt with a warning.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .backbone import Backbone
from .device import feature_precision, pick_device
from .errors import InputError, OptionError
from .files import (NO_SPACE, atomic_directory, digest_files, digest_json, read_rows, remove_stale_partials,
                    usable_directory, write_json)
from .images import image_batch
from .progress import progress

log = logging.getLogger(__name__)

FEATURE_FORMAT = 2
FEATURES_FILE = "features.npy"
META_FILE = "meta.json"
#: what identifies a backbone's features; every run records these (``feature_key`` in config.json)
FEATURE_KEY_FIELDS = ("format", "backbone", "weights", "block", "depth", "feature", "image_size", "input_size",
                      "precision")
#: the precision a key leaves unsaid: float32 keys are those written before precision was part of the key
KEY_DEFAULT_PRECISION = "float32"
#: rows of an entry whose digests are stored in meta.json and checked on every open
SAMPLED_ROWS = 8


def default_cache_dir() -> Path:
    """``$TBE_CACHE_DIR``, else ``$XDG_CACHE_HOME/tbe``, else ``~/.cache/tbe``."""
    if os.environ.get("TBE_CACHE_DIR"):
        return Path(os.environ["TBE_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "tbe"


@dataclass
class FeatureSet:
    """A complete cache entry, opened read-only."""

    path: Path
    features: np.ndarray  # (N, tokens, C) float16, memory-mapped
    names: list[str]
    grid: tuple[int, int]
    meta: dict

    def __len__(self) -> int:
        return len(self.names)

    @property
    def key(self) -> dict:
        """The backbone part of this entry's key (see :data:`FEATURE_KEY_FIELDS`; ``precision`` only when not float32)."""
        return {k: self.meta.get(k) for k in FEATURE_KEY_FIELDS if k != "precision" or k in self.meta}


def feature_key(backbone: Backbone) -> dict:
    """What the features of any image depend on (the backbone, its weights, block, feature, input size and precision).

    ``precision`` is in the key only when it is not float32, so that float32
    entries keep the keys (and the cache hits) they had before precision
    could be chosen.
    """
    key = {
        "format": FEATURE_FORMAT,
        "backbone": backbone.config.name,
        "weights": backbone.weights_digest,
        "block": backbone.block_index,
        "depth": backbone.depth,
        "feature": backbone.config.feature,
        "image_size": backbone.config.image_size,
        "input_size": backbone.input_size,
    }
    precision = getattr(backbone.config, "precision", KEY_DEFAULT_PRECISION)
    if precision != KEY_DEFAULT_PRECISION:
        key["precision"] = precision
    return key


def cache_key(backbone: Backbone, image_paths: Sequence[Path]) -> dict:
    """Everything the features depend on: :func:`feature_key` and the images' bytes."""
    return {**feature_key(backbone), "images": digest_files(image_paths), "n_images": len(image_paths)}


class DamagedEntry(Exception):
    """A cache entry that fails verification (the message says how)."""


def sampled_rows(n: int) -> np.ndarray:
    """Rows whose digests an entry stores: evenly spaced, first and last included."""
    return np.unique(np.linspace(0, n - 1, min(n, SAMPLED_ROWS)).round().astype(int))


def _row_digest(row: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=12).hexdigest()


def open_entry(path: Path, key: dict | None = None) -> FeatureSet:
    """Open a complete entry and verify it; :class:`DamagedEntry` if it fails any check."""
    try:
        meta = json.loads((path / META_FILE).read_text())
        names, grid, dim, digests = meta["names"], tuple(meta["grid"]), int(meta["dim"]), meta["row_digests"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DamagedEntry(f"{META_FILE} is unreadable ({type(exc).__name__})") from None
    if key is not None and any(meta.get(k) != v for k, v in key.items()):
        raise DamagedEntry(f"{META_FILE} does not match the entry's key")
    file = path / FEATURES_FILE
    try:
        features = np.load(file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DamagedEntry(f"{FEATURES_FILE} is truncated or unreadable ({type(exc).__name__})") from None
    expected = (len(names), grid[0] * grid[1], dim)
    if features.shape != expected or features.dtype != np.float16:
        raise DamagedEntry(f"{FEATURES_FILE} holds {features.dtype} {features.shape}, {META_FILE} says float16 {expected}")
    if file.stat().st_size != features.offset + features.nbytes:
        raise DamagedEntry(f"{FEATURES_FILE} has {file.stat().st_size} bytes, its shape needs {features.offset + features.nbytes}")
    rows = sampled_rows(len(names))
    if sorted(int(r) for r in digests) != rows.tolist():
        raise DamagedEntry(f"{META_FILE} lists other sampled rows than expected")
    for row, values in zip(rows, read_rows(features, rows)):
        if _row_digest(values) != digests[str(row)]:
            raise DamagedEntry(f"row {row} of {FEATURES_FILE} differs from its digest (zeroed or overwritten)")
    return FeatureSet(path, features, names, grid, meta)


def extract_features(backbone: Backbone, image_paths: Sequence[Path], cache_dir: str | Path | None = None,
                     batch_size: int = 16, device: str = "auto", desc: str = "backbone features") -> FeatureSet:
    """Features of ``image_paths`` from the cache, computing them only on a miss (or a damaged entry)."""
    image_paths = [Path(p) for p in image_paths]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    usable_directory(cache_dir, write=False)
    key = cache_key(backbone, image_paths)
    entry = cache_dir / digest_json(key)
    if cache_dir.is_dir():
        for stale in remove_stale_partials(cache_dir):
            log.info("removed %s, left by a feature extraction that died", stale)
    if entry.is_dir():
        try:
            fs = open_entry(entry, key)
            log.info("feature cache hit: %s", entry)
            return fs
        except DamagedEntry as why:
            log.warning("%s: damaged feature cache entry (%s); rebuilding it", entry, why)
            _discard(entry)

    usable_directory(cache_dir)
    dev = pick_device(device)
    backbone = backbone.to(dev)
    try:
        with atomic_directory(entry) as tmp:
            digests = _write_features(tmp / FEATURES_FILE, backbone, image_paths, batch_size, dev, desc)
            write_json(tmp / META_FILE, {**key, "names": [p.name for p in image_paths], "grid": list(backbone.grid),
                                         "dim": backbone.dim, "row_digests": digests, "describe": backbone.describe()})
    except FileExistsError:
        pass  # another process (e.g. a DDP rank) completed the same entry first
    except OSError as exc:
        if exc.errno in NO_SPACE:
            size = len(image_paths) * backbone.grid[0] * backbone.grid[1] * backbone.dim * 2
            raise InputError(cache_dir, f"no room for the feature cache ({exc.strerror}; this entry needs {size / 2**30:.2f} GiB); "
                                        "free space or choose another `cache_dir` (or TBE_CACHE_DIR)") from None
        if not (exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and (entry / META_FILE).is_file()):
            raise
    try:
        return open_entry(entry, key)
    except DamagedEntry as why:  # written a moment ago: the storage itself is failing
        raise InputError(entry, f"feature cache entry damaged right after writing ({why})") from None


def _write_features(path: Path, backbone: Backbone, image_paths: list[Path], batch_size: int, dev: torch.device,
                    desc: str) -> dict[str, str]:
    """Write features.npy with plain writes (never through a memory map); returns the sampled rows' digests."""
    shape = (len(image_paths), backbone.grid[0] * backbone.grid[1], backbone.dim)
    sample = set(sampled_rows(len(image_paths)).tolist())
    digests = {}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                                                 "fortran_order": False, "shape": shape})
        _preallocate(f, f.tell() + int(np.prod(shape)) * 2)
        for start in progress(range(0, len(image_paths), batch_size), desc=desc, unit="batch"):
            batch = image_batch(image_paths[start:start + batch_size], backbone.image_side).to(dev)
            with torch.inference_mode(), feature_precision(dev, backbone.config.precision):
                feats = backbone(backbone.preprocess(batch))
            values = feats.float().cpu().numpy().astype(np.float16)
            for i in sample.intersection(range(start, start + len(values))):
                digests[str(i)] = _row_digest(values[i - start])
            f.write(values.tobytes())
        f.flush()
        os.fsync(f.fileno())
    return digests


def _preallocate(f, size: int) -> None:
    """Reserve the file's blocks now, so a full disk fails before any work (where the OS can)."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as exc:
            if exc.errno in NO_SPACE:
                raise
            # file systems without fallocate: plain writes still report a full disk


def _discard(entry: Path) -> None:
    """Remove a damaged entry (renamed aside first, so no reader sees it half-removed)."""
    aside = entry.with_name(f".{entry.name}.damaged-{os.getpid()}")
    try:
        os.replace(entry, aside)
    except OSError:
        return  # already replaced or removed by another process
    shutil.rmtree(aside, ignore_errors=True)


def subject_features(data_dir: str | Path, subj: int, config, cache_dir: str | Path | None = None,
                     batch_size: int = 16, device: str = "auto") -> dict[str, FeatureSet]:
    """Training and test features of one subject (from the cache where possible)."""
    from .backbone import build_backbone
    from .images import native_size
    from .subject import load_subject

    config.validate()
    subject = load_subject(data_dir, subj)
    backbone = build_backbone(config, native_size(subject.train_images[0]))
    log.info("backbone: %s", backbone.describe())
    return {split: extract_features(backbone, subject.images(split), cache_dir, batch_size, device,
                                    desc=f"{split} features")
            for split in ("train", "test")}


def image_features(backbone: Backbone, subject, paths: Sequence[Path], rows: Sequence[tuple[str, int] | None] | None = None,
                   cache_dir: str | Path | None = None, device: str = "cpu", desc: str = "features"):
    """Backbone features ``(N, tokens, C)`` of ``paths``, from the cache where possible, read by rows on demand.

    When every image is one of ``subject``'s (``rows`` gives its split and
    index) and the split's features are already cached (training computed
    them), those rows are read from the cache (float32, :class:`CachedRows`)
    instead of being computed; otherwise the images' own entry (memory-mapped
    float16). Either way nothing is read until asked for: read the rows a
    batch needs with :func:`model.files.read_rows`.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if rows is not None and len(rows) and all(r is not None for r in rows):
        entries = {}
        for split in {r[0] for r in rows}:
            entry = cache_dir / digest_json(cache_key(backbone, subject.images(split)))
            if (entry / META_FILE).is_file():
                entries[split] = open_entry(entry).features
        if len(entries) == len({r[0] for r in rows}):
            return CachedRows(entries, rows)
    return extract_features(backbone, list(paths), cache_dir, device=device, desc=desc).features


class CachedRows:
    """Rows of a subject's cached split features, as one ``(N, tokens, C)`` float32 array read on demand.

    ``rows[i]`` is image ``i``'s ``(split, index)`` into ``entries[split]``
    (memory-mapped cache arrays). Indexing by rows (a slice or an integer
    array) reads just those rows (:func:`~model.files.read_rows`); ``np.asarray``
    gives all of them.
    """

    def __init__(self, entries: dict[str, np.ndarray], rows: Sequence[tuple[str, int]]):
        self.entries, self.rows = entries, list(rows)
        first = next(iter(entries.values()))
        self.shape = (len(self.rows), *first.shape[1:])
        self.dtype = np.dtype(np.float32)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, (int, np.integer)):
            return self[np.array([idx])][0]
        picked = np.arange(len(self.rows))[idx]
        out = np.empty((len(picked), *self.shape[1:]), np.float32)
        for split, entry in self.entries.items():
            where = np.array([k for k, p in enumerate(picked) if self.rows[p][0] == split], int)
            if len(where):
                out[where] = read_rows(entry, np.array([self.rows[picked[k]][1] for k in where]))
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[slice(None)]
        return out if dtype is None else out.astype(dtype, copy=False)


# --------------------------------------------------------------------------
# Feature rows for training: streamed from the cache, or resident on the device
# --------------------------------------------------------------------------

#: ``--features-on-device``: keep a subject's features on the training device when they fit (auto), always, or never
RESIDENCY = ("auto", "always", "never")
#: share of the device's free memory that resident features may take (auto): the rest is for the model and its activations
RESIDENT_SHARE = 0.7
#: rows copied to the device at a time when making features resident (bounds the host memory used on the way)
UPLOAD_ROWS = 256


def free_device_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device; None where unknown (CPU, MPS)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return None


def check_residency(policy: str) -> None:
    """One clear error for a ``--features-on-device`` policy that is not one of :data:`RESIDENCY`."""
    if policy not in RESIDENCY:
        raise OptionError("features_on_device", f"unknown policy {policy!r}; choose from {', '.join(RESIDENCY)}")


def keep_resident(policy: str, n_bytes: int, device: torch.device, free_bytes: int | None = None) -> bool:
    """Whether to keep ``n_bytes`` of features on ``device`` for training (:data:`RESIDENCY` policy).

    ``always`` and ``never`` say so; ``auto`` keeps them on a GPU when they
    take at most :data:`RESIDENT_SHARE` of its free memory (``free_bytes``,
    default: asked from the device), and never on the CPU, where the
    memory-mapped cache already is the in-memory copy (the page cache).
    """
    check_residency(policy)
    if policy != "auto":
        return policy == "always"
    free = free_device_memory(device) if free_bytes is None else free_bytes
    return device.type != "cpu" and free is not None and n_bytes <= RESIDENT_SHARE * free


class FeatureRows:
    """Rows of a feature array as float32 tensors on the training device.

    Streamed: each batch is read from the (memory-mapped) cache and copied
    to the device. Resident: the whole float16 array is copied to the device
    once and batches are gathered there, which removes the host reads and
    copies from every step. Both give the same values (float16 to float32 is
    exact), so training is identical either way.
    """

    def __init__(self, features: np.ndarray | torch.Tensor, device: torch.device, resident: bool = False):
        self.features, self.device = features, torch.device(device)
        if isinstance(features, torch.Tensor):  # made where it is to be used (benchmarks): resident there
            self.resident = features.to(self.device)
        else:
            self.resident = self._upload(features, self.device) if resident else None

    def __len__(self) -> int:
        return len(self.features)

    @staticmethod
    def _upload(features: np.ndarray, device: torch.device) -> torch.Tensor:
        out = torch.empty(features.shape, dtype=torch.from_numpy(np.empty(0, features.dtype)).dtype, device=device)
        for start in range(0, len(features), UPLOAD_ROWS):
            out[start:start + UPLOAD_ROWS] = torch.from_numpy(read_rows(features, slice(start, start + UPLOAD_ROWS)))
        return out

    @property
    def nbytes(self) -> int:
        return int(self.features.nbytes)

    def rows(self, idx: np.ndarray) -> torch.Tensor:
        """float32 rows ``idx`` on the device."""
        if self.resident is not None:
            return self.resident[torch.as_tensor(np.asarray(idx), device=self.device)].float()
        return torch.from_numpy(read_rows(self.features, np.asarray(idx)).astype(np.float32, copy=False)).to(self.device)

    def batches(self, idx: np.ndarray, batch_size: int):
        """float32 tensors of rows ``idx`` in batches, on the device."""
        for start in range(0, len(idx), batch_size):
            yield self.rows(idx[start:start + batch_size])


def training_rows(features: np.ndarray, device: torch.device, policy: str = "auto") -> FeatureRows:
    """The training features as :class:`FeatureRows`, resident on ``device`` when ``policy`` says so (see :func:`keep_resident`)."""
    resident = keep_resident(policy, int(features.nbytes), torch.device(device))
    if resident:
        log.info("features resident on %s (%.2f GiB)", device, features.nbytes / 2**30)
    return FeatureRows(features, device, resident)
