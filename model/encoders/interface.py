"""What an encoder core is built from, and what it declares it can do.

Every encoder core (the transformer and the baselines) is built by
``from_config(inputs, config)`` from :class:`EncoderInputs` and its own
section of the run configuration, and declares its :class:`Capabilities`
as a class attribute. Code that trains or explains an encoder reads these
declarations instead of probing the module for attributes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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
