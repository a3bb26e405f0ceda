"""How each ROI query routes the image's tokens: by location, by content, by both or by neither.

Everything here works on one set of attention maps ``A`` of shape
``(image, query, token)`` (each image's map of a query sums to 1 over the
token grid of ``h x w`` tokens) and, for the content test, on what each
image shows where: ``coverage`` ``(image, category, token)``, the fraction of
each token covered by each category's mask. ``U`` is the uniform map
``1 / T``.

Measures
--------
location index
    ``L = mean_{i != j} <A_i - U, A_j - U> / mean_i ||A_i - U||^2``: the share
    of the energy of a query's attention pattern (its departure from
    uniform) that is common to every image, i.e. a fixed spatial window.
    1 for the same map in every image, about 0 for maps that share nothing
    (it can be slightly negative). Interval: percentile bootstrap over
    images; pairs of one image with itself are left out of every resample.
location test
    ``p`` of the numerator of ``L`` against maps each shifted by an
    independent, uniformly drawn circular 2-D shift of the token grid. The
    shifts destroy a window fixed in the image but keep each map's own
    structure (how focused it is, its blobs), so a query that follows
    content placed anywhere is not called location-routed. Computed in the
    Fourier domain: a shift is a phase, so every shifted sum is one batched
    matrix product.
content index
    With ``M`` the mean map over images and ``D_i = A_i - M`` each image's
    departure from it, and ``X_ic`` the coverage of category ``c`` minus its
    mean over images: ``r_c = sum_i <D_i, X_ic> / (||D|| ||X_c||)``, the
    pooled correlation of the image-to-image variation of the attention with
    where category ``c`` is. The content index is ``max(0, max_c r_c)^2``:
    the share of that variation explained by the best category's mask (a
    one-regressor pooled regression); ``content_category`` names it.
content test
    ``p`` of ``max_c r_c`` (one-sided: attention *towards* the category)
    against the same statistic with the images' masks shuffled among the
    images, ``(1 + #{null >= observed}) / (B + 1)``; the maximum over
    categories makes it one test per query.
label
    BH-FDR over the ``2 x queries`` tests of one analysis; at level
    ``alpha``: ``location`` (only the location test significant),
    ``content`` (only the content test), ``both`` or ``neither``. Without
    masks the content test is not run and the label says only ``location``
    or ``neither``. A query is *content-routed* when its label is
    ``content`` or ``both``.

Centre and focus: the centre of mass of each image's map in degrees of
visual angle (x right, y up), its mean over images and spread (mean
distance of the images' centres from that mean), and the normalised
entropy of the maps (1: uniform over the tokens, 0: one token).

The measures are calibrated on planted attention maps in
``tests/test_routing.py``: maps built to be purely location-routed,
content-routed, both, or noise get their labels, and noise is called
anything but ``neither`` at no more than the nominal rate.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats

from model.options import check_settings, setting
from model.vision import FIELD_OF_VIEW_DEG

#: The labels, keyed by (location significant, content significant).
LABELS: dict[tuple[bool, bool], str] = {
    (True, False): "location", (False, True): "content", (True, True): "both", (False, False): "neither",
}
#: Labels whose content test is significant.
CONTENT_ROUTED = ("content", "both")
#: Elements of a working array before a loop chunks it.
CHUNK_ELEMENTS = 2**24


@dataclass(frozen=True)
class RoutingSettings:
    """Permutations, resamples and levels of the routing tests."""

    n_permutations: int = setting(1000, "random shifts (location) and mask shuffles (content) per test", minimum=1)
    n_bootstrap: int = setting(1000, "bootstrap resamples of the location index's interval", minimum=1)
    alpha: float = setting(0.05, "FDR level of the routing labels", minimum=0, maximum=1)
    confidence: float = setting(0.95, "level of the bootstrap interval", minimum=0, maximum=1)

    def check(self) -> None:
        """One clear error naming the option of the first setting out of range."""
        check_settings(self)


def _normalised(att: np.ndarray) -> np.ndarray:
    att = np.clip(np.asarray(att, np.float64), 0, None)
    return att / np.clip(att.sum(-1, keepdims=True), 1e-300, None)


def location_index(att: np.ndarray) -> np.ndarray:
    """The location index ``L`` (see the module) of each query of ``att`` ``(image, query, token)``."""
    d = _normalised(att) - 1.0 / att.shape[-1]
    n = len(d)
    energy = (d**2).sum(-1)  # (n, Q)
    common = ((d.sum(0) ** 2).sum(-1) - energy.sum(0)) / (n * (n - 1))
    return common / energy.mean(0)


def location_interval(att: np.ndarray, n_bootstrap: int, rng: np.random.Generator,
                      confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval over images of :func:`location_index`, per query.

    A resample draws images with replacement (counts ``w``); the common
    energy is averaged over the pairs of distinct images,
    ``(||sum_i w_i d_i||^2 - sum_i w_i^2 ||d_i||^2) / (n^2 - sum_i w_i^2)``.
    """
    d = _normalised(att) - 1.0 / att.shape[-1]
    n, q, t = d.shape
    energy = (d**2).sum(-1)  # (n, Q)
    flat = d.reshape(n, q * t)
    values = np.empty((n_bootstrap, q))
    chunk = max(1, CHUNK_ELEMENTS // (q * t))
    for s in range(0, n_bootstrap, chunk):
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, n_bootstrap - s)).astype(np.float64)
        total = ((w @ flat).reshape(-1, q, t) ** 2).sum(-1)
        pairs = (n * n - (w**2).sum(1))[:, None]
        common = (total - (w**2) @ energy) / np.clip(pairs, 1, None)
        values[s:s + len(w)] = common / ((w @ energy) / n)
    tail = (1 - confidence) / 2
    return np.quantile(values, tail, axis=0), np.quantile(values, 1 - tail, axis=0)


