"""Read a virtual subject's ground truth (``subjXX/ground_truth/``).

The data reader ignores this folder; scoring, the map checks and the
selectivity calibration use it to compare what a model recovered with what
was planted.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from PIL import Image

from ..errors import InputError
from ..rois import HEMIS
from .responses import GRID, Tuning, clean_responses, prf_weights
from .stimuli import CATEGORIES, unpack_mask_bits


@dataclass
class GroundTruth:
    """The planted truth of one virtual subject."""

    root: Path  # the subjXX directory

    @property
    def folder(self) -> Path:
        return self.root / "ground_truth"

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

    @cached_property
    def images(self) -> pd.DataFrame:
        """One row per image: split, file name, background, object counts and mask areas."""
        return pd.read_csv(self.folder / "images.csv")

    def array(self, name: str, hemi: str) -> np.ndarray:
        """``{hemi}_{name}.npy``: train_clean, test_clean, test_fmri or noise_ceiling."""
        return np.load(self.folder / f"{hemi}_{name}.npy", allow_pickle=False)

    def masks(self, split: str, names: list[str] | None = None) -> np.ndarray:
        """Category masks (N, category, S, S) bool of ``split`` images, in :data:`CATEGORIES` order."""
        folder = self.folder / "masks" / split
        files = names if names is not None else sorted(p.name for p in folder.iterdir())
        bits = np.stack([np.asarray(Image.open(folder / n)) for n in files])
        return unpack_mask_bits(bits)

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


def has_ground_truth(subject_root: str | Path) -> bool:
    return (Path(subject_root) / "ground_truth" / "config.json").is_file()


def load_ground_truth(subject_root: str | Path) -> GroundTruth:
    """The ground truth of a virtual subject directory; a clear error if it has none."""
    root = Path(subject_root)
    if not has_ground_truth(root):
        raise InputError(root / "ground_truth", "missing: this is not a virtual subject (no ground truth to compare with)")
    return GroundTruth(root)


__all__ = ["GroundTruth", "has_ground_truth", "load_ground_truth", "CATEGORIES"]
