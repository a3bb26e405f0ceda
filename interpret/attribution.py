"""The map methods (:data:`METHODS`), and what drives each ROI's predicted response: Captum attributions.

Every map method, the decoder's own ``attention`` included, is one entry of
:data:`METHODS`: a :class:`Method` says how its maps are computed
(``compute``), which dataset variable holds its per-ROI maps
(``variable``) and whether it needs an encoder with decoder attention.
The pipeline, the CLI and the notebooks look methods up there and nowhere
else; a method's options are fields of :class:`Settings`, which the CLI
turns into flags.

The explained quantity is a scalar target (the mean predicted response of
an ROI in one hemisphere, or of one vertex, see :func:`~interpret.maps.roi_targets`).
Pixel-level methods run through the frozen backbone, which is truncated at
the layer used, so gradients never pass through blocks the model does not
use. ``token_integrated_gradients`` attributes to the backbone tokens at the
decoder input instead (LayerIntegratedGradients at that layer, computed from
the cached tokens without running the backbone: far cheaper).

``nt_<method>`` wraps any pixel method in a NoiseTunnel (SmoothGrad). Every
method's work is batched with a bound (``internal_batch_size``), so memory
stays flat as steps or samples grow.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from captum.attr import (GradientShap, InputXGradient, IntegratedGradients, NoiseTunnel, Occlusion, Saliency)

from model.device import full_precision, module_device
from model.encoders import Encoder, TokenBackbone
from model.errors import OptionError
from model.options import check_settings, setting
from model.progress import progress
from model.rois import HEMIS
from model.runs import Run

from .attention import query_attention
from .maps import Inputs, MapGrid, Targets, by_hemi_roi, map_array

BASELINES = ("black", "grey", "blur")


#: What ``attention_heads`` keeps of the decoder attention: the head average only, or each head's map too.
ATTENTION_HEADS = ("mean", "each")


@dataclass(frozen=True)
class Settings:
    """Method settings; the defaults are modest so a CPU can afford them.

    Each field is also an option of ``tbe interpret`` and ``tbe check-maps``
    (``--n-steps`` for ``n_steps``), made from its metadata (:mod:`model.options`).
    """

    n_steps: int = setting(32, "integration steps of integrated gradients", minimum=2)
    internal_batch_size: int = setting(16, "inputs per forward pass inside a method (bounds memory)", minimum=1)
    baseline: str = setting("black", "baseline image of integrated gradients and occlusion", choices=BASELINES)
    shap_samples: int = setting(16, "samples of gradient_shap", minimum=1)
    nt_samples: int = setting(8, "noisy samples of a SmoothGrad (nt_<method>) map", minimum=1)
    nt_stdev: float = setting(0.1, "noise of SmoothGrad, as a fraction of the [0, 1] pixel range", minimum=0)
    occlusion_window: int | None = setting(None, "side of the occluded patch in pixels (default: one backbone patch)",
                                           minimum=1, kind=int)
    occlusion_stride: int | None = setting(None, "stride of occlusion in pixels (default: the window)", minimum=1,
                                           kind=int)
    attention_heads: str = setting("mean", "decoder attention maps kept: the heads' average only ('mean'), or each "
                                   "head's map as well ('each': as many times the storage as the decoder has heads)",
                                   choices=ATTENTION_HEADS)

    def check(self) -> None:
        """One clear error naming the option of the first setting out of range."""
        check_settings(self)


# --------------------------------------------------------------------------
# Differentiable models: images -> targets, tokens -> targets
# --------------------------------------------------------------------------

def _for_targets(encoder: torch.nn.Module, targets: Targets) -> tuple[torch.nn.Module, torch.Tensor]:
    """The encoder restricted to the vertices the targets average, and the targets' weights on them.

    Encoders whose readout cannot be restricted are returned as they are.
    """
    weights = targets.weights.float()
    if not encoder.capabilities.restrict_vertices:
        return encoder, weights
    vertices = torch.nonzero(weights.abs().sum(0)).ravel().numpy()
    return encoder.restricted(vertices), weights[:, vertices]


class ImageModel(torch.nn.Module):
    """[0, 1] images (B, 3, S, S) -> targets (B, n): backbone (truncated), encoder, ROI averaging."""

    def __init__(self, backbone: TokenBackbone, encoder: torch.nn.Module, targets: Targets):
        super().__init__()
        self.backbone = backbone
        self.encoder, weights = _for_targets(encoder, targets)
        self.register_buffer("weights", weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.backbone(self.backbone.preprocess(images)))["pred"] @ self.weights.T


class TokenModel(torch.nn.Module):
    """Backbone tokens (B, T, C) -> targets (B, n)."""

    def __init__(self, encoder: torch.nn.Module, targets: Targets):
        super().__init__()
        self.encoder, weights = _for_targets(encoder, targets)
        self.register_buffer("weights", weights)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encoder(tokens)["pred"] @ self.weights.T


def baseline_images(images: torch.Tensor, kind: str, backbone: TokenBackbone) -> torch.Tensor:
    """Black, mean-grey (the backbone's normalisation mean) or a heavily blurred copy."""
    if kind == "black":
        return torch.zeros_like(images)
    if kind == "grey":
        return backbone.mean.to(images.device, images.dtype).expand_as(images).clone()
    if kind == "blur":
        sigma = images.shape[-1] / 16
        radius = int(3 * sigma)
        t = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = (k / k.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
        x = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="reflect"), k, groups=3)
        return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.transpose(-1, -2), groups=3)
    raise OptionError("baseline", f"unknown baseline {kind!r}; choose from {', '.join(BASELINES)}")


