"""The interpretation jobs behind ``tbe interpret`` and ``tbe check-maps``."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import xarray as xr

from model.errors import InputError
from model.files import atomic_path, write_csv, write_json
from model.rois import EARLY_VISUAL, HEMIS
from model.run import Run

from . import checks
from .attention import backbone_attention
from .attribution import Settings, compute_methods, method
from .maps import Inputs, MapGrid, load_images, roi_targets, select_images
from .attention_use import attention_use
from .overlay import plot_attention_use, plot_faithfulness, plot_localization, plot_sanity

log = logging.getLogger(__name__)

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
        """Unknown methods, methods the run's encoder cannot give and settings out of range stop here."""
        for name in self.methods:
            if method(name)[0].needs_attention and not run.model.capabilities.decoder_attention:
                raise InputError("--methods", f"{name} needs the transformer; this run is {run.config.encoder_arch!r}")
        self.settings.check()


def map_job(run: Run, split: str = "val", n_images: int = 4, methods: Sequence[str] | None = DEFAULT_METHODS,
            rois: Sequence[str] | None = DEFAULT_ROIS, settings: Settings = Settings(), map_size: int | None = None,
            containing: str | None = None, backbone_attention: bool = True) -> MapJob:
    """A :class:`MapJob`, checked against the run before any image is read (``tbe interpret``, the notebooks).

    ``methods`` None means :data:`DEFAULT_METHODS`; ``rois`` None, empty or
    ``['all']`` means every query of the run. Unknown methods or ROI names,
    methods the run's encoder cannot give and settings out of range stop
    here with one clear error.
    """
    wanted = None if not rois or list(rois) == ["all"] else tuple(rois)
    job = MapJob(split, int(n_images), tuple(methods) if methods is not None else DEFAULT_METHODS, wanted, map_size,
                 settings, backbone_attention, containing)
    job.check(run)
    roi_targets(run, list(wanted) if wanted else None)
    return job


def prepare(run: Run, job: MapJob, cache_dir: str | Path | None = None, device: str | None = None,
            images: Sequence[str] | None = None, seed: int = 0) -> Inputs:
    """The job's images, their tokens and map grid.

    Features are computed on ``device`` (default: the run's, :attr:`model.run.Run.device`).

    ``images`` None (or empty): the first ``job.n_images`` of the split (see
    :func:`~interpret.maps.select_images`); ``['random']``: ``job.n_images``
    of them drawn with ``seed``; else file names or positions within the split.
    """
    if not images:
        paths = select_images(run, job.split, job.n_images, job.containing)
    else:
        paths = choose_images(select_images(run, job.split, 10**9, job.containing), list(images), job.n_images, seed,
                              job.split)
    return load_inputs(run, paths, job.map_size, cache_dir, device)


def choose_images(pool: list[Path], chosen: list[str], n_images: int, seed: int = 0, split: str = "val") -> list[Path]:
    """``n_images`` of ``pool`` drawn with ``seed`` (``chosen == ['random']``), else the named or numbered ones."""
    if chosen == ["random"]:
        idx = np.random.default_rng(seed).choice(len(pool), size=min(n_images, len(pool)), replace=False)
        return [pool[i] for i in sorted(idx)]
    by_name = {p.name: p for p in pool}
    paths = []
    for item in chosen:
        if item in by_name:
            paths.append(by_name[item])
        elif item.isdigit() and int(item) < len(pool):
            paths.append(pool[int(item)])
        else:
            raise InputError("images", f"{item!r} is neither a {split} image name nor a position below {len(pool)}")
    return paths


def load_inputs(run: Run, paths: list[Path], map_size: int | None = None, cache_dir: str | Path | None = None,
                device: str | None = None) -> Inputs:
    """These images, their tokens (from the feature cache when there) and the map grid.

    The backbone lives on the run's device, where the maps are computed; the
    images and tokens stay on the CPU (each method moves them where it runs).
    """
    backbone = run.shared_backbone
    tokens = run.features(paths, cache_dir, device=str(device or run.device), desc="features")
    return Inputs([p.name for p in paths], paths, load_images(backbone, paths), np.asarray(tokens),
                  MapGrid.for_backbone(backbone, map_size), backbone)


def compute_maps(run: Run, job: MapJob, inputs: Inputs, encoder: torch.nn.Module | None = None) -> xr.Dataset:
    """Every requested map as one dataset (see :mod:`interpret.attention`, :mod:`interpret.attribution`)."""
    job.check(run)
    targets = roi_targets(run, list(job.rois) if job.rois else None)
    parts = compute_methods(run, inputs, targets, list(job.methods), job.settings, encoder)
    if job.backbone_attention and encoder is None and inputs.backbone.num_prefix_tokens > 0:  # a CNN has no class token
        parts.append(backbone_attention(inputs.backbone, inputs.images, inputs.grid, inputs.names))
    ds = xr.merge(parts, compat="override", join="outer")
    ds.attrs.update({"run": str(run.path), "split": job.split, "backbone": inputs.backbone.describe(),
                     "image_side_px": inputs.grid.image_side})
    return ds


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
    why = truth_missing(run, inputs)
    if why is None:
        tables["localization"] = localize(run, inputs, ds)
    else:
        log.info("localization skipped: %s", why)
    if "attention_mean" in ds:
        log.info("attention use: focus, token deletion and agreement with token IG")
        tables["attention"] = attention_use(run, inputs, ds)
    else:
        log.info("attention use skipped: the job's methods do not include attention")
    rois = faithfulness_rois or job.rois
    targets = roi_targets(run, list(rois) if rois else None)
    n = faithfulness_images or len(inputs.names)
    tables["faithfulness"] = checks.faithfulness(ds.isel(image=slice(n)), inputs.backbone, run.model, targets,
                                                 inputs.images[:n], inputs.grid)
    return tables


