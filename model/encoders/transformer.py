"""The transformer encoder head: a DETR-style decoder whose learned queries are brain regions.

Backbone tokens (B, T, C) are projected to the hidden size (if it differs),
given a 2D sine (or learned) position encoding, optionally passed through
trainable encoder layers (``enc_layers``), and attended by one learned query
per ROI (pre-norm decoder layers, or the original's post-norm ones; query
self-attention optional). :class:`CustomTransformer` is the original's
``custom_transformer`` (:mod:`model.encoders.layers`). Each
query's output token is read out to the vertices of its ROI
(:mod:`model.encoders.readouts`). The forward pass returns the cross-attention weights
per query and head when asked, from the same pass that predicts.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.utils.checkpoint
from torch import nn

from ..errors import OptionError
from .configs import QUERY_INITS, DecoderConfig
from .interface import Capabilities, EncoderCore, EncoderInputs
from .layers import POSITION_EMBEDDINGS, CustomDecoderLayer, PostNormDecoderLayer, TokenEncoder
from .queries import QuerySet
from .readouts import READOUTS, with_readout_subset
from .windows import QueryWindows, WindowedCrossAttention, content_key_for


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: [query self-attention], cross-attention to tokens, feed-forward."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        d = cfg.hidden_dim
        self.self_attn = None
        if cfg.query_self_attention:
            self.self_attn = nn.MultiheadAttention(d, cfg.nheads, dropout=cfg.dropout, batch_first=True)
            self.norm_self, self.drop_self = nn.LayerNorm(d), nn.Dropout(cfg.dropout)
        self.windowed = cfg.attention == "windows"
        if self.windowed:
            self.cross_attn = WindowedCrossAttention(d, cfg.nheads, cfg.dropout, cfg.window_softmax, cfg.content_key)
        else:
            self.cross_attn = nn.MultiheadAttention(d, cfg.nheads, dropout=cfg.dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.dim_feedforward), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.dim_feedforward, d))
        self.norm_cross, self.norm_ffn = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop_cross, self.drop_ffn = nn.Dropout(cfg.dropout), nn.Dropout(cfg.dropout)

    def forward(self, tgt, memory, pos, query_pos, need_weights: bool = False, log_prior: torch.Tensor | None = None,
                grid: tuple[int, int] | None = None):
        if self.self_attn is not None:
            q = self.norm_self(tgt) + query_pos
            tgt = tgt + self.drop_self(self.self_attn(q, q, self.norm_self(tgt), need_weights=False)[0])
        if self.windowed:  # where the query looks comes from its windows alone: no position in the keys
            out, weights = self.cross_attn(self.norm_cross(tgt) + query_pos, memory, memory, log_prior, grid)
            weights = weights if need_weights else None
        else:
            out, weights = self.cross_attn(self.norm_cross(tgt) + query_pos, memory + pos, memory,
                                           need_weights=need_weights, average_attn_weights=False)
        tgt = tgt + self.drop_cross(out)
        tgt = tgt + self.drop_ffn(self.ffn(self.norm_ffn(tgt)))
        return tgt, weights


#: decoder layer by ``pre_norm``
DECODER_LAYERS = {True: DecoderLayer, False: PostNormDecoderLayer}


class BrainEncoder(EncoderCore):
    """Backbone tokens -> per-vertex predictions (both hemispheres, lh first).

    Its readout (``cfg.readout``, :data:`~model.encoders.readouts.READOUTS`) builds
    itself from ``cfg``.

    Parameters
    ----------
    queries : QuerySet
        The ROI queries and their vertices.
    feature_dim : int
        Channels of the backbone tokens.
    grid : (rows, cols)
        The token grid.
    cfg : DecoderConfig
    """

    capabilities = Capabilities(decoder_attention=True, restrict_vertices=True)

    def __init__(self, queries: QuerySet, feature_dim: int, grid: tuple[int, int], cfg: DecoderConfig = DecoderConfig()):
        super().__init__()
        d = cfg.hidden_dim
        self.cfg, self.grid = cfg, tuple(grid)
        limit = POSITION_EMBEDDINGS[cfg.position_embedding].max_side
        if limit is not None and max(grid) > limit:
            raise OptionError("decoder.position_embedding", f"{cfg.position_embedding} positions cover at most {limit} x "
                                                            f"{limit} tokens, the grid is {grid[0]} x {grid[1]}")
        self.input_proj = nn.Identity() if feature_dim == d else nn.Linear(feature_dim, d)
        self.pos = POSITION_EMBEDDINGS[cfg.position_embedding](d)
        self.token_encoder = TokenEncoder(cfg) if cfg.enc_layers else None
        self.query_embed = nn.Embedding(queries.n_queries, d)
        self.windows = QueryWindows(queries.n_queries, cfg.nheads) if cfg.attention == "windows" else None
        self.content_key = content_key_for(cfg.content_key, self.grid)  # `auto` picks the key by the grid
        layer_cfg = replace(cfg, content_key=self.content_key)
        self.layers = nn.ModuleList(self.decoder_layer(layer_cfg) for _ in range(cfg.dec_layers))
        self.norm = nn.LayerNorm(d) if self.final_norm else nn.Identity()
        self.readout = READOUTS[cfg.readout].from_config(queries, cfg, grid[0] * grid[1])
        self._reset_parameters()

    #: the decoder's output tokens go through a final LayerNorm (the original's ``decoder_norm``)
    final_norm = True

    @staticmethod
    def decoder_layer(cfg: DecoderConfig) -> nn.Module:
        return DECODER_LAYERS[cfg.pre_norm](cfg)

    @classmethod
    def from_config(cls, inputs: EncoderInputs, cfg: DecoderConfig) -> "BrainEncoder":
        return cls(inputs.queries, inputs.feature_dim, inputs.grid, cfg)

    def restricted(self, vertices: np.ndarray) -> "BrainEncoder":
        """A copy predicting only ``vertices`` (its readout sliced; the decoder shared)."""
        return with_readout_subset(self, vertices)

    def lr_scales(self) -> dict[str, float]:
        """The windows learn ``decoder.window_lr`` times faster than the rest (:mod:`model.encoders.windows`)."""
        return {"windows": self.cfg.window_lr} if self.windows is not None else {}

    def randomisation_order(self) -> list[str]:
        """Readout, final norm, decoder layers from the top, queries (their embeddings and windows), token encoder,
        positions, projection."""
        parts = super().randomisation_order()
        layers = [f"layers.{i}" for i in reversed(range(len(self.layers)))]
        head = [p for p in ("readout", "norm") if p in parts]
        tail = [p for p in ("query_embed", "windows", "token_encoder", "pos", "input_proj") if p in parts]
        return head + layers + tail

    def _reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if name == "query_embed.weight":
                QUERY_INITS[self.cfg.query_init](p)
            elif p.dim() > 1 and not name.startswith(("readout.", "pos.", "windows.")):  # those keep their own init
                nn.init.xavier_uniform_(p)

    def forward(self, features: torch.Tensor, return_attention: bool = False) -> dict[str, torch.Tensor]:
        """features (B, T, C) -> {'pred': (B, V)} (+ 'attention': (B, layers, heads, Q, T))."""
        memory = self.input_proj(features)
        pos = self.pos(*self.grid, device=features.device).to(memory.dtype)[None]
        if self.token_encoder is not None:
            memory = self.token_encoder(memory, pos)
        query_pos = self.query_embed.weight[None].expand(features.shape[0], -1, -1)
        need_last = self.readout.uses_attention
        chunk = self.query_chunk(query_pos.shape[1])
        prior = self.windows.log_prior(self.grid) if self.windows is not None else None
        if chunk is None:
            tokens, attention = self.decode(memory, pos, query_pos, return_attention, need_last, prior)
        else:
            tokens, attention = self.decode_in_chunks(memory, pos, query_pos, chunk, return_attention, prior)
        window = attention[-1] if need_last else None  # (B, heads, Q, T) of the last layer
        out = {"pred": self.readout(tokens, memory, window), "tokens": tokens}
        if return_attention:
            out["attention"] = torch.stack(attention, dim=1)
        return out

    def query_chunk(self, n_queries: int) -> int | None:
        """Queries per chunk (``cfg.query_chunk``), or None to decode all at once.

        Chunking is exact only where queries are independent: without query
        self-attention, and with a readout that needs no whole attention map.
        """
        chunk = self.cfg.query_chunk
        independent = not self.cfg.query_self_attention and not self.readout.uses_attention
        return chunk if chunk and n_queries > chunk and independent else None

    def decode(self, memory, pos, query_pos, return_attention: bool = False, need_last: bool = False,
               prior: torch.Tensor | None = None):
        """The decoder layers on ``query_pos``'s queries: (tokens (B, Q, D), per-layer attention or None).

        ``prior``: those queries' log windows (Q, heads, T) with ``--attention windows``.
        """
        tgt = torch.zeros_like(query_pos)
        attention = []
        extra = {} if prior is None else {"log_prior": prior, "grid": self.grid}
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            tgt, weights = layer(tgt, memory, pos, query_pos, need_weights=return_attention or (last and need_last), **extra)
            attention.append(weights)
        return self.norm(tgt), attention

    def decode_in_chunks(self, memory, pos, query_pos, chunk: int, return_attention: bool = False,
                         prior: torch.Tensor | None = None):
        """:meth:`decode`, ``chunk`` queries at a time (one query per vertex: ~40,000 at real size).

        Each chunk's attention (B, heads, chunk, T) is the most any step
        holds; under autograd each chunk is recomputed in the backward pass
        (activation checkpointing) instead of keeping every chunk's attention,
        so no (B, heads, Q, T) tensor ever exists unless ``return_attention``
        asks for it.
        """
        grad = torch.is_grad_enabled() and (memory.requires_grad or any(p.requires_grad for p in self.parameters()))
        tokens, attention = [], []
        for start in range(0, query_pos.shape[1], chunk):
            part = query_pos[:, start:start + chunk]
            window = prior[start:start + chunk] if prior is not None else None
            if grad and not return_attention:
                t = torch.utils.checkpoint.checkpoint(lambda m, p, q, w: self.decode(m, p, q, prior=w)[0], memory, pos,
                                                      part, window, use_reentrant=False)
                a = [None] * len(self.layers)
            else:
                t, a = self.decode(memory, pos, part, return_attention, prior=window)
            tokens.append(t), attention.append(a)
        per_layer = [torch.cat(ws, dim=2) if ws[0] is not None else None for ws in zip(*attention)]
        return torch.cat(tokens, dim=1), per_layer


class CustomTransformer(BrainEncoder):
    """The original's ``custom_transformer``: :class:`~model.encoders.layers.CustomDecoderLayer` layers, no final norm.

    The original defined pre-norm layers only and no query self-attention;
    both are refused (:meth:`check`).
    """

    final_norm = False

    @staticmethod
    def decoder_layer(cfg: DecoderConfig) -> nn.Module:
        return CustomDecoderLayer(cfg)

    @staticmethod
    def check(cfg: DecoderConfig) -> None:
        if not cfg.pre_norm:
            raise OptionError("decoder.pre_norm", "custom_transformer has pre-norm decoder layers only (as the original)")
        if cfg.query_self_attention:
            raise OptionError("decoder.query_self_attention", "custom_transformer has no query self-attention (as the original)")
        if cfg.attention != "standard":
            raise OptionError("decoder.attention", "custom_transformer has the original's attention only (standard)")

    def __init__(self, queries: QuerySet, feature_dim: int, grid: tuple[int, int], cfg: DecoderConfig = DecoderConfig()):
        self.check(cfg)
        super().__init__(queries, feature_dim, grid, cfg)
