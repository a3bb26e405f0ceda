"""The frozen backbone that turns images into tokens.

Any timm ViT (DINOv2, CLIP, ...) or CNN (ResNet, ...) by name; the family
is recognised from the model (:data:`FAMILIES`), and each family offers its
own features (:data:`VIT_FEATURES`, :data:`CNN_FEATURES`). Weights come from one of three sources:

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
(``tokens``), those through the ViT's final norm (``tokens_norm``, the seed's
``dinov2``) or its attention queries (``q``, the seed's best, ``dinov2_q``).
"""
from __future__ import annotations

import contextlib
import functools
import os
import pickle
import socket
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .device import PRECISIONS
from .errors import InputError, OptionError, check_fields, is_int
from .files import digest_files
from .images import to_side
from .options import setting

DEFAULT_BACKBONE = "vit_base_patch14_dinov2.lvd142m"
#: what a configuration's features are computed in (``--precision auto`` is resolved to one of these)
FEATURE_PRECISIONS = ("float32", "bf16")
WEIGHT_SOURCES = ("pretrained", "random")  # or a path to a checkpoint file
RANDOM_LAYERSCALE = 1.0


@dataclass(frozen=True)
class BackboneConfig:
    """What identifies a backbone's features (and so a feature-cache entry).

    ``weights`` is ``'pretrained'``, ``'random'`` or a checkpoint path.
    ``image_size`` resizes images to that square size; ``None`` keeps the
    native size. Either way the input is zero-padded (after normalisation,
    as the seed did) at the bottom and right to a multiple of the patch size.
    ``precision`` is what the features are computed in: ``float32``, or
    ``bf16`` (autocast; :func:`model.device.feature_precision`). A
    configuration written before it existed reads as float32, which its
    features were (on the CPU).
    """

    name: str = setting(DEFAULT_BACKBONE, f"timm ViT (DINOv2, CLIP, ...) or CNN (resnet18, ...) name (default "
                                          f"{DEFAULT_BACKBONE})")
    weights: str = setting("pretrained", "local checkpoint (official DINOv2 .pth or .safetensors) instead of downloading")
    seed: int = setting(0, "seed of the random weights (default 0)")
    layer: int = setting(1, "block whose features are used, counted from the end: 1 = last (default 1)")
    feature: str = setting("q", "ViT: block tokens, through the final norm (tokens_norm), and its projection "
                                "(tokens_proj, CLIP), or attention queries (q, default); _cls: the class token; CNN: "
                                "tokens (stage map) or pooled", choices=lambda: tuple(sorted(FEATURES)))
    image_size: int | None = setting(None, "resize images to this side (default: native size, padded to a multiple of "
                                           "the patch)", kind=int)
    precision: str = setting("float32", "what the features are computed in: float32, or bf16 autocast (ViT-B/14 at 434 "
                                        "px: 2.6x faster on a CPU with AMX-BF16, predictions r >= 0.9996 per vertex with "
                                        "float32's); auto: bf16 where the device computes it natively (CUDA since "
                                        "Ampere; CPU flags amx_bf16 or avx512_bf16), else float32. Recorded in the run "
                                        "and the cache key; float32 by default, so that a command gives the same "
                                        "numbers on every machine (docs/speed-and-memory.md)",
                             metavar="{" + ",".join(PRECISIONS) + "}")

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Raise :class:`~model.errors.OptionError` naming the first bad parameter (``backbone.<field>``).

        Checks values only (the model's depth and patch size come from a
        weightless copy); whether a weights file exists is checked when the
        backbone is built.
        """
        check_fields("backbone", self, (
            ("name", lambda v: isinstance(v, str) and _timm_model_known(v), "must be a timm model name (ViT or CNN)"),
            ("weights", lambda v: isinstance(v, str) and v != "", "must be 'pretrained', 'random' or a checkpoint file"),
            ("seed", lambda v: is_int(v) and v >= 0, "must be a whole number >= 0"),
            ("feature", lambda v: v in FEATURES, f"must be one of {', '.join(FEATURES)}"),
            ("precision", lambda v: v in FEATURE_PRECISIONS,
             f"must be one of {', '.join(FEATURE_PRECISIONS)} ('auto' is resolved to one of them when a command starts)"),
        ))
        family = family_of(self.name)
        depth, patch = _shape_of(self.name)
        unit = "blocks" if family.features is VIT_FEATURES else "stages"
        check_fields("backbone", self, (
            ("feature", lambda v: v in family.features,
             f"must be one of {', '.join(family.features)} for {self.name} (a {family.name})"),
            ("layer", lambda v: is_int(v) and 1 <= abs(v) <= depth,
             f"must count {unit} from the end, 1 (last) to {depth} (first) for {self.name}"),
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


class NormedBlock(nn.Module):
    """Stands in for the last block kept: its output through the ViT's final layers (norm, and a projection head).

    The original's ``dinov2`` backbone took DINOv2's
    ``get_intermediate_layers(norm=True)``: every block's tokens through the
    final LayerNorm; its ``clip`` backbone took the last block's tokens through
    ``ln_post`` and CLIP's projection. ``attn`` is the block's own (attention
    hooks see it).
    """

    def __init__(self, block: nn.Module, final: nn.Module):
        super().__init__()
        self.block, self.final = block, final

    @property
    def attn(self) -> nn.Module:
        return self.block.attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.block(x))


@dataclass(frozen=True)
class Feature:
    """One ``--feature``: what stands in for the last block (or stage) kept, and which tokens are the feature.

    ``make(block, norm, head)`` gets the block and the model's final norm and
    head (a ViT's; ``None`` for a CNN). ``class_token`` features are the
    class token (a CNN: the global average pool), one token for a linear
    readout; the others are the patch grid.
    """

    make: Callable[[nn.Module, nn.Module | None, nn.Module | None], nn.Module]
    class_token: bool = False
    projects: bool = False  # needs the model's projection head (CLIP's ``proj``)
    description: str = ""


_VIT_FEATURES = {
    "tokens": Feature(lambda b, norm, head: b, description="block output tokens"),
    "tokens_norm": Feature(lambda b, norm, head: NormedBlock(b, norm),
                           description="block tokens through the final norm (the original's dinov2)"),
    "tokens_proj": Feature(lambda b, norm, head: NormedBlock(b, nn.Sequential(norm, head)), projects=True,
                           description="block tokens through the final norm and the projection head (the original's clip)"),
    "q": Feature(lambda b, norm, head: BlockQueries(b), description="the block's attention queries (the original's dinov2_q)"),
}
#: ViT features: the patch tokens of each kind, and (``_cls``) its class token
VIT_FEATURES: dict[str, Feature] = {
    **_VIT_FEATURES,
    **{f"{name}_cls": replace(f, class_token=True, description=f"class token: {f.description}") for name, f in _VIT_FEATURES.items()},
}
#: CNN features: a stage's feature map, or its global average pool
CNN_FEATURES: dict[str, Feature] = {
    "tokens": Feature(lambda stage, norm, head: stage, description="the stage's feature map, one token per position"),
    "pooled": Feature(lambda stage, norm, head: stage, class_token=True, description="the stage's global average pool"),
}
#: every ``--feature`` name (which ones a backbone offers depends on its family: :data:`FAMILIES`)
FEATURES: dict[str, Feature] = {**CNN_FEATURES, **VIT_FEATURES}


class ImageBackbone(nn.Module):
    """What every frozen backbone shares: preprocessing, frozen mode, a one-line description.

    A :class:`~model.encoders.interface.TokenBackbone`: subclasses set ``config``,
    ``depth``, ``block_index``, ``input_size``, ``image_side``, ``patch``
    (the token stride in pixels), ``grid``, ``dim``, ``prefix_tokens`` and
    ``weights_digest``, declare ``has_class_token`` and ``self_attention``
    (with :meth:`record_attention`) where they have them, and call
    :meth:`_normalisation`.
    """

    prefix_tokens = 0
    has_class_token = False
    self_attention = False

    def record_attention(self, record: Callable[[torch.Tensor], None]):
        """While active, each block that runs hands its softmax attention (B, heads, N, N) to ``record``."""
        raise TypeError(f"{type(self).__name__} has no self-attention to record")

    def _normalisation(self, model: nn.Module) -> None:
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "ImageBackbone":
        return super().train(False)  # frozen: dropout, batch statistics and friends stay off

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] images (B, 3, H, W) -> normalised, resized, padded input.

        Images are resized to ``image_side`` (``--image-size``, or the native
        side of the images the backbone was built for), normalised with the
        backbone's mean and SD, then zero-padded at the bottom and right.
        """
        x = (to_side(images, self.image_side) - self.mean) / self.std
        pad_h, pad_w = self.input_size - x.shape[-2], self.input_size - x.shape[-1]
        return F.pad(x, (0, pad_w, 0, pad_h))

    def describe(self) -> str:
        """One line for logs and reports, saying plainly when weights are random."""
        source = {"pretrained": "pretrained weights", "random": f"RANDOM weights (seed {self.config.seed}; not a trained network)"}
        weights = source.get(self.config.weights, f"weights from {self.config.weights}")
        precision = "; computed in bf16 (autocast)" if self.config.precision == "bf16" else ""
        return (f"{self.config.name} with {weights}; feature '{self.config.feature}' of {self.unit} "
                f"{self.block_index + 1}/{self.depth}; input {self.input_size} px -> {self.grid[0]}x{self.grid[1]} "
                f"tokens x {self.dim}{precision}")


class Backbone(ImageBackbone):
    """A frozen, truncated timm ViT: images (B, 3, H, W) -> tokens (B, h*w, C).

    Built on timm's public feature API: ``prune_intermediate_layers`` drops
    the blocks after the one used (and the final norm and head), and
    ``forward_intermediates`` returns that block's patch tokens without the
    prefix (class, register) tokens, or (``_cls`` features) the class token.

    Attributes
    ----------
    grid : tuple of int
        The (rows, cols) of the patch grid for this input size ((1, 1) for a class token).
    dim : int
        Feature channels C.
    """

    unit = "block"
    self_attention = True  # its blocks attend among the tokens (:meth:`record_attention`)

    def __init__(self, vit: nn.Module, config: BackboneConfig, native_side: int, input_size: int, weights_digest: str):
        super().__init__()
        depth = len(vit.blocks)
        index = resolve_layer(config.layer, depth)
        feature = VIT_FEATURES[config.feature]
        norm, head = vit.norm, vit.head
        if feature.projects and not isinstance(head, nn.Linear):
            raise OptionError("backbone.feature", f"{config.name} has no projection head for {config.feature!r} (a CLIP ViT has)")
        vit.prune_intermediate_layers(indices=[index], prune_norm=True, prune_head=True)
        vit.blocks[index] = feature.make(vit.blocks[index], norm, head)
        self.class_token = feature.class_token
        self.vit = vit.eval().requires_grad_(False)
        self.config = config
        self.depth = depth
        self.block_index = index
        self.input_size = input_size
        self.image_side = config.image_size or native_side  # every image is brought to this side first
        self.patch = vit.patch_embed.patch_size[0]
        self.grid = (1, 1) if feature.class_token else (input_size // self.patch, input_size // self.patch)
        self.dim = head.out_features if feature.projects else vit.embed_dim
        self.prefix_tokens = vit.num_prefix_tokens
        self.has_class_token = vit.cls_token is not None
        self.weights_digest = weights_digest
        self._normalisation(vit)

    @contextlib.contextmanager
    def record_attention(self, record: Callable[[torch.Tensor], None]):
        """While active, each block that runs hands its softmax attention (B, heads, N, N) to ``record``, in
        order; fused attention (which never forms the weights) is off meanwhile."""
        handles, fused = [], []
        for block in self.vit.blocks:
            fused.append(block.attn.fused_attn)
            block.attn.fused_attn = False
            handles.append(block.attn.attn_drop.register_forward_hook(lambda m, inp, out: record(inp[0])))
        try:
            yield
        finally:
            for block, was in zip(self.vit.blocks, fused):
                block.attn.fused_attn = was
            for h in handles:
                h.remove()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input (from :meth:`preprocess`) -> patch features (B, h*w, C), or the class token (B, 1, C)."""
        out = self.vit.forward_intermediates(x, indices=[self.block_index], return_prefix_tokens=self.class_token,
                                             output_fmt="NLC", intermediates_only=True)[0]
        return out[1][:, :1] if self.class_token else out


class CnnBackbone(ImageBackbone):
    """A frozen timm CNN (ResNet, ...): a stage's feature map as tokens (B, h*w, C), or its global average pool.

    ``net`` is timm's ``features_only`` model returning that one stage
    (``layer`` counts stages from the end, 1 = the last, as the original's
    ResNet ``layer4``). The decoder projects the channels to its hidden size
    with a linear map per token, the original's 1x1 convolution. A CNN has no
    class token and no self-attention, so backbone attention maps do not
    apply; decoder attention and attributions work on its grid.
    """

    unit = "stage"

    def __init__(self, net: nn.Module, config: BackboneConfig, native_side: int, input_size: int, weights_digest: str,
                 depth: int, index: int):
        super().__init__()
        feature = CNN_FEATURES[config.feature]
        self.net = net.eval().requires_grad_(False)
        self.config, self.depth, self.block_index = config, depth, index
        self.input_size = input_size
        self.image_side = config.image_size or native_side
        self.patch = int(net.feature_info.reduction()[-1])
        self.pooled = feature.class_token
        self.grid = (1, 1) if self.pooled else (input_size // self.patch, input_size // self.patch)
        self.dim = int(net.feature_info.channels()[-1])
        self.weights_digest = weights_digest
        self._normalisation(net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input -> the stage's map as tokens (B, h*w, C), or its mean over positions (B, 1, C)."""
        fmap = self.net(x)[-1]
        return fmap.mean((2, 3))[:, None] if self.pooled else fmap.flatten(2).transpose(1, 2)


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
        raise OptionError("backbone.layer", f"must be between 1 (last block) and {depth} (first block) for this backbone, got {layer}")
    return depth - k


def input_size_for(native: int, image_size: int | None, patch: int) -> int:
    """Side of the padded square input: the (resized) image rounded up to the patch size."""
    side = image_size or native
    return int(np.ceil(side / patch) * patch)


# --------------------------------------------------------------------------
# Building: weights from the hub, a local file, or a seeded random init
# --------------------------------------------------------------------------

def build_backbone(config: BackboneConfig, native_size: int) -> ImageBackbone:
    """Create the truncated, frozen backbone for images of side ``native_size`` (its family's builder)."""
    import timm

    if not timm.is_model(config.name):
        raise OptionError("backbone.name", f"unknown timm model {config.name!r}")
    family = family_of(config.name)
    if config.feature not in family.features:
        raise OptionError("backbone.feature", f"unknown feature {config.feature!r} for {config.name} (a {family.name}); "
                                      f"choose from {', '.join(family.features)}")
    depth, patch = _shape_of(config.name)
    size = input_size_for(native_size, config.image_size, patch)
    if config.weights not in WEIGHT_SOURCES and not Path(config.weights).is_file():
        raise InputError(Path(config.weights), "missing checkpoint file")
    digest = named_weights_digest(config) or f"file:{digest_files([Path(config.weights)])}"
    return family.build(config, native_size, size, digest)


def _build_vit(config: BackboneConfig, native_size: int, size: int, digest: str) -> Backbone:
    import timm

    kwargs = dict(img_size=size) if VIT_FEATURES[config.feature].projects else dict(img_size=size, num_classes=0)
    if config.weights == "random":
        torch.manual_seed(config.seed)
        vit = timm.create_model(config.name, pretrained=False, init_values=RANDOM_LAYERSCALE, **kwargs)
    elif config.weights == "pretrained":
        vit = _create_pretrained(config.name, kwargs)
    else:
        vit = timm.create_model(config.name, pretrained=False, **kwargs)
        load_checkpoint(vit, Path(config.weights))
    if not hasattr(vit.blocks[0], "attn"):
        raise OptionError("backbone.name", f"{config.name} is not a ViT with attention blocks")
    return Backbone(vit, config, native_size, size, digest)


def _build_cnn(config: BackboneConfig, native_size: int, size: int, digest: str) -> CnnBackbone:
    import timm

    depth = _shape_of(config.name)[0]
    index = resolve_layer(config.layer, depth)
    kwargs = dict(features_only=True, out_indices=(index,))
    if config.weights == "random":
        torch.manual_seed(config.seed)
        net = timm.create_model(config.name, pretrained=False, **kwargs)
    elif config.weights == "pretrained":
        net = _create_pretrained(config.name, kwargs)
    else:
        net = timm.create_model(config.name, pretrained=False, **kwargs)
        _load_cnn_checkpoint(net, Path(config.weights))
    return CnnBackbone(net, config, native_size, size, digest, depth, index)


def _load_cnn_checkpoint(net: nn.Module, path: Path) -> None:
    """Load a timm (or torchvision: same key names) CNN state dict into the truncated feature model."""
    state = read_state_dict(path)
    try:
        missing, _ = net.load_state_dict(state, strict=False)
    except Exception as exc:  # noqa: BLE001 - shape mismatches and the like
        raise InputError(path, f"does not fit {type(net).__name__}: {str(exc).splitlines()[0][:200]}") from None
    if missing:
        raise InputError(path, f"missing {len(missing)} backbone tensors (e.g. {missing[0]}): not a checkpoint of this model")


@dataclass(frozen=True)
class Family:
    """One backbone family: how to recognise its timm models, their (depth, patch), its features and its builder."""

    name: str
    matches: Callable[[nn.Module], bool]
    shape: Callable[[nn.Module], tuple[int, int]]  # (blocks or stages, token stride in pixels)
    features: dict[str, Feature]
    build: Callable[[BackboneConfig, int, int, str], ImageBackbone]


#: backbone families, tried in order on a weightless copy of the timm model
FAMILIES: dict[str, Family] = {
    "vit": Family("vision transformer", lambda m: hasattr(m, "patch_embed") and hasattr(m, "blocks"),
                  lambda m: (len(m.blocks), int(m.patch_embed.patch_size[0])), VIT_FEATURES, _build_vit),
    "cnn": Family("CNN", lambda m: isinstance(getattr(m, "feature_info", None), list) and len(m.feature_info) > 0,
                  lambda m: (len(m.feature_info), int(m.feature_info[-1]["reduction"])), CNN_FEATURES, _build_cnn),
}


def _timm_model_known(name: str) -> bool:
    import timm

    return timm.is_model(name)


@functools.lru_cache(maxsize=16)
def _probe(name: str) -> tuple[str, int, int]:
    """(family key, depth, patch) of a timm model, from a weightless copy on the meta device."""
    import timm

    with torch.device("meta"):
        probe = timm.create_model(name, pretrained=False)
    for key, family in FAMILIES.items():
        if family.matches(probe):
            return (key, *family.shape(probe))
    raise OptionError("backbone.name", f"{name} is neither a vision transformer nor a CNN with feature stages")


def family_of(name: str) -> Family:
    """The :class:`Family` of timm model ``name``."""
    return FAMILIES[_probe(name)[0]]


def _shape_of(name: str) -> tuple[int, int]:
    """(blocks or stages, patch size or stride) of a timm model."""
    return _probe(name)[1:]


def _create_pretrained(name: str, kwargs: dict) -> nn.Module:
    import timm

    hint = ("supply a local checkpoint with `backbone.weights` FILE (official DINOv2 .pth or .safetensors), "
            "or use `no_pretrained` for random weights")
    if not _in_hub_cache(name):
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
            raise OptionError("backbone.name", f"pretrained weights for {name} are not in the Hugging Face cache and HF_HUB_OFFLINE is set; {hint}")
        if not _reachable("huggingface.co"):
            raise OptionError("backbone.name", f"cannot download pretrained weights for {name} (huggingface.co is unreachable); {hint}")
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any download failure gets the same advice
        raise OptionError("backbone.name", f"could not load pretrained weights for {name} ({type(exc).__name__}); {hint}") from None


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
