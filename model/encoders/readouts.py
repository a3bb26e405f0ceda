"""The readouts from query tokens to vertices (the queries themselves: :mod:`model.encoders.queries`).

A vertex in several ROIs (of different classes) belongs to several queries
(:class:`~model.encoders.queries.QuerySet`) and gets the sum of their readouts.

The seed computed every query's readout for every vertex and then masked
(cost queries x vertices x hidden). Here each query is read out only to its
own vertices (:func:`membership_linear`: memberships sorted by query into
fixed-size chunks, one gather and one batched matrix product, no Python loop
over queries or vertices), so the cost is about vertices x hidden, with
identical results (:func:`dense_linear_readout` is the seed's definition,
kept for tests and benchmarks).

Each readout builds itself from a :class:`~model.encoders.configs.DecoderConfig`
(``from_config``), not imported here: that module validates against this
one's :data:`READOUTS`.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field, fields, replace
import numpy as np
import torch
from torch import nn

from ..errors import InputError
from .queries import QuerySet


@dataclass(frozen=True)
class MembershipPlan:
    """Where every (query, vertex) membership sits in a chunked layout, fixed at construction.

    Memberships are sorted by query; each query's run is cut into chunks of
    ``chunk`` slots (the last one padded), so one batched matrix product
    reads every chunk out from its query's input. A vertex in several
    queries has several slots: ``first_slot`` holds one slot per vertex and
    ``extra_slot``/``extra_vertex`` the others, whose values are added.
    Padding slots point at vertex 0 and are never read back.
    """

    n_vertices: int
    n_queries: int
    chunk: int
    chunk_query: torch.Tensor  # (N,) the query of each chunk
    slot_vertex: torch.Tensor  # (N * chunk,) the vertex of each slot
    first_slot: torch.Tensor  # (V,)
    extra_slot: torch.Tensor  # (E,)
    extra_vertex: torch.Tensor  # (E,)
    _on_device: dict = field(default_factory=dict, compare=False, repr=False)
    _buffers: dict = field(default_factory=dict, compare=False, repr=False)
    _holders: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_chunks(self) -> int:
        return int(self.chunk_query.numel())

    @classmethod
    def from_memberships(cls, memberships: np.ndarray, chunk: int | None = None) -> "MembershipPlan":
        """The plan of a (vertices x queries) boolean matrix; every vertex needs a query.

        ``chunk`` defaults to 64 slots (or the power of two just above the
        mean query's size when queries are smaller): large enough for
        efficient matrix products, small enough that padding (under one
        chunk per query) stays a small fraction of the slots.
        """
        memberships = np.asarray(memberships, bool)
        n_vertices, n_queries = memberships.shape
        if not memberships.any(1).all():
            raise InputError("readout", "every vertex must belong to at least one query")
        query, vertex = np.nonzero(memberships.T)  # sorted by query, then vertex
        if chunk is None:
            chunk = int(min(64, 2 ** np.ceil(np.log2(max(1.0, query.size / n_queries)))))
        per_query = np.bincount(query, minlength=n_queries)
        chunks = -(-per_query // chunk)
        first_of_query = np.concatenate(([0], np.cumsum(per_query)[:-1]))
        slot = np.repeat(np.concatenate(([0], np.cumsum(chunks)[:-1])) * chunk, per_query) \
            + np.arange(query.size) - np.repeat(first_of_query, per_query)
        slot_vertex = np.zeros(int(chunks.sum()) * chunk, np.int64)
        slot_vertex[slot] = vertex
        by_vertex = np.lexsort((slot, vertex))
        vertex, slot = vertex[by_vertex], slot[by_vertex]
        first = np.concatenate(([True], vertex[1:] != vertex[:-1]))
        first_slot = np.empty(n_vertices, np.int64)
        first_slot[vertex[first]] = slot[first]
        as_tensor = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.long)  # noqa: E731
        return cls(n_vertices, n_queries, chunk, as_tensor(np.repeat(np.arange(n_queries), chunks)),
                   as_tensor(slot_vertex), as_tensor(first_slot), as_tensor(slot[~first]), as_tensor(vertex[~first]))

    def __deepcopy__(self, memo: dict) -> "MembershipPlan":
        """A copy of a model shares the (never modified) index tensors, not the caches and buffers."""
        return replace(self, _on_device={}, _buffers={}, _holders={})

    def to(self, device: torch.device) -> "MembershipPlan":
        """This plan's index tensors on ``device`` (copied once, then reused)."""
        if self.chunk_query.device == device:
            return self
        if device not in self._on_device:
            self._on_device[device] = replace(self, _on_device={}, _buffers={}, _holders={}, **{
                f.name: getattr(self, f.name).to(device) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)})
        return self._on_device[device]

    def slot_weights(self, weight: torch.Tensor, dtype: torch.dtype, owner: object) -> torch.Tensor:
        """(N, C, D): each slot's vertex weights in ``dtype``, gathered for ``owner``.

        On the CPU the gather goes to a buffer kept between calls: a fresh
        tensor this large comes from the operating system page by page on
        every call, which took longer than the matrix products themselves.
        The buffer remembers whose gather it holds, so a backward pass right
        after its forward pass reuses it. GPU allocators cache their memory,
        so there the gather is made anew. Calls on one plan must not run in
        parallel threads.
        """
        buffer = self._scratch(weight.shape[1], dtype, weight.device)
        key = (weight.shape[1], dtype)
        if weight.device.type == "cpu" and self._holders.get(key) is owner:
            return buffer
        torch.index_select(weight.to(dtype), 0, self.slot_vertex, out=buffer.view(-1, weight.shape[1]))
        self._holders[key] = owner
        return buffer

    def slot_scratch(self, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(N, C, width) scratch space (on the CPU the buffer of :meth:`slot_weights`, which it then no longer holds)."""
        self._holders.pop((width, dtype), None)
        return self._scratch(width, dtype, device)

    def _scratch(self, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        shape = (self.n_chunks, self.chunk, width)
        if device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=device)
        key = (width, dtype)
        if key not in self._buffers:
            self._buffers[key] = torch.empty(shape, dtype=dtype)
        return self._buffers[key]


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """The readout computes in its inputs' dtype, so forward and backward agree under autocast."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class _MembershipLinear(torch.autograd.Function):
    """out[:, v] = sum over the queries q of v of inputs[:, q] . weight[v]; see :func:`membership_linear`."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, weight: torch.Tensor, plan: MembershipPlan) -> torch.Tensor:
        ctx.owner = object()  # whose gather the plan's CPU buffer holds
        with _no_autocast(inputs.device):
            x = _chunk_inputs(inputs, plan)
            slots = torch.bmm(plan.slot_weights(weight, inputs.dtype, ctx.owner), x.transpose(1, 2))  # (N, C, B)
            slots = slots.view(-1, inputs.shape[0])
            out = slots.index_select(0, plan.first_slot)
            out.index_add_(0, plan.extra_vertex, slots.index_select(0, plan.extra_slot))
        ctx.save_for_backward(inputs, weight)  # not x: the chunks' copies are remade in backward
        ctx.plan = plan
        return out.T

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        inputs, weight = ctx.saved_tensors
        plan: MembershipPlan = ctx.plan
        grad_inputs = grad_weight = None
        with _no_autocast(inputs.device):
            x = _chunk_inputs(inputs, plan)
            per_vertex = grad_out.T.to(x.dtype)  # (V, B)
            grad_slots = per_vertex.new_zeros(plan.slot_vertex.numel(), per_vertex.shape[1])
            grad_slots.index_copy_(0, plan.first_slot, per_vertex)
            grad_slots.index_copy_(0, plan.extra_slot, per_vertex.index_select(0, plan.extra_vertex))
            grad_slots = grad_slots.view(plan.n_chunks, plan.chunk, -1)  # (N, C, B); padding stays 0
            if ctx.needs_input_grad[0]:
                per_chunk = torch.bmm(grad_slots.transpose(1, 2), plan.slot_weights(weight, x.dtype, ctx.owner))
                summed = per_chunk.new_zeros(plan.n_queries, *per_chunk.shape[1:])
                grad_inputs = summed.index_add_(0, plan.chunk_query, per_chunk).transpose(0, 1)
            if ctx.needs_input_grad[1]:
                per_slot = torch.bmm(grad_slots, x, out=plan.slot_scratch(x.shape[-1], x.dtype, x.device))
                per_slot = per_slot.view(-1, x.shape[-1])
                grad_weight = per_slot.index_select(0, plan.first_slot)
                grad_weight.index_add_(0, plan.extra_vertex, per_slot.index_select(0, plan.extra_slot))
                grad_weight = grad_weight.to(weight.dtype)
        return grad_inputs, grad_weight, None


def _chunk_inputs(inputs: torch.Tensor, plan: MembershipPlan) -> torch.Tensor:
    """(N, B, D): each chunk's query input."""
    return inputs.transpose(0, 1).index_select(0, plan.chunk_query)


def membership_linear(inputs: torch.Tensor, weight: torch.Tensor, plan: MembershipPlan) -> torch.Tensor:
    """(B, Q, D) query inputs, (V, D) vertex weights -> (B, V): each vertex sums its queries' read-outs.

    Exactly ``sum_q memberships[v, q] * inputs[:, q] @ weight[v]``, at the
    cost of the memberships (about vertices x D per image) instead of queries
    x vertices x D: one gather of the weights into query-sorted chunks and
    one batched matrix product, forward and backward, whatever the number of
    queries. Besides the weights' sorted copy (slots x D, about the size of
    ``weight``) it holds each chunk's query input, (chunks x B x D) with
    chunks about vertices / 64 + queries: no (B x vertices x D) tensor is made.
    Computes in the dtype of ``inputs`` (autocast does not reach inside).
    """
    return _MembershipLinear.apply(inputs, weight, plan.to(inputs.device))


class LinearReadout(nn.Module):
    """The seed's readout: vertex v predicts ``w_v . sum_{q ∋ v} h_q + n_v b_v``.

    The queries' tokens are read out only where a vertex belongs to them
    (:func:`membership_linear`), never for every vertex. Every readout is
    built by :meth:`from_config` from the decoder configuration and declares
    ``uses_attention`` (whether ``forward`` needs the last layer's
    cross-attention); all can be restricted to some vertices (:meth:`subset`).
    """

    uses_attention = False
    #: the size ``cfg.readout_map_dim`` means when it is None (readouts that use it set their own)
    default_map_dim: int | None = None

    @classmethod
    def from_config(cls, queries: QuerySet, cfg: "DecoderConfig", n_tokens: int) -> "LinearReadout":
        """The readout that ``cfg`` (a :class:`~model.encoders.configs.DecoderConfig`) describes, for ``n_tokens`` tokens."""
        return cls(queries, cfg.hidden_dim)

    def __init__(self, queries: QuerySet, hidden: int):
        super().__init__()
        self.memberships = np.asarray(queries.memberships, bool)
        self.plan = MembershipPlan.from_memberships(self.memberships)
        self.n_vertices, self.n_queries = queries.n_total, queries.n_queries
        # the seed added the bias once per query
        self.register_buffer("n_memberships", torch.as_tensor(self.memberships.sum(1), dtype=torch.float32),
                             persistent=False)
        self.weight = nn.Parameter(torch.empty(self.n_vertices, hidden))
        self.bias = nn.Parameter(torch.zeros(self.n_vertices))
        bound = 1 / hidden**0.5  # as nn.Linear
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor | None = None,
                attention: torch.Tensor | None = None) -> torch.Tensor:
        return membership_linear(tokens, self.weight, self.plan) + self.n_memberships * self.bias

    def subset(self, vertices: np.ndarray) -> "LinearReadout":
        """A frozen copy that predicts only ``vertices`` (in that order), with identical values.

        Explaining one ROI needs its vertices, not all 40,000: every per-vertex
        parameter is sliced and the plan is made for those vertices.
        """
        vertices = np.asarray(vertices)
        out = copy.copy(self)
        out._parameters, out._buffers, out._modules = dict(self._parameters), dict(self._buffers), dict(self._modules)
        out.memberships = self.memberships[vertices]
        out.plan = MembershipPlan.from_memberships(out.memberships)
        out.n_vertices = vertices.size
        index = torch.as_tensor(vertices)
        out.n_memberships = self.n_memberships[index.to(self.n_memberships.device)]
        for name, p in self._parameters.items():
            if p is not None and p.shape[0] == self.n_vertices:
                out._parameters[name] = nn.Parameter(p.detach()[index.to(p.device)].clone(), requires_grad=False)
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
    #: token embedding size of the maps when the configuration leaves it to the readout
    default_map_dim = 64

    @classmethod
    def from_config(cls, queries: QuerySet, cfg: "DecoderConfig", n_tokens: int) -> "RetinotopicReadout":
        return cls(queries, cfg.hidden_dim, n_tokens, cfg.readout_maps, cfg.readout_map_dim or cls.default_map_dim)

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
        maps = self.maps(tokens, memory, window).transpose(1, 2)  # (B, K, Q, T)
        b, k = maps.shape[:2]
        pooled = membership_linear(maps.flatten(0, 1), self.spatial, self.plan).view(b, k, -1)
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
    #: token embedding size per head when the configuration leaves it to the readout (32: on the virtual
    #: subjects 64 fitted the training images better and the test images worse, docs/attention.md)
    default_map_dim = 32

    @classmethod
    def from_config(cls, queries: QuerySet, cfg: "DecoderConfig", n_tokens: int) -> "HeadReadout":
        return cls(queries, cfg.hidden_dim, cfg.nheads, cfg.readout_map_dim or cls.default_map_dim)

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
        return linear + membership_linear(self.pooled(memory, attention), self.head_weight, self.plan)


READOUTS = {"linear": LinearReadout, "retinotopic": RetinotopicReadout, "heads": HeadReadout}


def with_readout_subset(core: nn.Module, vertices: np.ndarray) -> nn.Module:
    """A shallow copy of ``core`` whose ``readout`` predicts only ``vertices``; every other part is shared."""
    out = copy.copy(core)
    out._modules = dict(core._modules)
    out.readout = core.readout.subset(vertices)
    return out


def dense_linear_readout(tokens: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, memberships: torch.Tensor) -> torch.Tensor:
    """The seed's definition: every query read out to every vertex, then masked and summed.

    tokens (B, Q, D), weight (V, D), bias (V,), memberships (V, Q) -> (B, V).
    Costs B x Q x V x D; for tests and benchmarks only.
    """
    every = torch.einsum("bqd,vd->bqv", tokens, weight) + bias[None, None, :]
    return (every * memberships.T[None].to(every.dtype)).sum(1)
