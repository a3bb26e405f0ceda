"""What the parts of a model declare, so that the code that trains and explains them never probes for attributes.

Every encoder core (the transformer and the baselines) is an
:class:`EncoderCore`: built by ``from_config(inputs, config)`` from
:class:`EncoderInputs` and its own section of the run configuration, it
declares its :class:`Capabilities` as a class attribute and the order in
which the sanity check randomises its parts. What trains, predicts and is
explained is an :class:`Encoder` (a core behind the token standardisation,
or an ensemble of them); what gives it tokens is a :class:`TokenBackbone`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ContextManager, Protocol, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from .queries import QuerySet


@dataclass(frozen=True)
class EncoderInputs:
    """What every encoder is built for: the ROI queries (and so the vertices) and the token shape."""

    queries: "QuerySet"
    feature_dim: int
    grid: tuple[int, int]

    @property
    def n_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class Capabilities:
    """What an encoder core offers beyond ``forward(features) -> {'pred': (B, V)}``.

    Attributes
    ----------
    decoder_attention : bool
        ``forward(features, return_attention=True)`` also returns the decoder's
        cross-attention (B, layers, heads, queries, tokens), and the core has
        decoder ``layers``.
    restrict_vertices : bool
        ``restricted(vertices)`` returns a frozen copy that predicts only those
        vertices with identical values (explaining one ROI needs its vertices only).
    regularisation : bool
        ``regularization()`` returns a term that training adds to the loss.
    closed_form : bool
        Fitted once by ``fit(batches, targets)`` instead of by gradient descent.
    """

    decoder_attention: bool = False
    restrict_vertices: bool = False
    regularisation: bool = False
    closed_form: bool = False


class EncoderCore(nn.Module):
    """Base of every encoder core: what it can do, and the order in which its parts are randomised."""

    capabilities = Capabilities()

    def lr_scales(self) -> dict[str, float]:
        """Learning rate of some parts (submodule name -> multiple of the training's); the rest at 1."""
        return {}

    def randomisation_order(self) -> list[str]:
        """Names of the core's parts (submodules) from the output down: the steps of the sanity check's cascade.

        By default its children with trainable parameters, last defined first.
        """
        return [name for name, module in reversed(list(self.named_children()))
                if any(p.requires_grad for p in module.parameters())]


@runtime_checkable
class Encoder(Protocol):
    """What trains, predicts and is explained: a core behind the token standardisation
    (:class:`model.encoders.registry.NormalisedEncoder`) or an ensemble of them (:class:`model.runs.ensembles.EnsembleEncoder`).

    ``encoder(features (B, T, C), return_attention=False) -> {'pred': (B, V), ...}``.
    """

    capabilities: Capabilities
    #: (C,) the training images' mean token, zero after the standardisation: the token baseline of attributions
    feature_mean: torch.Tensor

    def __call__(self, features: torch.Tensor, return_attention: bool = False) -> dict[str, torch.Tensor]: ...

    def restricted(self, vertices) -> "Encoder":
        """A copy predicting only ``vertices`` (where ``capabilities.restrict_vertices``)."""

    def randomisation_steps(self) -> list[tuple[str, list[nn.Module]]]:
        """The sanity cascade: each step's name and the modules whose parameters it randomises (an ensemble:
        that part of every member)."""


@runtime_checkable
class TokenBackbone(Protocol):
    """What the suite asks of a frozen backbone: images in, a grid of tokens out, and what it declares.

    ``backbone(backbone.preprocess(images)) -> (B, T, dim)`` tokens, T =
    rows x cols of ``grid`` ((1, 1) for a class-token or pooled feature),
    ``patch`` pixels apart on an input of ``input_size`` pixels (images are
    brought to ``image_side`` first). ``prefix_tokens`` are the tokens ahead
    of the patch tokens inside its blocks (a class token first, if
    ``has_class_token``, then any registers); ``self_attention``: while
    :meth:`record_attention` is active, each block that runs hands its
    softmax attention ``(B, heads, N, N)`` to ``record``, N = prefix + patch
    tokens. ``block_index`` of ``depth`` is the block (or stage) whose
    output the features are.
    """

    grid: tuple[int, int]
    dim: int
    patch: int
    image_side: int
    input_size: int
    depth: int
    block_index: int
    prefix_tokens: int
    has_class_token: bool
    self_attention: bool

    def preprocess(self, images: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> str: ...

    def record_attention(self, record: Callable[[torch.Tensor], None]) -> ContextManager[None]: ...
