"""The feature cache: hits, misses on any changed key, no half-written entries."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from model import features as feature_module
from model.backbone import build_backbone
from model.errors import InputError
from model.features import extract_features
from model.images import image_batch
from model.subject import load_subject

from .conftest import TINY_BACKBONE


class CountingBackbone(torch.nn.Module):
    """Wraps a backbone and counts its forward calls."""

    def __init__(self, backbone):
        super().__init__()
        self.inner = backbone
        self.calls = 0

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def _backbone(**changes):
    return CountingBackbone(build_backbone(dataclasses.replace(TINY_BACKBONE, **changes), native_size=112))


def _entries(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_hit_does_no_backbone_work(tiny_data, tmp_path):
    images = load_subject(tiny_data, 1).train_images[:20]
    first = _backbone()
    fs = extract_features(first, images, tmp_path, batch_size=8)
    assert first.calls == 3 and fs.features.shape == (20, 64, 384) and fs.features.dtype == np.float16
    assert isinstance(fs.features, np.memmap)
    second = _backbone()
    again = extract_features(second, images, tmp_path, batch_size=8)
    assert second.calls == 0 and again.path == fs.path
    with torch.no_grad():
        direct = first.inner(first.inner.preprocess(image_batch(list(images[:4]))))
    assert np.allclose(again.features[:4], direct.numpy(), atol=2e-2, rtol=1e-2)
    assert again.names == [p.name for p in images]


@pytest.mark.parametrize("change", [dict(layer=5), dict(feature="q"), dict(image_size=98), dict(seed=1)])
def test_changed_key_misses(tiny_data, tmp_path, change):
    images = load_subject(tiny_data, 1).train_images[:8]
    base = extract_features(_backbone(), images, tmp_path)
    changed = _backbone(**change)
    other = extract_features(changed, images, tmp_path)
    assert changed.calls > 0 and other.path != base.path


def test_changed_images_miss(data_copy, tmp_path):
    cache = tmp_path / "cache"
    images = list(load_subject(data_copy, 1).train_images[:8])
    base = extract_features(_backbone(), images, cache)
    images[3].write_bytes(images[5].read_bytes())  # same name, new content
    again = _backbone()
    assert extract_features(again, images, cache).path != base.path and again.calls > 0
    fewer = _backbone()
    assert extract_features(fewer, images[:7], cache).path != base.path


def test_interrupted_extraction_leaves_no_entry(tiny_data, tmp_path, monkeypatch):
    images = load_subject(tiny_data, 1).train_images[:24]
    calls = {"n": 0}

    def interrupted(paths, *side):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return image_batch(paths, *side)

    monkeypatch.setattr(feature_module, "image_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract_features(_backbone(), images, tmp_path, batch_size=8)
    assert _entries(tmp_path) == [], "neither a complete-looking entry nor a partial one is left"
    monkeypatch.undo()
    fresh = _backbone()
    extract_features(fresh, images, tmp_path, batch_size=8)
    assert fresh.calls == 3, "the next run recomputes everything"


def test_unreadable_image_midway_is_a_clear_error(data_copy, tmp_path):
    images = list(load_subject(data_copy, 1).train_images[:24])
    images[13].write_bytes(images[13].read_bytes()[:200])  # truncated PNG: header fine, pixels not
    cache = tmp_path / "cache"
    with pytest.raises(InputError, match=images[13].name):
        extract_features(_backbone(), images, cache, batch_size=8)
    assert _entries(cache) == []
