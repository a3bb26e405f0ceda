"""The interpretation jobs behind ``tbe interpret`` and ``tbe check-maps``."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from model.errors import InputError
from model.features import extract_features
from model.files import atomic_path, write_csv
from model.rois import EARLY_VISUAL, HEMIS
from model.run import Run
from model.virtual.truth import has_ground_truth, load_ground_truth

from . import checks
from .attention import backbone_attention, decoder_attention
from .attribution import Settings, attribute, method
from .maps import MapGrid, load_images, roi_targets, select_images
from .overlay import plot_faithfulness, plot_localization, plot_sanity

log = logging.getLogger(__name__)

ATTENTION = "attention"
DEFAULT_METHODS = ("attention", "integrated_gradients", "saliency", "token_integrated_gradients")
#: ROIs explained by default: early visual cortex and one planted ROI per category
DEFAULT_ROIS = (*EARLY_VISUAL, "FFA-1", "EBA", "PPA", "VWFA-1")


@dataclass
class MapJob:
    """What to explain: which images, targets and methods."""

    split: str = "val"
    n_images: int = 4
    methods: tuple[str, ...] = DEFAULT_METHODS
    rois: tuple[str, ...] | None = DEFAULT_ROIS
    map_size: int | None = None
    settings: Settings = Settings()
    backbone_attention: bool = True
    containing: str | None = None  # only images showing this category (virtual subjects)

    def check(self, run: Run) -> None:
        for name in self.methods:
            if name != ATTENTION:
                method(name)
        if ATTENTION in self.methods and not run.model.capabilities.decoder_attention:
            raise InputError("--methods", f"attention needs the transformer; this run is {run.config.encoder_arch!r}")


@dataclass
class Inputs:
    """The images, their tokens and the map grid of one job."""

    names: list[str]
    paths: list[Path]
    images: torch.Tensor
    tokens: np.ndarray
    grid: MapGrid
    backbone: object


def prepare(run: Run, job: MapJob, cache_dir: str | Path | None = None, device: str = "cpu") -> Inputs:
    """The job's images (see :func:`~interpret.maps.select_images`), their tokens and map grid."""
    return load_inputs(run, select_images(run, job.split, job.n_images, job.containing), job.map_size, cache_dir, device)


def load_inputs(run: Run, paths: list[Path], map_size: int | None = None, cache_dir: str | Path | None = None,
                device: str = "cpu") -> Inputs:
    """These images, their tokens (from the feature cache when there) and the map grid."""
    backbone = run.backbone()
    feats = extract_features(backbone, paths, cache_dir, device=device, desc="features")
    return Inputs([p.name for p in paths], paths, load_images(backbone, paths), np.asarray(feats.features),
                  MapGrid.for_backbone(backbone, map_size), backbone)


def compute_maps(run: Run, job: MapJob, inputs: Inputs, encoder: torch.nn.Module | None = None) -> xr.Dataset:
    """Every requested map as one dataset (see :mod:`interpret.attention`, :mod:`interpret.attribution`)."""
    job.check(run)
    parts = []
    attributions = [m for m in job.methods if m != ATTENTION]
    targets = roi_targets(run, list(job.rois) if job.rois else None)
    if ATTENTION in job.methods:
        att = decoder_attention(run if encoder is None else _with_encoder(run, encoder), inputs.tokens, inputs.grid, inputs.names)
        parts.append(att.sel(roi=[r for r in att.roi.values if r in set(targets.rois)]))
    if attributions:
        parts.append(attribute(run, inputs.backbone, inputs.images, inputs.tokens, targets, attributions, inputs.grid,
                               inputs.names, job.settings, encoder=encoder))
    if job.backbone_attention and encoder is None:
        parts.append(backbone_attention(inputs.backbone, inputs.images, inputs.grid, inputs.names))
    ds = xr.merge(parts, compat="override", join="outer")
    ds.attrs.update({"run": str(run.path), "split": job.split, "backbone": inputs.backbone.describe(),
                     "image_side_px": inputs.grid.image_side})
    return ds


def _with_encoder(run: Run, encoder: torch.nn.Module) -> Run:
    return Run(run.path, run.config, run.subject, run.queries, encoder)


def save_maps(ds: xr.Dataset, out: str | Path) -> Path:
    out = Path(out)
    if out.suffix != ".nc":
        raise InputError(out, "maps are written as NetCDF: use a .nc file name")
    with atomic_path(out) as tmp:
        ds.to_netcdf(tmp)
    return out


def check_maps(run: Run, job: MapJob, inputs: Inputs, sanity_methods: tuple[str, ...] | None = None,
               maps: xr.Dataset | None = None, faithfulness_rois: tuple[str, ...] | None = None,
               faithfulness_images: int | None = None) -> dict[str, pd.DataFrame]:
    """Sanity, localization (virtual subjects) and faithfulness tables.

    ``maps`` are the job's maps if already computed; ``sanity_methods`` the
    (cheaper) methods to recompute at every randomisation step;
    ``faithfulness_rois`` and ``faithfulness_images`` the ROIs and the number
    of the job's images whose deletion and insertion curves are measured
    (default: all), since every curve re-runs the backbone once per step,
    image, method and ROI.
    """
    ds = compute_maps(run, job, inputs) if maps is None else maps
    tables: dict[str, pd.DataFrame] = {}
    sanity_job = MapJob(job.split, job.n_images, sanity_methods or job.methods, job.rois, job.map_size, job.settings,
                        backbone_attention=False)
    log.info("sanity: cascading randomisation of the decoder")
    tables["sanity"] = checks.sanity(run.model, lambda enc: compute_maps(run, sanity_job, inputs, encoder=enc))
    if has_ground_truth(run.subject.root):
        tables["localization"] = localize(run, inputs, ds)
    else:
        log.info("localization skipped: %s has no ground truth (not a virtual subject)", run.subject.root)
    rois = faithfulness_rois or job.rois
    targets = roi_targets(run, list(rois) if rois else None)
    n = faithfulness_images or len(inputs.names)
    tables["faithfulness"] = checks.faithfulness(ds.isel(image=slice(n)), inputs.backbone, run.model, targets,
                                                 inputs.images[:n], inputs.grid)
    return tables


def localize(run: Run, inputs: Inputs, ds: xr.Dataset) -> pd.DataFrame:
    """How well the maps ``ds`` of ``inputs`` point to what a virtual subject planted.

    See :func:`interpret.checks.localization`; validation images are held-out
    training images, so their truth lives with the training images.
    """
    truth = load_ground_truth(run.subject.root)
    folder = "test" if ds.attrs.get("split") == "test" else "train"
    masks = checks.masks_on_grid(truth.masks(folder, inputs.names), inputs.grid)
    roi_masks = {(h, r): run.subject.roi_mask(r, h) for h in HEMIS for r in ds.roi.values if r != "unknown"}
    return checks.localization(ds, truth, roi_masks, masks, inputs.grid)


CHECK_PLOTS = {"sanity": plot_sanity, "localization": plot_localization, "faithfulness": plot_faithfulness}


def save_check_tables(tables: dict[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """Write each table of :func:`check_maps` as ``NAME.csv`` and, when not empty, its figure ``NAME.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in tables.items():
        written.append(write_csv(out_dir / f"{name}.csv", table))
        if len(table):
            written.append(CHECK_PLOTS[name](table, out_dir / f"{name}.png"))
    return written
