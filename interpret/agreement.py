"""Do the methods agree? Mean Spearman rank correlation between their maps."""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import spearmanr


def method_agreement(ds: xr.Dataset, variables: list[str]) -> pd.DataFrame:
    """Mean Spearman rank correlation between the methods' maps (over images, hemispheres and ROIs).

    Maps are compared by their absolute values (as in the sanity checks), so a
    signed method and an unsigned one agree when they highlight the same places.
    Pairs where either map is constant or missing are left out; a pair of
    methods with none left is NaN. The diagonal is 1.
    """
    arrays = {}
    for name in variables:
        a = ds[name].mean("head") if "head" in ds[name].dims else ds[name]
        arrays[name] = np.abs(a.transpose("image", "hemi", "roi", "y", "x").values)
    out = pd.DataFrame(np.eye(len(variables)), index=variables, columns=variables)
    for i, a in enumerate(variables):
        for b in variables[i + 1:]:
            values = []
            for idx in np.ndindex(*arrays[a].shape[:3]):
                x, y = arrays[a][idx].ravel(), arrays[b][idx].ravel()
                if np.isfinite(x).all() and np.isfinite(y).all() and x.std() > 0 and y.std() > 0:
                    values.append(spearmanr(x, y)[0])
            out.loc[a, b] = out.loc[b, a] = float(np.mean(values)) if values else np.nan
    return out
