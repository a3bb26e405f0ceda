"""Does an ROI's query attend to a category? Attention mass on category masks against chance.

For each hemisphere x ROI query x category, over the images that contain the
category (and whose mask is known): ``mass`` is the mean fraction of the
query's decoder cross-attention (last layer, averaged over heads) that
falls on the category's mask, and ``chance`` the mean fraction of the image
the mask covers, which is what attention spread evenly over the image gets.

As in :mod:`interpret.maps`, a token's attention is spread evenly over its
pixels and only pixels of the image count (padding carries no image), so
``mass = (a . f) / (a . c)`` with ``a`` the token attention, ``f`` each
token's covered fraction of the mask and ``c`` its covered fraction of the
image. Working at token resolution keeps this exact and cheap.

The permutation test pairs each image's attention with another image's
mask: if attention does not follow where the category is, the observed
pairing is no better than a shuffled one. The statistic is the mean mass,
``p = (1 + #{shuffled >= observed}) / (B + 1)`` (one-sided), BH-FDR over all
tests of the analysis. Every query's (image x image) table of masses is one
matrix product, so all permutations are a gather.

The mask area is not the only baseline: a query that looks wherever the
image has the most contrast "prefers" the category with the most contrast
energy (text, in rendered images). The low-level control compares each
image's attention mass with the share of the image's luminance contrast
energy on the same mask (``contrast_mass``; ``ratio_vs_contrast``, and a
one-sided Wilcoxon signed-rank test over images, ``p_vs_contrast``, BH-FDR).
:func:`dominant_category` flags a table where one category wins in nearly
every ROI, early visual ROIs included: that is a property of the stimuli,
not selectivity.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats

from interpret.maps import nearest_source
from model.backbone import Backbone
from model.device import autocast, module_device
from model.files import read_rows
from model.images import read_image
from model.progress import progress
from model.rois import ROI_TO_CLASS
from model.runs import Run

from . import stats as S
from .stimuli import CLASS_CATEGORY, StimulusSet

#: Images per forward pass.
BATCH = 64
UNASSIGNED = "unknown"


@torch.no_grad()
def token_attention(run: Run, features: np.ndarray, layer: int = -1) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Head-averaged cross-attention ``(image, query, token)`` of the ROI queries, and their (hemi, roi).

    The weights come from the forward pass that predicts, as in
    :func:`interpret.attention.decoder_attention`; the unassigned-vertices
    query is left out.
    """
    run.model.eval()
    dev = module_device(run.model)
    keep = [q for q, roi in enumerate(run.queries.rois) if roi != UNASSIGNED]
    out = None
    for start in progress(range(0, len(features), BATCH), desc="attention", unit="batch"):
        x = torch.from_numpy(read_rows(features, slice(start, start + BATCH)).astype(np.float32, copy=False)).to(dev)
        with autocast(dev):
            att = run.model(x, return_attention=True)["attention"][:, layer].mean(1)[:, keep]  # (B, Q, T)
        if out is None:  # filled batch by batch: the features are read a batch at a time, never all at once
            out = np.empty((len(features), *att.shape[1:]), np.float64)
        out[start:start + len(att)] = att.float().cpu().numpy()
    queries = [(run.queries.hemis[q], run.queries.rois[q]) for q in keep]
    return out, queries


def token_coverage(masks: np.ndarray, backbone: Backbone) -> tuple[np.ndarray, np.ndarray]:
    """Fractions of each token covered by each mask ``(image, category, token)``, and by the image ``(token,)``.

    ``masks`` are cell fractions over the image (any grid); they are laid on
    the backbone's padded input (image at the top left, as it is padded)
    and averaged over each patch. NaN masks (unknown) stay NaN.
    Nearest upsampling, padding and patch averaging are one separable linear
    map (:func:`token_weights`), applied :data:`BATCH` images at a time: the
    upsampled masks (0.75 MB per image and category at 434 px) are never made.
    """
    n, c = masks.shape[:2]
    rows, cols = (token_weights(k, backbone) for k in masks.shape[-2:])
    tokens = np.empty((n, c, rows.shape[0] * cols.shape[0]))
    for start in range(0, n, BATCH):
        part = np.asarray(masks[start:start + BATCH], np.float64)
        tokens[start:start + len(part)] = (rows @ part @ cols.T).reshape(len(part), c, -1)
    image = (rows.sum(1)[:, None] * cols.sum(1)[None, :]).ravel()
    return tokens, image