# --------------------------------------------------------------------------
# Methods: the registry
# --------------------------------------------------------------------------

Kwargs = Callable[[Settings, dict, int], dict]
#: ``compute(run, inputs, targets, methods, settings, encoder)``: the maps of the listed methods as one dataset
Compute = Callable[[Run, Inputs, Targets, list, Settings, "torch.nn.Module | None"], xr.Dataset]


def attribute_maps(run: Run, inputs: Inputs, targets: Targets, methods: list[str], settings: Settings = Settings(),
                   encoder: torch.nn.Module | None = None) -> xr.Dataset:
    """The Captum methods' maps of a job's inputs (see :func:`attribute`)."""
    return attribute(run, inputs.backbone, inputs.images, inputs.tokens, targets, methods, inputs.grid, inputs.names,
                     settings, encoder=encoder)


@dataclass(frozen=True)
class Method:
    """A map method: what it computes, how, and what the encoder must offer.

    ``compute`` gives the maps of every listed method that shares it, as one
    dataset (Captum methods share :func:`attribute_maps`, which gives
    ``explainer`` the arguments ``kwargs(settings, context, batch)``);
    ``variable`` is the dataset variable that holds the method's
    ``(image, hemi, roi, y, x)`` maps (default: the method's name);
    ``sampled`` methods take ``n_samples`` and are run in chunks whose
    results are averaged, so memory does not grow with the number of samples.
    """

    description: str
    level: str  # "pixel" or "token": attributions to the image or to the decoder's input; "query": read from the decoder
    compute: Compute = attribute_maps
    explainer: type | None = None
    kwargs: Kwargs = lambda s, c, b: {}
    convergence_delta: bool = False
    sampled: bool = False
    variable: str = ""
    needs_attention: bool = False  # only encoders with decoder cross-attention (the transformer) have it


