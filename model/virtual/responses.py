"""The virtual subject's image-computable response model and its noise.

Every challenge vertex has a Gaussian population receptive field (pRF) in
degrees of visual angle and two drives read through it:

* **contrast**: compressive (exponent 0.5) pRF-weighted local contrast
  energy, divisively normalised before pooling (``e / (e + c50)``) so that
  large, high-contrast regions do not make all vertices of an area move
  together;
* **category**: the pRF-weighted coverage of each category's mask, each
  compressed and weighted by the vertex's preference (1 for the preferred
  category, weak for the others).

Early visual vertices carry the contrast drive with small retinotopic pRFs;
category-ROI vertices carry the category drive with large pRFs; vertices in
both carry both. Null vertices carry nothing: their data are pure noise.
The response is the standardised sum of the standardised drives, and its
normalising statistics are kept so new images (e.g. a localizer set) get
responses on the same scale.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

from ..vision import CATEGORIES, FIELD_OF_VIEW_DEG
from .surface import EARLY_VISUAL_SECTORS, HemiLayout, CATEGORY_PATCHES

GRID = 64  # pRFs are evaluated on a GRID x GRID lattice over the image
C50 = 0.002  # semi-saturation of local contrast energy
KINDS = ("prf", "category", "prf+category", "contrast", "null")


# --------------------------------------------------------------------------
# Image -> drives on the pRF lattice
# --------------------------------------------------------------------------

def _gaussian_gain(size: int, sigma_px: float) -> torch.Tensor:
    """Transfer function of a Gaussian blur on an rfft2 grid of a (size x size) image."""
    fy = torch.fft.fftfreq(size).view(-1, 1)
    fx = torch.fft.rfftfreq(size).view(1, -1)
    return torch.exp(-2 * (np.pi * sigma_px) ** 2 * (fx**2 + fy**2))


def contrast_energy(images: np.ndarray, grid: int = GRID, batch: int = 64) -> np.ndarray:
    """Divisively normalised local contrast energy, (N, grid, grid) float32.

    Band-pass luminance (difference of Gaussians at 0.05 and 0.2 deg),
    squared, smoothed, pooled to the lattice and normalised by ``e / (e + C50)``.
    Blurs are done in the Fourier domain on a reflect-padded image.
    """
    size = images.shape[1]
    px_per_deg = size / FIELD_OF_VIEW_DEG
    pad = int(np.ceil(0.6 * px_per_deg))
    full = size + 2 * pad
    band_gain = _gaussian_gain(full, 0.05 * px_per_deg) - _gaussian_gain(full, 0.2 * px_per_deg)
    smooth_gain = _gaussian_gain(full, 0.05 * px_per_deg)
    out = np.empty((len(images), grid, grid), np.float32)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    for start in range(0, len(images), batch):
        rgb = torch.from_numpy(np.ascontiguousarray(images[start:start + batch])).permute(0, 3, 1, 2).float() / 255
        lum = F.pad((rgb * weights).sum(1, keepdim=True), (pad,) * 4, mode="reflect")
        band = torch.fft.irfft2(torch.fft.rfft2(lum) * band_gain, s=(full, full))
        energy = torch.fft.irfft2(torch.fft.rfft2(band**2) * smooth_gain, s=(full, full))
        energy = F.adaptive_avg_pool2d(energy[..., pad:pad + size, pad:pad + size].clamp_min(0), grid)[:, 0]
        out[start:start + batch] = (energy / (energy + C50)).numpy()
    return out


def category_coverage(masks: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Fraction of each lattice cell covered by each category, (N, C, grid, grid)."""
    t = torch.from_numpy(np.ascontiguousarray(masks)).float()
    n, c = t.shape[:2]
    return F.adaptive_avg_pool2d(t.view(n * c, 1, *t.shape[2:]), grid).view(n, c, grid, grid).numpy()


