"""Can the maps be trusted? Sanity, localization and faithfulness checks.

* **Sanity** (Adebayo et al. 2018): cascading randomisation of the
  decoder's parameters from the readout down; a method whose maps barely
  change when the learned weights are destroyed explains the input, not
  the model, and is flagged.
* **Localization** (virtual subjects, whose truth is known): for early
  visual ROIs, the distance between a map's centre of mass and the ROI's
  true pRF-coverage centre, and the correlation of the image-averaged map
  with that coverage; for category ROIs, the pointing game and the
  relevance mass inside the true category masks, each next to its chance
  level (the masks' area).
* **Faithfulness**: deletion and insertion curves (patches removed or
  revealed in the map's order, the target re-predicted), against a random
  order.
"""
from __future__ import annotations

import copy
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import xarray as xr
from scipy import ndimage, stats
from scipy.integrate import trapezoid
from skimage.metrics import structural_similarity

from model.device import autocast, module_device
from model.encoders import Encoder, TokenBackbone
from model.progress import progress
from model.rois import EARLY_VISUAL
from model.truth import GroundTruth
from model.vision import CATEGORIES

from .attribution import ImageModel, baseline_images
from .maps import MapGrid, Targets, centre_of_mass_deg, per_roi_variables

MapsFn = Callable[[torch.nn.Module], xr.Dataset]
FLAG_RANK_CORRELATION = 0.5


# --------------------------------------------------------------------------
# Sanity: cascading randomisation
# --------------------------------------------------------------------------

def cascade(encoder: Encoder) -> list[str]:
    """Names of the encoder's parts, from the output down: the order of randomisation, as the encoder declares it
    (:meth:`~model.encoders.interface.Encoder.randomisation_steps`; an ensemble: the same part of every member at each step)."""
    return [part for part, _ in encoder.randomisation_steps()]


def randomised(encoder: Encoder, seed: int = 0) -> Iterator[tuple[str, torch.nn.Module]]:
    """Copies of ``encoder`` with parameters permuted cumulatively, part by part, from the top.

    Permuting a tensor's entries keeps its scale and distribution and
    destroys what was learned.
    """
    model = copy.deepcopy(encoder).eval()
    generator = torch.Generator().manual_seed(seed)
    for part, modules in model.randomisation_steps():
        for module in modules:
            with torch.no_grad():
                for p in module.parameters():
                    flat = p.view(-1)
                    flat.copy_(flat[torch.randperm(flat.numel(), generator=generator)])
        yield part, model


def _compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Spearman rank correlation and SSIM of two maps' absolute values."""
    a, b = np.abs(np.nan_to_num(a)), np.abs(np.nan_to_num(b))
    if a.std() == 0 or b.std() == 0:
        return np.nan, np.nan
    rho = stats.spearmanr(a.ravel(), b.ravel())[0]
    an, bn = (a - a.min()) / (np.ptp(a) + 1e-12), (b - b.min()) / (np.ptp(b) + 1e-12)
    return float(rho), float(structural_similarity(an, bn, data_range=1.0))


def sanity(encoder: torch.nn.Module, maps_of: MapsFn, seed: int = 0) -> pd.DataFrame:
    """Rank correlation and SSIM between original and cascade-randomised maps, per method and step.

    ``maps_of(encoder)`` returns the maps of every method for that encoder.
    A method is flagged when its maps still correlate above
    :data:`FLAG_RANK_CORRELATION` after the whole decoder is randomised.
    :class:`SanityComparisons` gathers the same table batch by batch of images.
    """
    comparisons = SanityComparisons(encoder, seed)
    comparisons.add(maps_of)
    return comparisons.table()


