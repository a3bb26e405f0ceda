"""The transformer encoder head: a DETR-style decoder whose learned queries are brain regions.

Backbone tokens (B, T, C) are projected to the hidden size (if it differs),
given a 2D sine position encoding, and attended by one learned query per ROI
(pre-norm decoder layers, query self-attention optional, as the seed). Each
query's output token is read out to the vertices of its ROI
(:mod:`model.readout`). The forward pass returns the cross-attention weights
per query and head when asked, from the same pass that predicts.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .errors import OptionError, check_fields, is_number, positive_int
from .interface import Capabilities, EncoderInputs
from .readout import READOUTS, QuerySet, with_readout_subset


@dataclass(frozen=True)
class DecoderConfig:
    """Decoder options; defaults are the seed's."""

    hidden_dim: int = 768
    nheads: int = 16
    dec_layers: int = 1
    dim_feedforward: int = 1024
    dropout: float = 0.1
    query_self_attention: bool = False
    readout: str = "retinotopic"
    readout_maps: int = 4
    readout_map_dim: int = 64

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Raise :class:`~model.errors.OptionError` naming the first bad parameter (``decoder.<field>``)."""
        check_fields("decoder", self, (
            ("hidden_dim", lambda v: positive_int(v) and v % 4 == 0,
             "must be a positive multiple of 4 (the 2D sine position encoding splits it in four)"),
            ("nheads", positive_int, "must be a whole number >= 1"),
            ("dec_layers", positive_int, "must be a whole number >= 1"),
            ("dim_feedforward", positive_int, "must be a whole number >= 1"),
            ("dropout", lambda v: is_number(v) and 0 <= v < 1, "must be a probability in [0, 1)"),
            ("query_self_attention", lambda v: isinstance(v, bool), "must be true or false"),
            ("readout", lambda v: v in READOUTS, f"must be one of {', '.join(READOUTS)}"),
            ("readout_maps", positive_int, "must be a whole number >= 1"),
            ("readout_map_dim", positive_int, "must be a whole number >= 1"),
        ))
        if self.hidden_dim % self.nheads:
            raise OptionError("decoder.nheads", f"must divide decoder.hidden_dim ({self.hidden_dim}) into equal heads, got {self.nheads}")


class PositionEmbeddingSine(nn.Module):
    """2D sine/cosine position encoding over a token grid (normalised to [0, 2 pi], as DETR)."""

    def __init__(self, dim: int, temperature: float = 10000.0):
        super().__init__()
        if dim % 4:
            raise ValueError("hidden_dim must be divisible by 4 for the 2D sine encoding")
        self.half = dim // 2
        self.temperature = temperature

    def forward(self, rows: int, cols: int, device=None) -> torch.Tensor:
        """(rows * cols, dim) encodings, row-major like the flattened tokens."""
        eps, scale = 1e-6, 2 * math.pi
        y = torch.arange(1, rows + 1, dtype=torch.float32, device=device) / (rows + eps) * scale
        x = torch.arange(1, cols + 1, dtype=torch.float32, device=device) / (cols + eps) * scale
        freq = self.temperature ** (2 * (torch.arange(self.half, device=device) // 2) / self.half)

        def encode(v: torch.Tensor) -> torch.Tensor:
            p = v[:, None] / freq
            return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

        py, px = encode(y), encode(x)
        return torch.cat((py[:, None, :].expand(rows, cols, -1), px[None, :, :].expand(rows, cols, -1)), dim=-1).flatten(0, 1)


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: [query self-attention], cross-attention to tokens, feed-forward."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        d = cfg.hidden_dim
        self.self_attn = None
        if cfg.query_self_attention:
            self.self_attn = nn.MultiheadAttention(d, cfg.nheads, dropout=cfg.dropout, batch_first=True)
            self.norm_self, self.drop_self = nn.LayerNorm(d), nn.Dropout(cfg.dropout)
        self.cross_attn = nn.MultiheadAttention(d, cfg.nheads, dropout=cfg.dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.dim_feedforward), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.dim_feedforward, d))
        self.norm_cross, self.norm_ffn = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop_cross, self.drop_ffn = nn.Dropout(cfg.dropout), nn.Dropout(cfg.dropout)

    def forward(self, tgt, memory, pos, query_pos, need_weights: bool = False):
        if self.self_attn is not None:
            q = self.norm_self(tgt) + query_pos
            tgt = tgt + self.drop_self(self.self_attn(q, q, self.norm_self(tgt), need_weights=False)[0])
        out, weights = self.cross_attn(self.norm_cross(tgt) + query_pos, memory + pos, memory,
                                       need_weights=need_weights, average_attn_weights=False)
        tgt = tgt + self.drop_cross(out)
        tgt = tgt + self.drop_ffn(self.ffn(self.norm_ffn(tgt)))
        return tgt, weights


class BrainEncoder(nn.Module):
    """Backbone tokens -> per-vertex predictions (both hemispheres, lh first).

    Its readout (``cfg.readout``, :data:`~model.readout.READOUTS`) builds
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
        self.input_proj = nn.Identity() if feature_dim == d else nn.Linear(feature_dim, d)
        self.pos = PositionEmbeddingSine(d)
        self.query_embed = nn.Embedding(queries.n_queries, d)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_layers))
        self.norm = nn.LayerNorm(d)
        self.readout = READOUTS[cfg.readout].from_config(queries, cfg, grid[0] * grid[1])
        self._reset_parameters()

    @classmethod
    def from_config(cls, inputs: EncoderInputs, cfg: DecoderConfig) -> "BrainEncoder":
        return cls(inputs.queries, inputs.feature_dim, inputs.grid, cfg)

    def restricted(self, vertices: np.ndarray) -> "BrainEncoder":
        """A copy predicting only ``vertices`` (its readout sliced; the decoder shared)."""
        return with_readout_subset(self, vertices)

    def _reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() > 1 and not name.startswith("readout."):
                nn.init.xavier_uniform_(p)

    def forward(self, features: torch.Tensor, return_attention: bool = False) -> dict[str, torch.Tensor]:
        """features (B, T, C) -> {'pred': (B, V)} (+ 'attention': (B, layers, heads, Q, T))."""
        memory = self.input_proj(features)
        pos = self.pos(*self.grid, device=features.device).to(memory.dtype)[None]
        query_pos = self.query_embed.weight[None].expand(features.shape[0], -1, -1)
        tgt = torch.zeros_like(query_pos)
        attention = []
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            tgt, weights = layer(tgt, memory, pos, query_pos, need_weights=return_attention or (last and self.readout.uses_attention))
            attention.append(weights)
        tokens = self.norm(tgt)
        window = attention[-1] if self.readout.uses_attention else None  # (B, heads, Q, T) of the last layer
        out = {"pred": self.readout(tokens, memory, window), "tokens": tokens}
        if return_attention:
            out["attention"] = torch.stack(attention, dim=1)
        return out
