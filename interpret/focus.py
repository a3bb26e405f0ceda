"""Where a map points and how concentrated it is: centres in degrees of visual angle, spread and focus.

For each hemisphere x ROI of a maps dataset: the centre of mass of each
image's map (degrees, x right, y up; see
:func:`interpret.maps.centre_of_mass_deg`), its mean over images, the
spread of the images' centres around that mean, and the map's *focus*,
1 minus its normalised entropy: 0 for a map spread evenly over the image,
1 for a map on a single cell.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from .maps import MapGrid, centre_of_mass_deg


def focus(maps: np.ndarray) -> np.ndarray:
    """1 minus the normalised entropy of each map ``(..., y, x)`` (negative values count as 0)."""
    maps = np.asarray(maps)
    cells = maps.shape[-1] * maps.shape[-2]
    p = np.clip(maps.reshape(*maps.shape[:-2], cells), 0, None)
    p = p / np.clip(p.sum(-1, keepdims=True), 1e-12, None)
    entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(-1) / np.log(cells)
    return 1 - entropy


def map_centres(ds: xr.Dataset, grid: MapGrid, variable: str = "attention_mean") -> pd.DataFrame:
    """Per (hemi, ROI) with maps: ``x_deg``, ``y_deg`` (mean centre over images), ``spread_deg`` and ``focus``.

    ``spread_deg`` is the mean distance of the images' centres from their
    mean; ``focus`` the mean over images of :func:`focus`.
    """
    rows = []
    arr = ds[variable]
    for hemi in arr.hemi.values:
        for roi in arr.roi.values:
            maps = arr.sel(hemi=hemi, roi=roi).values
            if not np.isfinite(maps).all():
                continue
            centres = np.array([centre_of_mass_deg(m, grid) for m in maps])
            rows.append({"hemi": str(hemi), "roi": str(roi), "x_deg": float(np.nanmean(centres[:, 0])),
                         "y_deg": float(np.nanmean(centres[:, 1])),
                         "spread_deg": float(np.nanmean(np.hypot(*(centres - np.nanmean(centres, 0)).T))),
                         "focus": float(np.mean(focus(maps)))})
    return pd.DataFrame(rows)
