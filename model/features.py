"""The feature cache: backbone features computed once, reused by every run.

An entry is keyed by everything that changes the features (backbone name,
weights digest, block, feature kind, input size, and a digest of the image
files' bytes), holds ``features.npy`` (images x tokens x channels, float16,
memory-mapped on read) and ``meta.json``, and is written under a temporary
name and renamed into place only when complete, so an interrupted
extraction never leaves an entry that looks complete.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .backbone import Backbone, image_batch
from .device import autocast, pick_device
from .files import atomic_directory, digest_files, digest_json, write_json
from .progress import progress

log = logging.getLogger(__name__)

FEATURE_FORMAT = 1


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


def cache_key(backbone: Backbone, image_paths: Sequence[Path]) -> dict:
    """Everything the features depend on."""
    return {
        "format": FEATURE_FORMAT,
        "backbone": backbone.config.name,
        "weights": backbone.weights_digest,
        "block": backbone.block_index,
        "depth": backbone.depth,
        "feature": backbone.config.feature,
        "image_size": backbone.config.image_size,
        "input_size": backbone.input_size,
        "images": digest_files(image_paths),
        "n_images": len(image_paths),
    }


def open_entry(path: Path) -> FeatureSet:
    meta = json.loads((path / "meta.json").read_text())
    features = np.load(path / "features.npy", mmap_mode="r")
    return FeatureSet(path, features, meta["names"], tuple(meta["grid"]), meta)


def extract_features(backbone: Backbone, image_paths: Sequence[Path], cache_dir: str | Path | None = None,
                     batch_size: int = 16, device: str = "auto", desc: str = "backbone features") -> FeatureSet:
    """Features of ``image_paths`` from the cache, computing them only on a miss."""
    image_paths = [Path(p) for p in image_paths]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(backbone, image_paths)
    entry = cache_dir / digest_json(key)
    if (entry / "meta.json").is_file():
        log.info("feature cache hit: %s", entry)
        return open_entry(entry)

    dev = pick_device(device)
    backbone = backbone.to(dev)
    n_tokens = backbone.grid[0] * backbone.grid[1]
    try:
        with atomic_directory(entry) as tmp:
            out = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float16,
                                            shape=(len(image_paths), n_tokens, backbone.dim))
            starts = range(0, len(image_paths), batch_size)
            for start in progress(starts, desc=desc, unit="batch"):
                batch = image_batch(image_paths[start:start + batch_size]).to(dev)
                with torch.inference_mode(), autocast(dev):
                    feats = backbone(backbone.preprocess(batch))
                out[start:start + len(batch)] = feats.float().cpu().numpy().astype(np.float16)
            out.flush()
            del out
            write_json(tmp / "meta.json", {**key, "names": [p.name for p in image_paths],
                                           "grid": list(backbone.grid), "dim": backbone.dim,
                                           "describe": backbone.describe()})
    except FileExistsError:
        pass  # another process (e.g. a DDP rank) completed the same entry first
    except OSError:
        if not (entry / "meta.json").is_file():
            raise
    return open_entry(entry)


def clear_partial(cache_dir: str | Path) -> int:
    """Remove leftovers of killed extractions; returns how many were removed."""
    removed = 0
    for path in Path(cache_dir).glob(".*.partial-*"):
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


def subject_features(data_dir: str | Path, subj: int, config, cache_dir: str | Path | None = None,
                     batch_size: int = 16, device: str = "auto") -> dict[str, FeatureSet]:
    """Training and test features of one subject (from the cache where possible)."""
    from .backbone import build_backbone, native_size
    from .subject import load_subject

    subject = load_subject(data_dir, subj)
    backbone = build_backbone(config, native_size(subject.train_images[0]))
    log.info("backbone: %s", backbone.describe())
    return {split: extract_features(backbone, subject.images(split), cache_dir, batch_size, device,
                                    desc=f"{split} features")
            for split in ("train", "test")}
