"""Cross-attention through learned windows: *what* from the tokens' content, *where* from a Gaussian window per head.

With the standard cross-attention (``--attention standard``) a query's
heads are free to specialise: some on a place in the image, some on a
kind of content, so their average, the map every figure shows, mixes
windows the prediction reads separately. Here (``--attention windows``)
every head of a query shares one *content* score and looks at the image
through its own Gaussian *window* over the token grid, a learned centre
and width per query and head, in the manner of spatially modulated
co-attention (Gao et al. 2021, SMCA-DETR):

    a[q, h, t] = H x softmax over (h, t) of ( s[q, t] - |x_t - mu[q, h]|^2 / (2 sigma[q, h]^2) )

``s[q, t] = (W_q e_q) . k(m_t) / sqrt(d)`` is the content score of token
``m_t`` for query ``e_q`` (no position enters it; the key ``k`` is
``--content-key``: ``mlp``, the linear key plus a two-layer network of
the token, :class:`ResidualMLPKey`; ``wide_mlp`` the same with a hidden
layer twice as wide; ``context_mlp`` a network of the token and the mean
of its 3 x 3 neighbourhood; by default ``auto``, which is ``context_mlp``
on grids of at least :data:`CONTEXT_MIN_SIDE` tokens a side and ``mlp`` on
coarser ones (:func:`content_key_for`); ``linear`` for runs written before
the network), ``x_t`` the token's place
on the grid in [-1, 1] (x right, y down), ``mu`` and ``sigma`` the window,
``H`` the number of heads. One softmax runs over every head's window
together (``--window-softmax shared``, the default): the heads divide the
query's attention among themselves, and a head whose window holds nothing
the content score wants gets little of it. The head average, the map every
figure shows, is then exactly the content score within the union of the
windows (it sums to 1; a head's map sums to ``H`` times its share), so a
face query's map goes to the faces in its field rather than to the
background at the centre of an empty window, and an early visual query's
windows tile its part of the visual field like population receptive
fields. ``--window-softmax per_head`` normalises each head over the tokens
alone, as multi-head attention does (every head's map sums to 1, so an
empty window keeps its share); runs written before the option existed read
as ``per_head``. The values and the output projection are those of
multi-head attention.

The windows learn ``--window-lr`` times faster than the rest of the
decoder (an AdamW group of their own, ``BrainEncoder.lr_scales``): at the decoder's learning rate they
barely leave their initial lattice within a run, every query keeps looking
at the whole image and the readout's weights over the heads do the spatial
work (``docs/attention.md``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import nn

#: windows' centres are ``CENTRE_SCALE x`` their parameters, so that the optimiser can move
#: a window across the image within a training run (Adam's steps are about the learning rate)
CENTRE_SCALE = 4.0
#: initial window width (standard deviation) on the [-1, 1] grid: a quarter of the image
INITIAL_SIGMA = 0.5


@dataclass(frozen=True)
class Choice:
    """One value of an option: what it makes, and what ``--help`` says it is (as ``Feature`` and the other registries)."""

    make: Callable
    description: str


def grid_positions(rows: int, cols: int, device=None) -> torch.Tensor:
    """(rows * cols, 2) token centres on [-1, 1]: x right, y down, row-major like the flattened tokens."""
    y = (torch.arange(rows, dtype=torch.float32, device=device) + 0.5) / rows * 2 - 1
    x = (torch.arange(cols, dtype=torch.float32, device=device) + 0.5) / cols * 2 - 1
    return torch.stack(torch.meshgrid(x, y, indexing="xy"), -1).reshape(-1, 2)


def initial_centres(nheads: int) -> torch.Tensor:
    """(nheads, 2) centres on a near-square lattice over the image, so every query starts by seeing all of it."""
    side = math.ceil(math.sqrt(nheads))
    ticks = (torch.arange(side, dtype=torch.float32) + 0.5) / side * 2 - 1
    lattice = torch.stack(torch.meshgrid(ticks, ticks, indexing="xy"), -1).reshape(-1, 2)
    return lattice[:nheads]


class QueryWindows(nn.Module):
    """Each query's Gaussian window per head: a learned centre and width on the token grid."""

    def __init__(self, n_queries: int, nheads: int):
        super().__init__()
        self.centre = nn.Parameter(initial_centres(nheads).expand(n_queries, -1, -1) / CENTRE_SCALE)
        self.log_sigma = nn.Parameter(torch.full((n_queries, nheads), math.log(INITIAL_SIGMA)))

    def log_prior(self, grid: tuple[int, int], queries: slice = slice(None)) -> torch.Tensor:
        """(Q, heads, T) log window of the queries ``queries``: ``-|x_t - mu|^2 / (2 sigma^2)``."""
        xy = grid_positions(*grid, device=self.centre.device)
        centre = self.centre[queries] * CENTRE_SCALE
        d2 = ((xy[None, None] - centre[:, :, None]) ** 2).sum(-1)
        return -d2 / (2 * torch.exp(2 * self.log_sigma[queries])[:, :, None])