class SanityComparisons:
    """:func:`sanity` over images that come in batches: each batch's map pairs are compared as they come.

    Every batch is mapped by the same randomised copies (the cascade is
    seeded), and the table averages every (image, hemi, ROI) comparison of
    all batches, as :func:`sanity` of all images at once does.
    """

    def __init__(self, encoder: torch.nn.Module, seed: int = 0):
        self.encoder, self.seed = encoder, seed
        self.pairs: dict[tuple[int, str, str], list[tuple[float, float]]] = {}

    def add(self, maps_of: MapsFn) -> None:
        """Compare one batch's maps (``maps_of(encoder)``) with those of every step of the cascade."""
        original = maps_of(self.encoder)
        for step, (part, model) in enumerate(randomised(self.encoder, self.seed), start=1):
            maps = maps_of(model)
            for name in per_roi_variables(original):
                self.pairs.setdefault((step, part, name), []).extend(_comparisons(original[name], maps[name]))

    def table(self) -> pd.DataFrame:
        """One row per method and step: mean rank correlation and SSIM, and whether the method is flagged."""
        rows = []
        for (step, part, name), pairs in self.pairs.items():
            values = np.array(pairs, float)
            rho, ssim = tuple(np.nanmean(values, axis=0)) if len(values) else (np.nan, np.nan)
            rows.append({"method": name, "step": step, "randomised": part, "rank_correlation": rho, "ssim": ssim})
        table = pd.DataFrame(rows)
        last = table[table.step == table.step.max()].set_index("method")
        table["flagged"] = table.method.map(lambda m: bool(last.loc[m, "rank_correlation"] > FLAG_RANK_CORRELATION))
        return table


def _comparisons(a: xr.DataArray, b: xr.DataArray) -> list[tuple[float, float]]:
    """(rank correlation, SSIM) of every pair of finite maps of ``a`` and ``b`` (heads averaged)."""
    if "head" in a.dims:
        a, b = a.mean("head"), b.mean("head")
    pairs = []
    for index in np.ndindex(*a.shape[:-2]):
        x, y = a.values[index], b.values[index]
        if np.isfinite(x).all() and np.isfinite(y).all():
            pairs.append(_compare(x, y))
    return pairs


# --------------------------------------------------------------------------
# Localization against the virtual subject's ground truth
# --------------------------------------------------------------------------

def localization(ds: xr.Dataset, truth: GroundTruth, roi_masks: dict[tuple[str, str], np.ndarray],
                 category_masks: np.ndarray, grid: MapGrid) -> pd.DataFrame:
    """Localization scores of every map variable against the planted truth.

    ``roi_masks`` maps (hemi, roi) to the ROI's vertex mask; ``category_masks``
    is (image, category, y, x) on the map grid (fraction of each cell covered).
    Maps are scored by their absolute value.
    Early visual ROIs: ``centre_error_deg``, ``same_quadrant`` (share of
    images whose map's centre lies in the quadrant of the true coverage's),
    ``mean_map_quadrant`` (1 when the image-averaged map's centre does) and
    ``coverage_correlation``; category ROIs: ``pointing_game`` and
    ``relevance_mass`` with their ``chance`` levels.
    :class:`Localization` gathers the same table batch by batch of images.
    """
    scores = Localization(truth, roi_masks, grid)
    scores.add(ds, category_masks)
    return scores.table()


