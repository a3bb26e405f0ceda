"""The in-silico functional localizer: ``tbe localizer``.

The run predicts every vertex's response to the rendered fLoc-style
localizer (rendered by the virtual-subject generator, :func:`analyses.stimuli.localizer`); each contrast of
:data:`CONTRASTS` (faces > bodies, places, words, objects; and so on) gives a
per-vertex Welch t-map, as a GLM contrast would from an fLoc scan. Maps are
thresholded into predicted ROIs: vertices that respond more to the category
than to *each* other category (the conjunction of the pairwise one-sided
Welch tests, Benjamini-Hochberg over the vertices of both hemispheres,
q < alpha), the usual definition of a selective region. They are compared with
the subject's ROI masks of the matching class: Dice of the predicted ROI,
and the AUC of the t-map for telling the class's vertices from the rest
(threshold-free). On a virtual subject the maps are also compared with the
planted preferences (the vertices planted to prefer the category) and with
the t-maps of the true, noise-free responses to the same images; the ROI
those true responses give is the ceiling of what any encoder could reach
with this localizer (text, for one, has more contrast than the other
categories, so a words contrast also lights up early visual cortex).

Every contrast is reported, the failures too: :func:`verdicts` names each
contrast whose predicted ROI misses its reference and gives the likely reason.

Outputs in ``OUT/``: ``localizer.csv``, ``localizer_settings.json`` (the run
and the settings that made them, so a report reuses them rather than running
a second localizer with other settings), ``localizer_tmaps.nc``, and per
contrast ``surface/<contrast>_t.png`` with ``surface/<contrast>_t.{lh,rh}.func.gii``
(t) and ``surface/<contrast>_roi.{lh,rh}.func.gii`` (the predicted ROI).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from model.images import native_size, read_image
from model.errors import InputError, OptionError
from model.features import default_cache_dir
from model.files import atomic_path, write_csv, write_json
from model.progress import progress
from model.rois import HEMIS, ROI_CLASSES
from model.runs import Run, open_run
from model.vision import CATEGORIES

from . import stats as S
from .responses import features_for, predicted_vertices
from .stimuli import StimulusSet, localizer

log = logging.getLogger(__name__)

ALPHA = 0.05


@dataclass(frozen=True)
class Contrast:
    """``category`` > ``against``; ``roi_class`` is the Algonauts class such a contrast defines."""

    name: str
    category: str
    against: tuple[str, ...]
    roi_class: str | None


DOMAINS = ("face", "body", "place", "word", "object")
#: fLoc's contrasts: each domain against the other four; objects also against scrambled (LOC).
CONTRASTS: tuple[Contrast, ...] = (
    Contrast("faces", "face", tuple(d for d in DOMAINS if d != "face"), "floc-faces"),
    Contrast("bodies", "body", tuple(d for d in DOMAINS if d != "body"), "floc-bodies"),
    Contrast("places", "place", tuple(d for d in DOMAINS if d != "place"), "floc-places"),
    Contrast("words", "word", tuple(d for d in DOMAINS if d != "word"), "floc-words"),
    Contrast("objects", "object", ("scrambled",), None),
)


def contrast_maps(values: dict[str, np.ndarray], labels: list[str], contrast: Contrast) -> dict[str, dict[str, np.ndarray]]:
    """Per hemisphere and vertex: the contrast's Welch ``t`` (category > the others pooled), its
    ``df`` and one-sided ``p``, and the conjunction ``t_min`` / ``p_conjunction`` (category > each
    other category separately: the smallest t, the largest p)."""
    labels = np.asarray(labels)
    first = labels == contrast.category
    out = {}
    for hemi, v in values.items():
        t, df = S.welch_t(S.two_group_moments(v, first, np.isin(labels, contrast.against)))
        pairwise = [S.welch_t(S.two_group_moments(v, first, labels == other)) for other in contrast.against]
        with np.errstate(invalid="ignore"):
            t_min = np.min([pt for pt, _ in pairwise], axis=0)
            p_conj = np.max([stats.t.sf(pt, pdf) for pt, pdf in pairwise], axis=0)
        out[hemi] = {"t": t, "df": df, "p": stats.t.sf(t, df), "t_min": t_min, "p_conjunction": p_conj}
    return out


def threshold(maps: dict[str, dict[str, np.ndarray]], alpha: float = ALPHA) -> dict[str, np.ndarray]:
    """Predicted ROI: vertices responding more to the category than to *each* other category.

    The conjunction p (the largest of the pairwise one-sided p-values, an
    intersection-union test) is BH-FDR corrected over both hemispheres'
    vertices; q < alpha. Pooling the other categories instead would also
    admit vertices driven by one low-level property of the category (high
    contrast of text, say), which a selective region is not.
    """
    p = np.concatenate([maps[h]["p_conjunction"] for h in HEMIS])
    q = S.fdr_bh(p)
    out, start = {}, 0
    for hemi in HEMIS:
        n = len(maps[hemi]["p_conjunction"])
        maps[hemi]["p_fdr"] = q[start:start + n]
        out[hemi] = np.nan_to_num(maps[hemi]["p_fdr"], nan=1.0) < alpha
        start += n
    return out


def true_responses(run: Run, stimuli: StimulusSet) -> dict[str, np.ndarray]:
    """A virtual subject's noise-free responses to the stimuli (masks from the rendered set)."""
    truth = run.subject.truth
    images = np.stack([read_image(p) for p in stimuli.paths])
    masks = np.zeros((len(stimuli), len(CATEGORIES), *stimuli.masks.shape[-2:]), np.float32)
    for c, category in enumerate(stimuli.categories):
        if category in CATEGORIES:  # 'scrambled' has no mask: nothing of any category is visible
            masks[:, CATEGORIES.index(category)] = np.nan_to_num(stimuli.masks[:, c])
    return {hemi: truth.responses(hemi, images, masks) for hemi in HEMIS}