def shared_softmax(logits: torch.Tensor) -> torch.Tensor:
    """(B, heads, Q, T) logits -> weights: one softmax over every head and token of a query, times the heads."""
    b, h, q, t = logits.shape
    joint = logits.float().transpose(1, 2).reshape(b, q, h * t).softmax(-1)
    return joint.view(b, q, h, t).transpose(1, 2) * h


def per_head_softmax(logits: torch.Tensor) -> torch.Tensor:
    """(B, heads, Q, T) logits -> weights: each head's softmax over the tokens (multi-head attention's)."""
    return logits.float().softmax(-1)


#: ``--window-softmax``: how a query's attention is normalised over its heads' windows
WINDOW_SOFTMAXES = {
    "shared": Choice(shared_softmax, "one softmax over every head's window, the heads divide the query's attention "
                                     "(default)"),
    "per_head": Choice(per_head_softmax, "each head over the tokens alone (runs from before this option)"),
}


def neighbourhood_mean(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, T, D) tokens of a row-major ``grid`` -> the mean of each token's 3 x 3 neighbourhood (itself included;
    at the edges, of the neighbours that exist)."""
    b, t, d = tokens.shape
    if t != grid[0] * grid[1]:
        raise ValueError(f"{t} tokens do not make a {grid[0]}x{grid[1]} grid")
    planes = tokens.transpose(1, 2).reshape(b, d, *grid)
    mean = nn.functional.avg_pool2d(planes, 3, stride=1, padding=1, count_include_pad=False)
    return mean.reshape(b, d, t).transpose(1, 2)


class ResidualMLPKey(nn.Module):
    """``W m + W_2 gelu(W_1 x)``: the linear key plus a two-layer network of the token ``x = m`` or, with
    ``context``, of the token next to the mean of its 3 x 3 neighbourhood, ``x = [m; mean_3x3(m)]``.

    A linear key can only score what is linear in a token; a random or frozen
    backbone often carries a category (a small face, text against a striped
    shirt, a body against the room's floor lines) only non-linearly. Replacing
    the linear key by the network alone did better on one virtual subject
    and worse on the other; the sum did better on both. Two variants are
    options (``docs/attention.md``). A hidden layer ``width`` = 2 times the
    token's size (``wide_mlp``) found the category objects more often on
    both, but on the test suite's small subject its early visual attention
    missed the planted quadrants (its windows stay near the centre there,
    so the place must come from the content score). With ``context`` the
    network also reads the mean of the token's 3 x 3 neighbourhood
    (``context_mlp``): on the 434 px subject, whose face queries' misses
    fell mostly on the bodies' skin-coloured hands, those misses halved, but
    on the two 224 px subjects it found small text less often and its
    pointing game fell, under 0.85 at one of two seeds of one; the default,
    ``auto``, reads the neighbourhood on fine grids only (:func:`content_key_for`).
    The weights start as the decoder's others do (xavier, ``BrainEncoder``).
    """

    def __init__(self, linear: nn.Linear, width: int = 1, context: bool = False):
        super().__init__()
        d = linear.in_features
        self.linear, self.context = linear, context
        self.hidden, self.correction = nn.Linear((2 if context else 1) * d, width * d), nn.Linear(width * d, d)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, T, D) tokens -> keys; ``grid`` (rows, cols) of the tokens, needed with ``context``."""
        x = tokens
        if self.context:
            if grid is None:
                raise ValueError("a key that reads the tokens' neighbourhood needs their grid")
            x = torch.cat([tokens, neighbourhood_mean(tokens, grid)], -1)
        return self.linear(tokens) + self.correction(nn.functional.gelu(self.hidden(x)))


def linear_key(linear: nn.Linear) -> nn.Linear:
    """The key of multi-head attention: a linear map of the token."""
    return linear


#: ``--content-key``: how a token becomes the key its content score is read from (each made from the linear key)
CONTENT_KEYS = {
    "mlp": Choice(ResidualMLPKey, "the linear key plus a two-layer network of the token"),
    "wide_mlp": Choice(partial(ResidualMLPKey, width=2), "the same with a hidden layer twice as wide"),
    "context_mlp": Choice(partial(ResidualMLPKey, context=True), "the same network of the token and the mean of its "
                                                                 "3 x 3 neighbourhood"),
    "linear": Choice(linear_key, "multi-head attention's (runs from before this option)"),
}


#: ``auto`` reads the neighbourhood on grids of at least this many tokens a side, where 3 x 3 tokens span at
#: most an eighth of the image. On 31 x 31 tokens (434 px images, patches of 14: NSD's native size) the
#: neighbourhood halved the face queries' peaks on skin-coloured hands; on 16 x 16 tokens (224 px), where
#: it spans a fifth of the image, small text was found less often (``docs/attention.md``).
CONTEXT_MIN_SIDE = 24


def key_for_grid(grid: tuple[int, int]) -> str:
    """``context_mlp`` on grids of at least :data:`CONTEXT_MIN_SIDE` tokens a side, ``mlp`` on coarser ones."""
    return "context_mlp" if min(grid) >= CONTEXT_MIN_SIDE else "mlp"


#: content keys that stand for one of :data:`CONTENT_KEYS`, chosen by the token grid
GRID_CONTENT_KEYS = {
    "auto": Choice(key_for_grid, f"context_mlp on grids of at least {CONTEXT_MIN_SIDE} tokens a side (434 px "
                                 "images with patches of 14), mlp on coarser ones (default)"),
}


def content_key_for(name: str, grid: tuple[int, int]) -> str:
    """The key of :data:`CONTENT_KEYS` that the option value ``name`` builds on a ``grid`` (rows, cols) of tokens."""
    return GRID_CONTENT_KEYS[name].make(tuple(grid)) if name in GRID_CONTENT_KEYS else name


class WindowedCrossAttention(nn.Module):
    """Multi-head cross-attention whose heads share one content score and differ by an additive log window."""

    def __init__(self, d: int, nheads: int, dropout: float, softmax: str = "shared", content_key: str = "linear"):
        super().__init__()
        self.heads, self.softmax = nheads, WINDOW_SOFTMAXES[softmax].make
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.k_proj = CONTENT_KEYS[content_key].make(self.k_proj)  # made last: the other layers start as with a linear key
        self.drop = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, log_prior: torch.Tensor,
                grid: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, Q, D), key and value (B, T, D), log_prior (Q, heads, T) -> output (B, Q, D), weights (B, heads, Q, T).

        ``grid``: the tokens' (rows, cols), for a key that reads their neighbourhood.
        """
        keys = self.k_proj(key) if isinstance(self.k_proj, nn.Linear) else self.k_proj(key, grid)
        content = self.q_proj(query) @ keys.transpose(1, 2) / math.sqrt(query.shape[-1])  # (B, Q, T)
        logits = content[:, None] + log_prior.transpose(0, 1)[None].to(content.dtype)  # (B, heads, Q, T)
        weights = self.softmax(logits).to(content.dtype)
        b, t = value.shape[:2]
        v = self.v_proj(value).view(b, t, self.heads, -1).transpose(1, 2)  # (B, heads, T, D / heads)
        out = (self.drop(weights) @ v).transpose(1, 2).flatten(2)  # (B, Q, D)
        return self.out_proj(out), weights
