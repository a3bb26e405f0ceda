"""The frozen vision transformer that turns images into tokens.

Any timm ViT by name. Weights come from one of three sources:

* ``pretrained``: timm's pretrained weights (downloaded from the Hugging Face
  hub on a user's machine; offline, we fail within seconds with a message
  saying how to supply them);
* a local checkpoint file (official DINOv2 ``.pth`` or ``.safetensors``,
  any training resolution; the position embedding is resampled);
* ``random``: a seeded random initialisation with LayerScale at 1.0, because
  timm's default of 1e-5 leaves every block near-identity (DESIGN.md section 6).

The model is truncated at the layer used: ``layer`` counts blocks from the
end as the seed's ``enc_output_layer`` did (1 = last block), and only blocks
up to that one are kept and run. The feature is that block's output tokens
(``tokens``) or its attention queries (``q``, the seed's best).
"""
from __future__ import annotations

import functools
import os
import pickle
import socket
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError, OptionError, check_fields, is_int
from .files import digest_files
from .images import to_side

DEFAULT_BACKBONE = "vit_base_patch14_dinov2.lvd142m"
WEIGHT_SOURCES = ("pretrained", "random")  # or a path to a checkpoint file
RANDOM_LAYERSCALE = 1.0


@dataclass(frozen=True)
class BackboneConfig:
    """What identifies a backbone's features (and so a feature-cache entry).

    ``weights`` is ``'pretrained'``, ``'random'`` or a checkpoint path.
    ``image_size`` resizes images to that square size; ``None`` keeps the
    native size. Either way the input is zero-padded (after normalisation,
    as the seed did) at the bottom and right to a multiple of the patch size.
    """

    name: str = DEFAULT_BACKBONE
    weights: str = "pretrained"
    seed: int = 0
    layer: int = 1
    feature: str = "q"
    image_size: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Raise :class:`~model.errors.OptionError` naming the first bad parameter (``backbone.<field>``).

        Checks values only (the model's depth and patch size come from a
        weightless copy); whether a weights file exists is checked when the
        backbone is built.
        """
        check_fields("backbone", self, (
            ("name", lambda v: isinstance(v, str) and _timm_model_known(v), "must be a timm ViT name"),
            ("weights", lambda v: isinstance(v, str) and v != "", "must be 'pretrained', 'random' or a checkpoint file"),
            ("seed", lambda v: is_int(v) and v >= 0, "must be a whole number >= 0"),
            ("feature", lambda v: v in FEATURES, f"must be one of {', '.join(FEATURES)}"),
        ))
        depth, patch = _shape_of(self.name)
        check_fields("backbone", self, (
            ("layer", lambda v: is_int(v) and 1 <= abs(v) <= depth,
             f"must count blocks from the end, 1 (last) to {depth} (first) for {self.name}"),
            ("image_size", lambda v: v is None or (is_int(v) and v >= patch),
             f"must be a side in pixels of at least one patch ({patch} px), or unset for the native size"),
        ))


# --------------------------------------------------------------------------
# Features: a block's output, or its attention queries
# --------------------------------------------------------------------------

class BlockQueries(nn.Module):
    """Stands in for the last block kept: its attention queries instead of its output.

    Holds the block's own ``norm1`` and ``attn`` (so parameter names and
    hooks on ``attn`` stay those of timm's block) and returns the queries of
    every token, heads concatenated, after timm's ``q_norm`` and before
    scaling: (B, N, C), the shape of a block's output, so timm's
    ``forward_intermediates`` passes them on like any block output.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        self.norm1 = block.norm1
        self.attn = block.attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.attn
        qkv = attn.qkv(self.norm1(x))
        b, n, _ = qkv.shape
        q = qkv.reshape(b, n, 3, attn.num_heads, -1)[:, :, 0]
        return attn.q_norm(q).reshape(b, n, -1)


#: ``--feature`` -> what replaces the last block kept (its output is the feature)
FEATURES: dict[str, Callable[[nn.Module], nn.Module]] = {
    "tokens": lambda block: block,
    "q": BlockQueries,
}