def lattice_deg(grid: int = GRID) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the lattice cells in degrees: x to the right, y upwards."""
    half = FIELD_OF_VIEW_DEG / 2
    centres = -half + (np.arange(grid) + 0.5) * FIELD_OF_VIEW_DEG / grid
    return np.meshgrid(centres, centres[::-1])


def prf_weights(x: np.ndarray, y: np.ndarray, sigma: np.ndarray, grid: int = GRID) -> np.ndarray:
    """(V, grid*grid) Gaussian pRF weights; each integrates to 1 over the whole plane.

    A pRF reaching beyond the image therefore receives less input, as a real
    one would from a stimulus that does not fill its receptive field.
    """
    gx, gy = lattice_deg(grid)
    cell = (FIELD_OF_VIEW_DEG / grid) ** 2
    d2 = (gx.ravel()[None] - x[:, None]) ** 2 + (gy.ravel()[None] - y[:, None]) ** 2
    w = np.exp(-d2 / (2 * sigma[:, None] ** 2)) * cell / (2 * np.pi * sigma[:, None] ** 2)
    return w.astype(np.float32)


# --------------------------------------------------------------------------
# Per-vertex tuning
# --------------------------------------------------------------------------

@dataclass
class Tuning:
    """Response parameters of the challenge vertices of one hemisphere."""

    kind: np.ndarray  # (V,) str, one of KINDS
    prf_x: np.ndarray  # (V,) deg, right positive; NaN for null vertices
    prf_y: np.ndarray  # (V,) deg, up positive
    prf_sigma: np.ndarray  # (V,) deg
    contrast_weight: np.ndarray  # (V,)
    preference: np.ndarray  # (V, len(CATEGORIES))
    ncsnr: np.ndarray  # (V,)
    # normalising statistics, filled by fit_normalisation
    contrast_mean: np.ndarray | None = None
    contrast_sd: np.ndarray | None = None
    category_mean: np.ndarray | None = None
    category_sd: np.ndarray | None = None
    response_mean: np.ndarray | None = None
    response_sd: np.ndarray | None = None

    @property
    def null(self) -> np.ndarray:
        return self.kind == "null"

    @property
    def noise_ceiling(self) -> np.ndarray:
        """Fraction of variance explainable with 3 averaged repeats: ncsnr^2 / (ncsnr^2 + 1/3)."""
        return noise_ceiling(self.ncsnr, n_repeats=3)

    def to_dataset(self) -> xr.Dataset:
        """The tuning as a labelled dataset (dims ``vertex`` and ``category``)."""
        data = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            dims = ("vertex", "category") if value.ndim == 2 else ("vertex",)
            data[f.name] = (dims, value.astype(str) if f.name == "kind" else value)
        data["noise_ceiling"] = (("vertex",), self.noise_ceiling)
        return xr.Dataset(data, coords={"category": list(CATEGORIES)})

    @classmethod
    def from_dataset(cls, ds: xr.Dataset) -> "Tuning":
        return cls(**{f.name: ds[f.name].values for f in fields(cls) if f.name in ds})


def noise_ceiling(ncsnr: np.ndarray, n_repeats: float = 3) -> np.ndarray:
    """Noise ceiling fraction of an average of ``n_repeats`` trials (:func:`model.metrics.noise_ceiling`)."""
    from ..metrics import noise_ceiling as challenge_noise_ceiling

    return challenge_noise_ceiling(ncsnr, {n_repeats: 1})


def make_tuning(layout: HemiLayout, rng: np.random.Generator) -> Tuning:
    """Draw the tuning of every challenge vertex of one hemisphere from its ROI labels."""
    idx = np.flatnonzero(layout.challenge)
    v = idx.size
    side = 1.0 if layout.hemi == "lh" else -1.0  # left hemisphere sees the right visual field
    cat = {name: i for i, name in enumerate(CATEGORIES)}
    kind = np.full(v, "", dtype=object)
    x, y, sigma = np.full(v, np.nan), np.full(v, np.nan), np.full(v, np.nan)
    contrast_w = np.zeros(v)
    pref = np.zeros((v, len(CATEGORIES)))
    ncsnr = np.zeros(v)

    # early visual: retinotopic pRFs
    sectors = {s.roi: s for s in EARLY_VISUAL_SECTORS}
    sector = layout.sector[idx]
    ev = sector != ""
    ecc, polar = layout.eccentricity[idx][ev], layout.polar_angle[idx][ev]
    upper = np.array([not s.endswith("d") for s in sector[ev]])  # ventral areas see the upper field
    x[ev] = side * ecc * np.cos(polar)
    y[ev] = np.where(upper, 1, -1) * ecc * np.sin(polar)
    a = np.array([sectors[s].sigma_deg[0] for s in sector[ev]])
    b = np.array([sectors[s].sigma_deg[1] for s in sector[ev]])
    sigma[ev] = (a + b * ecc) * rng.uniform(0.85, 1.15, ev.sum())
    contrast_w[ev] = 1.0
    kind[ev] = "prf"
    ncsnr[ev] = rng.uniform(0.8, 1.5, ev.sum())

    # category ROIs: large pRFs near the fovea, contralateral bias
    planted = np.zeros(v, bool)
    in_null_roi = np.zeros(v, bool)
    for patch in CATEGORY_PATCHES:
        if patch.roi not in layout.patch_of:
            continue
        members = layout.patch_of[patch.roi][idx]
        if patch.preference is None:
            in_null_roi |= members
            continue
        pref[members, cat[patch.preference]] += 1.0
        planted |= members
    new = planted & ~ev
    n_new = new.sum()
    x[new] = side * rng.uniform(0.0, 2.0, n_new)
    y[new] = rng.normal(0, 0.8, n_new)
    sigma[new] = rng.uniform(1.5, 3.0, n_new)
    weak = rng.uniform(0.02, 0.12, (v, len(CATEGORIES)))
    weak[:, cat["place"]] = rng.uniform(0.0, 0.05, v)  # layouts cover much of an image: keep their pull weak
    pref[planted] = np.where(pref[planted] > 0, pref[planted], weak[planted])
    kind[planted & ev] = "prf+category"
    kind[new] = "category"
    ncsnr[new] = rng.uniform(0.6, 1.2, n_new)

    # the rest: medium-size contrast pRFs, or null (all null-ROI vertices, a third of the others)
    rest = kind == ""
    null = rest & (in_null_roi | (rng.random(v) < 0.35))
    other = rest & ~null
    n_other = other.sum()
    x[other] = side * rng.uniform(0.0, 4.0, n_other)
    y[other] = rng.uniform(-3.5, 3.5, n_other)
    sigma[other] = rng.uniform(1.0, 2.5, n_other)
    contrast_w[other] = 1.0
    kind[other] = "contrast"
    ncsnr[other] = rng.uniform(0.3, 0.8, n_other)
    kind[null] = "null"
    return Tuning(kind.astype(str), x, y, sigma, contrast_w, pref, ncsnr)


# --------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------

def raw_drives(tuning: Tuning, energy: np.ndarray, coverage: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contrast and category drives (N, V) before standardisation (zero for null vertices)."""
    n, v = energy.shape[0], tuning.kind.size
    active = ~tuning.null
    w = prf_weights(tuning.prf_x[active], tuning.prf_y[active], tuning.prf_sigma[active], energy.shape[-1])
    contrast = np.zeros((n, v), np.float32)
    category = np.zeros((n, v), np.float32)
    contrast[:, active] = np.sqrt(np.maximum(energy.reshape(n, -1) @ w.T, 0))
    flat = coverage.reshape(n, coverage.shape[1], -1)
    for c in range(coverage.shape[1]):
        category[:, active] += tuning.preference[active, c] * np.sqrt(np.maximum(flat[:, c] @ w.T, 0))
    return contrast, category


