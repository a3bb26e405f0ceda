"""A subject's known truth: the one interface through which the suite reads what was planted.

A virtual subject (:mod:`model.virtual`) writes its truth to
``subjXX/ground_truth/``; real subjects have none. The data reader ignores
that folder; :attr:`model.subject.Subject.truth` reads it lazily, once per
subject (None for real data), and scoring, the map checks, the selectivity
analyses and their calibration use it to compare what a model recovered
with what was planted. Nothing outside :mod:`model` imports the simulator
itself, and nothing outside this module knows the folder's files: the
analyses ask questions (:meth:`GroundTruth.preferences`,
:meth:`GroundTruth.null_rois`, :meth:`GroundTruth.planted_vertices`,
:meth:`GroundTruth.masks`), and :func:`require_truth` refuses a real subject.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import xarray as xr
from PIL import Image

from .errors import InputError
from .rois import HEMIS
from .vision import CATEGORIES
from .virtual.responses import GRID, Tuning, clean_responses, noisy_average, prf_weights
from .virtual.stimuli import STIMULUS_CONFOUNDS, unpack_mask_bits

#: Images whose full-resolution masks :meth:`GroundTruth.mask_batches` reads at a time
MASK_BATCH = 64
#: the folder of a virtual subject's truth, inside ``subjXX/``
FOLDER = "ground_truth"


@dataclass
class GroundTruth:
    """The planted truth of one virtual subject."""

    root: Path  # the subjXX directory

    @property
    def folder(self) -> Path:
        return truth_folder(self.root)

    @cached_property
    def config(self) -> dict:
        return json.loads((self.folder / "config.json").read_text())

    @cached_property
    def rois(self) -> dict:
        """ROI name -> {'class', 'preference', 'hemis': {hemi: {...}}}."""
        return json.loads((self.folder / "rois.json").read_text())

    @cached_property
    def tuning(self) -> dict[str, Tuning]:
        out = {}
        for hemi in HEMIS:
            with xr.open_dataset(self.folder / f"{hemi}_tuning.nc") as ds:
                out[hemi] = Tuning.from_dataset(ds.load())
        return out

    def preferences(self) -> dict[str, str | None]:
        """What each ROI was planted to prefer: a category, ``'prf'`` (its vertices' receptive fields), or None
        (a null ROI, planted to respond to nothing). ROI name -> preference, in the order the ROIs were planted."""
        return {roi: info["preference"] for roi, info in self.rois.items()}

    def null_rois(self) -> list[tuple[str, str]]:
        """(hemi, ROI) of every ROI planted to respond to nothing, in planting order."""
        return [(hemi, roi) for roi, info in self.rois.items() if info["preference"] is None
                for hemi in info["hemis"] if hemi in HEMIS]

    def planted_vertices(self, hemi: str, category: str) -> np.ndarray:
        """Boolean mask over ``hemi``'s challenge vertices: those planted to prefer ``category`` (null ones excluded)."""
        tuning = self.tuning[hemi]
        return (tuning.preference[:, CATEGORIES.index(category)] >= 1) & ~tuning.null

    @property
    def images_file(self) -> Path:
        """Where :attr:`images` is read from (for messages about it)."""
        return self.folder / "images.csv"

    @cached_property
    def images(self) -> pd.DataFrame:
        """One row per image: split, file name, background, object counts and mask areas."""
        return pd.read_csv(self.images_file)

    @property
    def coco_instances(self) -> Path:
        """The images' objects as a COCO instances file (:mod:`model.virtual.coco`)."""
        return self.folder / "coco" / "instances.json"

    @property
    def nsd_stim_info(self) -> Path:
        """The images' NSD stim-info file: the COCO ids and crop boxes of :attr:`coco_instances`."""
        return self.folder / "coco" / "nsd_stim_info.csv"

    @property
    def stimulus_confounds(self) -> dict[str, str]:
        """Known confounds of the painted stimuli, name -> what they can bias (reports state them)."""
        return dict(STIMULUS_CONFOUNDS)

    def array(self, name: str, hemi: str) -> np.ndarray:
        """``{hemi}_{name}.npy``: train_clean, test_clean, test_fmri or noise_ceiling."""
        return np.load(self.folder / f"{hemi}_{name}.npy", allow_pickle=False)

    def masks(self, split: str, names: list[str] | None = None) -> np.ndarray:
        """Category masks (N, category, S, S) bool of ``split`` images, in :data:`model.vision.CATEGORIES` order."""
        folder = self.folder / "masks" / split
        files = names if names is not None else sorted(p.name for p in folder.iterdir())
        bits = np.stack([np.asarray(Image.open(folder / n)) for n in files])
        return unpack_mask_bits(bits)

    def mask_batches(self, split: str, names: list[str], size: int | None = None) -> Iterator[np.ndarray]:
        """:meth:`masks` of ``names``, ``size`` (default :data:`MASK_BATCH`) images at a time: full-resolution
        masks take 0.9 MB per image at 434 px, so callers reduce each batch (to a grid, to a flag) before the
        next is read."""
        size = size or MASK_BATCH
        for start in range(0, len(names), size):
            yield self.masks(split, list(names[start:start + size]))

    def responses(self, hemi: str, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Clean responses of ``hemi``'s vertices to new images, on the subject's scale."""
        return clean_responses(self.tuning[hemi], images, masks)

    def prf_coverage(self, roi_mask: np.ndarray, hemi: str, grid: int = GRID) -> np.ndarray:
        """Summed pRF weights of the non-null vertices in ``roi_mask``: (grid, grid), rows top-down."""
        t = self.tuning[hemi]
        active = roi_mask & ~t.null
        if not active.any():
            return np.zeros((grid, grid), np.float32)
        w = prf_weights(t.prf_x[active], t.prf_y[active], t.prf_sigma[active], grid)
        return w.sum(0).reshape(grid, grid)

    def null_measurements(self, hemi: str, vertices: np.ndarray, n_images: int, rng: np.random.Generator) -> np.ndarray:
        """Fresh measurements ``(n_images, vertices)`` of vertices without signal, drawn as the generator draws them.

        Each is the average of the subject's number of repeats of z-scored
        noise trials at the vertices' ncsnr; ``vertices`` is a boolean mask
        over ``hemi``'s challenge vertices.
        """
        repeats = int(self.config.get("n_repeats", 3))
        clean = np.zeros((n_images, int(np.count_nonzero(vertices))), np.float32)
        return noisy_average(clean, self.tuning[hemi].ncsnr[vertices], rng, repeats)


def truth_folder(subject_root: str | Path) -> Path:
    """Where a virtual subject keeps its truth: ``subjXX/ground_truth``."""
    return Path(subject_root) / FOLDER


def has_ground_truth(subject_root: str | Path) -> bool:
    """Whether ``subject_root`` (a ``subjXX`` folder) holds a virtual subject's ground truth."""
    return (truth_folder(subject_root) / "config.json").is_file()


def load_ground_truth(subject_root: str | Path) -> GroundTruth:
    """The ground truth of a virtual subject directory; a clear error if it has none."""
    root = Path(subject_root)
    if not has_ground_truth(root):
        raise InputError(truth_folder(root), "missing: this is not a virtual subject (no ground truth to compare with)")
    return GroundTruth(root)


def require_truth(subject: "Subject", why: str = "this is not a virtual subject (no ground truth to compare with)"
                  ) -> GroundTruth:
    """``subject.truth``, or an error naming the missing folder (``why``: what needed it) for a real subject.

    ``subject`` is a :class:`model.subject.Subject`, not imported here: the subject module imports this one.
    """
    if subject.truth is None:
        raise InputError(truth_folder(subject.root), f"missing: {why}")
    return subject.truth


__all__ = ["GroundTruth", "has_ground_truth", "load_ground_truth", "require_truth", "truth_folder"]
