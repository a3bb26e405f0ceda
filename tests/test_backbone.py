"""The backbone: local DINOv2 checkpoints, truncation, q features, random init, offline failure.

Pretrained weights cannot be downloaded here; the download path itself is
only tested for failing fast and clearly when offline.
"""
from __future__ import annotations

import time

import pytest
import timm
import torch
from safetensors.torch import save_file

from model.backbone import BackboneConfig, build_backbone, resolve_layer
from model.errors import InputError

SMALL = "vit_small_patch14_dinov2.lvd142m"


@pytest.fixture(scope="module")
def dinov2_checkpoint(tmp_path_factory):
    """A random ViT-S/14 saved with the official DINOv2 key names at 518 px (37x37 pos_embed)."""
    torch.manual_seed(1)
    model = timm.create_model(SMALL, pretrained=False, img_size=518, init_values=1.0, num_classes=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["mask_token"] = torch.zeros(1, model.embed_dim)
    folder = tmp_path_factory.mktemp("ckpt")
    torch.save(state, folder / "dinov2_vits14_pretrain.pth")
    save_file(state, folder / "dinov2_vits14_pretrain.safetensors")
    return folder, state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_dinov2_checkpoint_loads_into_224_model(dinov2_checkpoint, suffix):
    folder, state = dinov2_checkpoint
    path = folder / f"dinov2_vits14_pretrain{suffix}"
    backbone = build_backbone(BackboneConfig(SMALL, str(path), layer=1, feature="tokens"), native_size=224)
    assert backbone.grid == (16, 16)
    loaded = backbone.vit.state_dict()
    blocks = [k for k in state if k.startswith("blocks.")]
    assert len(blocks) > 100
    for key in blocks + ["patch_embed.proj.weight", "cls_token"]:
        assert torch.equal(loaded[key], state[key]), key
    assert loaded["pos_embed"].shape == (1, 1 + 16 * 16, 384), "pos_embed resampled from 37x37 to 16x16"
    assert torch.equal(loaded["pos_embed"][:, 0], state["pos_embed"][:, 0]), "class-token position kept"
    assert "file:" in backbone.weights_digest


def test_mismatched_or_corrupt_checkpoint_is_refused(dinov2_checkpoint, tmp_path):
    folder, _ = dinov2_checkpoint
    with pytest.raises(InputError, match="dinov2_vits14_pretrain.pth: does not fit"):
        build_backbone(BackboneConfig("vit_base_patch14_dinov2.lvd142m", str(folder / "dinov2_vits14_pretrain.pth")), 224)
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="broken.safetensors: unreadable checkpoint"):
        build_backbone(BackboneConfig(SMALL, str(bad)), 224)
    with pytest.raises(InputError, match="missing checkpoint file"):
        build_backbone(BackboneConfig(SMALL, str(tmp_path / "nope.pth")), 224)


def test_truncated_backbone_matches_full_model():
    """Features of block k from the truncated model equal timm's intermediate output of block k, bit for bit."""
    config = BackboneConfig(SMALL, "random", seed=2, layer=4, feature="tokens")
    backbone = build_backbone(config, native_size=112)
    assert len(backbone.vit.blocks) == 9 and backbone.block_index == 8
    torch.manual_seed(2)
    full = timm.create_model(SMALL, pretrained=False, img_size=112, init_values=1.0, num_classes=0).eval()
    x = backbone.preprocess(torch.randint(0, 256, (2, 3, 112, 112), dtype=torch.uint8))
    with torch.no_grad():
        ours = backbone(x)
        ref = full.forward_intermediates(x, indices=[8], output_fmt="NLC", intermediates_only=True)[0]
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("layer", [1, 5, 12])
def test_q_feature_is_the_blocks_attention_query(layer):
    """``q`` is what block k's own qkv projection computes for its queries inside the full, unmodified timm model.

    The reference is taken with a hook from timm's forward pass of all 12 blocks (heads concatenated, after
    q_norm, class token dropped), so the feature is pinned to its definition, not to our code; layer 12 is the
    first block, whose input is the patch embedding itself.
    """
    backbone = build_backbone(BackboneConfig(SMALL, "random", seed=2, layer=layer, feature="q"), native_size=112)
    torch.manual_seed(2)
    full = timm.create_model(SMALL, pretrained=False, img_size=112, init_values=1.0, num_classes=0).eval()
    block = full.blocks[12 - layer]
    captured = {}
    handle = block.attn.qkv.register_forward_hook(lambda m, i, o: captured.setdefault("qkv", o))
    x = backbone.preprocess(torch.randint(0, 256, (2, 3, 112, 112), dtype=torch.uint8))
    with torch.no_grad():
        q = backbone(x)
        full.forward_features(x)
    handle.remove()
    b, n, _ = captured["qkv"].shape
    expected = block.attn.q_norm(captured["qkv"].reshape(b, n, 3, block.attn.num_heads, -1)[:, :, 0]).reshape(b, n, -1)
    assert q.shape == (2, 64, 384)
    assert torch.equal(q, expected[:, full.num_prefix_tokens:])
    assert len(backbone.vit.blocks) == 13 - layer, "blocks after the one used are not kept"


