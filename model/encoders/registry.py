"""``--encoder-arch`` names -> how to build each encoder (a registry, not an if-chain).

Every encoder maps backbone tokens (B, T, C) to ``{'pred': (B, V)}``, builds
itself from its own configuration section and declares its capabilities
(:mod:`model.encoders.interface`): gradient-trained ones go through the training
loop, closed-form ones (``ridge``) are fit once. Adding an architecture: its
class (``from_config``, ``capabilities``) and one entry in
:data:`ARCHITECTURES`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import OptionError
from .baselines import LinearEncoder, RidgeEncoder, SpatialFeatureEncoder
from .configs import DecoderConfig, RidgeConfig
from .interface import Capabilities, EncoderInputs
from .queries import QuerySet
from .transformer import BrainEncoder, CustomTransformer


@dataclass(frozen=True)
class Architecture:
    """One ``--encoder-arch``: the core's class and the section of the run configuration it is built from.

    ``module.from_config(inputs, config)`` builds the core from
    :class:`~model.encoders.interface.EncoderInputs` and its own section (``None``
    when it takes no options); ``module.capabilities`` says what it offers.
    """

    module: type[nn.Module]
    section: str | None = None  # a RunConfig field: "decoder", "ridge"
    description: str = ""
    #: refuses (``OptionError``) options of its section that this architecture cannot honour
    check: Callable[[object], None] | None = None

    @property
    def capabilities(self) -> Capabilities:
        return self.module.capabilities


ARCHITECTURES: dict[str, Architecture] = {
    "transformer": Architecture(BrainEncoder, "decoder", "DETR-style decoder with one learned query per ROI"),
    "custom_transformer": Architecture(CustomTransformer, "decoder",
                                       "the original's custom decoder: attention replaces the query, unprojected values",
                                       CustomTransformer.check),
    "spatial_feature": Architecture(SpatialFeatureEncoder, None,
                                    "per-query softmax spatial pooling + vertex readout (the seed's)"),
    "linear": Architecture(LinearEncoder, None, "strided conv + linear layer over all tokens (the seed's)"),
    "ridge": Architecture(RidgeEncoder, "ridge", "himalaya RidgeCV, one alpha per vertex"),
}


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise OptionError("encoder_arch", f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def build_encoder(name: str, queries: QuerySet, feature_dim: int, grid: tuple[int, int],
                  decoder: DecoderConfig = DecoderConfig(), ridge: RidgeConfig = RidgeConfig(),
                  standardise: bool = True) -> "NormalisedEncoder":
    """A fresh encoder of architecture ``name``, behind the token standardisation.

    ``decoder`` and ``ridge`` are the run configuration's sections; the
    architecture is given only the one it declares. ``standardise=False``
    (``--no-standardise-tokens``, the original's raw tokens) feeds the tokens
    as they are; their statistics are still recorded (the mean token is the
    attributions' baseline).
    """
    arch = architecture(name)
    sections = {"decoder": decoder, "ridge": ridge, None: None}
    core = arch.module.from_config(EncoderInputs(queries, feature_dim, tuple(grid)), sections[arch.section])
    return NormalisedEncoder(core, feature_dim, standardise)


class NormalisedEncoder(nn.Module):
    """An encoder behind a per-channel standardisation of the backbone tokens (unless ``standardise`` is off).

    The statistics come from the training images and are saved with the
    weights, so every reader of a run feeds the encoder exactly as training did.
    """

    def __init__(self, core: nn.Module, feature_dim: int, standardise: bool = True):
        super().__init__()
        self.core = core
        self.standardise = standardise
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_scale", torch.ones(feature_dim))

    @torch.no_grad()
    def set_feature_stats(self, features: np.ndarray) -> None:
        """Per-channel mean and SD from (N, T, C) training features."""
        x = torch.as_tensor(np.asarray(features, np.float32)).flatten(0, 1).double()
        self.feature_mean.copy_(x.mean(0))
        self.feature_scale.copy_(x.std(0).clamp_min(1e-6))

    @property
    def capabilities(self) -> Capabilities:
        """What the core declares it can do (:class:`~model.encoders.interface.Capabilities`)."""
        return self.core.capabilities

    def restricted(self, vertices: np.ndarray) -> "NormalisedEncoder":
        """A copy predicting only ``vertices``, with identical values (``capabilities.restrict_vertices``)."""
        if not self.capabilities.restrict_vertices:
            raise TypeError(f"{type(self.core).__name__} cannot be restricted to vertices")
        out = copy.copy(self)
        out._modules = dict(self._modules)
        out.core = self.core.restricted(vertices)
        return out

    def randomisation_steps(self) -> list[tuple[str, list[nn.Module]]]:
        """The core's parts in its randomisation order (:meth:`~model.encoders.interface.EncoderCore.randomisation_order`)."""
        return [(part, [self.core.get_submodule(part)]) for part in self.core.randomisation_order()]

    def normalise(self, features: torch.Tensor) -> torch.Tensor:
        if not self.standardise:
            return features.float()
        return (features.float() - self.feature_mean) / self.feature_scale

    def forward(self, features: torch.Tensor, **kwargs) -> dict[str, torch.Tensor]:
        return self.core(self.normalise(features), **kwargs)