def references(run: Run, contrast: Contrast, hemi: str) -> dict[str, tuple[str, np.ndarray]]:
    """What a contrast's map is compared with: the class's ROI masks, and (virtual subjects) the
    vertices planted to prefer the category. Name -> (description, vertex mask)."""
    refs = {}
    if contrast.roi_class is not None:
        present = [r for r in ROI_CLASSES[contrast.roi_class] if run.subject.roi_mask(r, hemi).any()]
        refs["roi_masks"] = (",".join(present), run.subject.labels[contrast.roi_class][hemi] > 0)
    if run.subject.truth is not None:
        planted = run.subject.truth.planted_vertices(hemi, contrast.category)
        if planted.any():
            refs["planted"] = (f"vertices planted to prefer {contrast.category}", planted)
    return refs


def compare(run: Run, contrast: Contrast, maps: dict, rois: dict[str, np.ndarray],
            truth_maps: dict | None = None, true_rois: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Dice and AUC of one contrast's map against each reference, per hemisphere.

    Virtual subjects add ``dice_ceiling``, the Dice of the ROI the same
    localizer defines from the true, noise-free responses (what a perfect
    encoder would reach with these stimuli), and ``rho_true_t``, the
    Spearman correlation of the predicted t-map with the true one (ranks:
    noise-free responses give some vertices enormous t values). A contrast
    without references still gets a row.
    """
    rows = []
    for hemi in HEMIS:
        t = maps[hemi]["t"]
        rho = np.nan
        if truth_maps is not None:
            true_t = truth_maps[hemi]["t"]
            ok = np.isfinite(t) & np.isfinite(true_t)
            rho = float(stats.spearmanr(t[ok], true_t[ok]).statistic) if ok.sum() > 2 else np.nan
        refs = references(run, contrast, hemi) or {"": ("", None)}
        for reference, (description, members) in refs.items():
            has = members is not None
            rows.append({"contrast": contrast.name, "category": contrast.category, "hemi": hemi,
                         "reference": reference, "reference_rois": description, "n_vertices": int(len(t)),
                         "n_predicted": int(rois[hemi].sum()), "n_reference": int(members.sum()) if has else 0,
                         "dice": S.dice(rois[hemi], members) if has else np.nan,
                         "auc": S.auc(t, members) if has else np.nan,
                         "dice_ceiling": S.dice(true_rois[hemi], members) if has and true_rois else np.nan,
                         "rho_true_t": rho})
    return rows


def localize(run: Run, stimuli: StimulusSet, cache_dir: str | Path | None = None,
             alpha: float = ALPHA) -> tuple[pd.DataFrame, xr.Dataset]:
    """Every contrast's t-map, predicted ROI and comparisons; returns the table and the maps."""
    values = predicted_vertices(run, features_for(run, stimuli.paths, None, cache_dir))
    truth = true_responses(run, stimuli) if run.subject.truth is not None else None
    rows, data = [], {f"{h}_{k}": [] for h in HEMIS for k in ("t", "t_min", "p_fdr", "roi", "true_t")}
    names = []
    for contrast in CONTRASTS:
        if not {contrast.category, *contrast.against} <= set(stimuli.categories):
            continue
        maps = contrast_maps(values, stimuli.labels, contrast)
        rois = threshold(maps, alpha)
        truth_maps = contrast_maps(truth, stimuli.labels, contrast) if truth is not None else None
        true_rois = threshold(truth_maps, alpha) if truth_maps is not None else None
        rows += compare(run, contrast, maps, rois, truth_maps, true_rois)
        names.append(contrast.name)
        for hemi in HEMIS:
            data[f"{hemi}_t"].append(maps[hemi]["t"])
            data[f"{hemi}_t_min"].append(maps[hemi]["t_min"])
            data[f"{hemi}_p_fdr"].append(maps[hemi]["p_fdr"])
            data[f"{hemi}_roi"].append(rois[hemi].astype(np.int8))
            data[f"{hemi}_true_t"].append(truth_maps[hemi]["t"] if truth_maps else np.full(len(rois[hemi]), np.nan))
    if not names:
        raise InputError(stimuli.name, f"no localizer contrast can be formed from the categories {', '.join(stimuli.categories)}")
    ds = xr.Dataset({k: (("contrast", f"{k[:2]}_vertex"), np.stack(v)) for k, v in data.items()
                     if truth is not None or not k.endswith("true_t")}, coords={"contrast": names})
    ds.attrs.update({"stimuli": stimuli.name, "t": "Welch t, category > the other categories pooled",
                     "t_min": "smallest Welch t of category > each other category",
                     "roi": f"conjunction p (largest pairwise p) BH-FDR q < {alpha} over both hemispheres"})
    return pd.DataFrame(rows), ds


def write_maps(ds: xr.Dataset, run: Run, out_dir: Path, figures: bool = True) -> list[Path]:
    """GIFTI files of every contrast's t-map and predicted ROI, and (``figures``) its surface figure."""
    from .surface import plot_surface, save_gifti

    folder = out_dir / "surface"
    written = []
    for contrast in progress(ds.contrast.values, desc="localizer maps", unit="contrast"):
        t = {h: np.nan_to_num(ds[f"{h}_t"].sel(contrast=contrast).values) for h in HEMIS}
        roi = {h: ds[f"{h}_roi"].sel(contrast=contrast).values.astype(np.float32) for h in HEMIS}
        if figures:
            written.append(plot_surface(t, run.subject, folder / f"{contrast}_t.png", title=f"{contrast}: predicted t",
                                        signed=True))
        written += save_gifti(t, run.subject, folder / f"{contrast}_t", name=f"{contrast} t")
        written += save_gifti(roi, run.subject, folder / f"{contrast}_roi", name=f"{contrast} predicted ROI")
    return written


def run_localizer(run_dir: str | Path, data_dir: str | Path | None, out_dir: str | Path, subj: int | None = 1,
                  seed: int = 0, cache_dir: str | Path | None = None, n_per_category: int = 48,
                  alpha: float = ALPHA, surface: bool = True, device: str = "cpu") -> pd.DataFrame:
    """The in-silico localizer of a run: t-maps, predicted ROIs, their agreement with the ROI masks.

    Parameters
    ----------
    run_dir : path
        A complete run directory.
    data_dir : path or None
        The data directory (None: the run's).
    out_dir : path
        Folder for ``localizer.csv``, ``localizer_tmaps.nc`` and ``surface/``.
    subj : int or None
        Subject number; must be the run's (None: the run's).
    seed : int
        Seed of the rendered localizer images.
    cache_dir : path, optional
        Feature cache; the rendered localizer is kept there too.
    n_per_category : int
        Localizer images per category.
    alpha : float
        FDR level of the thresholded maps.
    surface : bool
        Draw the surface figures (the slow part; the GIFTI files are always written).
    device : str
        Where the backbone, the encoder and the attention run (``auto``: CUDA,
        then MPS, then CPU; bf16 autocast on CUDA, see :mod:`model.device`).

    Returns
    -------
    pandas.DataFrame
        One row per contrast x hemisphere x reference: ``dice``, ``auc``, and on
        virtual subjects ``dice_ceiling`` and ``rho_true_t``.
    """
    if n_per_category < 2:
        raise OptionError("n_per_category", f"must be at least 2, got {n_per_category}")
    if not 0 < alpha < 1:
        raise OptionError("alpha", f"must be between 0 and 1, got {alpha}")
    run = open_run(run_dir, data_dir, device)
    if subj is not None and subj != run.config.subj:
        raise OptionError("subj", f"the run was trained on subject {run.config.subj}, not {subj}")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    stimuli = localizer(cache_dir, native_size(run.subject.train_images[0]), seed, n_per_category)
    table, ds = localize(run, stimuli, cache_dir, alpha)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "localizer.csv", table)
    write_json(out_dir / SETTINGS_FILE, {"run": str(Path(run_dir).resolve()), "n_per_category": n_per_category,
                                          "seed": seed, "alpha": alpha, "stimuli": stimuli.name})
    with atomic_path(out_dir / "localizer_tmaps.nc") as tmp:
        ds.to_netcdf(tmp)
    write_maps(ds, run, out_dir, figures=surface)
    log.info("wrote %s", out_dir / "localizer.csv")
    return table