class Backbone(nn.Module):
    """A frozen, truncated timm ViT: images (B, 3, H, W) -> tokens (B, h*w, C).

    Built on timm's public feature API: ``prune_intermediate_layers`` drops
    the blocks after the one used (and the final norm and head), and
    ``forward_intermediates`` returns that block's patch tokens without the
    prefix (class, register) tokens.

    Attributes
    ----------
    grid : tuple of int
        The (rows, cols) of the patch grid for this input size.
    dim : int
        Feature channels C.
    """

    def __init__(self, vit: nn.Module, config: BackboneConfig, native_side: int, input_size: int, weights_digest: str):
        super().__init__()
        depth = len(vit.blocks)
        index = resolve_layer(config.layer, depth)
        vit.prune_intermediate_layers(indices=[index], prune_norm=True, prune_head=True)
        vit.blocks[index] = FEATURES[config.feature](vit.blocks[index])
        self.vit = vit.eval().requires_grad_(False)
        self.config = config
        self.depth = depth
        self.block_index = index
        self.input_size = input_size
        self.image_side = config.image_size or native_side  # every image is brought to this side first
        self.patch = vit.patch_embed.patch_size[0]
        self.grid = (input_size // self.patch, input_size // self.patch)
        self.dim = vit.embed_dim
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.weights_digest = weights_digest
        cfg = getattr(vit, "pretrained_cfg", {}) or {}
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "Backbone":
        return super().train(False)  # frozen: dropout and friends stay off

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] images (B, 3, H, W) -> normalised, resized, padded input.

        Images are resized to ``image_side`` (``--image-size``, or the native
        side of the images the backbone was built for), normalised with the
        backbone's mean and SD, then zero-padded at the bottom and right.
        """
        x = (to_side(images, self.image_side) - self.mean) / self.std
        pad_h, pad_w = self.input_size - x.shape[-2], self.input_size - x.shape[-1]
        return F.pad(x, (0, pad_w, 0, pad_h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input (from :meth:`preprocess`) -> patch features (B, h*w, C)."""
        return self.vit.forward_intermediates(x, indices=[self.block_index], output_fmt="NLC", intermediates_only=True)[0]

    def describe(self) -> str:
        """One line for logs and reports, saying plainly when weights are random."""
        source = {"pretrained": "pretrained weights", "random": f"RANDOM weights (seed {self.config.seed}; not a trained network)"}
        weights = source.get(self.config.weights, f"weights from {self.config.weights}")
        return (f"{self.config.name} with {weights}; feature '{self.config.feature}' of block "
                f"{self.block_index + 1}/{self.depth}; input {self.input_size} px -> {self.grid[0]}x{self.grid[1]} tokens x {self.dim}")


def named_weights_digest(config: BackboneConfig) -> str | None:
    """The weights' identity for random and timm-pretrained weights; ``None`` for a file (its bytes are hashed)."""
    return {"random": f"random:seed={config.seed}:layerscale={RANDOM_LAYERSCALE}",
            "pretrained": f"timm:{config.name}"}.get(config.weights)


def resolve_layer(layer: int, depth: int) -> int:
    """Block index of ``enc_output_layer``: 1 is the last block, k the k-th from the end.

    Negative values are read the same way (-1 is the last block), as the seed
    passed ``-enc_output_layer`` as a Python index.
    """
    k = abs(int(layer))
    if not 1 <= k <= depth:
        raise InputError("--enc-output-layer", f"must be between 1 (last block) and {depth} (first block) for this backbone, got {layer}")
    return depth - k


def input_size_for(native: int, image_size: int | None, patch: int) -> int:
    """Side of the padded square input: the (resized) image rounded up to the patch size."""
    side = image_size or native
    return int(np.ceil(side / patch) * patch)


# --------------------------------------------------------------------------
# Building: weights from the hub, a local file, or a seeded random init
# --------------------------------------------------------------------------

