"""Brain-region queries and the readouts from query tokens to vertices.

:data:`READOUT_RES` lists the seed's ``readout_res`` choices as a table: which
ROI classes get one query per ROI, per hemisphere, and whether a query
covers the vertices left unassigned. A vertex in several ROIs (of different
classes) belongs to several queries and gets the sum of their readouts.

The seed computed every query's readout for every vertex and then masked
(cost queries x vertices x hidden). Here vertices are grouped by the set of
queries they belong to; each group is read out once from the sum of its
queries' tokens, so the cost is vertices x hidden, with identical results
(:func:`dense_linear_readout` is the seed's definition, kept for tests and
benchmarks).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .errors import InputError
from .rois import HEMIS, NON_STREAM_CLASSES
from .subject import Subject

UNASSIGNED = "unknown"


@dataclass(frozen=True)
class ReadoutRes:
    """One ``readout_res`` choice: ROI classes with a query per ROI, and an unassigned query."""

    classes: tuple[str, ...]
    unassigned: bool = True
    description: str = ""


READOUT_RES: dict[str, ReadoutRes] = {
    "rois_all": ReadoutRes(NON_STREAM_CLASSES, True, "a query per ROI of the five non-stream classes, plus unassigned"),
    "streams_inc": ReadoutRes(("streams",), True, "a query per stream ROI, plus unassigned"),
    "visuals": ReadoutRes(("prf-visualrois",), True, "a query per early visual ROI, plus the rest"),
    "bodies": ReadoutRes(("floc-bodies",), True, "a query per body ROI, plus the rest"),
    "faces": ReadoutRes(("floc-faces",), True, "a query per face ROI, plus the rest"),
    "places": ReadoutRes(("floc-places",), True, "a query per place ROI, plus the rest"),
    "words": ReadoutRes(("floc-words",), True, "a query per word ROI, plus the rest"),
    "hemis": ReadoutRes((), True, "one query per hemisphere"),
}


@dataclass
class QuerySet:
    """Queries (hemi x ROI) and which vertices each one reads out to.

    Vertices are numbered over both hemispheres, lh first then rh.
    ``memberships`` is a (vertices x queries) boolean matrix.
    """

    hemis: list[str]
    rois: list[str]
    n_vertices: dict[str, int]
    memberships: np.ndarray

    @property
    def names(self) -> list[str]:
        return [f"{h}:{r}" for h, r in zip(self.hemis, self.rois)]

    @property
    def n_queries(self) -> int:
        return len(self.rois)

    @property
    def n_total(self) -> int:
        return sum(self.n_vertices.values())

    def vertex_slice(self, hemi: str) -> slice:
        start = 0 if hemi == "lh" else self.n_vertices["lh"]
        return slice(start, start + self.n_vertices[hemi])

    def query_index(self, hemi: str, roi: str) -> int:
        try:
            return self.names.index(f"{hemi}:{roi}")
        except ValueError:
            raise InputError("--rois", f"no query for {roi!r} in {hemi}; queries: {', '.join(self.names)}") from None

    def groups(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(query indices, vertex indices) per distinct set of queries; every vertex in exactly one."""
        keys, inverse = np.unique(self.memberships, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        return [(np.flatnonzero(key), np.flatnonzero(inverse == g)) for g, key in enumerate(keys) if key.any()]


def build_queries(subject: Subject, readout_res: str) -> QuerySet:
    """The queries of ``readout_res`` for the ROIs present in each hemisphere of ``subject``."""
    if readout_res not in READOUT_RES:
        raise InputError("--readout-res", f"unknown readout {readout_res!r}; choose from {', '.join(READOUT_RES)}")
    spec = READOUT_RES[readout_res]
    hemis, rois, columns = [], [], []
    n = {h: subject.n_vertices(h) for h in HEMIS}
    offset = {"lh": 0, "rh": n["lh"]}
    total = n["lh"] + n["rh"]
    for hemi in HEMIS:
        assigned = np.zeros(n[hemi], bool)
        for roi_class in spec.classes:
            for roi in subject.roi_names(roi_class, hemi):
                mask = subject.roi_mask(roi, hemi)
                assigned |= mask
                hemis.append(hemi), rois.append(roi), columns.append(_embed(mask, offset[hemi], total))
        if spec.unassigned and (~assigned).any():
            hemis.append(hemi), rois.append(UNASSIGNED), columns.append(_embed(~assigned, offset[hemi], total))
    memberships = np.stack(columns, axis=1)
    return QuerySet(hemis, rois, n, memberships)


def _embed(mask: np.ndarray, offset: int, total: int) -> np.ndarray:
    out = np.zeros(total, bool)
    out[offset:offset + mask.size] = mask
    return out


class _GroupedLinear(torch.autograd.Function):
    """out[:, v] = inputs[:, g(v)] @ weight[v] for each vertex v of each group g.

    Written as one autograd function so the backward pass fills one gradient
    buffer per tensor instead of one full-size buffer per group.
    """

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, weight: torch.Tensor, groups: list[torch.Tensor]) -> torch.Tensor:
        out = inputs.new_empty(inputs.shape[0], weight.shape[0])
        for g, idx in enumerate(groups):
            out[:, idx] = inputs[:, g] @ weight[idx].T
        ctx.save_for_backward(inputs, weight)
        ctx.groups = groups
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        inputs, weight = ctx.saved_tensors
        grad_inputs = torch.zeros_like(inputs) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for g, idx in enumerate(ctx.groups):
            go = grad_out[:, idx]
            if grad_inputs is not None:
                grad_inputs[:, g] = go @ weight[idx]
            if grad_weight is not None:
                grad_weight[idx] = go.T @ inputs[:, g]
        return grad_inputs, grad_weight, None


