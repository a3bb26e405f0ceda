"""Where each ROI's query looks: decoder cross-attention, and the backbone's own attention.

The decoder's cross-attention weights come from the very forward pass that
predicts (``return_attention=True``), per query and head, over the token
grid. For comparison, the backbone's self-attention: the class token's
attention to the patches in the last block run, and attention rollout
(Abnar & Zuidema 2020) through all blocks run. Those need timm's fused
attention off, which is done only while extracting.
"""
from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import torch
import xarray as xr

from model.backbone import Backbone
from model.device import autocast, module_device
from model.errors import InputError
from model.rois import HEMIS
from model.run import Run

from .maps import Inputs, MapGrid, Targets, by_hemi_roi, map_array


@torch.no_grad()
def decoder_attention(run: Run, features: np.ndarray, grid: MapGrid, image_names: list[str],
                      layer: int = -1, batch_size: int = 16) -> xr.Dataset:
    """Cross-attention of every query over the image, per head and head-averaged.

    Returns ``attention`` (image, hemi, roi, head, y, x) and
    ``attention_mean`` (image, hemi, roi, y, x); each query's map sums to 1
    over the token grid (less where tokens fall on padding). Computed on
    the model's device (bf16 autocast on CUDA; the softmax stays float32).
    """
    dev = module_device(run.model)
    if not run.model.capabilities.decoder_attention:
        raise InputError("--methods", f"attention needs the transformer; this run is {run.config.encoder_arch!r}")
    weights, n_layers = [], 0
    for start in range(0, len(features), batch_size):
        x = torch.from_numpy(np.asarray(features[start:start + batch_size], np.float32)).to(dev)
        with autocast(dev):
            stacked = run.model(x, return_attention=True)["attention"]  # (B, layers, heads, Q, T)
        n_layers = stacked.shape[1]
        weights.append(stacked[:, layer].float().cpu())  # (B, heads, Q, T)
    att = torch.cat(weights).permute(0, 2, 1, 3)  # (N, Q, heads, T)
    per_query = grid.from_tokens(att)  # (N, Q, heads, size, size)
    targets = Targets(list(run.queries.hemis), list(run.queries.rois), torch.empty(0))
    arranged, rois = by_hemi_roi(per_query, targets)
    coords = {"image": image_names, "hemi": list(HEMIS), "roi": rois, "head": np.arange(att.shape[2])}
    attrs = {"layer": layer if layer >= 0 else n_layers + layer, "units": "attention weight per token, averaged over its pixels"}
    return xr.Dataset({
        "attention": map_array(arranged, ("image", "hemi", "roi", "head", "y", "x"), coords, grid, "attention", attrs),
        "attention_mean": map_array(arranged.mean(3), ("image", "hemi", "roi", "y", "x"), coords, grid, "attention_mean", attrs),
    })


def query_attention(run: Run, inputs: Inputs, targets: Targets, methods: list[str], settings=None,
                    encoder: torch.nn.Module | None = None) -> xr.Dataset:
    """The map method ``attention``: :func:`decoder_attention` of the targets' ROI queries.

    ``encoder`` replaces the run's (e.g. a randomised copy for the sanity
    checks); ``methods`` and ``settings`` are the registry's common
    arguments, which attention does not need.
    """
    source = run if encoder is None else dataclasses.replace(run, model=encoder)
    att = decoder_attention(source, inputs.tokens, inputs.grid, inputs.names)
    wanted = set(targets.rois)
    return att.sel(roi=[r for r in att.roi.values if r in wanted])


@contextlib.contextmanager
def _captured_self_attention(backbone: Backbone):
    """Record each block's softmax attention (B, heads, N, N) while fused attention is off."""
    captured, handles, fused = [], [], []
    for block in backbone.vit.blocks:
        fused.append(block.attn.fused_attn)
        block.attn.fused_attn = False
        handles.append(block.attn.attn_drop.register_forward_hook(lambda m, inp, out: captured.append(inp[0].detach())))
    try:
        yield captured
    finally:
        for block, was in zip(backbone.vit.blocks, fused):
            block.attn.fused_attn = was
        for h in handles:
            h.remove()


@torch.no_grad()
def backbone_attention(backbone: Backbone, images: torch.Tensor, grid: MapGrid, image_names: list[str]) -> xr.Dataset:
    """The backbone's class-token attention (last block run, per head) and attention rollout.

    The backbone runs where it lives, in float32 (the rollout multiplies
    every block's attention: bf16 errors would compound); the maps are
    combined on the CPU.
    """
    if backbone.num_prefix_tokens < 1:
        raise InputError("--backbone", "this backbone has no class token to read attention from")
    with _captured_self_attention(backbone) as captured:
        backbone(backbone.preprocess(images.to(module_device(backbone))))
    captured = [a.float().cpu() for a in captured]
    if not captured:
        raise InputError("--enc-output-layer", "no attention block runs before the features are taken")
    prefix = backbone.num_prefix_tokens
    cls = captured[-1][:, :, 0, prefix:]  # (B, heads, T)
    rollout = None
    for att in captured:
        a = att.mean(1)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1])
        a = a / a.sum(-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    roll = rollout[:, 0, prefix:]
    roll = roll / roll.sum(-1, keepdim=True)
    # its own head dimension: the backbone's heads are not the decoder's
    coords = {"image": image_names, "backbone_head": np.arange(cls.shape[1])}
    return xr.Dataset({
        "backbone_cls_attention": map_array(grid.from_tokens(cls), ("image", "backbone_head", "y", "x"), coords, grid,
                                            "backbone_cls_attention", {"block": len(captured)}),
        "backbone_rollout": map_array(grid.from_tokens(roll), ("image", "y", "x"), coords, grid,
                                      "backbone_rollout", {"blocks": len(captured)}),
    })