def build_backbone(config: BackboneConfig, native_size: int) -> Backbone:
    """Create the truncated, frozen backbone for images of side ``native_size``."""
    import timm

    if config.feature not in FEATURES:
        raise InputError("--feature", f"unknown feature {config.feature!r}; choose from {', '.join(FEATURES)}")
    if not timm.is_model(config.name):
        raise InputError("--backbone", f"unknown timm model {config.name!r}")
    patch = _shape_of(config.name)[1]
    size = input_size_for(native_size, config.image_size, patch)
    kwargs = dict(img_size=size, num_classes=0)
    if config.weights == "random":
        torch.manual_seed(config.seed)
        vit = timm.create_model(config.name, pretrained=False, init_values=RANDOM_LAYERSCALE, **kwargs)
    elif config.weights == "pretrained":
        vit = _create_pretrained(config.name, kwargs)
    else:
        vit = timm.create_model(config.name, pretrained=False, **kwargs)
        load_checkpoint(vit, Path(config.weights))
    digest = named_weights_digest(config) or f"file:{digest_files([Path(config.weights)])}"
    if not hasattr(vit, "blocks") or not hasattr(vit.blocks[0], "attn"):
        raise InputError("--backbone", f"{config.name} is not a ViT with attention blocks")
    return Backbone(vit, config, native_size, size, digest)


def _timm_model_known(name: str) -> bool:
    import timm

    return timm.is_model(name)


@functools.lru_cache(maxsize=16)
def _shape_of(name: str) -> tuple[int, int]:
    """(blocks, patch size) of a timm ViT, from a weightless copy on the meta device."""
    import timm

    with torch.device("meta"):
        probe = timm.create_model(name, pretrained=False, num_classes=0)
    if not hasattr(probe, "patch_embed") or not hasattr(probe, "blocks"):
        raise OptionError("backbone.name", f"{name} is not a vision transformer (no patch embedding)")
    return len(probe.blocks), int(probe.patch_embed.patch_size[0])


def _create_pretrained(name: str, kwargs: dict) -> nn.Module:
    import timm

    hint = ("supply a local checkpoint with --backbone-weights FILE (official DINOv2 .pth or .safetensors), "
            "or use --no-pretrained for random weights")
    if not _in_hub_cache(name):
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
            raise InputError("--backbone", f"pretrained weights for {name} are not in the Hugging Face cache and HF_HUB_OFFLINE is set; {hint}")
        if not _reachable("huggingface.co"):
            raise InputError("--backbone", f"cannot download pretrained weights for {name} (huggingface.co is unreachable); {hint}")
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any download failure gets the same advice
        raise InputError("--backbone", f"could not load pretrained weights for {name} ({type(exc).__name__}); {hint}") from None


def _in_hub_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        return False
    files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    return any(isinstance(try_to_load_from_cache(cfg.hf_hub_id, f), str) for f in files)


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pth`` file (the latter with torch's weights-only loader).

    Failures are explained in our own words: torch's message for a file its
    weights-only reader refuses suggests turning that safety off, which this
    suite never does.
    """
    if not path.is_file():
        raise InputError(path, "missing checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(path, "unreadable checkpoint: corrupt, or holding Python objects besides tensors, which are "
                               "never unpickled here; supply a plain state dict of tensors (.pth) or a .safetensors file") from None
    except Exception as exc:  # noqa: BLE001 - truncated zip archives, bad headers, ...
        kind = "safetensors" if path.suffix == ".safetensors" else "PyTorch"
        raise InputError(path, f"unreadable checkpoint: corrupt, truncated or not a {kind} file ({type(exc).__name__})") from None
    for key in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, "expected a dict of tensors")
    return state


def load_checkpoint(vit: nn.Module, path: Path) -> None:
    """Load a (DINOv2-format or timm-format) checkpoint into ``vit``, resampling pos_embed."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = read_state_dict(path)
    try:
        state = checkpoint_filter_fn(state, vit)
        missing, unexpected = vit.load_state_dict(state, strict=False)
    except Exception as exc:  # noqa: BLE001 - shape mismatches and the like
        raise InputError(path, f"does not fit {type(vit).__name__}: {str(exc).splitlines()[0][:200]}") from None
    needed = [k for k in missing if k.startswith(("blocks.", "patch_embed.", "pos_embed", "cls_token"))]
    if needed:
        raise InputError(path, f"missing {len(needed)} backbone tensors (e.g. {needed[0]}): not a checkpoint of this model")