def _per_eval(s: Settings, batch: int) -> int:
    return max(1, s.internal_batch_size // batch)


METHODS: dict[str, Method] = {
    "attention": Method(
        "decoder cross-attention of each ROI query, from the forward pass that predicts", "query",
        compute=query_attention, variable="attention_mean", needs_attention=True),
    "integrated_gradients": Method(
        "IntegratedGradients from a black, grey or blurred baseline", "pixel", explainer=IntegratedGradients,
        kwargs=lambda s, c, b: dict(baselines=c["baseline"], n_steps=s.n_steps, internal_batch_size=s.internal_batch_size),
        convergence_delta=True),
    "gradient_shap": Method(
        "GradientShap over black, mean-grey and blurred references", "pixel", explainer=GradientShap,
        kwargs=lambda s, c, b: dict(baselines=c["references"], stdevs=0.05), sampled=True),
    "saliency": Method("absolute gradient", "pixel", explainer=Saliency, kwargs=lambda s, c, b: dict(abs=True)),
    "input_x_gradient": Method("input x gradient", "pixel", explainer=InputXGradient),
    "occlusion": Method(
        "drop of the target when a patch is replaced by the baseline", "pixel", explainer=Occlusion,
        kwargs=lambda s, c, b: dict(sliding_window_shapes=(3, c["window"], c["window"]),
                                    strides=(3, c["stride"], c["stride"]), baselines=c["baseline"],
                                    perturbations_per_eval=_per_eval(s, b))),
    "token_integrated_gradients": Method(
        "IntegratedGradients at the decoder input (backbone tokens)", "token", explainer=IntegratedGradients,
        kwargs=lambda s, c, b: dict(baselines=c["token_baseline"], n_steps=s.n_steps,
                                    internal_batch_size=s.internal_batch_size),
        convergence_delta=True),
}
NOISE_TUNNEL = "nt_"


def method(name: str) -> tuple[Method, bool]:
    """The method of ``name`` and whether it is wrapped in a NoiseTunnel (``nt_<pixel method>``)."""
    if name in METHODS:
        return METHODS[name], False
    base = name[len(NOISE_TUNNEL):] if name.startswith(NOISE_TUNNEL) else None
    if base in tunnelable():
        return METHODS[base], True
    known = [*METHODS, *(NOISE_TUNNEL + m for m in tunnelable())]
    raise OptionError("methods", f"unknown method {name!r}; choose from {', '.join(known)}")


def map_variable(name: str) -> str:
    """The dataset variable holding the per-ROI maps of method ``name`` (``attention`` -> ``attention_mean``)."""
    return method(name)[0].variable or name


def method_variables(ds: xr.Dataset, methods: list[str]) -> list[str]:
    """The per-ROI map variables of the listed methods that ``ds`` holds, in the order asked."""
    return [map_variable(m) for m in methods if map_variable(m) in ds]


def compute_methods(run: Run, inputs: Inputs, targets: Targets, methods: list[str], settings: Settings = Settings(),
                    encoder: torch.nn.Module | None = None) -> list[xr.Dataset]:
    """The maps of every listed method: one dataset per way of computing them, in the registry's order.

    ``encoder`` replaces the run's encoder (e.g. a randomised copy for the sanity checks).
    """
    groups: dict[Compute, list[str]] = {}
    for name in methods:  # within a group, the order asked for
        groups.setdefault(method(name)[0].compute, []).append(name)
    order = list(METHODS)
    first = {compute: min(order.index(_base_name(n)) for n in names) for compute, names in groups.items()}
    return [compute(run, inputs, targets, names, settings, encoder)
            for compute, names in sorted(groups.items(), key=lambda group: first[group[0]])]


def _base_name(name: str) -> str:
    spec, tunnel = method(name)
    return name[len(NOISE_TUNNEL):] if tunnel else name


def tunnelable() -> list[str]:
    return [m for m, spec in METHODS.items() if spec.level == "pixel" and not spec.sampled and m != "occlusion"]


def _run_method(name: str, model: torch.nn.Module, inputs: torch.Tensor, target: int, s: Settings,
                ctx: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    spec, tunnel = method(name)
    kwargs = spec.kwargs(s, ctx, len(inputs))
    explainer = spec.explainer(model)
    if tunnel:
        kwargs.pop("internal_batch_size", None)
        attr = NoiseTunnel(explainer).attribute(inputs, nt_type="smoothgrad", nt_samples=s.nt_samples,
                                                nt_samples_batch_size=_per_eval(s, len(inputs)),
                                                stdevs=s.nt_stdev, target=target, **kwargs)
        return attr, None
    if spec.sampled:
        state = torch.random.get_rng_state()
        torch.manual_seed(0)  # reproducible samples
        total, done = torch.zeros_like(inputs), 0
        while done < s.shap_samples:
            chunk = min(_per_eval(s, len(inputs)), s.shap_samples - done)
            total += chunk * explainer.attribute(inputs, target=target, n_samples=chunk, **kwargs)
            done += chunk
        torch.random.set_rng_state(state)
        return total / s.shap_samples, None
    if spec.convergence_delta:
        return explainer.attribute(inputs, target=target, return_convergence_delta=True, **kwargs)
    return explainer.attribute(inputs, target=target, **kwargs), None


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------

def attribute(run: Run, backbone: TokenBackbone, images: torch.Tensor, tokens: np.ndarray, targets: Targets,
              methods: list[str], grid: MapGrid, image_names: list[str], settings: Settings = Settings(),
              encoder: torch.nn.Module | None = None) -> xr.Dataset:
    """Attribution maps of every (method, image, target) as a dataset.

    Each method gives a variable ``<method>`` (image, hemi, roi, y, x), summed
    over colour channels (pixel methods) or feature channels (token
    methods); integrated gradients also give ``<method>_delta`` (image,
    hemi, roi), the completeness error. ``encoder`` replaces the run's
    encoder (e.g. a randomised copy for the sanity checks).

    Runs on the encoder's device, in float32 even on CUDA (no bf16
    autocast): integrated gradients promise completeness, which bf16
    gradients would break by far more than the delta they report.
    """
    encoder = (encoder or run.model).eval()
    dev = module_device(encoder)
    backbone = backbone.to(dev)
    images = images.to(dev)
    pixel_model = ImageModel(backbone, encoder, targets).to(dev).eval()
    token_model = TokenModel(encoder, targets).to(dev).eval()
    token_input = torch.from_numpy(np.asarray(tokens, np.float32)).to(dev)
    baseline = baseline_images(images, settings.baseline, backbone)
    window = settings.occlusion_window or backbone.patch
    ctx = {"baseline": baseline, "window": window, "stride": settings.occlusion_stride or window,
           "references": torch.cat([baseline_images(images, k, backbone) for k in BASELINES]),
           "token_baseline": _token_baseline(encoder, token_input)}
    out = {}
    work = [(name, t) for name in methods for t in range(len(targets))]
    maps = {name: torch.zeros(len(images), len(targets), grid.size, grid.size) for name in methods}
    deltas = {name: torch.full((len(images), len(targets)), float("nan")) for name in methods}
    for name, t in progress(work, desc="attributions", unit="map"):
        pixel = method(name)[0].level == "pixel"
        model, inputs = (pixel_model, images) if pixel else (token_model, token_input)
        with full_precision(dev):
            attr, delta = _run_method(name, model, inputs.clone().requires_grad_(True), t, settings, ctx)
        attr = attr.detach().float().cpu()
        maps[name][:, t] = grid.from_pixels(attr.sum(1)) if pixel else grid.from_tokens(attr.sum(-1))
        if delta is not None:
            deltas[name][:, t] = delta.detach().reshape(len(images), -1).sum(1).float().cpu()
    for name in methods:
        arranged, rois = by_hemi_roi(maps[name], targets)
        coords = {"image": image_names, "hemi": list(HEMIS), "roi": rois}
        spec, tunnel = method(name)
        attrs = {"method": ("SmoothGrad around " if tunnel else "") + spec.description, "level": spec.level,
                 "baseline": settings.baseline}
        out[name] = map_array(arranged, ("image", "hemi", "roi", "y", "x"), coords, grid, name, attrs)
        if not torch.isnan(deltas[name]).all():
            d, _ = by_hemi_roi(deltas[name], targets)
            out[f"{name}_delta"] = xr.DataArray(d.numpy(), dims=("image", "hemi", "roi"),
                                                coords={"image": image_names, "hemi": list(HEMIS), "roi": rois},
                                                attrs={"meaning": "sum of attributions minus (f(x) - f(baseline))"})
    return xr.Dataset(out)


def _token_baseline(encoder: Encoder, tokens: torch.Tensor) -> torch.Tensor:
    """The training set's mean token: zero after the encoder's standardisation (:attr:`Encoder.feature_mean`)."""
    return encoder.feature_mean.expand_as(tokens).clone()
