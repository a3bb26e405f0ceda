"""Where each ROI's query looks: decoder cross-attention, and the backbone's own attention.

The decoder's cross-attention weights come from the very forward pass that
predicts (``return_attention=True``), per query and head, over the token
grid. For comparison, the backbone's self-attention: the class token's
attention to the patches in the last block run, and attention rollout
(Abnar & Zuidema 2020) through all blocks run. Those need timm's fused
attention off, which is done only while extracting.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import xarray as xr

from model.device import autocast, module_device
from model.encoders import TokenBackbone
from model.errors import OptionError
from model.rois import HEMIS
from model.runs import Run

from .maps import Inputs, MapGrid, Targets, by_hemi_roi, map_array


@torch.no_grad()
def decoder_attention(run: Run, features: np.ndarray, grid: MapGrid, image_names: list[str],
                      layer: int = -1, batch_size: int = 16, rois: list[str] | None = None,
                      each_head: bool = False) -> xr.Dataset:
    """Cross-attention of every query over the image, head-averaged, and per head if ``each_head``.

    Returns ``attention_mean`` (image, hemi, roi, y, x), whose attributes
    give the layer and the number of heads, and with ``each_head`` also
    ``attention`` (image, hemi, roi, head, y, x), as many times the head
    average's size as there are heads: only when asked (``tbe interpret
    --attention-heads each``). Each query's head-averaged
    map sums to 1 over the token grid (less where tokens fall on padding),
    and so does each head's with standard attention; with the windows'
    shared softmax a head's map sums to the number of heads times its share
    of the query's attention (:mod:`model.encoders.windows`). ``rois``: only
    these ROIs' queries (default: every query). Computed on the model's
    device (bf16 autocast on CUDA; the softmax stays float32).
    """
    dev = module_device(run.model)
    if not run.model.capabilities.decoder_attention:
        raise OptionError("methods", f"attention needs the transformer; this run is {run.config.encoder_arch!r}")
    wanted = set(run.queries.rois) if rois is None else set(rois)
    keep = [q for q, roi in enumerate(run.queries.rois) if roi in wanted]
    weights, n_layers = [], 0
    for start in range(0, len(features), batch_size):
        x = torch.from_numpy(np.asarray(features[start:start + batch_size], np.float32)).to(dev)
        with autocast(dev):
            stacked = run.model(x, return_attention=True)["attention"]  # (B, layers, heads, Q, T)
        n_layers = stacked.shape[1]
        weights.append(stacked[:, layer][:, :, keep].float().cpu())  # (B, heads, kept Q, T)
    att = torch.cat(weights).permute(0, 2, 1, 3)  # (N, Q, heads, T)
    per_query = grid.from_tokens(att)  # (N, Q, heads, size, size)
    targets = Targets([run.queries.hemis[q] for q in keep], [run.queries.rois[q] for q in keep], torch.empty(0))
    arranged, rois = by_hemi_roi(per_query, targets)
    coords = {"image": image_names, "hemi": list(HEMIS), "roi": rois, "head": np.arange(att.shape[2])}
    attrs = {"layer": layer if layer >= 0 else n_layers + layer, "heads": att.shape[2],
             "units": "attention weight per token, averaged over its pixels"}
    maps = {"attention_mean": map_array(arranged.mean(3), ("image", "hemi", "roi", "y", "x"), coords, grid,
                                        "attention_mean", attrs)}
    if each_head:
        maps["attention"] = map_array(arranged, ("image", "hemi", "roi", "head", "y", "x"), coords, grid, "attention", attrs)
    return xr.Dataset(maps)


def query_attention(run: Run, inputs: Inputs, targets: Targets, methods: list[str], settings=None,
                    encoder: torch.nn.Module | None = None) -> xr.Dataset:
    """The map method ``attention``: :func:`decoder_attention` of the targets' ROI queries.

    ``encoder`` replaces the run's (e.g. a randomised copy for the sanity
    checks); ``methods`` is the registry's common argument, which attention
    does not need; of ``settings`` it reads ``attention_heads`` (default:
    the head average only).
    """
    source = run if encoder is None else dataclasses.replace(run, model=encoder)
    each_head = getattr(settings, "attention_heads", "mean") == "each"
    return decoder_attention(source, inputs.tokens, inputs.grid, inputs.names, rois=list(dict.fromkeys(targets.rois)),
                             each_head=each_head)


class _Rollout:
    """Attention rollout and the last block's class-token attention, folded in block by block.

    Only the product so far (B, N, N) and the newest block's class-token
    row are kept: holding every block's (B, heads, N, N) attention took
    0.5 GB per image for ViT-B/14 at 434 px.
    """

    def __init__(self, prefix: int):
        self.prefix, self.blocks = prefix, 0
        self.product: torch.Tensor | None = None
        self.cls: torch.Tensor | None = None

    def add(self, att: torch.Tensor) -> None:
        att = att.detach().float().cpu()  # (B, heads, N, N), combined on the CPU
        self.cls = att[:, :, 0, self.prefix:]  # (B, heads, T) of the latest block
        a = att.mean(1)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1])
        a = a / a.sum(-1, keepdim=True)
        self.product = a if self.product is None else a @ self.product
        self.blocks += 1


@torch.no_grad()
def backbone_attention(backbone: TokenBackbone, images: torch.Tensor, grid: MapGrid, image_names: list[str]) -> xr.Dataset:
    """The backbone's class-token attention (last block run, per head) and attention rollout.

    The backbone runs where it lives, in float32 (the rollout multiplies
    every block's attention: bf16 errors would compound); the maps are
    combined on the CPU, one block at a time.
    """
    if not (backbone.has_class_token and backbone.self_attention):
        raise OptionError("backbone.name", "this backbone has no class token to read attention from")
    rollout = _Rollout(backbone.prefix_tokens)
    with backbone.record_attention(rollout.add):
        backbone(backbone.preprocess(images.to(module_device(backbone))))
    if not rollout.blocks:
        raise OptionError("backbone.layer", "no attention block runs before the features are taken")
    roll = rollout.product[:, 0, rollout.prefix:]
    roll = roll / roll.sum(-1, keepdim=True)
    # its own head dimension: the backbone's heads are not the decoder's
    coords = {"image": image_names, "backbone_head": np.arange(rollout.cls.shape[1])}
    return xr.Dataset({
        "backbone_cls_attention": map_array(grid.from_tokens(rollout.cls), ("image", "backbone_head", "y", "x"), coords,
                                            grid, "backbone_cls_attention", {"block": rollout.blocks}),
        "backbone_rollout": map_array(grid.from_tokens(roll), ("image", "y", "x"), coords, grid,
                                      "backbone_rollout", {"blocks": rollout.blocks}),
    })