def _standardise(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return (x - mean) / np.where(sd > 0, sd, 1)


def fit_normalisation(tuning: Tuning, contrast: np.ndarray, category: np.ndarray) -> None:
    """Store the statistics that put every vertex's response at mean 0, SD 1 on these images."""
    tuning.contrast_mean, tuning.contrast_sd = contrast.mean(0), contrast.std(0)
    tuning.category_mean, tuning.category_sd = category.mean(0), category.std(0)
    combined = _combine(tuning, contrast, category, final=False)
    tuning.response_mean, tuning.response_sd = combined.mean(0), combined.std(0)


def _combine(tuning: Tuning, contrast: np.ndarray, category: np.ndarray, final: bool = True) -> np.ndarray:
    has_category = tuning.preference.sum(1) > 0
    out = (tuning.contrast_weight * _standardise(contrast, tuning.contrast_mean, tuning.contrast_sd)
           + has_category * _standardise(category, tuning.category_mean, tuning.category_sd))
    if final:
        out = _standardise(out, tuning.response_mean, tuning.response_sd)
    out[:, tuning.null] = 0.0
    return out.astype(np.float32)


def clean_responses(tuning: Tuning, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Noise-free responses (N, V) to RGB ``images`` with category ``masks`` (N, C, S, S).

    Requires :func:`fit_normalisation` to have been run on the subject's images.
    """
    contrast, category = raw_drives(tuning, contrast_energy(images), category_coverage(masks))
    return _combine(tuning, contrast, category)


def noisy_average(clean: np.ndarray, ncsnr: np.ndarray, rng: np.random.Generator, n_repeats: int = 3) -> np.ndarray:
    """Simulated measurements: ``n_repeats`` noisy trials, each z-scored per vertex, averaged.

    Each trial is ``ncsnr * clean + noise`` with unit-variance noise, so the
    signal-to-noise ratio of a trial is ``ncsnr`` (clean has unit variance).
    """
    total = np.zeros_like(clean, dtype=np.float64)
    for _ in range(n_repeats):
        trial = ncsnr * clean + rng.standard_normal(clean.shape)
        total += _standardise(trial, trial.mean(0), trial.std(0))
    return (total / n_repeats).astype(np.float32)
