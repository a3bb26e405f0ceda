"""The run directory: everything a trained encoder is, readable without pickle.

```
RUN/config.json            what was trained, on what, how (JSON)
RUN/manifest.json          what produced it: code, environment, seeds, data and weights digests
RUN/model.safetensors      encoder weights (the backbone is referenced, not copied)
RUN/checkpoint.safetensors last epoch's weights + optimizer, for --resume
RUN/val_indices.npy        the validation rows of the training fMRI
RUN/metrics.json           written last: its presence means the run is complete
RUN/{lh,rh}_val_corr.npy   per-vertex validation r
RUN/{lh,rh}_pred_test.npy  the challenge submission (float32, test images x vertices)
```
Every file is written atomically. :func:`open_run` rebuilds the encoder from
the run and the data directory and refuses a run that does not match the data.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .architectures import RidgeConfig, build_encoder
from .backbone import BackboneConfig
from .encoder import DecoderConfig
from .errors import InputError
from .files import atomic_path, read_rows, write_json
from .readout import QuerySet, build_queries
from .subject import Subject, load_subject

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.json"
VAL_INDICES = "val_indices.npy"
RUN_FORMAT = 1


@dataclass
class TrainConfig:
    """Optimisation options; defaults are the seed's (AdamW, StepLR, gradient clipping 0.1)."""

    epochs: int = 15
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 1e-4
    lr_drop: int = 100
    clip_max_norm: float = 0.1
    seed: int = 0
    split_seed: int = 0
    val_fraction: float = 0.1


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
    format: int = RUN_FORMAT

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        d = dict(d)
        d["backbone"] = BackboneConfig(**d["backbone"])
        d["decoder"] = DecoderConfig(**d["decoder"])
        d["train"] = TrainConfig(**d["train"])
        d["ridge"] = RidgeConfig(**d["ridge"])
        d["grid"] = tuple(d["grid"])
        return cls(**d)

    def comparable(self) -> dict:
        """The fields that must agree when resuming (not the epoch budget)."""
        d = self.to_dict()
        d["train"] = {k: v for k, v in d["train"].items() if k != "epochs"}
        return d


def read_config(run: Path) -> RunConfig:
    path = Path(run) / CONFIG
    if not path.is_file():
        raise InputError(path, "missing: not a run directory")
    try:
        return RunConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise InputError(path, f"unreadable run configuration ({type(exc).__name__}: {exc})") from None


def write_config(run: Path, config: RunConfig) -> None:
    write_json(Path(run) / CONFIG, config.to_dict())


# --------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------

def save_weights(path: Path, module: torch.nn.Module, metadata: dict[str, str] | None = None) -> None:
    """The module's state dict as safetensors, atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


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

    @cached_property
    def val_indices(self) -> np.ndarray:
        return np.load(self.path / VAL_INDICES, allow_pickle=False)

    @cached_property
    def metrics(self) -> dict:
        return json.loads((self.path / METRICS).read_text())

    def hemi_slice(self, hemi: str) -> slice:
        return self.queries.vertex_slice(hemi)

    def backbone(self, device: str = "cpu"):
        """The run's backbone (built anew from its reference: name, weights, layer)."""
        from .backbone import build_backbone, native_size

        return build_backbone(self.config.backbone, native_size(self.subject.train_images[0]))

    @cached_property
    def shared_backbone(self):
        """The run's backbone, built once per opened run and shared by the analyses (it is frozen)."""
        return self.backbone()


def open_run(run: str | Path, data_dir: str | Path | None = None) -> Run:
    """Rebuild the encoder of a complete run; ``data_dir`` defaults to the one it was trained on."""
    run = Path(run)
    config = read_config(run)
    if not (run / METRICS).is_file():
        raise InputError(run, "training did not finish (no metrics.json); continue it with --resume")
    subject = load_subject(data_dir if data_dir is not None else config.data_dir, config.subj)
    queries = build_queries(subject, config.readout_res)
    check_matches(run / CONFIG, config, queries)
    model = build_encoder(config.encoder_arch, queries, config.feature_dim, config.grid, config.decoder, config.ridge)
    load_weights(run / WEIGHTS, model)
    return Run(run, config, subject, queries, model.eval())


def check_matches(where: Path, config: RunConfig, queries: QuerySet) -> None:
    """The data must have the vertices and ROI queries the run was trained with."""
    if dict(config.n_vertices) != dict(queries.n_vertices):
        raise InputError(where, f"run was trained on {config.n_vertices} vertices, the data directory has {queries.n_vertices}")
    if list(config.queries) != queries.names:
        diff = sorted(set(config.queries) ^ set(queries.names))
        raise InputError(where, f"run's ROI queries differ from the data directory's (e.g. {diff[:3]})")


@torch.no_grad()
def predict(model: torch.nn.Module, features: np.ndarray, indices: np.ndarray | None = None, batch_size: int = 64,
            device: torch.device | str = "cpu") -> np.ndarray:
    """Predictions (N, V) float32 for cached features (N, T, C), or for their rows ``indices``."""
    from .device import autocast

    device = torch.device(device)
    model = model.to(device).eval()
    out = []
    for batch in iter_batches(features, np.arange(len(features)) if indices is None else indices, batch_size):
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

def _save_netcdf(path: Path, preds: dict[str, np.ndarray], names: list[str]) -> None:
    import xarray as xr

    ds = xr.Dataset({h: (("image", f"{h}_vertex"), v) for h, v in preds.items()}, coords={"image": names})
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp)


def _save_npz(path: Path, preds: dict[str, np.ndarray], names: list[str]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=np.array(names, dtype=str), **preds)


PREDICTION_WRITERS = {".nc": _save_netcdf, ".npz": _save_npz}


def save_predictions(path: str | Path, preds: dict[str, np.ndarray], names: list[str]) -> Path:
    """Per-hemisphere predictions (images x vertices) with the image names, as NetCDF or npz."""
    path = Path(path)
    writer = PREDICTION_WRITERS.get(path.suffix)
    if writer is None:
        raise InputError(path, f"unknown output format {path.suffix!r}; use {' or '.join(PREDICTION_WRITERS)}")
    writer(path, preds, names)
    return path