class Localization:
    """:func:`localization` over images that come in batches.

    Every score is a mean over images of a per-image value (or, for the
    coverage correlation, of the image-averaged map), so each batch adds
    its per-image values and its sum of maps; a (method, hemi, ROI) whose
    maps are not finite in some batch is left out, as it is when any of its
    maps is not finite.
    """

    def __init__(self, truth: GroundTruth, roi_masks: dict[tuple[str, str], np.ndarray], grid: MapGrid):
        self.truth, self.roi_masks, self.grid = truth, roi_masks, grid
        self.preference = truth.preferences()
        self.parts: dict[tuple[str, str, str], dict] = {}
        self.left_out: set[tuple[str, str, str]] = set()

    def add(self, ds: xr.Dataset, category_masks: np.ndarray) -> None:
        """Score the maps of one batch ``ds``; ``category_masks`` (image, category, y, x) are its images'."""
        for name in per_roi_variables(ds):
            arr = ds[name].mean("head") if "head" in ds[name].dims else ds[name]
            for hemi in arr.hemi.values:
                for roi in arr.roi.values:
                    key = (name, str(hemi), str(roi))
                    if key in self.left_out or (hemi, roi) not in self.roi_masks:
                        continue
                    # Relevance is the magnitude: in a contrast-driven ROI a pixel raises the
                    # response whether it is made brighter or darker, so attribution signs
                    # carry no "where" information.
                    maps = np.abs(arr.sel(hemi=hemi, roi=roi).values)  # (image, y, x)
                    if not np.isfinite(maps).all():
                        self.left_out.add(key)
                        self.parts.pop(key, None)
                        continue
                    if roi in EARLY_VISUAL:
                        self._add_prf(key, maps)
                    elif self.preference.get(roi) in CATEGORIES:
                        masks = category_masks[:, CATEGORIES.index(self.preference[roi])]
                        self._add_category(key, maps, masks)

    def _add_prf(self, key: tuple[str, str, str], maps: np.ndarray) -> None:
        part = self.parts.get(key)
        if part is None:
            coverage = self.truth.prf_coverage(self.roi_masks[key[1:]], key[1], grid=self.grid.size)
            part = self.parts[key] = {"kind": "prf", "coverage": coverage, "grid": self.grid,
                                      "centre": centre_of_mass_deg(coverage, self.grid), "error": [], "same": [],
                                      "sum": np.zeros(coverage.shape), "n": 0}
        tx, ty = part["centre"]
        centres = np.array([centre_of_mass_deg(m, self.grid) for m in maps])
        part["error"].append(np.hypot(centres[:, 0] - tx, centres[:, 1] - ty))
        part["same"].append((np.sign(centres[:, 0]) == np.sign(tx)) & (np.sign(centres[:, 1]) == np.sign(ty)))
        part["sum"] += np.clip(maps, 0, None).sum(0, dtype=np.float64)
        part["n"] += len(maps)

    def _add_category(self, key: tuple[str, str, str], maps: np.ndarray, masks: np.ndarray) -> None:
        part = self.parts.setdefault(key, {"kind": "category", "hits": [], "hit_chance": [], "mass": [],
                                           "mass_chance": [], "n": 0})
        has = masks.reshape(len(masks), -1).max(1) > 0
        for m, mask in zip(maps[has], masks[has]):
            hit, _, chance = pointing_hit(m, mask)
            part["hits"].append(hit)
            part["hit_chance"].append(chance)
            positive = np.clip(m, 0, None)
            if positive.sum() > 0:
                part["mass"].append(float((positive * mask).sum() / positive.sum()))
                part["mass_chance"].append(float(mask.mean()))
        part["n"] += int(has.sum())

    def table(self) -> pd.DataFrame:
        """One row per (method, hemi, ROI) and measure, over every image added."""
        rows = []
        for (name, hemi, roi), part in self.parts.items():
            base = {"method": name, "hemi": hemi, "roi": roi}
            if part["kind"] == "prf":
                rows += _prf_rows(part, base)
            elif part["n"]:
                rows += _category_rows(part, base)
        return pd.DataFrame(rows)


def pointing_hit(scores: np.ndarray, mask: np.ndarray) -> tuple[bool, int, float]:
    """The pointing game on one 2-D map: whether its peak lies within one cell of ``mask > 0`` (the game's
    tolerance), the peak's flat index, and the chance of a hit (the share of cells within that tolerance)."""
    tolerant = ndimage.binary_dilation(mask > 0)
    peak = int(np.nanargmax(scores))
    return bool(tolerant.ravel()[peak]), peak, float(tolerant.mean())


def _prf_rows(part: dict, base: dict) -> list[dict]:
    mean_map = part["sum"] / part["n"]
    coverage = part["coverage"]
    corr = np.corrcoef(mean_map.ravel(), coverage.ravel())[0, 1] if mean_map.std() > 0 else np.nan
    tx, ty = part["centre"]
    mx, my = centre_of_mass_deg(mean_map, part["grid"])
    mean_same = bool(np.sign(mx) == np.sign(tx) and np.sign(my) == np.sign(ty))
    return [{**base, "measure": "centre_error_deg", "value": float(np.nanmean(np.concatenate(part["error"]))),
             "chance": np.nan},
            {**base, "measure": "same_quadrant", "value": float(np.mean(np.concatenate(part["same"]))), "chance": 0.25},
            {**base, "measure": "mean_map_quadrant", "value": float(mean_same), "chance": 0.25},
            {**base, "measure": "coverage_correlation", "value": float(corr), "chance": 0.0}]


def _category_rows(part: dict, base: dict) -> list[dict]:
    mass, mass_chance = part["mass"], part["mass_chance"]
    return [{**base, "measure": "pointing_game", "value": float(np.mean(part["hits"])),
             "chance": float(np.mean(part["hit_chance"])), "n_images": part["n"]},
            {**base, "measure": "relevance_mass", "value": float(np.mean(mass)) if mass else np.nan,
             "chance": float(np.mean(mass_chance)) if mass_chance else np.nan, "n_images": part["n"]}]


