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
from ..options import setting
from .baselines import RIDGE_FEATURES
from .layers import POSITION_EMBEDDINGS
from .readouts import READOUTS
from .windows import CONTENT_KEYS, GRID_CONTENT_KEYS, WINDOW_SOFTMAXES


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

    hidden_dim: int = setting(768, "width of the decoder")
    nheads: int = setting(16, "attention heads (must divide `decoder.hidden_dim`)")
    dec_layers: int = setting(1, "decoder layers")
    dim_feedforward: int = setting(1024, "width of the feed-forward blocks")
    dropout: float = setting(0.1, "dropout in the decoder")
    query_self_attention: bool = setting(False, "let the ROI queries attend to each other before the cross-attention "
                                                "(default: off)")
    readout: str = setting("heads", lambda: "vertex readout: " + "; ".join(
        f"{k}: {v.__doc__.splitlines()[0].rstrip('.').replace('``', '')}" for k, v in READOUTS.items()),
        choices=lambda: tuple(READOUTS))
    readout_maps: int = setting(4, "feature maps per query (retinotopic readout)")
    readout_map_dim: int | None = setting(None, "token embedding size of the retinotopic readout's maps or of the heads "
                                                "readout's per-head summaries (default: the readout's, 64 and 32)",
                                          kind=int)  # None: the readout's own (``default_map_dim``)
    query_init: str = setting("xavier", "query embeddings' initialisation: xavier (default) or the original's N(0, 1) "
                                        "(normal)", choices=lambda: tuple(QUERY_INITS))
    enc_layers: int = setting(0, "trainable transformer encoder layers over the tokens before the decoder (default 0)")
    pre_norm: bool = setting(True, "pre-norm decoder and encoder layers (default); `no_pre_norm`: the original's "
                                   "post-norm ones")
    position_embedding: str = setting("sine", "token positions: 2D sine (default) or learned row and column tables",
                                      choices=lambda: tuple(POSITION_EMBEDDINGS))
    query_chunk: int = setting(1024, "decode at most this many queries at a time (bounds memory for `readout_res` "
                                     "voxels; 0: all at once)")
    attention: str = setting("windows", lambda: "how a query's cross-attention selects tokens: " + "; ".join(
        f"{k}: {v}" for k, v in ATTENTIONS.items()), choices=lambda: tuple(ATTENTIONS))
    window_softmax: str = setting("shared", lambda: "how windows attention is normalised: " + _described(WINDOW_SOFTMAXES),
                                  choices=lambda: tuple(WINDOW_SOFTMAXES))
    window_lr: float = setting(10.0, "learning rate of the attention windows (centres and widths) as a multiple of "
                                     "`train.lr`")
    content_key: str = setting("auto", lambda: "key of the windows' content score: " + _described(CONTENT_KEY_CHOICES),
                               choices=lambda: tuple(CONTENT_KEY_CHOICES))

    def to_dict(self) -> dict:
        return asdict(self)

    def comparable(self) -> dict:
        """The settings that shape this decoder: the windows' (:data:`WINDOW_SETTINGS`) only with windows attention."""
        d = self.to_dict()
        if self.attention != "windows":
            for name in WINDOW_SETTINGS:
                d.pop(name)
        return d

    def resolved(self) -> "DecoderConfig":
        """This configuration with what it leaves to its readout filled in (the size a run records)."""
        return replace(self, readout_map_dim=self.readout_map_dim or READOUTS[self.readout].default_map_dim)

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
            ("window_softmax", lambda v: v in WINDOW_SOFTMAXES, f"must be one of {', '.join(WINDOW_SOFTMAXES)}"),
            ("window_lr", lambda v: is_number(v) and v > 0, "must be a positive number"),
            ("content_key", lambda v: v in CONTENT_KEY_CHOICES, f"must be one of {', '.join(CONTENT_KEY_CHOICES)}"),
        ))
        if self.attention == "windows" and not self.pre_norm:
            raise OptionError("decoder.attention", "windows need pre-norm decoder layers (decoder.pre_norm)")
        if self.query_self_attention and not self.pre_norm:
            raise OptionError("decoder.query_self_attention", "needs pre-norm decoder layers (the original's post-norm "
                                                              "layer has none)")
        if self.hidden_dim % self.nheads:
            raise OptionError("decoder.nheads", f"must divide decoder.hidden_dim ({self.hidden_dim}) into equal heads, got {self.nheads}")


def _described(choices: dict) -> str:
    """``name: what it is; ...`` of a registry of :class:`~model.encoders.windows.Choice` values, for ``--help``."""
    return "; ".join(f"{name}: {choice.description}" for name, choice in choices.items())


#: ``--content-key``'s values: a key, or a name that picks one by the token grid
CONTENT_KEY_CHOICES = {**GRID_CONTENT_KEYS, **CONTENT_KEYS}

#: decoder settings that apply only to ``--attention windows``
WINDOW_SETTINGS = ("window_softmax", "window_lr", "content_key")

#: ``--attention``: how a query's cross-attention selects tokens (:mod:`model.encoders.windows`)
ATTENTIONS = {
    "standard": "multi-head attention over the tokens with their positions in the keys (DETR's)",
    "windows": "one content score per query seen through a learned Gaussian window per head",
}


@dataclass(frozen=True)
class RidgeConfig:
    """Ridge baseline options: which token features and how coarse a pooling."""

    features: str = setting("pooled", "ridge inputs: " + "; ".join(f"{k}: {v}" for k, v in RIDGE_FEATURES.items()),
                            choices=tuple(RIDGE_FEATURES))
    pool: int = setting(4, "side of the pooled token grid (pooled features)")
    n_components: int = setting(512, "PCA components (`ridge.features` pca)")

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Raise :class:`~model.errors.OptionError` naming the first bad parameter (``ridge.<field>``)."""
        check_fields("ridge", self, (
            ("features", lambda v: v in RIDGE_FEATURES, f"must be one of {', '.join(RIDGE_FEATURES)}"),
            ("pool", positive_int, "must be a whole number of tokens >= 1"),
            ("n_components", positive_int, "must be a whole number >= 1"),
        ))
