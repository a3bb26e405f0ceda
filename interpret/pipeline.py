"""The interpretation jobs behind ``tbe interpret`` and ``tbe check-maps``."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import xarray as xr

from model.errors import InputError, OptionError
from model.files import atomic_path, write_csv, write_json
from model.progress import progress
from model.rois import EARLY_VISUAL, HEMIS
from model.runs import Run
from model.truth import require_truth

from . import checks
from .attention import backbone_attention
from .attribution import Settings, compute_methods, method
from .attention_use import AttentionUse
from .mapfile import MapWriter, check_maps_path
from .maps import Inputs, MapGrid, MapSource, batches, roi_targets, select_images
from .overlay import plot_attention_use, plot_faithfulness, plot_localization, plot_sanity

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("attention", "integrated_gradients", "saliency", "token_integrated_gradients")
#: ROIs explained by default: early visual cortex and one planted ROI per category
DEFAULT_ROIS = (*EARLY_VISUAL, "FFA-1", "EBA", "PPA", "VWFA-1")
#: Images whose maps are computed (and written) at once; bounds a job's memory whatever its number of images
DEFAULT_BATCH = 4


@dataclass
class MapJob:
    """What to explain: which images, targets and methods."""

    split: str = "val"
    n_images: int = 4
    methods: tuple[str, ...] = DEFAULT_METHODS
    rois: tuple[str, ...] | None = DEFAULT_ROIS
    map_size: int | None = None
    settings: Settings = Settings()
    backbone_attention: bool = False  # the backbone's own attention and rollout: only when asked (costly)
    containing: str | None = None  # only images showing this category (virtual subjects)
    batch_size: int = DEFAULT_BATCH  # images whose maps are made at once: memory does not grow with n_images

    def check(self, run: Run) -> None:
        """Unknown methods, methods the run's encoder cannot give and settings out of range stop here."""
        for name in self.methods:
            if method(name)[0].needs_attention and not run.model.capabilities.decoder_attention:
                raise OptionError("methods", f"{name} needs the transformer; this run is {run.config.encoder_arch!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise OptionError("batch_size", f"must be a whole number of images >= 1, got {self.batch_size!r}")
        self.settings.check()


def map_job(run: Run, split: str = "val", n_images: int = 4, methods: Sequence[str] | None = DEFAULT_METHODS,
            rois: Sequence[str] | None = DEFAULT_ROIS, settings: Settings = Settings(), map_size: int | None = None,
            containing: str | None = None, backbone_attention: bool = False, batch_size: int = DEFAULT_BATCH) -> MapJob:
    """A :class:`MapJob`, checked against the run before any image is read (``tbe interpret``, the notebooks).

    ``methods`` None means :data:`DEFAULT_METHODS`; ``rois`` None, empty or
    ``['all']`` means every query of the run. Unknown methods or ROI names,
    methods the run's encoder cannot give and settings out of range stop
    here with one clear error. ``backbone_attention`` adds the backbone's own
    class-token attention and rollout (:func:`interpret.attention.backbone_attention`);
    ``batch_size`` images are mapped at a time.
    """
    wanted = None if not rois or list(rois) == ["all"] else tuple(rois)
    job = MapJob(split, int(n_images), tuple(methods) if methods is not None else DEFAULT_METHODS, wanted, map_size,
                 settings, backbone_attention, containing, batch_size)
    job.check(run)
    roi_targets(run, list(wanted) if wanted else None)
    return job


def prepare(run: Run, job: MapJob, cache_dir: str | Path | None = None, device: str | None = None,
            images: Sequence[str] | None = None, seed: int = 0) -> Inputs:
    """Every image of the job in memory, with its tokens and map grid (small jobs: the notebooks).

    :func:`open_images` gives the same images read batch by batch, as the
    commands read them; the arguments are its.
    """
    return open_images(run, job, cache_dir, device, images, seed).load()


def open_images(run: Run, job: MapJob, cache_dir: str | Path | None = None, device: str | None = None,
                images: Sequence[str] | None = None, seed: int = 0) -> MapSource:
    """The job's images and their tokens, to be read batch by batch (:class:`~interpret.maps.MapSource`).

    Features are computed (or found in the cache) on ``device`` (default:
    the run's, :attr:`model.runs.run.Run.device`) and stay on disk.

    ``images`` None (or empty): the first ``job.n_images`` of the split (see
    :func:`~interpret.maps.select_images`); ``['random']``: ``job.n_images``
    of them drawn with ``seed``; else file names or positions within the split.
    """
    if not images:
        paths = select_images(run, job.split, job.n_images, job.containing)
    else:
        paths = choose_images(select_images(run, job.split, 10**9, job.containing), list(images), job.n_images, seed,
                              job.split)
    return source_of(run, paths, job.map_size, cache_dir, device)


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
    """These images, their tokens (from the feature cache when there) and the map grid, all in memory."""
    return source_of(run, paths, map_size, cache_dir, device).load()


def source_of(run: Run, paths: list[Path], map_size: int | None = None, cache_dir: str | Path | None = None,
              device: str | None = None) -> MapSource:
    """These images and their tokens, read batch by batch (:class:`~interpret.maps.MapSource`).

    The backbone lives on the run's device, where the maps are computed; the
    images and tokens stay on the CPU (each method moves them where it runs).
    """
    backbone = run.shared_backbone
    tokens = run.features(paths, cache_dir, device=str(device or run.device), rows=subject_rows(run, paths),
                          desc="features")
    return MapSource([p.name for p in paths], list(paths), tokens, MapGrid.for_backbone(backbone, map_size), backbone)


def subject_rows(run: Run, paths: Sequence[Path]) -> list[tuple[str, int] | None]:
    """``(split, index)`` of each path among the subject's images (None for others), so that the features
    training cached for the subject's splits are read instead of computed again (:meth:`model.runs.run.Run.features`)."""
    index = {Path(p).resolve(): (split, i) for split in ("train", "test") for i, p in enumerate(run.subject.images(split))}
    return [index.get(Path(p).resolve()) for p in paths]


def compute_maps(run: Run, job: MapJob, inputs: Inputs, encoder: torch.nn.Module | None = None) -> xr.Dataset:
    """Every requested map as one dataset (see :mod:`interpret.attention`, :mod:`interpret.attribution`)."""
    job.check(run)
    targets = roi_targets(run, list(job.rois) if job.rois else None)
    parts = compute_methods(run, inputs, targets, list(job.methods), job.settings, encoder)
    if job.backbone_attention and encoder is None and inputs.backbone.has_class_token:  # a CNN has none
        parts.append(backbone_attention(inputs.backbone, inputs.images, inputs.grid, inputs.names))
    ds = xr.merge(parts, compat="override", join="outer")
    ds.attrs.update({"run": str(run.path), "split": job.split, "backbone": inputs.backbone.describe(),
                     "image_side_px": inputs.grid.image_side})
    return ds


def save_maps(ds: xr.Dataset, out: str | Path) -> Path:
    """Write a maps dataset as NetCDF (atomically)."""
    out = check_maps_path(out)
    with atomic_path(out) as tmp:
        ds.to_netcdf(tmp)
    return out


def write_maps(run: Run, job: MapJob, images: Inputs | MapSource, out: str | Path) -> Path:
    """Compute the job's maps ``job.batch_size`` images at a time and append each batch to ``out`` (NetCDF).

    The file holds what :func:`compute_maps` of every image at once would
    give (read it with :func:`xarray.open_dataset`), but no more than one
    batch of images, tokens and maps is ever in memory.
    """
    job.check(run)
    with MapWriter(out) as writer:
        for _, batch in progress(batches(images, job.batch_size), total=-(-len(images) // job.batch_size),
                                 desc="maps", unit="batch"):
            writer.append(compute_maps(run, job, batch))
    return writer.out


def check_maps(run: Run, job: MapJob, inputs: Inputs | MapSource, sanity_methods: tuple[str, ...] | None = None,
               maps: xr.Dataset | None = None, faithfulness_rois: tuple[str, ...] | None = None,
               faithfulness_images: int | None = None) -> dict[str, pd.DataFrame]:
    """Sanity, localization (virtual subjects), faithfulness and attention-use (:mod:`interpret.attention_use`) tables.

    ``maps`` are the job's maps if already computed (in the order of
    ``inputs``); ``sanity_methods`` the (cheaper) methods to recompute at
    every randomisation step; ``faithfulness_rois`` and
    ``faithfulness_images`` the ROIs and the number of the job's images
    whose deletion and insertion curves are measured (default: all), since
    every curve re-runs the backbone once per step, image, method and ROI.

    Images are checked ``job.batch_size`` at a time, each check gathering
    what it needs of every batch (:mod:`interpret.checks`), so memory does
    not grow with the number of images; the tables are those of all images
    at once.
    """
    job.check(run)
    sanity_job = dataclasses.replace(job, methods=tuple(sanity_methods or job.methods), backbone_attention=False)
    rois = faithfulness_rois or job.rois
    targets = roi_targets(run, list(rois) if rois else None)
    n_faithful = faithfulness_images or len(inputs)
    why = truth_missing(run, inputs)
    if why is not None:
        log.info("localization skipped: %s", why)
    sanity = checks.SanityComparisons(run.model)
    located = None if why is not None else Localizer(run)
    faithful = checks.Faithfulness(inputs.backbone, run.model, targets, inputs.grid)
    used = AttentionUse(run) if "attention" in job.methods else None
    if used is None:
        log.info("attention use skipped: the job's methods do not include attention")
    for start, batch in progress(batches(inputs, job.batch_size), total=-(-len(inputs) // job.batch_size),
                                 desc="map checks", unit="batch"):
        ds = compute_maps(run, job, batch) if maps is None else maps.isel(image=slice(start, start + len(batch)))
        sanity.add(lambda enc: compute_maps(run, sanity_job, batch, encoder=enc))
        if located is not None:
            located.add(batch, ds)
        n = min(len(batch), n_faithful - start)
        if n > 0:
            faithful.add(ds.isel(image=slice(n)), batch.images[:n], start)
        if used is not None:
            used.add(batch, ds)
    tables = {"sanity": sanity.table()}
    if located is not None:
        tables["localization"] = located.table()
    tables["faithfulness"] = faithful.table()
    if used is not None:
        tables["attention"] = used.table()
    return tables


def truth_missing(run: Run, inputs: Inputs | MapSource) -> str | None:
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
    located = Localizer(run)
    located.add(inputs, ds)
    return located.table()


class Localizer:
    """:func:`localize`, gathered batch by batch of images (:class:`interpret.checks.Localization`)."""

    def __init__(self, run: Run):
        truth = require_truth(run.subject, "only a virtual subject's maps can be localized")
        self.run, self.truth, self.scores = run, truth, None

    def add(self, inputs: Inputs, ds: xr.Dataset) -> None:
        """Score the maps ``ds`` of one batch ``inputs``."""
        if self.scores is None:
            roi_masks = {(h, r): self.run.subject.roi_mask(r, h) for h in HEMIS for r in ds.roi.values if r != "unknown"}
            self.scores = checks.Localization(self.truth, roi_masks, inputs.grid)
        folder = "test" if ds.attrs.get("split") == "test" else "train"
        self.scores.add(ds, checks.masks_on_grid(self.truth.masks(folder, inputs.names), inputs.grid))

    def table(self) -> pd.DataFrame:
        return self.scores.table() if self.scores is not None else pd.DataFrame()


CHECK_PLOTS = {"sanity": plot_sanity, "localization": plot_localization, "faithfulness": plot_faithfulness,
               "attention": plot_attention_use}
#: The tables of the map checks, as :func:`save_check_tables` writes them
CHECK_TABLES = tuple(CHECK_PLOTS)


#: The settings file :func:`save_check_tables` writes next to the tables
CHECK_SETTINGS = "settings.json"


def check_settings(job: MapJob, inputs: Inputs | MapSource, sanity_methods: tuple[str, ...] | None = None,
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
