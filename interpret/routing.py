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
    Two tests, both of which must reject (an intersection-union test, so its
    ``p`` is the larger of the two): (a) the shift test: ``p`` of the
    numerator of ``L`` against maps each shifted by an independent,
    uniformly drawn circular 2-D shift of the token grid. The shifts destroy
    a window fixed in the image but keep each map's own structure (how
    focused it is, its blobs), so a query that follows content placed
    anywhere is not called location-routed. Computed in the Fourier domain:
    a shift is a phase, so every shifted sum is one batched matrix product.
    (b) the size test: ``L`` exceeds ``min_location``, with the bootstrap
    ``p = (1 + #{L* <= min_location}) / (B + 1)`` over the resamples ``L*``
    of the interval. The shift test alone detects any fixed bias once there
    are enough images (a query trained on noise keeps the faint positional
    bias of its initialisation); (b) asks for a window worth the name.
    ``location_p_shift`` is (a), ``location_p`` the combined ``p``.
content index
    With ``M`` the mean map over images and ``D_i = A_i - M`` each image's
    departure from it, and ``X_ic`` the coverage of category ``c`` minus its
    mean over images: ``r_c = sum_i <D_i, X_ic> / (||D|| ||X_c||)``, the
    pooled correlation of the image-to-image variation of the attention with
    where category ``c`` is. The content index is
    ``max(0, max_c r_c)^2 x V``, with ``V = sum_i ||D_i||^2 / sum_i ||A_i - U||^2``
    the share of the pattern's energy (its departure from uniform, the
    location index's denominator) that varies from image to image: the
    share of the whole pattern that moves with the best category's mask
    (a one-regressor pooled regression), so that the two indices are
    shares of one whole. ``r^2`` alone, the share of the *variation*
    explained, grows as the variation shrinks: a map that is 97 % a fixed
    window, whose faint rest follows the text, would look as content-routed
    as a map that follows the text entirely. ``content_category`` names
    the best category; the interval is a percentile bootstrap over images
    (the best category of each resample).

    With a ``control`` map ``E`` (each token's share of the image's
    luminance contrast energy, as in the attention-selectivity control of
    :mod:`analyses.attention_selectivity`), ``r_c`` is the *partial*
    correlation: ``E``'s centred map is regressed out of both ``D`` and
    ``X_c`` (pooled) before they are correlated, and ``V`` counts what of
    the variation the control leaves. Text has the most contrast
    of the rendered categories and draws every query that looks at
    high-contrast tokens; without the control such a query looks
    word-routed. The control removes what is linear in the contrast share:
    attention that is a steep function of contrast can still look
    content-routed.
content test
    Again two tests that must both reject: (a) the shuffle test: ``p`` of
    ``max_c r_c`` (one-sided: attention *towards* the category) against
    the same statistic with the images' masks shuffled among the images
    (the control stays with the attention's image; the coverage's residual
    norm is recomputed for each pairing), ``(1 + #{null >= observed}) /
    (B + 1)``; the maximum over categories makes it one test per query;
    (b) the size test: the content index exceeds ``min_content``
    (bootstrap ``p`` as for ``L``). ``content_p_shuffle`` is (a),
    ``content_p`` the combined ``p``.
minimum sizes
    ``min_location = 0.1``: a window common to every image must carry at
    least 10 % of the energy of the query's pattern; ``min_content = 0.02``:
    at least 2 % of it must move with the best category's mask (a pooled
    correlation of 0.14 over images x tokens for a map that is all
    variation). Both sit well above what unrelated maps reach (``|L|`` about
    0.01 and the content index of the order of ``1 / (images x tokens)`` for
    independent noise maps; ``tests/test_routing.py``). Measured on the
    default model (windows attention with the shared softmax and the MLP
    key, heads readout) of three virtual subjects, 100 test images each
    (``docs/attention.md``): early visual queries have a location index of
    0.34-0.94 and a content index of at most 0.009; the face, body and word
    queries a content index of 0.032-0.17, each significant, and a location
    index of at most 0.044 on two subjects and 0.13 on the other, whose lh
    OFA query (0.13) is ``both``: the planted pRFs give the category windows
    a fixed part. A query built to be both (a fixed window and a category's
    mask of equal strength, ``tests/test_routing.py``) has a location index
    of about 0.24, so the floor stays below that. Places, whose masks are
    the layout, have a content index near 0 and a location index of
    0.45-0.89.
    A minimum of 0 leaves its size test out (significance alone).
label
    BH-FDR over the ``2 x queries`` combined tests of one analysis; at
    level ``alpha``: ``location`` (only the location test significant),
    ``content`` (only the content test), ``both`` or ``neither``. Without
    masks the content test is not run and the label says only ``location``
    or ``neither``. A query is *content-routed* when its label is
    ``content`` or ``both``. The label describes the query's attention
    only: a query whose ROI the run does not predict (``tbe routing``'s
    ``reliable`` column, as in ``tbe selectivity``) still has attention
    that moves with the image and may get any label; read such labels as
    properties of the network, not of the brain area.

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
    confidence: float = setting(0.95, "level of the bootstrap intervals", minimum=0, maximum=1)
    min_location: float = setting(0.1, "smallest location index (share of the attention pattern fixed across "
                                  "images) that counts as routing by location", minimum=0)
    min_content: float = setting(0.02, "smallest content index (share of the attention pattern that moves with a "
                                 "category's mask across images) that counts as routing by content", minimum=0)

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


def location_bootstrap(att: np.ndarray, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """``(resample, query)`` :func:`location_index` of images drawn with replacement.

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
    return values


def location_interval(att: np.ndarray, n_bootstrap: int, rng: np.random.Generator,
                      confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval over images of :func:`location_index`, per query (:func:`location_bootstrap`)."""
    return percentile_interval(location_bootstrap(att, n_bootstrap, rng), confidence)


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval per column of bootstrap ``values`` ``(resample, query)``."""
    tail = (1 - confidence) / 2
    return np.quantile(values, tail, axis=0), np.quantile(values, 1 - tail, axis=0)


def above_minimum_p(values: np.ndarray, minimum: float) -> np.ndarray:
    """Bootstrap ``p`` of "the index exceeds ``minimum``": ``(1 + #{resamples <= minimum}) / (B + 1)`` per column."""
    return (1.0 + (values <= minimum).sum(0)) / (len(values) + 1.0)


def _and_size_test(p: np.ndarray, values: np.ndarray, minimum: float) -> np.ndarray:
    """``p`` of a test combined with the size test (intersection-union: the larger p); a minimum of 0 has none."""
    return p if minimum <= 0 else np.maximum(p, above_minimum_p(values, minimum))


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


def _centred_control(control: np.ndarray | None, n: int) -> np.ndarray | None:
    """The per-token control map ``(image, token)``, or None when absent or constant over images."""
    if control is None:
        return None
    e = np.asarray(control, np.float64).reshape(n, -1)
    return e if ((e - e.mean(0)) ** 2).sum() > 1e-24 else None


def _content_r(a: np.ndarray, x: np.ndarray, e: np.ndarray | None, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(resample, query, category)`` pooled (partial) correlations ``r_c`` of images weighted by ``w`` ``(B, n)``,
    and ``(resample, query)`` the share of the pattern's energy that varies (after the control).

    Pooled over images and tokens, each image centred on the weighted mean
    over images: ``S_YZ = sum_i w_i <Y_i, Z_i> - <sum_i w_i Y_i, sum_i w_i Z_i> / sum_i w_i``;
    with a control ``e``, ``r = (S_AX - S_AE S_XE / S_EE) / sqrt((S_AA - S_AE^2 / S_EE)(S_XX - S_XE^2 / S_EE))``,
    the correlation of the residuals of the attention and the coverage
    after each is regressed on the control (pooled). The share is
    ``S_AA`` (after the control) over ``sum_i w_i ||A_i - U||^2``.
    """
    n, q, t = a.shape
    total = w.sum(1)  # (B,)
    sa = (w @ a.reshape(n, -1)).reshape(-1, q, t)
    sx = (w @ x.reshape(n, -1)).reshape(-1, x.shape[1], t)
    s_aa = w @ (a**2).sum(-1) - (sa**2).sum(-1) / total[:, None]
    s_xx = w @ (x**2).sum(-1) - (sx**2).sum(-1) / total[:, None]
    s_ax = (np.einsum("bi,iqc->bqc", w, np.einsum("iqt,ict->iqc", a, x))
            - np.einsum("bqt,bct->bqc", sa, sx) / total[:, None, None])
    if e is not None:
        se = w @ e
        s_ee = (w @ (e**2).sum(-1) - (se**2).sum(-1) / total)[:, None]
        s_ae = w @ np.einsum("iqt,it->iq", a, e) - np.einsum("bqt,bt->bq", sa, se) / total[:, None]
        s_xe = w @ np.einsum("ict,it->ic", x, e) - np.einsum("bct,bt->bc", sx, se) / total[:, None]
        s_ee = np.clip(s_ee, 1e-300, None)
        s_aa, s_xx = s_aa - s_ae**2 / s_ee, s_xx - s_xe**2 / s_ee
        s_ax = s_ax - s_ae[:, :, None] * s_xe[:, None, :] / s_ee[:, :, None]
    scale = np.sqrt(np.clip(s_aa, 0, None)[:, :, None] * np.clip(s_xx, 0, None)[:, None, :])
    pattern = w @ ((a - 1.0 / t) ** 2).sum(-1)  # (B, Q) energy of the departures from uniform
    share = np.clip(s_aa, 0, None) / np.clip(pattern, 1e-300, None)
    return np.where(scale > 1e-300, s_ax / np.clip(scale, 1e-300, None), -np.inf), share


def _index(r: np.ndarray, share: np.ndarray) -> np.ndarray:
    """Content index from ``(..., category)`` correlations and the varying share: ``max(0, max_c r_c)^2 x share``."""
    return np.clip(r.max(-1), 0, None) ** 2 * share


def content_bootstrap(att: np.ndarray, coverage: np.ndarray, n_bootstrap: int, rng: np.random.Generator,
                      control: np.ndarray | None = None) -> np.ndarray:
    """``(resample, query)`` content index of images drawn with replacement (the best category of each resample)."""
    a = _normalised(att)
    x = np.asarray(coverage, np.float64)
    n, q, t = a.shape
    e = _centred_control(control, n)
    values = np.empty((n_bootstrap, q))
    chunk = max(1, CHUNK_ELEMENTS // ((q + x.shape[1] + 1) * t + q * x.shape[1]))
    for s in range(0, n_bootstrap, chunk):
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, n_bootstrap - s)).astype(np.float64)
        values[s:s + len(w)] = _index(*_content_r(a, x, e, w))
    return values


def content_test(att: np.ndarray, coverage: np.ndarray, n_permutations: int, rng: np.random.Generator,
                 control: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Content index, best category and permutation ``p`` of each query (see the module).

    Parameters
    ----------
    att : ndarray
        ``(image, query, token)`` attention.
    coverage : ndarray
        ``(image, category, token)`` fraction of each token covered by each
        category (images without a known mask must be left out before).
    control : ndarray, optional
        ``(image, token)`` low-level map partialled out of both the
        attention and the coverage (e.g. each token's share of the image's
        contrast energy).

    Returns
    -------
    index, category, p : ndarray
        ``(query,)``: ``max(0, max_c r_c)^2`` times the share of the
        pattern that varies, the index of the best category and the
        p-value of ``max_c r_c``.
    """
    a = _normalised(att)
    n, q, t = a.shape
    x = np.asarray(coverage, np.float64)
    e = _centred_control(control, n)
    r, share = (v[0] for v in _content_r(a, x, e, np.ones((1, n))))  # (Q, C), (Q,)
    usable = np.isfinite(r).any(0)  # categories whose coverage varies over images
    if not usable.any():
        nan = np.full(q, np.nan)
        return nan, np.full(q, -1), nan
    # the shuffled masks' correlations: numerators <D'_i, X_pi(i)> gathered from one (n x n) table per category;
    # the coverage's residual norm changes with the pairing, its attention's does not
    d = a - a.mean(0)
    xc = x - x.mean(0)
    if e is not None:
        ec = e - e.mean(0)
        e_energy = (ec**2).sum()
        d = d - (np.einsum("iqt,it->q", d, ec) / e_energy)[None, :, None] * ec[:, None, :]
    d_norm = np.sqrt((d**2).sum((0, 2)))  # (Q,)
    perms = rng.permuted(np.broadcast_to(np.arange(n), (n_permutations, n)), axis=1)
    null = np.full((n_permutations, x.shape[1], q), -np.inf)
    rows = np.arange(n)
    flat = d.transpose(1, 0, 2).reshape(q * n, t)
    for c in np.flatnonzero(usable):
        pairs = (flat @ xc[:, c].T).reshape(q, n, n)  # <D'_i, X_jc>
        x_energy = np.full(n_permutations, (xc[:, c] ** 2).sum())
        if e is not None:
            cross = xc[:, c] @ ec.T  # <X_jc, e_i>
            x_energy = x_energy - cross[perms, rows].sum(1) ** 2 / e_energy
        scale = 1.0 / (np.clip(d_norm, 1e-300, None)[:, None] * np.sqrt(np.clip(x_energy, 1e-300, None))[None])
        chunk = max(1, CHUNK_ELEMENTS // (n * q))
        for s in range(0, n_permutations, chunk):
            null[s:s + chunk, c] = (pairs[:, rows, perms[s:s + chunk]].sum(-1) * scale[:, s:s + chunk]).T
    best = np.where(usable, r, -np.inf).max(1)
    return np.clip(best, 0, None) ** 2 * share, np.where(usable, r, -np.inf).argmax(1), _permutation_p(best, null.max(1))


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
COLUMNS = ["n_images", "location_index", "location_ci_low", "location_ci_high", "location_p_shift", "location_p",
           "location_p_fdr", "content_index", "content_ci_low", "content_ci_high", "content_category",
           "content_p_shuffle", "content_p", "content_p_fdr", "routing", "x_deg", "y_deg", "spread_deg", "entropy"]


def routing_table(att: np.ndarray, grid: tuple[int, int], positions: np.ndarray, coverage: np.ndarray | None = None,
                  categories: tuple[str, ...] = (), settings: RoutingSettings = RoutingSettings(),
                  rng: np.random.Generator | int | None = 0, control: np.ndarray | None = None) -> pd.DataFrame:
    """Every measure of the module, one row per query of ``att`` ``(image, query, token)``.

    ``coverage`` ``(image, category, token)`` names where ``categories`` are
    in each image (NaN rows: unknown, left out of the content test); None,
    or fewer than two images with every mask known, skips the content
    test. ``control`` ``(image, token)``: a low-level map partialled out of
    the content measures (each token's share of the image's contrast
    energy; None: none). Columns: :data:`COLUMNS`.
    """
    settings.check()
    rng = np.random.default_rng(rng)
    att = np.asarray(att, np.float64)
    q = att.shape[1]
    boot = location_bootstrap(att, settings.n_bootstrap, rng)
    low, high = percentile_interval(boot, settings.confidence)
    p_shift = location_test(att, grid, settings.n_permutations, rng)
    p_location = _and_size_test(p_shift, boot, settings.min_location)
    index_c, best, p_shuffle, p_content = np.full(q, np.nan), np.full(q, -1), np.full(q, np.nan), None
    c_low, c_high = np.full(q, np.nan), np.full(q, np.nan)
    known = np.zeros(len(att), bool)
    if coverage is not None:
        known = np.isfinite(coverage).all((1, 2))
        if control is not None:
            known &= np.isfinite(control).all(1)
    if known.sum() >= 2:  # the content measures compare images: with fewer known, the content test is not run
        part = None if control is None else control[known]
        index_c, best, p_shuffle = content_test(att[known], coverage[known], settings.n_permutations, rng, part)
        c_boot = content_bootstrap(att[known], coverage[known], settings.n_bootstrap, rng, part)
        c_low, c_high = percentile_interval(c_boot, settings.confidence)
        p_content = _and_size_test(p_shuffle, c_boot, settings.min_content)
    loc_fdr, con_fdr, names = labels(p_location, p_content, settings.alpha)
    table = pd.DataFrame({
        "n_images": len(att), "location_index": location_index(att), "location_ci_low": low, "location_ci_high": high,
        "location_p_shift": p_shift, "location_p": p_location, "location_p_fdr": loc_fdr, "content_index": index_c,
        "content_ci_low": c_low, "content_ci_high": c_high,
        "content_category": [categories[b] if b >= 0 and b < len(categories) else "" for b in best],
        "content_p_shuffle": p_shuffle, "content_p": p_content if p_content is not None else np.nan,
        "content_p_fdr": con_fdr, "routing": names,
    })
    return pd.concat([table, centres(att, positions)], axis=1)[COLUMNS]


__all__ = ["COLUMNS", "CONTENT_ROUTED", "LABELS", "RoutingSettings", "above_minimum_p", "centres", "content_bootstrap",
           "content_test", "labels", "location_bootstrap", "location_index", "location_interval", "location_test",
           "percentile_interval", "routing_table", "token_positions_deg"]
