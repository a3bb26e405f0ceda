"""The run directory: everything a trained encoder is, readable without pickle.

```
RUN/config.json            what was trained, on what data and features, how (JSON)
RUN/manifest.json          what produced it: code, environment, seeds, data and weights digests
RUN/model.safetensors      encoder weights (the backbone is referenced, not copied)
RUN/checkpoint.safetensors last epoch's weights + optimizer, for --resume
RUN/val_indices.npy        the validation rows of the training fMRI
RUN/metrics.json           written last: its presence means the run is complete
RUN/{lh,rh}_val_corr.npy   per-vertex validation r
RUN/{lh,rh}_val_pred.npy   validation predictions (float32, validation images x vertices, rows as val_indices.npy)
RUN/{lh,rh}_pred_test.npy  the challenge submission (float32, test images x vertices)
RUN/.lock                  held (an OS lock) by the job writing the run
```
Every file is written atomically. A run records what it was trained on: a
fingerprint of the subject's data (:meth:`model.subject.Subject.fingerprint`)
and the key of its features (backbone, weights digest, block, feature kind,
input size). :func:`open_run` rebuilds the encoder from the run and the data
directory and refuses, naming the file, a run opened against other data or
whose config.json no longer describes the features it was trained on.

An *ensemble* of runs (:mod:`model.ensemble`, ``tbe ensemble``) is a run
directory too: ``ensemble.json`` in place of ``config.json``, and the same
``metrics.json``, ``val_indices.npy``, per-vertex ``val_corr`` and
``pred_test`` files. :func:`read_config` and :func:`open_run` read either
kind, so every command that reads a run reads an ensemble.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .architectures import ARCHITECTURES, RidgeConfig, build_encoder
from .backbone import BackboneConfig, named_weights_digest
from .device import autocast, module_device, pick_device
from .encoder import DecoderConfig
from .errors import InputError, OptionError, check_fields, is_int, is_number, positive_int
from .files import atomic_path, load_npy, read_rows, save_safetensors, write_json
from .options import setting
from .readout import READOUT_RES, QuerySet, build_queries
from .subject import Subject, load_subject, split_sizes

if TYPE_CHECKING:
    from .ensemble import EnsembleConfig

log = logging.getLogger(__name__)

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.json"
VAL_INDICES = "val_indices.npy"
VAL_CORR = "{hemi}_val_corr.npy"
VAL_PRED = "{hemi}_val_pred.npy"
PRED_TEST = "{hemi}_pred_test.npy"
TEST_SCORES = "test_scores.json"
MANIFEST = "manifest.json"
LOCK = ".lock"
#: what marks an ensemble of runs (:mod:`model.ensemble`); it has no config.json
ENSEMBLE = "ensemble.json"
#: the folder of one subject's run in a multi-subject folder (``tbe train --subj 1-8 --out DIR``: DIR/subj01)
SUBJECT_FOLDER = re.compile(r"subj\d\d")
#: files a training job writes from its first checkpoint on
RESULT_FILES = (WEIGHTS, CHECKPOINT, METRICS,
                *(t.format(hemi=h) for t in (VAL_CORR, VAL_PRED, PRED_TEST) for h in ("lh", "rh")))
#: every file a training job writes into a run directory (those not in RESULT_FILES come before the first checkpoint)
RUN_FILES = (CONFIG, MANIFEST, VAL_INDICES, *RESULT_FILES)
#: format 2 added the data fingerprint and the feature key; format 1 runs stay readable
RUN_FORMAT = 2
READABLE_FORMATS = (1, 2)


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
    ABSENT_MEANS = {"decoder": {"attention": "standard"}}

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
        d = self.to_dict()
        d["train"] = {k: v for k, v in d["train"].items() if k != "epochs"}
        for later in ("feature_dim", "grid", "feature_key", "format"):
            d.pop(later)
        return d


def is_ensemble(run: str | Path) -> bool:
    """Whether ``run`` is an ensemble of runs (it holds ``ensemble.json``, not ``config.json``)."""
    return (Path(run) / ENSEMBLE).is_file() and not (Path(run) / CONFIG).is_file()


def is_run(path: str | Path) -> bool:
    """Whether ``path`` is a run or an ensemble directory (complete or not)."""
    return (Path(path) / CONFIG).is_file() or is_ensemble(path)


def expand_subjects(path: str | Path) -> list[Path]:
    """A run (or ensemble) as ``[path]``; a folder of subject runs (``subjXX/``, ``tbe train --subj``) as those runs.

    Anything else comes back as ``[path]``, for the reader to refuse with its own message.
    """
    path = Path(path)
    if is_run(path) or not path.is_dir():
        return [path]
    found = sorted(p for p in path.iterdir() if p.is_dir() and SUBJECT_FOLDER.fullmatch(p.name) and is_run(p))
    return found or [path]


def read_config(run: Path) -> "RunConfig | EnsembleConfig":
    """A run's config.json (or an ensemble's ensemble.json), parsed and validated; any problem names the file.

    An ensemble gives a :class:`model.ensemble.EnsembleConfig`, which has the
    fields that every reader of a run uses (``subj``, ``data_dir``,
    ``data_fingerprint``, ``n_vertices``, ``encoder_arch`` = ``'ensemble'``).
    """
    if is_ensemble(run):
        from .ensemble import read_ensemble_config

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


def read_metrics(run: str | Path) -> dict:
    """A complete run's ``metrics.json``; a missing or corrupt file is one error naming it."""
    path = Path(run) / METRICS
    if not path.is_file():
        raise InputError(path, "missing: training did not finish (continue it with tbe train `resume`)")
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(path, f"unreadable ({type(exc).__name__})") from None
    if not isinstance(metrics, dict):
        raise InputError(path, "expected a JSON object")
    return metrics


