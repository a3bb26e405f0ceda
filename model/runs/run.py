"""A trained run, opened: its encoder rebuilt from the run directory and the data directory.

A run records what it was trained on: a fingerprint of the subject's data
(:meth:`model.subject.Subject.fingerprint`) and the key of its features
(backbone, weights digest, block, feature kind, input size).
:func:`open_single_run` rebuilds the encoder from the run and the data
directory and refuses, naming the file, a run opened against other data or
whose config.json no longer describes the features it was trained on. The
weights are safetensors, read and written here (never pickle). Any run
directory, a run or an ensemble, opens with :func:`model.runs.opening.open_run`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..backbone import named_weights_digest
from ..device import pick_device
from ..encoders import QuerySet, build_encoder, build_queries
from ..errors import InputError
from ..files import load_npy, save_safetensors
from ..subject import Subject, load_subject
from .configs import RunConfig, read_config
from .layout import CONFIG, METRICS, VAL_INDICES, WEIGHTS, read_metrics

log = logging.getLogger(__name__)


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
        from ..backbone import build_backbone
        from ..images import native_size

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
        every member's tokens side by side (:class:`model.runs.ensembles.EnsembleRun`).
        """
        from ..features import image_features

        return image_features(self.shared_backbone, self.subject, paths, rows, cache_dir, device, desc)


def open_single_run(run: str | Path, data_dir: str | Path | None = None, device: str | torch.device = "cpu") -> Run:
    """Rebuild the encoder of a complete run (not an ensemble); ``data_dir`` defaults to the one it was trained on.

    The encoder (and later its backbone) is placed on ``device`` (``auto``:
    CUDA, then MPS, then CPU; see :func:`model.device.pick_device`).

    Refused, with one line naming the file: an unfinished run, a config.json
    that does not describe the features the run was trained on, data other
    than the run's (vertex counts, ROI queries, or the data fingerprint), and
    weights that do not fit the encoder. Any run directory, an ensemble too,
    opens with :func:`model.runs.opening.open_run`.
    """
    run = Path(run)
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
    from ..features import feature_key

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