def masks_on_grid(masks: np.ndarray, grid: MapGrid) -> np.ndarray:
    """(N, C, S, S) bool masks at any resolution -> (N, C, size, size) covered fractions."""
    t = torch.from_numpy(masks).float()
    n, c = t.shape[:2]
    return F.adaptive_avg_pool2d(t.reshape(n * c, 1, *t.shape[2:]), grid.size).reshape(n, c, grid.size, grid.size).numpy()


# --------------------------------------------------------------------------
# Faithfulness: deletion and insertion
# --------------------------------------------------------------------------

#: deletion: patches go from the image to its blurred copy; insertion: the other way
FAITHFULNESS_MODES = ("deletion", "insertion")


def faithfulness(ds: xr.Dataset, backbone: TokenBackbone, encoder: torch.nn.Module, targets: Targets,
                 images: torch.Tensor, grid: MapGrid, steps: int = 8, seed: int = 0) -> pd.DataFrame:
    """Deletion and insertion AUCs of every map variable, and of a random order.

    Patches are the backbone's (one token each); removed patches are
    replaced by a blurred copy of the image. Curves are normalised so the
    intact image is 1 and the fully blurred one 0; deletion should fall
    fast (low AUC), insertion rise fast (high AUC). Images are averaged
    with weights ``|intact - blurred|`` (:func:`gap_weighted_mean`).
    The curves are forward passes on the encoder's device (bf16 autocast on CUDA).
    :class:`Faithfulness` gathers the same table batch by batch of images.
    """
    curves = Faithfulness(backbone, encoder, targets, grid, steps, seed)
    curves.add(ds, images)
    return curves.table()


