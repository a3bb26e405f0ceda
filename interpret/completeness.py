"""How complete are the integrated-gradients maps? Their sums against ``f(x) - f(baseline)``.

Integrated gradients satisfy completeness: the attributions of an input sum
to the target's change from the baseline to the input. The methods report
the error of that sum per image and target (``<method>_delta``, see
:func:`interpret.attribution.attribute`); :func:`completeness_gaps`
computes the change itself, so :func:`convergence_table` can say how large
the error is relative to what is being explained.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import xarray as xr

from model.device import full_precision, module_device
from model.runs import Run

from .attribution import ImageModel, baseline_images, method
from .maps import Inputs, roi_targets

DELTA_SUFFIX = "_delta"


def completeness_gaps(run: Run, inputs: Inputs, rois: list[str] | None, methods: list[str], baseline: str) -> pd.DataFrame:
    """``f(x) - f(baseline)`` per image and target, for the pixel-level methods with a completeness error.

    One row per method x target x image: ``method``, ``hemi``, ``roi``,
    ``image`` (position) and ``gap``; empty (with those columns) when no
    such method is listed.
    """
    pixel = [m for m in methods if method(m)[0].convergence_delta and method(m)[0].level == "pixel"]
    if not pixel:
        return pd.DataFrame(columns=["method", "hemi", "roi", "image", "gap"])
    targets = roi_targets(run, rois)
    dev = module_device(run.model)
    model = ImageModel(inputs.backbone.to(dev), run.model, targets).to(dev).eval()
    images = inputs.images.to(dev)
    with torch.no_grad(), full_precision(dev):  # the gap integrated gradients must add up to: float32 as they are
        gap = (model(images) - model(baseline_images(images, baseline, inputs.backbone))).cpu().numpy()
    rows = [{"method": m, "hemi": h, "roi": r, "image": i, "gap": float(gap[i, t])}
            for m in pixel for t, (h, r) in enumerate(zip(targets.hemis, targets.rois)) for i in range(len(gap))]
    return pd.DataFrame(rows)


def convergence_table(ds: xr.Dataset, gaps: pd.DataFrame | None = None) -> pd.DataFrame:
    """Completeness errors of the integrated-gradients methods per (method, hemi, ROI).

    ``delta`` is the sum of the attributions minus ``f(x) - f(baseline)``;
    the table gives its mean and largest absolute value over images and,
    where ``gaps`` (from :func:`completeness_gaps`) has the method, the mean
    ``|delta|`` relative to the mean ``|f(x) - f(baseline)|``
    (``relative_delta``).
    """
    rows = []
    for name in [v for v in ds.data_vars if str(v).endswith(DELTA_SUFFIX)]:
        method_name = str(name)[: -len(DELTA_SUFFIX)]
        delta = ds[name]
        for hemi in delta.hemi.values:
            for roi in delta.roi.values:
                d = np.abs(delta.sel(hemi=hemi, roi=roi).values)
                if not np.isfinite(d).any():
                    continue
                row = {"method": method_name, "hemi": str(hemi), "roi": str(roi),
                       "mean_abs_delta": float(np.nanmean(d)), "max_abs_delta": float(np.nanmax(d))}
                if gaps is not None:
                    g = gaps[(gaps.method == method_name) & (gaps.hemi == hemi) & (gaps.roi == roi)]
                    if len(g):
                        row["relative_delta"] = float(np.nanmean(d) / max(np.abs(g.gap.values).mean(), 1e-12))
                rows.append(row)
    return pd.DataFrame(rows)
