"""Backbone families beyond DINOv2: timm CNNs (ResNet), CLIP ViTs, and the class-token (``_cls``) features.

Each feature is pinned to timm's own forward pass of the full, unmodified
model (random weights: nothing can be downloaded here); a CNN loads a local
weights file; pretrained weights fail fast offline; and every family trains a
tiny virtual subject with random weights, with decoder attention and
attributions on the CNN's grid.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import timm
import torch
import xarray as xr
from safetensors.torch import save_file

from model.backbone import BackboneConfig, build_backbone
from model.errors import InputError, OptionError

from .conftest import tbe

CLIP = "vit_base_patch32_clip_quickgelu_224"  # the original's CLIP is ViT-L/14; the same family, cheaper to build
IMAGES = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)


def test_resnet_tokens_are_the_last_stage_map_and_load_from_a_local_file(tmp_path):
    """``resnet18`` tokens = timm's forward_features (layer4) of the full model, position by position; loaded from a file."""
    torch.manual_seed(7)
    full = timm.create_model("resnet18", pretrained=False).eval()
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, tmp_path / "resnet18.safetensors")
    backbone = build_backbone(BackboneConfig("resnet18", str(tmp_path / "resnet18.safetensors"), feature="tokens"), 64)
    x = backbone.preprocess(IMAGES)
    with torch.no_grad():
        ours, fmap = backbone(x), full.forward_features(x)
    assert backbone.grid == (2, 2) and backbone.dim == 512 and backbone.patch == 32
    assert torch.allclose(ours, fmap.flatten(2).transpose(1, 2), atol=1e-5)
    pooled = build_backbone(BackboneConfig("resnet18", str(tmp_path / "resnet18.safetensors"), feature="pooled"), 64)
    with torch.no_grad():
        assert torch.allclose(pooled(x)[:, 0], fmap.mean((2, 3)), atol=1e-5)
    assert pooled.grid == (1, 1)
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pth")
    with pytest.raises(InputError, match="missing"):
        build_backbone(BackboneConfig("resnet18", str(tmp_path / "wrong.pth"), feature="tokens"), 64)


def test_clip_tokens_are_projected_patch_tokens_and_cls_the_image_embedding():
    """``tokens_proj`` = head(norm(last block))[patches] (the original's clip), ``tokens_proj_cls`` = CLIP's image embedding."""
    tokens = build_backbone(BackboneConfig(CLIP, "random", seed=3, feature="tokens_proj"), 64)
    cls = build_backbone(BackboneConfig(CLIP, "random", seed=3, feature="tokens_proj_cls"), 64)
    torch.manual_seed(3)
    full = timm.create_model(CLIP, pretrained=False, img_size=64, init_values=1.0).eval()
    x = tokens.preprocess(IMAGES)
    with torch.no_grad():
        feats = full.forward_features(x)
        assert torch.allclose(tokens(x), full.head(feats[:, 1:]), atol=1e-4)
        assert torch.allclose(cls(x)[:, 0], full.forward_head(feats), atol=1e-4)
    assert tokens.dim == cls.dim == 512 and tokens.grid == (2, 2) and cls.grid == (1, 1)


def test_dinov2_q_cls_is_the_class_tokens_query():
    backbone = build_backbone(BackboneConfig("vit_small_patch14_dinov2.lvd142m", "random", seed=2, layer=3, feature="q_cls"), 56)
    patches = build_backbone(BackboneConfig("vit_small_patch14_dinov2.lvd142m", "random", seed=2, layer=3, feature="q"), 56)
    torch.manual_seed(2)
    full = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False, img_size=56, init_values=1.0, num_classes=0).eval()
    block = full.blocks[9]
    captured = {}
    handle = block.attn.qkv.register_forward_hook(lambda m, i, o: captured.setdefault("qkv", o))
    x = backbone.preprocess(IMAGES)
    with torch.no_grad():
        ours, grid = backbone(x), patches(x)
        full.forward_features(x)
    handle.remove()
    q = captured["qkv"].reshape(2, 17, 3, 6, -1)[:, :, 0].reshape(2, 17, -1)
    assert ours.shape == (2, 1, 384) and torch.allclose(ours[:, 0], q[:, 0], atol=1e-5)
    assert torch.allclose(grid, q[:, 1:], atol=1e-5)


def test_families_refuse_what_they_do_not_offer_and_pretrained_fails_fast_offline():
    with pytest.raises(OptionError, match="for resnet18"):
        BackboneConfig("resnet18", "random", feature="q").validate()
    with pytest.raises(OptionError, match="stages"):
        BackboneConfig("resnet18", "random", feature="tokens", layer=6).validate()
    start = time.perf_counter()
    with pytest.raises(InputError, match="^backbone.name: "):
        build_backbone(BackboneConfig("resnet18", "pretrained", feature="tokens"), 64)
    assert time.perf_counter() - start < 10
    with pytest.raises(InputError, match="projection head"):
        build_backbone(BackboneConfig("vit_small_patch14_dinov2.lvd142m", "random", feature="tokens_proj"), 56)


@pytest.mark.parametrize("backbone, feature, arch", [
    ("resnet18", "tokens", "transformer"),
    ("resnet18", "pooled", "linear"),
    (CLIP, "tokens_proj", "transformer"),
    ("vit_small_patch14_dinov2.lvd142m", "q_cls", "linear"),
], ids=["resnet", "resnet-pooled-linear", "clip", "dinov2-q-cls-linear"])
def test_every_family_trains_offline(backbone, feature, arch, tiny_data, cache_dir, tmp_path):
    """Random weights, a tiny subject: the run completes, records its features, and (on a grid) explains itself."""
    out = tmp_path / "run"
    assert tbe("-q", "train", "--data-dir", tiny_data, "--cache-dir", cache_dir, "--out", out, "--no-pretrained",
               "--backbone", backbone, "--feature", feature, "--encoder-arch", arch, "--epochs", "2",
               "--hidden-dim", "64", "--nheads", "4", "--dim-feedforward", "64", "--lr", "1e-3") == 0
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"]["name"] == backbone and config["backbone"]["feature"] == feature
    assert np.isfinite(json.loads((out / "metrics.json").read_text())["val_r"]["mean"])
    if arch == "transformer" and backbone == "resnet18":
        maps = tmp_path / "maps.nc"
        assert tbe("-q", "interpret", "--run", out, "--split", "test", "--n-images", "1", "--methods",
                   "attention,saliency", "--rois", "V1v", "--out", maps, "--cache-dir", cache_dir, "--overlays", "0") == 0
        ds = xr.open_dataset(maps)
        assert "attention" not in ds and np.isfinite(ds["attention_mean"].values).all() and np.abs(ds["saliency"].values).sum() > 0