class Faithfulness:
    """:func:`faithfulness` over images that come in batches: each image's curves are measured as it comes.

    One random order per image is drawn from one generator in the images'
    order, so batches give the draws (and the table) of all images at once.
    """

    def __init__(self, backbone: TokenBackbone, encoder: torch.nn.Module, targets: Targets, grid: MapGrid, steps: int = 8,
                 seed: int = 0):
        self.dev = module_device(encoder)
        self.net = ImageModel(backbone.to(self.dev), encoder, targets).to(self.dev).eval()
        self.backbone, self.targets, self.grid = backbone, targets, grid
        self.fractions = np.linspace(0, 1, steps + 1)
        self.rng = np.random.default_rng(seed)
        self.rows: list[dict] = []

    @torch.no_grad()
    def _model(self, batch: torch.Tensor) -> torch.Tensor:
        with autocast(self.dev):
            return self.net(batch.to(self.dev)).float().cpu()

    @torch.no_grad()
    def add(self, ds: xr.Dataset, images: torch.Tensor, first: int = 0) -> None:
        """Measure the curves of ``images`` (those of ``ds``, in order); ``first``: the first one's position in the job."""
        blurred = baseline_images(images, "blur", self.backbone)  # on the CPU, with the images
        patch = self.backbone.patch
        side = images.shape[-1]
        rows_n, cols_n = -(-side // patch), -(-side // patch)
        n_patches = rows_n * cols_n
        counts = [int(round(f * n_patches)) for f in self.fractions[1:-1]]
        methods = per_roi_variables(ds)
        target_index = {(h, r): t for t, (h, r) in enumerate(zip(self.targets.hemis, self.targets.rois))}
        maps = {name: ds[name].mean("head") if "head" in ds[name].dims else ds[name] for name in methods}

        def curve(i: int, mode: str, order: np.ndarray) -> np.ndarray:
            """Outputs (steps - 1, targets) on the way between the intact and the blurred image, by ``order``."""
            start, end = (images[i], blurred[i]) if mode == "deletion" else (blurred[i], images[i])
            return self._model(torch.stack([_compose(start, end, order[:k], patch, cols_n) for k in counts])).numpy()

        for i in progress(range(len(images)), desc="faithfulness", unit="image"):
            intact, blank = self._model(torch.stack([images[i], blurred[i]])).numpy()
            random_order = self.rng.permutation(n_patches)  # one per image: its curves serve every target at once
            random_curves = {mode: curve(i, mode, random_order) for mode in FAITHFULNESS_MODES}
            for (hemi, roi), t in target_index.items():
                for name in (*methods, "random"):
                    if name == "random":
                        inner = {mode: c[:, t] for mode, c in random_curves.items()}
                    else:
                        m = torch.from_numpy(np.nan_to_num(maps[name].sel(hemi=hemi, roi=roi).values[i]))
                        order = np.argsort(-_patch_scores(m, rows_n, cols_n).numpy().ravel(), kind="stable")
                        inner = {mode: curve(i, mode, order)[:, t] for mode in FAITHFULNESS_MODES}
                    gap = intact[t] - blank[t]
                    row = {"method": name, "hemi": hemi, "roi": roi, "image": first + i, "gap": gap}
                    for mode, values in inner.items():
                        a, b = (intact[t], blank[t]) if mode == "deletion" else (blank[t], intact[t])
                        f = np.concatenate([[a], values, [b]])
                        norm = (f - blank[t]) / gap if abs(gap) > 1e-8 else np.full_like(f, np.nan)
                        row[f"{mode}_auc"] = float(trapezoid(norm, self.fractions))
                    self.rows.append(row)

    def table(self) -> pd.DataFrame:
        """Per method x hemi x ROI: the gap-weighted mean AUCs of every image added (:func:`gap_weighted_mean`)."""
        return gap_weighted_mean(pd.DataFrame(self.rows))


def gap_weighted_mean(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per method x hemi x ROI, the images' AUCs averaged with weights ``|gap|``.

    An image whose blurred copy changes the target little (gap near 0) has
    a normalised curve that is mostly noise divided by almost nothing; a
    plain mean let one such image put the AUC at 6. Weighting by ``|gap|``
    is the ratio of summed areas to summed gaps, so those images count for
    as little as they tell. ``mean_abs_gap`` is reported beside the AUCs.
    """
    gap = per_image["gap"].abs()
    aucs = [f"{mode}_auc" for mode in FAITHFULNESS_MODES]
    columns = {"abs_gap": gap}
    for a in aucs:  # a NaN AUC (gap 0, or a NaN prediction on the way) counts for nothing, not for 0
        w = gap.where(per_image[a].notna(), 0.0)
        columns[a], columns[f"{a}_weight"] = per_image[a].fillna(0) * w, w
    out = per_image[["method", "hemi", "roi"]].assign(**columns).groupby(["method", "hemi", "roi"], as_index=False).agg(
        mean_abs_gap=("abs_gap", "mean"), **{c: (c, "sum") for c in columns if c != "abs_gap"})
    for a in aucs:
        out[a] = out[a] / out.pop(f"{a}_weight").where(lambda w: w > 0)
    return out[["method", "hemi", "roi", *aucs, "mean_abs_gap"]]


def _patch_scores(m: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return F.adaptive_avg_pool2d(m[None, None].float(), (rows, cols))[0, 0]


def _compose(start: torch.Tensor, end: torch.Tensor, patches: np.ndarray, patch: int, cols: int) -> torch.Tensor:
    """``start`` with the listed patches taken from ``end``."""
    out = start.clone()
    for k in patches:
        r, c = divmod(int(k), cols)
        out[:, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = end[:, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch]
    return out


# --------------------------------------------------------------------------
# Each check summarised per method
# --------------------------------------------------------------------------

def sanity_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per method: rank correlation with the original maps after the whole decoder is randomised."""
    last = table[table.step == table.step.max()]
    return last[["method", "randomised", "rank_correlation", "ssim", "flagged"]].reset_index(drop=True)


def localization_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean of each localization measure per method, with its chance level."""
    if table.empty:
        return table
    means = table.groupby(["measure", "method"])[["value", "chance"]].mean().reset_index()
    means["above_chance"] = [None if pd.isna(c) else bool(v > c) for v, c in zip(means.value, means.chance)]
    return means


def faithfulness_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean deletion and insertion AUCs per method, and their differences from the random order."""
    means = table.groupby("method")[["deletion_auc", "insertion_auc"]].mean()
    if "random" in means.index:
        means["deletion_vs_random"] = means.deletion_auc - means.loc["random", "deletion_auc"]
        means["insertion_vs_random"] = means.insertion_auc - means.loc["random", "insertion_auc"]
    return means.reset_index()
