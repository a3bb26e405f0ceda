"""Shared fixtures: tiny virtual subjects and a tiny random backbone.

``HF_HUB_OFFLINE=1`` is set for every test so that any accidental download
fails at once instead of retrying for a minute.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")

from model.backbone import BackboneConfig  # noqa: E402
from model.synthetic import VirtualConfig, write_virtual_subject  # noqa: E402

TINY = VirtualConfig(subj=1, n_train=60, n_test=12, image_size=112, seed=3)
#: A small random backbone: 8x8 tokens at 112 px, 7 of 12 blocks.
TINY_BACKBONE = BackboneConfig(name="vit_small_patch14_dinov2.lvd142m", weights="random", seed=0,
                               layer=6, feature="tokens", image_size=None)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A tiny virtual subject (read-only: copy it before breaking it)."""
    out = tmp_path_factory.mktemp("tiny")
    write_virtual_subject(out, TINY)
    return out


@pytest.fixture
def data_copy(tiny_data, tmp_path) -> Path:
    """A private copy of the tiny subject that a test may damage."""
    dst = tmp_path / "data"
    shutil.copytree(tiny_data, dst)
    return dst


SMALL = VirtualConfig(subj=1, n_train=240, n_test=40, image_size=112, seed=5)
#: tbe train options for quick runs on SMALL: a narrow decoder, the tiny backbone
QUICK_TRAIN = ["--no-pretrained", "--backbone", TINY_BACKBONE.name, "--enc-output-layer", str(TINY_BACKBONE.layer),
               "--feature", TINY_BACKBONE.feature, "--hidden-dim", "128", "--nheads", "4", "--dim-feedforward", "256",
               "--batch-size", "16", "--lr", "1e-3"]


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """A small virtual subject that a model can learn something from in seconds."""
    out = tmp_path_factory.mktemp("small")
    write_virtual_subject(out, SMALL)
    return out


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One feature cache for the whole session."""
    return tmp_path_factory.mktemp("cache")


def tbe(*args: str) -> int:
    """Run the tbe command line in-process; returns its exit status."""
    from analyses.cli import main

    return main([str(a) for a in args])


@pytest.fixture(scope="session")
def trained_run(small_data, cache_dir, tmp_path_factory) -> Path:
    """A transformer run on the small subject (40 epochs: enough for its attention to find the quadrants)."""
    out = tmp_path_factory.mktemp("runs") / "transformer"
    assert tbe("-q", "train", "--data-dir", small_data, "--cache-dir", cache_dir, "--out", out, "--epochs", "40", *QUICK_TRAIN) == 0
    return out