def token_weights(cells: int, backbone: Backbone) -> np.ndarray:
    """(token rows, cells) weights: the share of each token's pixel rows that nearest upsampling of ``cells`` cells
    to the image's side takes from each cell (the padding's pixels take nothing)."""
    side, size, patch = backbone.image_side, backbone.input_size, backbone.patch
    weights = np.zeros((size // patch, cells))
    np.add.at(weights, (np.arange(side) // patch, nearest_source(cells, side)), 1.0 / patch)
    return weights


def mass_test(att: np.ndarray, masks: np.ndarray, image: np.ndarray, n_permutations: int, rng: np.random.Generator,
              chunk_elements: int = 2**21) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean attention mass on the masks, its chance level and its permutation p-value, per query.

    Parameters
    ----------
    att : ndarray
        ``(image, query, token)`` attention weights.
    masks : ndarray
        ``(image, token)`` fractions of each token covered by the category.
    image : ndarray
        ``(token,)`` fractions of each token covered by the image.

    Returns
    -------
    mass, chance, p : ndarray
        ``(query,)`` mean mass, mean mask area (the same for every query) and p.
    """
    n = len(att)
    att = att / (att @ image)[..., None]  # attention density over the image's pixels
    pairs = np.einsum("iqt,jt->qij", att, masks)  # mass of image i's attention on image j's mask
    observed = np.einsum("qii->q", pairs) / n
    chance = float(np.mean(masks.sum(1) / image.sum()))  # mask pixels / image pixels
    perms = S.random_permutations(n, n_permutations, rng)
    null = np.empty((n_permutations, att.shape[1]))
    rows = np.arange(n)
    chunk = max(1, chunk_elements // (n * att.shape[1]))
    for s in range(0, n_permutations, chunk):
        null[s:s + chunk] = pairs[:, rows, perms[s:s + chunk]].mean(-1).T
    return observed, np.full(att.shape[1], chance), S.permutation_p(observed, null, "greater")


def contrast_energy(images: Iterable[np.ndarray], grid: int) -> np.ndarray:
    """``(image, grid, grid)`` share of each image's luminance contrast energy (squared gradient) in each cell.

    ``images`` may be a generator: each is read, reduced and let go in turn.
    """
    cells_of = []
    for img in images:
        lum = np.asarray(img, np.float64)[..., :3] @ np.array([0.299, 0.587, 0.114]) / 255
        gy, gx = np.gradient(lum)
        energy = torch.from_numpy(gx ** 2 + gy ** 2)[None, None]
        cells = F.adaptive_avg_pool2d(energy, grid)[0, 0].numpy()
        cells_of.append(cells / max(cells.sum(), 1e-12))
    return np.stack(cells_of) if cells_of else np.empty((0, grid, grid))


def token_contrast(paths: list, grid: int, backbone: Backbone) -> np.ndarray:
    """``(image, token)`` :func:`contrast_energy` share of each image laid on the backbone's tokens (as masks are)."""
    energy = contrast_energy((read_image(p) for p in paths), grid)
    return token_coverage(energy[:, None], backbone)[0][:, 0]


def contrast_control(attention_mass: np.ndarray, masks: np.ndarray, energy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contrast-energy mass on the masks (mean over images) and the p of attention mass > it, per query.

    Parameters
    ----------
    attention_mass : ndarray
        ``(image, query)`` attention mass of each image on its own mask.
    masks, energy : ndarray
        ``(image, y, x)`` mask fractions and contrast-energy shares on one grid.
    """
    energy_mass = np.nansum(energy * masks, axis=(1, 2))
    diff = attention_mass - energy_mass[:, None]
    p = np.array([stats.wilcoxon(d, alternative="greater").pvalue if np.any(d != 0) else 1.0 for d in diff.T])
    return np.full(attention_mass.shape[1], energy_mass.mean()), p


def attention_table(run: Run, features: np.ndarray, stimuli: StimulusSet, settings, seed: int = 0) -> pd.DataFrame:
    """One row per hemi x ROI query x category: ``n``, ``mass``, ``chance``, ``ratio``, ``p``, ``p_fdr``, and
    the low-level control ``contrast_mass``, ``ratio_vs_contrast``, ``p_vs_contrast``, ``p_fdr_vs_contrast``."""
    att, queries = token_attention(run, features)
    masks, image = token_coverage(stimuli.masks, run.shared_backbone)
    density = att / (att @ image)[..., None]
    energy = contrast_energy((read_image(p) for p in stimuli.paths), stimuli.masks.shape[-1])
    rng = np.random.default_rng([seed, 2])
    rows = []
    for c, category in enumerate(stimuli.categories):
        area = masks[:, c].sum(1) / image.sum()
        use = np.isfinite(area) & (area > 0)
        if use.sum() < 2 or area[use].mean() > 0.98:
            continue  # too few images, or a mask covering the whole image (nothing to localise)
        mass, chance, p = mass_test(att[use], masks[use, c], image, settings.n_permutations, rng)
        per_image = np.einsum("iqt,it->iq", density[use], masks[use, c])
        contrast, p_contrast = contrast_control(per_image, stimuli.masks[use, c], energy[use])
        for q, (hemi, roi) in enumerate(queries):
            rows.append({"hemi": hemi, "roi": roi, "roi_class": ROI_TO_CLASS.get(roi, ""), "category": category,
                         "n": int(use.sum()), "mass": mass[q], "chance": chance[q], "ratio": mass[q] / chance[q],
                         "p": p[q], "contrast_mass": contrast[q], "ratio_vs_contrast": mass[q] / contrast[q],
                         "p_vs_contrast": p_contrast[q],
                         "expected": CLASS_CATEGORY.get(ROI_TO_CLASS.get(roi, "")) == category})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_fdr"] = S.fdr_bh(table["p"].to_numpy())
    table["significant"] = table["p_fdr"] < settings.alpha
    table["p_fdr_vs_contrast"] = S.fdr_bh(table["p_vs_contrast"].to_numpy())
    table["significant_vs_contrast"] = table["p_fdr_vs_contrast"] < settings.alpha
    return table


#: Share of ROIs one category must win (highest attention ratio) to be flagged as a stimulus-level confound
CONFOUND_SHARE = 0.8


def dominant_category(table: pd.DataFrame, share: float = CONFOUND_SHARE) -> dict | None:
    """The category that wins (highest ``ratio``) in at least ``share`` of the hemisphere x ROI queries, or None.

    Category ROIs preferring their own category would each pick a different
    winner; one winner everywhere, early visual and place ROIs included, is a
    property of the stimuli (e.g. contrast energy), not of the ROIs.
    Returns ``category``, ``n_wins``, ``n_rois`` and ``rois`` (where it wins).
    """
    if table is None or table.empty:
        return None
    best = table.loc[table.groupby(["hemi", "roi"], sort=False)["ratio"].idxmax()]
    counts = best.category.value_counts()
    if len(best) < 3 or counts.iloc[0] < share * len(best):
        return None
    winner = counts.index[0]
    return {"category": winner, "n_wins": int(counts.iloc[0]), "n_rois": len(best),
            "rois": sorted(set(best.loc[best.category == winner, "roi"]))}


def confound_note(table: pd.DataFrame) -> str:
    """Words for :func:`dominant_category` and the contrast-energy control ('' when no category dominates)."""
    found = dominant_category(table)
    if found is None:
        return ""
    rows = table[table.category == found["category"]]
    text = (f"Likely a stimulus-level confound: {found['category']} wins the attention comparison in "
            f"{found['n_wins']} of {found['n_rois']} ROI queries, early visual and other-category ROIs included; "
            f"a category cannot be preferred everywhere. The {found['category']} masks probably carry more "
            "low-level signal (contrast energy) than their area.")
    if "significant_vs_contrast" in rows:
        n = int(rows.significant_vs_contrast.astype(bool).sum())
        text += (f" Against the contrast-energy baseline instead of the mask area, {n} of {len(rows)} queries still "
                 f"put significantly more attention on {found['category']} than its contrast energy predicts.")
    return text