def grouped_linear(inputs: torch.Tensor, weight: torch.Tensor, groups: list[torch.Tensor]) -> torch.Tensor:
    """(B, G, D) group inputs, (V, D) vertex weights -> (B, V): each vertex reads its group's input."""
    return _GroupedLinear.apply(inputs, weight.to(inputs.dtype), groups)


class LinearReadout(nn.Module):
    """The seed's readout: vertex v predicts ``w_v . sum_{q ∋ v} h_q + n_v b_v``.

    Vertices are grouped by their set of queries (``mixing``: groups x
    queries); each group's summed token is read out once.
    """

    def __init__(self, queries: QuerySet, hidden: int):
        super().__init__()
        groups = queries.groups()
        self.n_vertices, self.n_queries = queries.n_total, queries.n_queries
        self._groups = [torch.as_tensor(v) for _, v in groups]
        covered = np.concatenate([v for _, v in groups])
        if np.unique(covered).size != self.n_vertices:
            raise InputError("readout", "every vertex must belong to at least one query")
        mixing = torch.zeros(len(groups), queries.n_queries)
        counts = torch.zeros(self.n_vertices)
        for g, (q, v) in enumerate(groups):
            mixing[g, torch.as_tensor(q)] = 1.0
            counts[torch.as_tensor(v)] = float(q.size)  # the seed added the bias once per query
        self.register_buffer("mixing", mixing, persistent=False)
        self.register_buffer("n_memberships", counts, persistent=False)
        self.weight = nn.Parameter(torch.empty(self.n_vertices, hidden))
        self.bias = nn.Parameter(torch.zeros(self.n_vertices))
        bound = 1 / hidden**0.5  # as nn.Linear
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def groups(self, device: torch.device) -> list[torch.Tensor]:
        if self._groups[0].device != device:
            self._groups = [g.to(device) for g in self._groups]
        return self._groups

    uses_attention = False

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor | None = None,
                attention: torch.Tensor | None = None) -> torch.Tensor:
        summed = torch.einsum("gq,bqd->bgd", self.mixing.to(tokens.dtype), tokens)
        return grouped_linear(summed, self.weight, self.groups(tokens.device)) + self.n_memberships * self.bias

    def subset(self, vertices: np.ndarray) -> "LinearReadout":
        """A frozen copy that predicts only ``vertices`` (in that order), with identical values.

        Explaining one ROI needs its vertices, not all 40,000: every per-vertex
        parameter is sliced, and groups are renumbered and emptied ones dropped.
        """
        vertices = np.asarray(vertices)
        position = np.full(self.n_vertices, -1)
        position[vertices] = np.arange(vertices.size)
        out = copy.copy(self)
        out._parameters, out._buffers, out._modules = dict(self._parameters), dict(self._buffers), dict(self._modules)
        kept, groups = [], []
        for g, members in enumerate(self._groups):
            new = position[members.cpu().numpy()]
            if (new >= 0).any():
                kept.append(g), groups.append(torch.as_tensor(new[new >= 0]))
        out._groups = groups
        out.mixing = self.mixing[kept]
        out.n_vertices = vertices.size
        index = torch.as_tensor(vertices)
        out.n_memberships = self.n_memberships[index]
        for name, p in self._parameters.items():
            if p is not None and p.shape[0] == self.n_vertices:
                out._parameters[name] = nn.Parameter(p.detach()[index].clone(), requires_grad=False)
        return out


