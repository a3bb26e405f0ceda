"""What a run directory's ``config.json`` (or an ensemble's ``ensemble.json``) holds, and reading it.

:class:`RunConfig` (with its :class:`TrainConfig` and the encoders' sections,
:mod:`model.encoders.configs`) and :class:`EnsembleConfig` validate
themselves; :func:`read_config` reads either kind and names the file on any
problem.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..backbone import BackboneConfig
from ..encoders import ARCHITECTURES, READOUT_RES, DecoderConfig, RidgeConfig
from ..errors import InputError, OptionError, check_fields, is_int, is_number, positive_int
from ..files import write_json
from ..options import setting
from ..subject import split_sizes
from .ensemble_weights import HALVES_SEED, WEIGHTINGS
from .layout import CONFIG, ENSEMBLE, is_ensemble

#: format 2 added the data fingerprint and the feature key; format 1 runs stay readable
RUN_FORMAT = 2
READABLE_FORMATS = (1, 2)
ENSEMBLE_FORMAT = 1


@dataclass
class TrainConfig:
    """Optimisation options; defaults are the seed's (AdamW, StepLR, gradient clipping 0.1)."""

    epochs: int = setting(15, "passes over the training images")
    batch_size: int = setting(16, "images per optimisation step")
    lr: float = setting(5e-4, "AdamW learning rate")
    weight_decay: float = setting(1e-4, "AdamW weight decay")
    lr_drop: int = setting(100, "halve the learning rate every N epochs")
    clip_max_norm: float = setting(0.1, "gradient-norm clipping (0: none)")
    seed: int = setting(0, "initialisation, data order and dropout")
    split_seed: int = setting(0, "train/validation split")
    val_fraction: float = setting(0.1, "share of the training images held out for validation")
    #: standardise every token channel (statistics of the training images) before the encoder; the original fed raw tokens
    standardise_tokens: bool = setting(True, "standardise every token channel before the encoder (default on; the "
                                             "original fed raw tokens)")

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    def validate(self, n_images: int | None = None) -> None:
        """Raise :class:`~model.errors.OptionError` naming the first bad parameter (``train.<field>``).

        With ``n_images`` (the subject's training images), also refuse a
        ``val_fraction`` that leaves no training or too few validation images.
        """
        check_fields("train", self, (
            ("epochs", positive_int, "must be a whole number >= 1"),
            ("batch_size", positive_int, "must be a whole number >= 1"),
            ("lr", lambda v: is_number(v) and v > 0, "must be a positive number"),
            ("weight_decay", lambda v: is_number(v) and v >= 0, "must be a number >= 0"),
            ("lr_drop", positive_int, "must be a whole number of epochs >= 1"),
            ("clip_max_norm", lambda v: is_number(v) and v >= 0, "must be a number >= 0 (0 turns clipping off)"),
            ("seed", lambda v: is_int(v) and v >= 0, "must be a whole number >= 0"),
            ("split_seed", lambda v: is_int(v) and v >= 0, "must be a whole number >= 0"),
            ("val_fraction", lambda v: is_number(v) and 0 < v < 1, "must be a fraction between 0 and 1"),
            ("standardise_tokens", lambda v: isinstance(v, bool), "must be true or false"),
        ))
        if n_images is not None:
            split_sizes(n_images, self.val_fraction)