def test_random_blocks_are_not_near_identity():
    backbone = build_backbone(BackboneConfig(SMALL, "random", seed=0, layer=1, feature="tokens"), native_size=112)
    pairs = []
    handles = [block.register_forward_hook(lambda m, inp, out: pairs.append((inp[0], out))) for block in backbone.vit.blocks[:3]]
    with torch.no_grad():
        backbone(backbone.preprocess(torch.randint(0, 256, (2, 3, 112, 112), dtype=torch.uint8)))
    for h in handles:
        h.remove()
    assert len(pairs) == 3
    for x, y in pairs:
        assert (y - x).norm() / x.norm() > 0.2
    assert "RANDOM weights" in backbone.describe()


def test_native_size_is_padded_to_the_patch_grid():
    """The seed fed 425-px images padded to 434 (31 x 31 patches of 14)."""
    backbone = build_backbone(BackboneConfig("vit_base_patch14_dinov2.lvd142m", "random", layer=12, feature="q"), native_size=425)
    assert backbone.input_size == 434 and backbone.grid == (31, 31)
    x = backbone.preprocess(torch.full((1, 3, 425, 425), 255, dtype=torch.uint8))
    assert x.shape[-1] == 434 and torch.all(x[..., 425:] == 0), "padding after normalisation, as the seed did"
    resized = build_backbone(BackboneConfig(SMALL, "random", image_size=224), native_size=425)
    assert resized.preprocess(torch.zeros((1, 3, 425, 425), dtype=torch.uint8)).shape[-1] == 224


def test_layer_choice_counts_from_the_end():
    assert resolve_layer(1, 12) == 11 and resolve_layer(-1, 12) == 11 and resolve_layer(12, 12) == 0
    for bad in (0, 13, -13):
        with pytest.raises(InputError, match="^backbone.layer: "):
            resolve_layer(bad, 12)


def test_pretrained_offline_fails_fast_with_advice():
    start = time.monotonic()
    with pytest.raises(InputError, match="`backbone.weights` FILE"):
        build_backbone(BackboneConfig("vit_base_patch14_dinov2.lvd142m", "pretrained"), 425)
    assert time.monotonic() - start < 20


def test_unknown_backbone_and_feature():
    with pytest.raises(InputError, match="unknown timm model"):
        build_backbone(BackboneConfig("vit_does_not_exist", "random"), 224)
    with pytest.raises(InputError, match="unknown feature"):
        build_backbone(BackboneConfig(SMALL, "random", feature="keys"), 224)


@pytest.mark.parametrize("layer", [1, 4])
def test_tokens_norm_are_block_tokens_through_the_final_norm(layer):
    """``tokens_norm`` (the original's ``dinov2``: get_intermediate_layers(norm=True)) is block k's output through
    the final LayerNorm, as timm's forward_intermediates(norm=True) of the full model gives it."""
    backbone = build_backbone(BackboneConfig(SMALL, "random", seed=2, layer=layer, feature="tokens_norm"), native_size=112)
    torch.manual_seed(2)
    full = timm.create_model(SMALL, pretrained=False, img_size=112, init_values=1.0, num_classes=0).eval()
    x = backbone.preprocess(torch.randint(0, 256, (2, 3, 112, 112), dtype=torch.uint8))
    with torch.no_grad():
        ours = backbone(x)
        normed = full.forward_intermediates(x, indices=[12 - layer], norm=True, output_fmt="NLC", intermediates_only=True)[0]
        raw = full.forward_intermediates(x, indices=[12 - layer], norm=False, output_fmt="NLC", intermediates_only=True)[0]
    assert ours.shape == (2, 64, 384)
    assert torch.allclose(ours, normed, atol=1e-5)
    assert not torch.allclose(ours, raw, atol=1e-2)
    assert backbone.vit.blocks[-1].attn is backbone.vit.blocks[-1].block.attn  # attention hooks find the block's own
