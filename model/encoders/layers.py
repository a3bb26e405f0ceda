"""The transformer's parts: encoder layers, post-norm and ``custom_transformer`` decoder layers, position embeddings.

The original's parts are defined as its code computes them (research notes, issue 13):

* :class:`EncoderLayer` (``--enc-layers K``): DETR's encoder layer over the
  backbone tokens, self-attention with the position added to queries and
  keys (not values), ReLU feed-forward, pre- or post-norm.
* :class:`PostNormDecoderLayer` (``--pre-norm 0``): the original's
  ``forward_post``, which normalises the incoming query token first, then
  adds and normalises after the cross-attention and after the feed-forward.
* :class:`CustomDecoderLayer` (``--encoder-arch custom_transformer``): the
  cross-attention *replaces* the query token (no residual) and its values
  are the unprojected tokens; then a pre-norm feed-forward.
* :class:`PositionEmbeddingLearned` (``--position-embedding learned``): a
  row and a column table (50 entries, uniform [0, 1) init), concatenated
  column first. The original's table never received a gradient (it sat in
  the frozen backbone's ``no_grad``); here it is trained, as its name says.

The default position encoding, :class:`PositionEmbeddingSine`
(``--position-embedding sine``), is DETR's 2D sine/cosine encoding.

Every decoder layer has the signature of :class:`model.encoders.transformer.DecoderLayer`:
``forward(tgt, memory, pos, query_pos, need_weights) -> (tgt, weights)``
with weights (B, heads, Q, T) when asked. ``cfg`` is a
:class:`~model.encoders.configs.DecoderConfig`, not imported here: that
module validates against this one's :data:`POSITION_EMBEDDINGS`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import OptionError

LEARNED_POSITIONS = 50  # rows and columns of the original's learned table


def _ffn(cfg: "DecoderConfig") -> nn.Sequential:
    d = cfg.hidden_dim
    return nn.Sequential(nn.Linear(d, cfg.dim_feedforward), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.dim_feedforward, d))


class EncoderLayer(nn.Module):
    """DETR's encoder layer over the tokens: q = k = tokens + position, v = tokens; pre- or post-norm."""

    def __init__(self, cfg: "DecoderConfig"):
        super().__init__()
        d = cfg.hidden_dim
        self.pre_norm = cfg.pre_norm
        self.self_attn = nn.MultiheadAttention(d, cfg.nheads, dropout=cfg.dropout, batch_first=True)
        self.ffn = _ffn(cfg)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop1, self.drop2 = nn.Dropout(cfg.dropout), nn.Dropout(cfg.dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            s = self.norm1(src)
            src = src + self.drop1(self.self_attn(s + pos, s + pos, s, need_weights=False)[0])
            return src + self.drop2(self.ffn(self.norm2(src)))
        src = self.norm1(src + self.drop1(self.self_attn(src + pos, src + pos, src, need_weights=False)[0]))
        return self.norm2(src + self.drop2(self.ffn(src)))


class TokenEncoder(nn.Module):
    """``enc_layers`` encoder layers, then (pre-norm only, as the original) a final LayerNorm."""

    def __init__(self, cfg: "DecoderConfig"):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.enc_layers))
        self.norm = nn.LayerNorm(cfg.hidden_dim) if cfg.pre_norm else nn.Identity()

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            src = layer(src, pos)
        return self.norm(src)


class PostNormDecoderLayer(nn.Module):
    """The original's post-norm decoder layer (``pre_norm 0``), without query self-attention (commented out there)."""

    def __init__(self, cfg: "DecoderConfig"):
        super().__init__()
        d = cfg.hidden_dim
        self.cross_attn = nn.MultiheadAttention(d, cfg.nheads, dropout=cfg.dropout, batch_first=True)
        self.ffn = _ffn(cfg)
        self.norm_in, self.norm_cross, self.norm_ffn = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop_cross, self.drop_ffn = nn.Dropout(cfg.dropout), nn.Dropout(cfg.dropout)

    def forward(self, tgt, memory, pos, query_pos, need_weights: bool = False):
        tgt = self.norm_in(tgt)
        out, weights = self.cross_attn(tgt + query_pos, memory + pos, memory, need_weights=need_weights,
                                       average_attn_weights=False)
        tgt = self.norm_cross(tgt + self.drop_cross(out))
        return self.norm_ffn(tgt + self.drop_ffn(self.ffn(tgt))), weights


class CustomCrossAttention(nn.Module):
    """The original's ``CrossAttention``: projected queries and keys, *unprojected* values, an output projection."""

    def __init__(self, cfg: "DecoderConfig"):
        super().__init__()
        d = cfg.hidden_dim
        self.heads = cfg.nheads
        self.q_proj, self.k_proj, self.c_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attn_drop, self.resid_drop = nn.Dropout(cfg.dropout), nn.Dropout(cfg.dropout)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, Q, D), key and value (B, T, D) -> output (B, Q, D), weights (B, heads, Q, T)."""
        split = lambda x: x.view(*x.shape[:2], self.heads, -1).transpose(1, 2)  # noqa: E731 - (B, heads, n, D / heads)
        q, k, v = split(self.q_proj(query)), split(self.k_proj(key)), split(value)
        weights = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(-1)
        y = (self.attn_drop(weights) @ v).transpose(1, 2).flatten(2)
        return self.resid_drop(self.c_proj(y)), weights


class CustomDecoderLayer(nn.Module):
    """The original's ``custom_transformer`` decoder layer: the cross-attention replaces the query token, then a pre-norm FFN."""

    def __init__(self, cfg: "DecoderConfig"):
        super().__init__()
        self.cross_attn = CustomCrossAttention(cfg)
        self.ffn = _ffn(cfg)
        self.norm_ffn, self.drop_ffn = nn.LayerNorm(cfg.hidden_dim), nn.Dropout(cfg.dropout)

    def forward(self, tgt, memory, pos, query_pos, need_weights: bool = False):
        tgt, weights = self.cross_attn(tgt + query_pos, memory + pos, memory)
        tgt = tgt + self.drop_ffn(self.ffn(self.norm_ffn(tgt)))
        return tgt, (weights if need_weights else None)


class PositionEmbeddingLearned(nn.Module):
    """Learned 2D positions: ``cat(column table, row table)``, each half the hidden size, uniform [0, 1) init."""

    max_side = LEARNED_POSITIONS

    def __init__(self, dim: int):
        super().__init__()
        self.row_embed = nn.Embedding(LEARNED_POSITIONS, dim // 2)
        self.col_embed = nn.Embedding(LEARNED_POSITIONS, dim - dim // 2)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, rows: int, cols: int, device=None) -> torch.Tensor:
        """(rows * cols, dim) encodings, row-major like the flattened tokens."""
        if rows > LEARNED_POSITIONS or cols > LEARNED_POSITIONS:
            raise OptionError("decoder.position_embedding", f"learned positions cover at most {LEARNED_POSITIONS} x "
                                                     f"{LEARNED_POSITIONS} tokens, got {rows} x {cols}")
        x = self.col_embed.weight[:cols]
        y = self.row_embed.weight[:rows]
        return torch.cat((x[None, :, :].expand(rows, cols, -1), y[:, None, :].expand(rows, cols, -1)), dim=-1).flatten(0, 1)


class PositionEmbeddingSine(nn.Module):
    """2D sine/cosine position encoding over a token grid (normalised to [0, 2 pi], as DETR)."""

    max_side = None  # any grid

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


#: ``--position-embedding``: how token positions enter the attention keys
POSITION_EMBEDDINGS = {"sine": PositionEmbeddingSine, "learned": PositionEmbeddingLearned}
