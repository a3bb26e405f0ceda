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
from model.virtual.writer import VirtualConfig, write_virtual_subject  # noqa: E402

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