def load_run_array(run: str | Path, template: str, hemi: str, n_vertices: int | None = None,
                   n_rows: int | None = None) -> np.ndarray:
    """A per-hemisphere array of a run (``VAL_CORR``, ``VAL_PRED`` or ``PRED_TEST``), checked against the expected shape."""
    path = Path(run) / template.format(hemi=hemi)
    what = {PRED_TEST: "test predictions", VAL_PRED: "validation predictions"}.get(template, "per-vertex values")
    ndim = 2 if template in (PRED_TEST, VAL_PRED) else 1
    shape = (n_rows, n_vertices) if ndim == 2 else (n_vertices,)
    return load_npy(path, ndim=ndim, kinds="f", shape=shape, what=what)


# --------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------

def save_weights(path: Path, module: torch.nn.Module, metadata: dict[str, str] | None = None) -> None:
    """The module's state dict as safetensors, atomically (identical weights give identical bytes)."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_safetensors(path, state, metadata)


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "missing weights file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(path, f"corrupted or not a safetensors file ({str(exc).splitlines()[0][:160]})") from None


def load_weights(path: Path, module: torch.nn.Module) -> None:
    """Load safetensors weights into ``module``; any missing, extra or misshapen tensor is refused."""
    state = read_tensors(path)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise InputError(path, f"does not match the encoder in config.json ({what})")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise InputError(path, f"tensor {key} has shape {tuple(value.shape)}, the encoder expects {tuple(expected[key].shape)}")
    module.load_state_dict(state)


# --------------------------------------------------------------------------
# Opening a run
# --------------------------------------------------------------------------

@dataclass
class Run:
    """A trained encoder with its subject, queries and configuration."""

    path: Path
    config: RunConfig
    subject: Subject
    queries: QuerySet
    model: torch.nn.Module
    device: torch.device = torch.device("cpu")  # where the model, the backbone and their inputs are run

    @cached_property
    def val_indices(self) -> np.ndarray:
        path = self.path / VAL_INDICES
        idx = load_npy(path, ndim=1, kinds="iu", what="validation indices")
        if idx.size and (idx.min() < 0 or idx.max() >= self.subject.n_train or np.unique(idx).size != idx.size):
            raise InputError(path, f"validation indices must be distinct rows 0..{self.subject.n_train - 1} of the training fMRI")
        return idx

    @cached_property
    def metrics(self) -> dict:
        return read_metrics(self.path)

    def hemi_slice(self, hemi: str) -> slice:
        return self.queries.vertex_slice(hemi)

    def backbone(self, device: str | torch.device | None = None):
        """The run's backbone (built anew from its reference: name, weights, layer), checked against the run.

        It is placed on ``device`` (default: the run's :attr:`device`).
        """
        from .backbone import build_backbone
        from .images import native_size

        backbone = build_backbone(self.config.backbone, native_size(self.subject.train_images[0]))
        check_backbone(self.path, self.config, backbone)
        return backbone.to(self.device if device is None else torch.device(device)).eval()

    @cached_property
    def shared_backbone(self):
        """The run's backbone, built once per opened run and shared by the analyses (it is frozen)."""
        return self.backbone()

    def features(self, paths: Sequence[Path], cache_dir: str | Path | None = None, device: str = "auto",
                 rows: Sequence[tuple[str, int] | None] | None = None, desc: str = "features"):
        """The encoder's input for these images: backbone tokens (N, T, C), from the feature cache where possible.

        ``rows`` ((split, index) of each image among the subject's, where it
        is one) lets cached rows of the subject's own splits be read instead
        of computed (:func:`model.features.image_features`). Ensembles give
        every member's tokens side by side (:class:`model.ensemble.EnsembleRun`).
        """
        from .features import image_features

        return image_features(self.shared_backbone, self.subject, paths, rows, cache_dir, device, desc)


def open_run(run: str | Path, data_dir: str | Path | None = None, device: str | torch.device = "cpu") -> Run:
    """Rebuild the encoder of a complete run; ``data_dir`` defaults to the one it was trained on.

    The encoder (and later its backbone) is placed on ``device`` (``auto``:
    CUDA, then MPS, then CPU; see :func:`model.device.pick_device`).

    Refused, with one line naming the file: an unfinished run, a config.json
    that does not describe the features the run was trained on, data other
    than the run's (vertex counts, ROI queries, or the data fingerprint), and
    weights that do not fit the encoder. An ensemble directory opens as a
    :class:`model.ensemble.EnsembleRun` (every member opened and checked).
    """
    run = Path(run)
    if is_ensemble(run):
        from .ensemble import open_ensemble

        return open_ensemble(run, data_dir, device)
    config = read_config(run)
    if not (run / METRICS).is_file():
        raise InputError(run, "training did not finish (no metrics.json); continue it with `resume`")
    check_feature_key(run / CONFIG, config)
    subject = load_subject(data_dir if data_dir is not None else config.data_dir, config.subj)
    queries = build_queries(subject, config.readout_res)
    check_matches(run / CONFIG, config, queries)
    check_trained_on(run, config, subject)
    model = build_encoder(config.encoder_arch, queries, config.feature_dim, config.grid, config.decoder, config.ridge,
                          config.train.standardise_tokens)
    load_weights(run / WEIGHTS, model)
    dev = pick_device(device)
    return Run(run, config, subject, queries, model.to(dev).eval(), dev)


def check_matches(where: Path, config: RunConfig, queries: QuerySet) -> None:
    """The data must have the vertices and ROI queries the run was trained with."""
    if dict(config.n_vertices) != dict(queries.n_vertices):
        raise InputError(where, f"run was trained on {config.n_vertices} vertices, the data directory has {queries.n_vertices}")
    if list(config.queries) != queries.names:
        diff = sorted(set(config.queries) ^ set(queries.names))
        raise InputError(where, f"run's ROI queries differ from the data directory's (e.g. {diff[:3]})")


def check_trained_on(run: Path, config: RunConfig, subject: Subject) -> None:
    """The subject's data must be the data the run was trained on (its fingerprint); names the first file that differs.

    Runs written before fingerprints were recorded (format 1) are not checked.
    """
    recorded = config.data_fingerprint
    if not recorded:
        log.info("%s: no data fingerprint recorded (an older run); the data it is used with is not checked", run)
        return
    now = subject.fingerprint()
    for part in sorted(set(recorded) | set(now)):
        if recorded.get(part) != now.get(part):
            state = "differs from" if part in recorded and part in now else ("is missing from" if part in recorded else "is not in")
            raise InputError(subject.root / part, f"{state} the data the run {run} was trained on "
                                                  f"(fingerprint in its {CONFIG}); use the data directory it was trained on")


def check_feature_key(where: Path, config: RunConfig) -> None:
    """config.json's backbone section must describe the features the run was trained on (cheap: nothing is built).

    The weights of a checkpoint file are compared when the backbone is built
    (:func:`check_backbone`).
    """
    key = config.feature_key
    if not key:
        return
    b = config.backbone
    named = named_weights_digest(b)
    then_block = f"block {key['block'] + 1} of {key['depth']}"
    now_block = f"block {key['depth'] - abs(b.layer) + 1} of {key['depth']}"
    compared = {"name": (b.name, key["backbone"]), "feature": (b.feature, key["feature"]),
                "image_size": (b.image_size, key["image_size"]), "layer": (now_block, then_block),
                "weights": (named or "file:", key["weights"] if named else key["weights"][:5]),
                "precision": (b.precision, key.get("precision", "float32"))}  # float32 keys do not say it
    for name, (now, then) in compared.items():
        if now != then:
            shown = {"weights": (named or b.weights, key["weights"])}.get(name, (now, then))
            raise InputError(where, f"backbone.{name} gives {shown[0]!r}, but the run was trained on features with {shown[1]!r} "
                                    f"(feature_key in {CONFIG}); the file was edited or belongs to another run")


def check_backbone(run: Path, config: RunConfig, backbone) -> None:
    """A built backbone must give the features the run was trained on (its key, else its shape)."""
    from .features import feature_key

    where = run / CONFIG
    if config.feature_key:
        now = feature_key(backbone)
        diff = [k for k in config.feature_key if config.feature_key[k] != now.get(k)]
        if diff == ["weights"] and config.backbone.weights not in ("random", "pretrained"):
            raise InputError(config.backbone.weights, f"not the weights the run {run} was trained with (their digest differs)")
        if diff:
            raise InputError(where, f"backbone gives other features than the run was trained on ({', '.join(diff)} differ)")
    if backbone.dim != config.feature_dim or tuple(backbone.grid) != tuple(config.grid):
        raise InputError(where, f"backbone {config.backbone.name} gives {backbone.grid[0]}x{backbone.grid[1]} tokens x {backbone.dim}, "
                                f"the run's encoder was trained on {config.grid[0]}x{config.grid[1]} x {config.feature_dim}")


@torch.no_grad()
def predict(model: torch.nn.Module, features, indices: np.ndarray | None = None, batch_size: int = 64,
            device: torch.device | str | None = None) -> np.ndarray:
    """Predictions (N, V) float32 for cached features (N, T, C), or for their rows ``indices``.

    ``features``: an array, or :class:`~model.features.FeatureRows` (training's
    rows, perhaps resident on the device). Run on ``device`` (default: where
    the model is), under bf16 autocast on CUDA.
    """
    from .features import FeatureRows

    device = module_device(model) if device is None else torch.device(device)
    model = model.to(device).eval()
    indices = np.arange(len(features)) if indices is None else indices
    batches = (features.batches(indices, batch_size) if isinstance(features, FeatureRows)
               else iter_batches(features, indices, batch_size))
    out = []
    for batch in batches:
        with autocast(device):
            out.append(model(batch.to(device))["pred"].float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def iter_batches(features: np.ndarray, indices: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    """float32 tensors of ``features[indices]`` in batches (reads memory-mapped rows lazily)."""
    for start in range(0, len(indices), batch_size):
        idx = np.asarray(indices[start:start + batch_size])
        yield torch.from_numpy(read_rows(features, idx).astype(np.float32, copy=False))


# --------------------------------------------------------------------------
# Predictions for any folder of images
# --------------------------------------------------------------------------

def roi_coordinate(hemi: str, roi_class: str) -> str:
    """The name of the per-vertex ROI coordinate of one class, e.g. ``lh_floc_faces``."""
    return f"{hemi}_{roi_class.replace('-', '_')}"


def vertex_coordinates(subject) -> dict[str, dict[str, np.ndarray]]:
    """Per hemisphere, the ROI name of each vertex in every class of the subject (:func:`roi_coordinate` names)."""
    return {hemi: {roi_coordinate(hemi, c): subject.roi_labels(c, hemi) for c in subject.labels} for hemi in subject.fmri}


def _save_netcdf(path: Path, preds: dict[str, np.ndarray], names: list[str],
                 coords: dict[str, dict[str, np.ndarray]] | None = None) -> None:
    import xarray as xr

    ds = xr.Dataset({h: (("image", f"{h}_vertex"), v) for h, v in preds.items()}, coords={"image": names})
    for hemi, values in (coords or {}).items():
        ds = ds.assign_coords({f"{hemi}_vertex": np.arange(preds[hemi].shape[1]),
                               **{name: (f"{hemi}_vertex", v) for name, v in values.items()}})
        ds[hemi].attrs["hemisphere"] = hemi
    ds.attrs["roi_coordinates"] = ("per-vertex ROI names per class ('' outside the class); select one ROI with "
                                   "model.run.load_predictions(path).sel(lh_floc_faces='FFA-1')")
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp)


def _save_npz(path: Path, preds: dict[str, np.ndarray], names: list[str],
              coords: dict[str, dict[str, np.ndarray]] | None = None) -> None:
    extra = {name: v for values in (coords or {}).values() for name, v in values.items()}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=np.array(names, dtype=str), **preds, **extra)


def load_predictions(path: str | Path):
    """Predictions written by ``tbe predict`` (NetCDF), with an index on every ROI coordinate, so that
    ``preds.sel(lh_floc_faces="FFA-1").lh`` gives FFA-1's vertices of the left hemisphere."""
    import xarray as xr

    ds = xr.load_dataset(path)
    for name in [n for n, c in ds.coords.items() if c.dims and c.dims[0].endswith("_vertex") and n not in ds.dims]:
        ds = ds.set_xindex(name)
    return ds


PREDICTION_WRITERS = {".nc": _save_netcdf, ".npz": _save_npz}


def check_prediction_path(path: str | Path) -> None:
    """Refuse an output name of unknown format (before any work is done)."""
    path = Path(path)
    if path.suffix not in PREDICTION_WRITERS:
        raise InputError(path, f"unknown output format {path.suffix!r}; use {' or '.join(PREDICTION_WRITERS)}")


def save_predictions(path: str | Path, preds: dict[str, np.ndarray], names: list[str],
                     coords: dict[str, dict[str, np.ndarray]] | None = None) -> Path:
    """Per-hemisphere predictions (images x vertices) with the image names, as NetCDF or npz.

    ``coords`` (:func:`vertex_coordinates`) label each vertex with its ROI
    name per class: coordinates of the NetCDF file, arrays of the npz.
    """
    path = Path(path)
    check_prediction_path(path)
    PREDICTION_WRITERS[path.suffix](path, preds, names, coords)
    return path
