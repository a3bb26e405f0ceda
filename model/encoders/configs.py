"""The encoders' settings: the ``decoder`` and ``ridge`` sections of a run's config.json.

Each section is a frozen dataclass that validates itself
(:class:`~model.errors.OptionError` names the first bad parameter); the
choices it accepts are the registries of the parts it configures (readouts,
position embeddings, ridge features), so a new part is one entry there.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from torch import nn

from ..errors import OptionError, check_fields, is_int, is_number, positive_int
from .baselines import RIDGE_FEATURES
from .layers import POSITION_EMBEDDINGS
from .readouts import READOUTS


#: ``--query-init``: how the query embeddings start. The original left PyTorch's
#: N(0, 1) (its embedding is outside the transformer that xavier-initialises);
#: xavier keeps them at the scale of the tokens' projections.
QUERY_INITS = {
    "xavier": nn.init.xavier_uniform_,
    "normal": nn.init.normal_,
}


@dataclass(frozen=True)
class DecoderConfig:
    """Decoder options; defaults are the seed's but for the attention and readout (``docs/attention.md``)."""

    hidden_dim: int = 768
    nheads: int = 16
    dec_layers: int = 1
    dim_feedforward: int = 1024
    dropout: float = 0.1
    query_self_attention: bool = False
    readout: str = "heads"
    readout_maps: int = 4
    readout_map_dim: int | None = None  # None: the readout's own (``default_map_dim``)
    query_init: str = "xavier"
    enc_layers: int = 0
    pre_norm: bool = True
    position_embedding: str = "sine"
    query_chunk: int = 1024
    attention: str = "windows"

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved(self) -> "DecoderConfig":
        """This configuration with what it leaves to its readout filled in (the size a run records)."""
        return replace(self, readout_map_dim=self.readout_map_dim or getattr(READOUTS[self.readout], "default_map_dim",
                                                                             None))

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
            ("readout_map_dim", lambda v: v is None or positive_int(v), "must be a whole number >= 1 (or null: the "
                                                                        "readout's default)"),
            ("query_init", lambda v: v in QUERY_INITS, f"must be one of {', '.join(QUERY_INITS)}"),
            ("enc_layers", lambda v: is_int(v) and v >= 0, "must be a whole number >= 0"),
            ("pre_norm", lambda v: isinstance(v, bool), "must be true or false"),
            ("position_embedding", lambda v: v in POSITION_EMBEDDINGS, f"must be one of {', '.join(POSITION_EMBEDDINGS)}"),
            ("query_chunk", lambda v: is_int(v) and v >= 0, "must be a whole number of queries >= 0 (0: all at once)"),
            ("attention", lambda v: v in ATTENTIONS, f"must be one of {', '.join(ATTENTIONS)}"),
        ))
        if self.attention == "windows" and not self.pre_norm:
            raise OptionError("decoder.attention", "windows need pre-norm decoder layers (decoder.pre_norm)")
        if self.query_self_attention and not self.pre_norm:
            raise OptionError("decoder.query_self_attention", "needs pre-norm decoder layers (the original's post-norm "
                                                              "layer has none)")
        if self.hidden_dim % self.nheads:
            raise OptionError("decoder.nheads", f"must divide decoder.hidden_dim ({self.hidden_dim}) into equal heads, got {self.nheads}")


#: ``--attention``: how a query's cross-attention selects tokens (:mod:`model.encoders.windows`)
ATTENTIONS = {
    "standard": "multi-head attention over the tokens with their positions in the keys (DETR's)",
    "windows": "one content score per query seen through a learned Gaussian window per head",
}


@dataclass(frozen=True)
class RidgeConfig:
    """Ridge baseline options: which token features and how coarse a pooling."""

    features: str = "pooled"
    pool: int = 4
    n_components: int = 512

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Raise :class:`~model.errors.OptionError` naming the first bad parameter (``ridge.<field>``)."""
        check_fields("ridge", self, (
            ("features", lambda v: v in RIDGE_FEATURES, f"must be one of {', '.join(RIDGE_FEATURES)}"),
            ("pool", positive_int, "must be a whole number of tokens >= 1"),
            ("n_components", positive_int, "must be a whole number >= 1"),
        ))