def _shift_phases(grid: tuple[int, int]) -> torch.Tensor:
    """``(shift, frequency)`` phases of every circular shift of an ``h x w`` grid (row-major both)."""
    h, w = grid
    sy, sx = np.divmod(np.arange(h * w), w)
    ky, kx = np.divmod(np.arange(h * w), w)
    angle = -2 * np.pi * (np.outer(sy, ky) / h + np.outer(sx, kx) / w)
    return torch.polar(torch.ones(angle.shape), torch.from_numpy(angle).float())


def location_test(att: np.ndarray, grid: tuple[int, int], n_permutations: int, rng: np.random.Generator) -> np.ndarray:
    """Permutation ``p`` of the location index against independently, circularly shifted maps (see the module)."""
    d = _normalised(att) - 1.0 / att.shape[-1]
    n, q, t = d.shape
    if t != grid[0] * grid[1]:
        raise ValueError(f"{t} tokens do not make a {grid[0]}x{grid[1]} grid")
    spectra = torch.fft.fft2(torch.from_numpy(d.reshape(n, q, *grid)).float()).reshape(n, q, t)
    spectra = spectra.permute(2, 0, 1).contiguous()  # (K, n, Q)
    phases = _shift_phases(grid).T.contiguous()  # (K, shift)

    def summed_energy(shifts: np.ndarray) -> np.ndarray:
        """||sum_i shift(d_i)||^2 per row of shifts (B, n), by Parseval."""
        ph = phases[:, torch.from_numpy(shifts)]  # (K, B, n), contiguous: a strided complex bmm is 100x slower
        z = torch.bmm(ph, spectra)  # (K, B, Q)
        return ((z.real**2 + z.imag**2).sum(0) / t).double().numpy()

    observed = summed_energy(np.zeros((1, n), np.int64))[0]
    null = np.empty((n_permutations, q))
    chunk = max(1, CHUNK_ELEMENTS // (t * n))
    for s in range(0, n_permutations, chunk):
        shifts = rng.integers(0, t, size=(min(chunk, n_permutations - s), n))
        null[s:s + len(shifts)] = summed_energy(shifts)
    return _permutation_p(observed, null)


def _permutation_p(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """``(1 + #{null >= observed}) / (B + 1)``, ties within rounding counted as reached."""
    tolerance = 1e-6 * np.maximum(1.0, np.abs(observed))
    return (1.0 + (null >= observed - tolerance).sum(0)) / (len(null) + 1.0)


def content_test(att: np.ndarray, coverage: np.ndarray, n_permutations: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Content index, best category and permutation ``p`` of each query (see the module).

    Parameters
    ----------
    att : ndarray
        ``(image, query, token)`` attention.
    coverage : ndarray
        ``(image, category, token)`` fraction of each token covered by each
        category (images without a known mask must be left out before).

    Returns
    -------
    index, category, p : ndarray
        ``(query,)``: ``max(0, max_c r_c)^2``, the index of the best
        category and the p-value of ``max_c r_c``.
    """
    a = _normalised(att)
    n, q, t = a.shape
    d = a - a.mean(0)
    x = np.asarray(coverage, np.float64)
    x = x - x.mean(0)
    d_norm = np.sqrt((d**2).sum((0, 2)))  # (Q,)
    x_norm = np.sqrt((x**2).sum((0, 2)))  # (C,)
    usable = x_norm > 1e-12
    perms = rng.permuted(np.broadcast_to(np.arange(n), (n_permutations, n)), axis=1)
    observed = np.full((x.shape[1], q), -np.inf)
    null = np.full((n_permutations, x.shape[1], q), -np.inf)
    rows = np.arange(n)
    flat = d.transpose(1, 0, 2).reshape(q * n, t)
    for c in np.flatnonzero(usable):
        pairs = (flat @ x[:, c].T).reshape(q, n, n)  # <D_i, X_jc>
        scale = 1.0 / (np.clip(d_norm, 1e-300, None) * x_norm[c])
        observed[c] = np.einsum("qii->q", pairs) * scale
        chunk = max(1, CHUNK_ELEMENTS // (n * q))
        for s in range(0, n_permutations, chunk):
            null[s:s + chunk, c] = (pairs[:, rows, perms[s:s + chunk]].sum(-1) * scale[:, None]).T
    if not usable.any():
        nan = np.full(q, np.nan)
        return nan, np.full(q, -1), nan
    best = observed.max(0)
    index = np.clip(best, 0, None) ** 2
    return index, observed.argmax(0), _permutation_p(best, null.max(1))


def labels(p_location: np.ndarray, p_content: np.ndarray | None, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BH-FDR over all ``2 x queries`` tests, then one label per query.

    ``p_content`` None (no masks): only the location tests are corrected.
    Returns ``(p_location_fdr, p_content_fdr, label)``; the content column is
    NaN without masks.
    """
    p_location = np.asarray(p_location, float)
    q = len(p_location)
    if p_content is None or not np.isfinite(p_content).any():
        loc_fdr = stats.false_discovery_control(p_location) if q else p_location
        con_fdr = np.full(q, np.nan)
    else:
        both = stats.false_discovery_control(np.concatenate([p_location, np.nan_to_num(p_content, nan=1.0)]))
        loc_fdr, con_fdr = both[:q], np.where(np.isfinite(p_content), both[q:], np.nan)
    names = np.array([LABELS[(bool(lo < alpha), bool(np.nan_to_num(co, nan=1.0) < alpha))]
                      for lo, co in zip(loc_fdr, con_fdr)], dtype=object)
    return loc_fdr, con_fdr, names


def token_positions_deg(grid: tuple[int, int], patch: int, image_side: int) -> np.ndarray:
    """``(token, 2)`` centre of each token in degrees of visual angle (x right, y up; the image spans the field of view).

    Tokens over the padding (right and bottom of the padded input) lie
    outside the field.
    """
    rows, cols = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
    cx, cy = (cols + 0.5) * patch / image_side, (rows + 0.5) * patch / image_side
    return np.stack([(cx - 0.5) * FIELD_OF_VIEW_DEG, (0.5 - cy) * FIELD_OF_VIEW_DEG], 1)


def centres(att: np.ndarray, positions: np.ndarray) -> pd.DataFrame:
    """Per query: mean centre of mass ``x_deg``, ``y_deg``, its ``spread_deg`` over images, and ``entropy``."""
    a = _normalised(att)
    xy = np.einsum("iqt,tk->iqk", a, positions)  # (n, Q, 2)
    mean = xy.mean(0)
    spread = np.hypot(*(xy - mean).transpose(2, 0, 1)).mean(0)
    entropy = -(a * np.log(np.clip(a, 1e-300, None))).sum(-1) / np.log(a.shape[-1])
    return pd.DataFrame({"x_deg": mean[:, 0], "y_deg": mean[:, 1], "spread_deg": spread, "entropy": entropy.mean(0)})


#: Columns of :func:`routing_table`, after the caller's query columns.
COLUMNS = ["n_images", "location_index", "location_ci_low", "location_ci_high", "location_p", "location_p_fdr",
           "content_index", "content_category", "content_p", "content_p_fdr", "routing", "x_deg", "y_deg",
           "spread_deg", "entropy"]


def routing_table(att: np.ndarray, grid: tuple[int, int], positions: np.ndarray, coverage: np.ndarray | None = None,
                  categories: tuple[str, ...] = (), settings: RoutingSettings = RoutingSettings(),
                  rng: np.random.Generator | int | None = 0) -> pd.DataFrame:
    """Every measure of the module, one row per query of ``att`` ``(image, query, token)``.

    ``coverage`` ``(image, category, token)`` names where ``categories`` are
    in each image (NaN rows: unknown, left out of the content test); None
    skips the content test. Columns: :data:`COLUMNS`.
    """
    settings.check()
    rng = np.random.default_rng(rng)
    att = np.asarray(att, np.float64)
    low, high = location_interval(att, settings.n_bootstrap, rng, settings.confidence)
    p_location = location_test(att, grid, settings.n_permutations, rng)
    index_c, best, p_content = np.full(att.shape[1], np.nan), np.full(att.shape[1], -1), None
    if coverage is not None:
        known = np.isfinite(coverage).all((1, 2))
        index_c, best, p_content = content_test(att[known], coverage[known], settings.n_permutations, rng)
    loc_fdr, con_fdr, names = labels(p_location, p_content, settings.alpha)
    table = pd.DataFrame({
        "n_images": len(att), "location_index": location_index(att), "location_ci_low": low, "location_ci_high": high,
        "location_p": p_location, "location_p_fdr": loc_fdr, "content_index": index_c,
        "content_category": [categories[b] if b >= 0 and b < len(categories) else "" for b in best],
        "content_p": p_content if p_content is not None else np.nan, "content_p_fdr": con_fdr, "routing": names,
    })
    return pd.concat([table, centres(att, positions)], axis=1)[COLUMNS]


__all__ = ["COLUMNS", "CONTENT_ROUTED", "LABELS", "RoutingSettings", "centres", "content_test", "labels",
           "location_index", "location_interval", "location_test", "routing_table", "token_positions_deg"]