class RetinotopicReadout(LinearReadout):
    """The seed's readout plus per-vertex spatial pooling inside the query's attention window.

    Each query's output token makes ``n_maps`` feature maps over the backbone
    tokens (a dot product of a projection of the query token with a small
    MLP of each token, as mask heads do), gated by the query's own
    cross-attention; each vertex pools the maps of its queries with its own
    spatial weights and mixes them with its own channel weights. One query
    per ROI still decides *what* the ROI responds to and, through its
    attention, *where* the ROI looks; each vertex picks its place inside
    that window, which is what retinotopic cortex needs (the seed's readout
    gives every vertex of an ROI the same token). Because signal can only
    pass where the query attends, the attention maps stay interpretable.
    """

    uses_attention = True

    def __init__(self, queries: QuerySet, hidden: int, n_tokens: int, n_maps: int = 4, map_dim: int = 64):
        super().__init__(queries, hidden)
        self.n_maps, self.map_dim = n_maps, map_dim
        self.query_proj = nn.Linear(hidden, n_maps * map_dim)
        self.token_mlp = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, map_dim), nn.GELU(), nn.Linear(map_dim, map_dim))
        self.spatial = nn.Parameter(torch.full((self.n_vertices, n_tokens), 1.0 / n_tokens))
        self.channel = nn.Parameter(torch.randn(self.n_vertices, n_maps) * 0.01)

    def maps(self, tokens: torch.Tensor, memory: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """Feature maps (B, Q, n_maps, T) of every query, gated by its attention (B, Q, T)."""
        b, q, _ = tokens.shape
        keys = self.query_proj(tokens).view(b, q, self.n_maps, self.map_dim)
        maps = torch.einsum("bqkd,btd->bqkt", keys, self.token_mlp(memory)) / self.map_dim**0.5
        return maps * (attention * attention.shape[-1])[:, :, None, :]

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor | None = None,
                attention: torch.Tensor | None = None) -> torch.Tensor:
        linear = super().forward(tokens)
        window = attention.mean(1)  # (B, heads, Q, T) -> (B, Q, T)
        maps = torch.einsum("gq,bqkt->bkgt", self.mixing.to(tokens.dtype), self.maps(tokens, memory, window))
        b, k = maps.shape[:2]
        pooled = grouped_linear(maps.flatten(0, 1), self.spatial, self.groups(tokens.device)).view(b, k, -1)
        return linear + torch.einsum("bkv,vk->bv", pooled, self.channel)


class HeadReadout(LinearReadout):
    """The seed's readout plus a per-vertex mix of what each attention head of its queries sees.

    Each head of a query's cross-attention pools a small nonlinear embedding
    of the tokens over its own window; each vertex weighs those
    (head x channel) summaries with its own weights. A vertex's spatial
    selectivity is therefore a combination of its query's head windows: the
    attention maps are where the model looks, by construction, and early
    visual queries must tile their visual-field quadrant with their heads to
    predict retinotopic vertices.
    """

    uses_attention = True

    def __init__(self, queries: QuerySet, hidden: int, nheads: int, map_dim: int = 32):
        super().__init__(queries, hidden)
        self.map_dim = map_dim
        self.token_mlp = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, 4 * map_dim), nn.GELU(),
                                       nn.Linear(4 * map_dim, map_dim))
        self.head_weight = nn.Parameter(torch.randn(self.n_vertices, nheads * map_dim) * 0.01)

    def pooled(self, memory: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """(B, Q, heads * map_dim): each head's attention-weighted token embedding."""
        pooled = torch.einsum("bhqt,btd->bqhd", attention, self.token_mlp(memory))
        return pooled.flatten(2)

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor | None = None,
                attention: torch.Tensor | None = None) -> torch.Tensor:
        linear = super().forward(tokens)
        summed = torch.einsum("gq,bqf->bgf", self.mixing.to(tokens.dtype), self.pooled(memory, attention))
        return linear + grouped_linear(summed, self.head_weight, self.groups(tokens.device))


READOUTS = {"linear": LinearReadout, "retinotopic": RetinotopicReadout, "heads": HeadReadout}


def dense_linear_readout(tokens: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, memberships: torch.Tensor) -> torch.Tensor:
    """The seed's definition: every query read out to every vertex, then masked and summed.

    tokens (B, Q, D), weight (V, D), bias (V,), memberships (V, Q) -> (B, V).
    Costs B x Q x V x D; for tests and benchmarks only.
    """
    every = torch.einsum("bqd,vd->bqv", tokens, weight) + bias[None, None, :]
    return (every * memberships.T[None].to(every.dtype)).sum(1)