@dataclass
class RunConfig:
    """What a run directory's ``config.json`` holds."""

    data_dir: str
    subj: int
    readout_res: str
    encoder_arch: str
    backbone: BackboneConfig
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ridge: RidgeConfig = field(default_factory=RidgeConfig)
    queries: list[str] = field(default_factory=list)
    n_vertices: dict[str, int] = field(default_factory=dict)
    feature_dim: int = 0
    grid: tuple[int, int] = (0, 0)
    data_fingerprint: dict[str, str] = field(default_factory=dict)  # Subject.fingerprint() of the training data
    feature_key: dict = field(default_factory=dict)  # model.features.feature_key() of the backbone used
    format: int = RUN_FORMAT

    #: sections and the dataclass each is read into
    SECTIONS = {"backbone": BackboneConfig, "decoder": DecoderConfig, "train": TrainConfig, "ridge": RidgeConfig}
    #: what a config written before a setting existed meant by its absence (not today's default)
    ABSENT_MEANS = {"decoder": {"attention": "standard", "window_softmax": "per_head", "window_lr": 1.0,
                                "content_key": "linear"}}

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        d = dict(d)
        for name, section in cls.SECTIONS.items():
            d[name] = section(**{**cls.ABSENT_MEANS.get(name, {}), **d[name]})
        d["grid"] = tuple(d["grid"])
        return cls(**d)

    def validate(self, n_images: int | None = None) -> None:
        """Check every parameter; :class:`~model.errors.OptionError` names the first bad one (e.g. ``train.lr``).

        ``n_images`` (the subject's training images) also checks the
        train/validation split. Nothing is read or written.
        """
        check_fields("", self, (
            ("subj", positive_int, "must be a subject number >= 1"),
            ("encoder_arch", lambda v: v in ARCHITECTURES, f"must be one of {', '.join(ARCHITECTURES)}"),
            ("readout_res", lambda v: v in READOUT_RES, f"must be one of {', '.join(READOUT_RES)}"),
            ("format", lambda v: v in READABLE_FORMATS, f"must be one of {READABLE_FORMATS} (a newer version wrote it?)"),
        ))
        for name in self.SECTIONS:
            section = getattr(self, name)
            if name == "train":
                section.validate(n_images)
            else:
                section.validate()
        arch = ARCHITECTURES[self.encoder_arch]
        if READOUT_RES[self.readout_res].per_vertex and arch.section == "decoder" and self.decoder.readout != "linear":
            raise OptionError("decoder.readout", f"readout_res {self.readout_res} reads each vertex from its own query: "
                                                 "use the linear readout")
        if arch.check is not None:
            arch.check(getattr(self, arch.section))

    def comparable(self) -> dict:
        """The fields that must agree when resuming (not the epoch budget, nor what is known only later)."""
        d = {**self.to_dict(), "decoder": self.decoder.comparable()}
        d["train"] = {k: v for k, v in d["train"].items() if k != "epochs"}
        for later in ("feature_dim", "grid", "feature_key", "format"):
            d.pop(later)
        return d


def read_config(run: Path) -> "RunConfig | EnsembleConfig":
    """A run's config.json (or an ensemble's ensemble.json), parsed and validated; any problem names the file.

    An ensemble gives a :class:`model.runs.configs.EnsembleConfig`, which has the
    fields that every reader of a run uses (``subj``, ``data_dir``,
    ``data_fingerprint``, ``n_vertices``, ``encoder_arch`` = ``'ensemble'``).
    """
    if is_ensemble(run):
        return read_ensemble_config(run)
    return read_validated_json(Path(run) / CONFIG, RunConfig.from_dict, "run configuration", "not a run directory")


def read_validated_json(path: Path, build, what: str, missing: str):
    """``build(json of path)``, validated; a missing, unreadable or invalid file is one error naming ``path``."""
    if not path.is_file():
        raise InputError(path, f"missing: {missing}")
    try:
        config = build(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InputError(path, f"unreadable {what} ({type(exc).__name__}: {exc})") from None
    except OSError as exc:
        raise InputError(path, f"unreadable ({exc.strerror or exc})") from None
    try:
        config.validate()
    except OptionError as exc:
        raise InputError(path, f"{exc.parameter} {exc.problem}") from None
    return config


def write_config(run: Path, config: RunConfig) -> None:
    write_json(Path(run) / CONFIG, config.to_dict())



@dataclass
class EnsembleConfig:
    """What ``ensemble.json`` holds; it has the fields every reader of a run's configuration uses."""

    members: list[str]
    weighting: str
    temperature: float
    data_dir: str
    subj: int
    n_vertices: dict[str, int]
    data_fingerprint: dict[str, str] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    halves_seed: int = HALVES_SEED
    encoder_arch: str = "ensemble"
    format: int = ENSEMBLE_FORMAT

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """:class:`~model.errors.OptionError` naming the first bad field."""
        check_fields("", self, (
            ("members", lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(x, str) for x in v),
             "must list at least one run directory"),
            ("weighting", lambda v: v in WEIGHTINGS, f"must be one of {', '.join(WEIGHTINGS)}"),
            ("temperature", lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v >= 0, "must be a number >= 0"),
            ("subj", positive_int, "must be a subject number >= 1"),
            ("encoder_arch", lambda v: v == "ensemble", "must be 'ensemble'"),
            ("format", lambda v: v == ENSEMBLE_FORMAT, f"must be {ENSEMBLE_FORMAT} (a newer version wrote it?)"),
        ))


def read_ensemble_config(ens: str | Path) -> EnsembleConfig:
    """An ensemble's ``ensemble.json``, parsed and validated; any problem names the file."""
    return read_validated_json(Path(ens) / ENSEMBLE, lambda d: EnsembleConfig(**d), "ensemble configuration",
                               "not an ensemble directory")