def truth_missing(run: Run, inputs: Inputs) -> str | None:
    """Why the maps of ``inputs`` cannot be checked against planted truth (localization); None when they can.

    Only a virtual subject's own images have planted masks: not those of a
    real subject, nor any folder of images outside the subject.
    """
    if run.subject.truth is None:
        return f"{run.subject.root} has no ground truth (not a virtual subject)"
    root = run.subject.root.resolve()
    outside = [p for p in inputs.paths if not Path(p).resolve().is_relative_to(root)]
    if outside:
        return f"the images of {outside[0].parent} are not the virtual subject's: no planted masks to check against"
    return None


def localize(run: Run, inputs: Inputs, ds: xr.Dataset) -> pd.DataFrame:
    """How well the maps ``ds`` of ``inputs`` point to what a virtual subject planted.

    See :func:`interpret.checks.localization`; validation images are held-out
    training images, so their truth lives with the training images.
    """
    truth = run.subject.truth
    if truth is None:
        raise InputError(run.subject.root / "ground_truth", "missing: only a virtual subject's maps can be localized")
    folder = "test" if ds.attrs.get("split") == "test" else "train"
    masks = checks.masks_on_grid(truth.masks(folder, inputs.names), inputs.grid)
    roi_masks = {(h, r): run.subject.roi_mask(r, h) for h in HEMIS for r in ds.roi.values if r != "unknown"}
    return checks.localization(ds, truth, roi_masks, masks, inputs.grid)


CHECK_PLOTS = {"sanity": plot_sanity, "localization": plot_localization, "faithfulness": plot_faithfulness,
               "attention": plot_attention_use}
#: The tables of the map checks, as :func:`save_check_tables` writes them
CHECK_TABLES = tuple(CHECK_PLOTS)


#: The settings file :func:`save_check_tables` writes next to the tables
CHECK_SETTINGS = "settings.json"


def check_settings(job: MapJob, inputs: Inputs, sanity_methods: tuple[str, ...] | None = None,
                   faithfulness_rois: tuple[str, ...] | None = None,
                   faithfulness_images: int | None = None, run: Run | None = None,
                   folder: str | Path | None = None) -> dict:
    """What :func:`check_maps` was run with, as a report shows it next to the tables.

    ``folder``: the folder of images used instead of the split; with ``run``,
    ``skipped`` lists each check that was not run, as ``"<check>: <why>"``
    (localization without planted truth, :func:`truth_missing`).
    """
    why = truth_missing(run, inputs) if run is not None else None
    return {"split": job.split if folder is None else None, "folder": str(folder) if folder is not None else None,
            "skipped": [f"localization: {why}"] if why else [], "n_images": len(inputs.names), "images": list(inputs.names),
            "methods": list(job.methods), "rois": list(job.rois) if job.rois else "all",
            "n_steps": job.settings.n_steps, "sanity_methods": list(sanity_methods or job.methods),
            "faithfulness_rois": list(faithfulness_rois) if faithfulness_rois else list(job.rois or ["all"]),
            "faithfulness_images": faithfulness_images or len(inputs.names)}


def save_check_tables(tables: dict[str, pd.DataFrame], out_dir: str | Path, settings: dict | None = None) -> list[Path]:
    """Write each table of :func:`check_maps` as ``NAME.csv`` and, when not empty, its figure ``NAME.png``;
    ``settings`` (:func:`check_settings`) go to ``settings.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in tables.items():
        written.append(write_csv(out_dir / f"{name}.csv", table))
        if len(table):
            written.append(CHECK_PLOTS[name](table, out_dir / f"{name}.png"))
    if settings is not None:
        write_json(out_dir / CHECK_SETTINGS, settings)
        written.append(out_dir / CHECK_SETTINGS)
    return written


def read_check_settings(folder: str | Path) -> dict | None:
    """The settings the check tables of ``folder`` were made with (None: not recorded)."""
    import json

    try:
        return json.loads((Path(folder) / CHECK_SETTINGS).read_text())
    except (OSError, ValueError):
        return None


def read_check_tables(folder: str | Path) -> dict[str, pd.DataFrame]:
    """The check tables (``<name>.csv``) of a ``tbe check-maps`` (or ``tbe demo``) output folder."""
    folder = Path(folder)
    for name in ("sanity", "faithfulness"):
        if not (folder / f"{name}.csv").is_file():
            raise InputError(folder / f"{name}.csv", "missing: not a folder written by tbe check-maps")
    return {name: pd.read_csv(folder / f"{name}.csv") for name in CHECK_TABLES if (folder / f"{name}.csv").is_file()}
