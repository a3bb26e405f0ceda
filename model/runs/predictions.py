"""Predictions: an encoder's per-vertex predictions for cached features, and for any folder of images (``tbe predict``).

:func:`predict` runs an encoder on token features in batches;
:func:`save_predictions` writes per-hemisphere predictions with their image
names as NetCDF (with an ROI coordinate per class, :func:`vertex_coordinates`)
or npz, and :func:`load_predictions` reads the NetCDF back.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..device import autocast, module_device
from ..errors import InputError
from ..files import atomic_path, read_rows



@torch.no_grad()
def predict(model: torch.nn.Module, features, indices: np.ndarray | None = None, batch_size: int = 64,
            device: torch.device | str | None = None) -> np.ndarray:
    """Predictions (N, V) float32 for cached features (N, T, C), or for their rows ``indices``.

    ``features``: an array, or :class:`~model.features.FeatureRows` (training's
    rows, perhaps resident on the device). Run on ``device`` (default: where
    the model is), under bf16 autocast on CUDA.
    """
    from ..features import FeatureRows

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
                                   "model.runs.predictions.load_predictions(path).sel(lh_floc_faces='FFA-1')")
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