#: The settings file written next to ``localizer.csv``
SETTINGS_FILE = "localizer_settings.json"
#: Dice below which a contrast's predicted ROI counts as a failure
FAILED_DICE = 0.5
#: A predicted ROI this many times larger than its reference is over-predicted
OVER_PREDICTED = 3.0


def existing_localizer(folder: str | Path, run_dir: str | Path) -> tuple[pd.DataFrame, dict] | None:
    """The localizer table and settings already written for ``run_dir`` in ``folder`` (None: none for this run).

    One question, one number: a report reuses the run's localizer (e.g. the
    demo's ``demo/localizer/``) instead of running another with other settings.
    """
    import json

    folder = Path(folder)
    try:
        settings = json.loads((folder / SETTINGS_FILE).read_text())
        table = pd.read_csv(folder / "localizer.csv", keep_default_na=False, na_values=[""])
    except (OSError, ValueError):
        return None
    if settings.get("run") != str(Path(run_dir).resolve()):
        return None
    return table, settings


def describe_settings(settings: dict) -> str:
    """E.g. '48 images per category, seed 0, FDR q < 0.05'."""
    return f"{settings['n_per_category']} images per category, seed {settings['seed']}, FDR q < {settings['alpha']}"


def verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """Each contrast x hemisphere against its reference (the planted vertices where known, else the ROI masks):
    ``ok`` or ``failed`` (Dice below :data:`FAILED_DICE`), and the likely ``reason`` of a failure.

    Reasons, checked in order: the reference is empty; even the noise-free
    responses miss it (``dice_ceiling`` low: the localizer's images do not
    isolate the category, e.g. text carries more contrast energy than the
    other categories, so a words contrast also drives early visual cortex);
    the predicted ROI is :data:`OVER_PREDICTED` times larger than the
    reference (the contrast drives vertices outside it); it is much smaller
    (too few images or an unreliable prediction).
    """
    rows = []
    for (contrast, hemi), part in table.groupby(["contrast", "hemi"], sort=False):
        refs = part[part.reference == "planted"] if (part.reference == "planted").any() else part[part.reference == "roi_masks"]
        if refs.empty:
            continue
        r = refs.iloc[0]
        dice, ceiling = float(r.dice), float(r.get("dice_ceiling", np.nan))
        failed = not (dice >= FAILED_DICE)
        reason = ""
        if failed:
            if not r.n_reference:
                reason = "the reference is empty"
            elif np.isfinite(ceiling) and ceiling < FAILED_DICE:
                reason = (f"the stimuli: the noise-free responses reach Dice {ceiling:.2f} only (the images do not "
                          "isolate the category, e.g. the contrast energy of text)")
            elif r.n_predicted > OVER_PREDICTED * r.n_reference:
                reason = (f"over-predicted: {r.n_predicted} vertices against {r.n_reference} (the contrast also "
                          "drives vertices outside the reference)")
            elif r.n_predicted * OVER_PREDICTED < r.n_reference:
                reason = f"under-predicted: {r.n_predicted} vertices against {r.n_reference}"
            else:
                reason = "unknown"
        rows.append({"contrast": contrast, "hemi": hemi, "reference": r.reference, "dice": dice,
                     "n_predicted": int(r.n_predicted), "n_reference": int(r.n_reference),
                     "verdict": "failed" if failed else "ok", "reason": reason})
    return pd.DataFrame(rows, columns=["contrast", "hemi", "reference", "dice", "n_predicted", "n_reference",
                                       "verdict", "reason"])
