"""Maps and analyses made batch by batch: the results of all images at once, never more than a batch in memory.

Memory itself is measured by ``benchmarks/bench_interpret.py`` (peak RSS at 4
and at 64 images); here the structure that makes it flat is checked: each
step sees at most a batch of images and reads at most a batch of feature
rows, and the batched results equal those of all images at once.
"""
from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import xarray as xr

from analyses import attention_selectivity, responses
from analyses.responses import (features_for, measured_roi_means, measured_vertices, predicted_roi_means,
                                predicted_vertices, roi_means)
from interpret import pipeline
from interpret.attention import backbone_attention
from interpret.attribution import Settings
from interpret.mapfile import MapWriter
from interpret.maps import MapGrid
from interpret.pipeline import check_maps, compute_maps, map_job, open_images, prepare, write_maps
from model.backbone import build_backbone
from model.features import CachedRows, extract_features
from model.runs import open_run

from .conftest import TINY_BACKBONE, tbe


class RecordingRows:
    """Feature rows that record how many rows each read asks for (an array would hide it)."""

    def __init__(self, array: np.ndarray):
        self.array, self.reads = array, []
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, idx):
        part = np.asarray(self.array[idx])
        self.reads.append(len(part) if part.ndim == self.ndim else 1)
        return part


def _assert_close(a: xr.Dataset, b: xr.Dataset) -> None:
    assert set(a.data_vars) == set(b.data_vars)
    for name in a.data_vars:
        x, y = a[name].transpose(*b[name].dims).values, b[name].values
        scale = np.nanmax(np.abs(y)) if np.isfinite(y).any() else 1.0
        assert np.array_equal(np.isnan(x), np.isnan(y)), name
        assert np.allclose(x, y, rtol=1e-4, atol=1e-5 * scale, equal_nan=True), name
    for name in a.coords:
        assert np.array_equal(a[name].values, b[name].values), name


# --------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------

def _upsampled_and_pooled(maps: torch.Tensor, grid: MapGrid) -> torch.Tensor:
    """The definition: nearest upsampling of the tokens to the padded input, crop to the image, area pooling."""
    lead = maps.shape[:-1]
    full = F.interpolate(maps.reshape(-1, 1, *grid.token_grid).float(), size=(grid.input_size, grid.input_size),
                         mode="nearest")
    return F.adaptive_avg_pool2d(full[..., :grid.image_side, :grid.image_side], grid.size).reshape(*lead, grid.size,
                                                                                                     grid.size)


@pytest.mark.parametrize("size, side, tokens, patch", [(124, 434, 31, 14), (32, 112, 8, 14), (124, 425, 31, 14),
                                                       (50, 220, 16, 14), (37, 100, 8, 14)])
def test_token_maps_are_the_tokens_upsampled_cropped_and_pooled(size, side, tokens, patch):
    grid = MapGrid(size, side, tokens * patch, (tokens, tokens))
    maps = torch.rand(3, 2, tokens * tokens)
    assert torch.allclose(grid.from_tokens(maps), _upsampled_and_pooled(maps, grid), atol=1e-6)
    assert grid.token_weights(tokens).sum(1) == pytest.approx(np.ones(size))


