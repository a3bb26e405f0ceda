"""Per-vertex maps on the cortical surface: nilearn figures and GIFTI files.

A subject's values live on its challenge vertices; the all-vertices masks
place them on fsaverage (fsaverage5 for the virtual subject, bundled with
nilearn; full fsaverage for NSD, fetched by nilearn where a network exists).
Vertices outside the challenge set are NaN in GIFTI and blank in figures.
"""
from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.cm import ScalarMappable

from model.errors import InputError
from model.figures import colour_scale, figure, save_figure
from model.files import atomic_path
from model.rois import HEMIS
from model.subject import Subject

#: fsaverage meshes by vertex count per hemisphere
MESHES = {10242: "fsaverage5", 40962: "fsaverage6", 163842: "fsaverage"}
VIEWS = ("lateral", "medial", "ventral")
_NILEARN_HEMI = {"lh": "left", "rh": "right"}


def values_title(template: str | Path) -> str:
    """A figure title from a per-hemisphere file template: its file stem, placeholders removed.

    ``'RUN/{hemi}_val_corr.npy'`` -> ``'val_corr'``; a title never shows ``{hemi}``.
    """
    stem = re.sub(r"\{[^{}]*\}", "", Path(str(template)).stem)
    stem = re.sub(r"([-_. ])[-_. ]+", r"\1", stem).strip("-_. ")
    return stem or "values"


def to_fsaverage(values: np.ndarray, subject: Subject, hemi: str) -> np.ndarray:
    """A challenge-vertex array placed on fsaverage, NaN elsewhere."""
    mask = subject.fsaverage_masks[hemi]
    values = np.asarray(values, float)
    if values.shape != (mask.sum(),):
        raise InputError(f"{hemi} values", f"have shape {values.shape}, the subject has {int(mask.sum())} {hemi} vertices")
    out = np.full(mask.size, np.nan)
    out[mask] = values
    return out


def fsaverage(n_vertices: int) -> dict:
    """nilearn's fsaverage of the right density (meshes and sulcal depth)."""
    from nilearn import datasets

    name = MESHES.get(n_vertices)
    if name is None:
        raise InputError("roi_masks", f"{n_vertices} fsaverage vertices per hemisphere matches no fsaverage mesh ({sorted(MESHES)})")
    try:
        return datasets.fetch_surf_fsaverage(name)
    except Exception as exc:  # noqa: BLE001 - a download failing offline
        raise InputError(name, f"could not be fetched by nilearn ({type(exc).__name__}); it needs a network connection once") from None


def plot_surface(values: dict[str, np.ndarray], subject: Subject, out: str | Path, title: str = "",
                 cmap: str | None = None, vmin: float | None = None, vmax: float | None = None,
                 signed: bool | None = None) -> Path:
    """Lateral, medial and ventral views of both hemispheres on the inflated surface, as one PNG.

    Colours follow :func:`model.figures.colour_scale`: pass ``signed=True``
    for a signed quantity (r, a difference, t), which then gets a diverging
    map centred on 0 even where every value happens to be positive;
    ``signed=None`` decides from the values. The limits are the 99th
    percentile of ``|values|`` unless ``vmin``/``vmax`` are given; ``cmap``
    overrides the colour map only.
    """
    from nilearn import plotting

    out = Path(out)
    mesh = fsaverage(subject.fsaverage_masks["lh"].size)
    full = {h: to_fsaverage(values[h], subject, h) for h in HEMIS}
    scale = colour_scale(np.concatenate(list(full.values())), signed, vmin, vmax, percentile=99)
    cmap = cmap or scale.cmap
    fig = figure(figsize=(4 * len(VIEWS), 3.4 * len(HEMIS)))
    axes = fig.subplots(len(HEMIS), len(VIEWS), subplot_kw={"projection": "3d"})
    for row, hemi in enumerate(HEMIS):
        side = _NILEARN_HEMI[hemi]
        for col, view in enumerate(VIEWS):
            ax = axes[row, col]
            data = np.where(np.isfinite(full[hemi]), full[hemi], np.nan)
            plotting.plot_surf_stat_map(
                mesh[f"infl_{side}"], data, hemi=side, view=view, bg_map=mesh[f"sulc_{side}"],
                axes=ax, figure=fig, colorbar=False, cmap=cmap, vmin=scale.vmin, vmax=scale.vmax)
            ax.set_title(f"{hemi} {view}", fontsize=10)
    sm = ScalarMappable(cmap=cmap, norm=scale.norm)
    fig.colorbar(sm, ax=axes.ravel().tolist(), shrink=0.6, label=title)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out)


def save_gifti(values: dict[str, np.ndarray], subject: Subject, prefix: str | Path, name: str = "value") -> list[Path]:
    """``{prefix}.{hemi}.func.gii`` on fsaverage (NaN off the challenge vertices)."""
    paths = []
    for hemi in HEMIS:
        data = to_fsaverage(values[hemi], subject, hemi).astype(np.float32)
        array = nib.gifti.GiftiDataArray(data, intent="NIFTI_INTENT_NONE", datatype="NIFTI_TYPE_FLOAT32",
                                         meta=nib.gifti.GiftiMetaData({"Name": name}))
        structure = "CortexLeft" if hemi == "lh" else "CortexRight"
        image = nib.gifti.GiftiImage(darrays=[array], meta=nib.gifti.GiftiMetaData({"AnatomicalStructurePrimary": structure}))
        path = Path(f"{prefix}.{hemi}.func.gii")
        with atomic_path(path) as tmp:
            tmp.write_bytes(image.to_bytes())
        paths.append(path)
    return paths


def load_gifti(path: str | Path) -> np.ndarray:
    """The first data array of a GIFTI file."""
    return np.asarray(nib.load(str(path)).darrays[0].data)