def test_rollout_folded_block_by_block_is_the_rollout_of_all_blocks(tiny_data):
    backbone = build_backbone(TINY_BACKBONE, native_size=112)
    images = torch.rand(2, 3, 112, 112)
    captured, handles = [], []
    for block in backbone.vit.blocks:  # the definition: every block's attention kept, then multiplied
        block.attn.fused_attn = False
        handles.append(block.attn.attn_drop.register_forward_hook(lambda m, i, o: captured.append(i[0].clone())))
    with torch.no_grad():
        backbone(backbone.preprocess(images))
    for h in handles:
        h.remove()
    rollout = None
    for att in captured:
        a = 0.5 * att.mean(1) + 0.5 * torch.eye(att.shape[-1])
        a = a / a.sum(-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    roll = rollout[:, 0, 1:] / rollout[:, 0, 1:].sum(-1, keepdim=True)
    grid = MapGrid.for_backbone(backbone)
    ds = backbone_attention(backbone, images, grid, ["a", "b"])
    assert np.allclose(ds["backbone_rollout"].values, grid.from_tokens(roll).numpy(), atol=1e-6)
    assert np.allclose(ds["backbone_cls_attention"].values, grid.from_tokens(captured[-1][:, :, 0, 1:]).numpy(), atol=1e-6)
    assert ds["backbone_rollout"].attrs["blocks"] == len(captured) == backbone.block_index + 1 == 7


def test_the_map_file_is_the_batches_put_together_and_nothing_on_failure(tmp_path):
    def batch(names, rois, seed):
        values = np.random.default_rng(seed).random((len(names), 2, len(rois), 3, 3)).astype(np.float32)
        return xr.Dataset({"m": (("image", "hemi", "roi", "y", "x"), values)},
                          coords={"image": names, "hemi": ["lh", "rh"], "roi": rois, "y": [1., 2, 3], "x": [1., 2, 3]})

    parts = [batch(["a.png", "bb.png"], ["V1v", "FFA-1"], 0), batch(["c.png"], ["V1v", "FFA-1"], 1)]
    with MapWriter(tmp_path / "maps.nc") as writer:
        for part in parts:
            writer.append(part)
    with xr.open_dataset(tmp_path / "maps.nc") as ds:
        xr.testing.assert_identical(ds.load(), xr.concat(parts, "image"))
    with pytest.raises(ValueError, match="other 'roi'"):
        with MapWriter(tmp_path / "other.nc") as writer:
            writer.append(parts[0])
            writer.append(batch(["d.png"], ["V1v", "EBA"], 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.nc"], "nothing half-written is left"


# --------------------------------------------------------------------------
# The map jobs
# --------------------------------------------------------------------------

@contextlib.contextmanager
def _batch_sizes(monkeypatch):
    """Record the number of images of every call of :func:`interpret.pipeline.compute_maps`."""
    sizes, real = [], pipeline.compute_maps

    def recorded(run, job, inputs, *args, **kwargs):
        sizes.append(len(inputs))
        return real(run, job, inputs, *args, **kwargs)

    monkeypatch.setattr(pipeline, "compute_maps", recorded)
    yield sizes
    monkeypatch.setattr(pipeline, "compute_maps", real)


def test_maps_written_batch_by_batch_are_the_maps_of_all_images(trained_run, cache_dir, tmp_path, monkeypatch):
    run = open_run(trained_run)
    job = map_job(run, "val", 5, ["attention", "saliency", "token_integrated_gradients"], ["V1v", "FFA-1"],
                  Settings(n_steps=8), backbone_attention=True, batch_size=2)
    whole = compute_maps(run, job, prepare(run, job, cache_dir))
    source = open_images(run, job, cache_dir)
    source.tokens = RecordingRows(np.asarray(source.tokens))
    with _batch_sizes(monkeypatch) as sizes:
        out = write_maps(run, job, source, tmp_path / "maps.nc")
    assert sizes == [2, 2, 1] and max(source.tokens.reads) <= 2
    with xr.open_dataset(out) as ds:
        _assert_close(ds.load(), whole)
        assert {"backbone_rollout", "backbone_cls_attention"} <= set(ds.data_vars)


def test_backbone_attention_only_when_asked(trained_run, cache_dir, tmp_path, monkeypatch):
    calls, real = [], pipeline.backbone_attention
    monkeypatch.setattr(pipeline, "backbone_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    run = open_run(trained_run)
    job = map_job(run, "val", 2, ["attention"], ["V1v"])
    with xr.open_dataset(write_maps(run, job, open_images(run, job, cache_dir), tmp_path / "maps.nc")) as ds:
        assert not any(name.startswith("backbone") for name in ds.data_vars) and calls == []
    assert tbe("-q", "interpret", "--run", trained_run, "--cache-dir", cache_dir, "--n-images", "3", "--methods",
               "attention", "--rois", "V1v", "--backbone-attention", "--batch-size", "2", "--overlays", "1",
               "--out", tmp_path / "asked.nc") == 0
    with xr.open_dataset(tmp_path / "asked.nc") as ds:
        assert ds.sizes["image"] == 3 and "backbone_rollout" in ds and len(calls) == 2
    assert (tmp_path / "asked_overlay_0_lh.png").is_file()


def test_checks_batch_by_batch_are_the_checks_of_all_images(trained_run, cache_dir, monkeypatch):
    run = open_run(trained_run)
    job = map_job(run, "val", 4, ["attention", "token_integrated_gradients"], ["V1v", "FFA-1"], Settings(n_steps=4),
                  batch_size=4)
    whole = check_maps(run, job, prepare(run, job, cache_dir), faithfulness_rois=("V1v",), faithfulness_images=3)
    with _batch_sizes(monkeypatch) as sizes:
        batched = check_maps(run, dataclasses.replace(job, batch_size=2), open_images(run, job, cache_dir),
                             faithfulness_rois=("V1v",), faithfulness_images=3)
    assert max(sizes) == 2 and sizes.count(2) >= 4  # the job's maps, and the sanity cascade's, a batch at a time
    assert set(whole) == set(batched) == {"sanity", "localization", "faithfulness", "attention"}
    for name, table in whole.items():
        assert len(table) > 0, name
        pd.testing.assert_frame_equal(batched[name], table, check_exact=False, rtol=1e-4, atol=1e-6)


def test_interpret_refuses_a_batch_of_no_images(trained_run, tmp_path, capsys):
    assert tbe("interpret", "--run", trained_run, "--batch-size", "0", "--out", tmp_path / "m.nc") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --batch-size: must be a whole number of images >= 1, got 0"]
    assert not (tmp_path / "m.nc").exists()


# --------------------------------------------------------------------------
# Features and responses of the analyses (routing, claims, selectivity, top images)
# --------------------------------------------------------------------------

def test_cached_rows_are_read_on_demand(trained_run, cache_dir):
    run = open_run(trained_run)
    rows = [("train", int(i)) for i in run.val_indices[:4]] + [("test", 3), ("test", 0)]
    paths = [run.subject.images(split)[i] for split, i in rows]
    feats = features_for(run, paths, rows, cache_dir)
    assert isinstance(feats, CachedRows) and feats.shape[0] == 6 and feats.dtype == np.float32
    cached = {split: extract_features(run.shared_backbone, run.subject.images(split), cache_dir).features
              for split in ("train", "test")}
    expected = np.stack([cached[split][i] for split, i in rows]).astype(np.float32)
    assert np.array_equal(np.asarray(feats), expected)
    assert np.array_equal(feats[np.array([4, 1])], expected[[4, 1]]) and np.array_equal(feats[2:5], expected[2:5])


def test_attention_is_read_a_batch_of_features_at_a_time(trained_run, cache_dir, monkeypatch):
    run = open_run(trained_run)
    rows = [("train", int(i)) for i in run.val_indices[:7]]
    feats = np.asarray(features_for(run, [run.subject.train_images[i] for _, i in rows], rows, cache_dir))
    whole, queries = attention_selectivity.token_attention(run, feats)
    monkeypatch.setattr(attention_selectivity, "BATCH", 3)
    recorded = RecordingRows(feats)
    batched, same_queries = attention_selectivity.token_attention(run, recorded)
    assert recorded.reads == [3, 3, 1] and same_queries == queries and "unknown" not in {r for _, r in queries}
    assert batched.shape == (7, len(queries), feats.shape[1]) and np.allclose(batched, whole, atol=1e-6)


def test_responses_in_chunks_are_those_of_all_images(trained_run, cache_dir, monkeypatch):
    run = open_run(trained_run)
    rows = [("train", int(i)) for i in run.val_indices[:9]] + [None, ("test", 1)]
    paths = [run.subject.images(r[0])[r[1]] if r else run.subject.test_images[5] for r in rows]
    feats = np.asarray(features_for(run, paths, None, cache_dir), np.float32)
    whole = roi_means(predicted_vertices(run, feats), run.subject)
    measured = roi_means(measured_vertices(run, rows), run.subject)
    monkeypatch.setattr(responses, "PREDICT_CHUNK", 4)
    recorded = RecordingRows(feats)
    chunked = predicted_roi_means(run, recorded)
    assert max(recorded.reads) <= 4
    assert np.allclose(chunked.values, whole.values, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert np.allclose(measured_roi_means(run, rows).values, measured.values, equal_nan=True)
    assert np.isnan(measured_roi_means(run, rows).values[9]).all()  # an image without fMRI
    assert measured_roi_means(run, [None] * 5) is None


def test_planted_masks_are_read_a_batch_of_images_at_a_time(trained_run, monkeypatch):
    """Full-resolution masks (0.9 MB per image at 434 px) are reduced batch by batch, to the same values."""
    from analyses.routing import split_images
    from analyses.stimuli import subject_heldout
    from interpret.maps import select_images
    from model import truth as truth_module

    run = open_run(trained_run)
    whole_routing = split_images(run, "val", 100).masks
    whole_heldout = subject_heldout(run).masks
    whole_faces = select_images(run, "val", 100, containing="face")
    read, real = [], truth_module.GroundTruth.masks

    def recorded(self, split, names=None):
        read.append(len(names))
        return real(self, split, names)

    monkeypatch.setattr(truth_module, "MASK_BATCH", 5)
    monkeypatch.setattr(truth_module.GroundTruth, "masks", recorded)
    assert np.array_equal(split_images(run, "val", 100).masks, whole_routing)
    assert np.array_equal(subject_heldout(run).masks, whole_heldout)
    assert select_images(run, "val", 100, containing="face") == whole_faces and len(whole_faces) >= 2
    assert read and max(read) <= 5 and len(read) > 3


@pytest.mark.parametrize("side, size, cells", [(434, 434, 64), (425, 434, 64), (112, 112, 64), (220, 224, 50)])
def test_token_coverage_is_the_masks_upsampled_padded_and_pooled(side, size, cells):
    """The definition (nearest upsampling to the image, zero padding, mean over each patch), without the
    upsampled masks it used to make (30 MB per 8 images at 434 px, which fragmented the heap)."""
    from types import SimpleNamespace

    backbone = SimpleNamespace(image_side=side, input_size=size, patch=14)
    masks = np.random.default_rng(0).random((3, 2, cells, cells)).astype(np.float32)
    masks[1, 0] = np.nan  # an unknown mask stays unknown
    t = torch.from_numpy(masks).reshape(-1, 1, cells, cells)
    full = F.pad(F.interpolate(t, size=(side, side), mode="nearest"), (0, size - side, 0, size - side))
    expected = F.avg_pool2d(full, 14).reshape(3, 2, -1).double().numpy()
    tokens, image = attention_selectivity.token_coverage(masks, backbone)
    assert np.array_equal(np.isnan(tokens), np.isnan(expected)) and np.isnan(tokens[1, 0]).all()
    assert np.allclose(tokens, expected, atol=1e-6, equal_nan=True)
    ones = F.avg_pool2d(F.pad(torch.ones(1, 1, side, side), (0, size - side, 0, size - side)), 14).ravel().numpy()
    assert np.allclose(image, ones, atol=1e-6)
