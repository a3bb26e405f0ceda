"""The statistics of selectivity, written once: effect sizes, permutation tests, FDR, intervals.

Conventions
-----------
* A *contrast* compares one category with the rest (all other images).
* Variances are unbiased (``ddof=1``).
* Welch's t: ``(m1 - m2) / sqrt(v1/n1 + v2/n2)``, df by Welch-Satterthwaite.
* d-prime: ``(m1 - m2) / sqrt((v1 + v2) / 2)``, the fMRI selectivity
  literature's effect size (e.g. Grill-Spector et al.).
* Selectivity index: ``(m1 - m2) / (|m1| + |m2|)`` in [-1, 1]. The classic
  ``(p - n) / (p + n)`` assumes positive responses; encoder predictions and
  measured betas here are z-scored, so the magnitudes go in the denominator.
* Permutation p-values count the observed labelling among the permutations,
  ``(1 + #{T* >= T}) / (B + 1)``, so they are never 0 and the test is exact.

Everything takes arrays with images on the first axis and any number of
response columns (ROIs, vertices) after it, and is vectorised over them.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

from model.progress import progress

#: How the alternative hypothesis turns a statistic into "at least as extreme".
ALTERNATIVES = {
    "greater": lambda t: t,
    "less": lambda t: -t,
    "two-sided": np.abs,
}


@dataclass
class GroupMoments:
    """Counts, means and unbiased variances of a category (``in``) and the rest (``out``)."""

    n_in: np.ndarray
    mean_in: np.ndarray
    var_in: np.ndarray
    n_out: np.ndarray
    mean_out: np.ndarray
    var_out: np.ndarray


def _moments(n: np.ndarray, total: np.ndarray, squares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = total / n
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (squares - n * mean**2) / (n - 1)
    return mean, np.maximum(var, 0.0)  # rounding can make a zero variance slightly negative


def moments_from_sums(sums: np.ndarray, squares: np.ndarray, counts: np.ndarray,
                      total: np.ndarray, total_squares: np.ndarray, n: int) -> GroupMoments:
    """Category-vs-rest moments from per-category sums (``(..., C, K)``) and the totals (``(K,)``)."""
    counts = np.asarray(counts, float).reshape(-1, 1)  # (C, 1): broadcasts over permutations and columns
    mean_in, var_in = _moments(counts, sums, squares)
    mean_out, var_out = _moments(n - counts, total - sums, total_squares - squares)
    return GroupMoments(counts, mean_in, var_in, n - counts, mean_out, var_out)


def as_membership(codes: np.ndarray, n_categories: int) -> np.ndarray:
    """``(N, C)`` bool: which categories each image shows.

    ``codes`` is one category index per image, or already such a matrix
    (images that show several categories, or none). The *rest* of a
    category is every image that does not show it.
    """
    codes = np.asarray(codes)
    if codes.ndim == 2:
        if codes.shape[1] != n_categories:
            raise ValueError(f"membership has {codes.shape[1]} categories, expected {n_categories}")
        return codes.astype(bool)
    return codes[:, None] == np.arange(n_categories)[None, :]


def category_moments(x: np.ndarray, codes: np.ndarray, n_categories: int) -> GroupMoments:
    """Moments of each category against the rest: arrays ``(C, K)`` for ``x`` of shape ``(N, K)``.

    ``codes``: one category per image, or a membership matrix (:func:`as_membership`).
    Two-pass (means first), so responses far from zero lose no precision.
    """
    x = _as_2d(x)
    member = as_membership(codes, n_categories)
    parts = [two_group_moments(x, member[:, c], ~member[:, c]) for c in range(n_categories)]
    stack = {f: np.stack([np.broadcast_to(getattr(p, f), x.shape[1:]) for p in parts])
             for f in ("n_in", "mean_in", "var_in", "n_out", "mean_out", "var_out")}
    stack["n_in"], stack["n_out"] = stack["n_in"][:, :1], stack["n_out"][:, :1]
    return GroupMoments(**stack)


def two_group_moments(x: np.ndarray, first: np.ndarray, second: np.ndarray) -> GroupMoments:
    """Moments of the images in ``first`` against those in ``second`` (boolean masks over images)."""
    x = _as_2d(x)
    a, b = x[np.asarray(first, bool)], x[np.asarray(second, bool)]
    return GroupMoments(np.float64(len(a)), a.mean(0), a.var(0, ddof=1), np.float64(len(b)), b.mean(0), b.var(0, ddof=1))


def welch_t(m: GroupMoments) -> tuple[np.ndarray, np.ndarray]:
    """Welch's t and its Welch-Satterthwaite degrees of freedom."""
    a, b = m.var_in / m.n_in, m.var_out / m.n_out
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (m.mean_in - m.mean_out) / np.sqrt(a + b)
        df = (a + b) ** 2 / (a**2 / (m.n_in - 1) + b**2 / (m.n_out - 1))
    return t, df


def d_prime(m: GroupMoments) -> np.ndarray:
    """``(m_in - m_out) / sqrt((v_in + v_out) / 2)``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (m.mean_in - m.mean_out) / np.sqrt((m.var_in + m.var_out) / 2)


def selectivity_index(m: GroupMoments) -> np.ndarray:
    """``(m_in - m_out) / (|m_in| + |m_out|)``, in [-1, 1]."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (m.mean_in - m.mean_out) / (np.abs(m.mean_in) + np.abs(m.mean_out))


def _as_2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, float)
    return x.reshape(len(x), -1)


# --------------------------------------------------------------------------
# Permutation test of every category-vs-rest contrast at once
# --------------------------------------------------------------------------

def permutation_statistics(x: np.ndarray, codes: np.ndarray, n_categories: int, permutations: np.ndarray,
                           chunk_elements: int = 2**21) -> np.ndarray:
    """Welch t of every contrast under each label permutation: ``(B, C, K)``.

    ``permutations`` is ``(B, N)``, each row a permutation of the images;
    row ``b`` relabels image ``i`` with ``codes[permutations[b, i]]`` (for a
    membership matrix, its row: an image keeps its set of categories). The
    category sums of all permutations in a chunk are one matrix product,
    ``membership(permuted labels) @ [x, x**2]``; counts and totals do not change
    under permutation, so the rest's moments follow from them. Work is
    chunked to about ``chunk_elements`` numbers.
    """
    x = _as_2d(x)
    x = x - x.mean(0)  # t does not change; sums of squares of centred data lose no precision
    n, k = x.shape
    member = as_membership(codes, n_categories)
    counts = member.sum(0)
    if (counts == 0).any():
        raise ValueError("every category needs at least one image")
    both = np.concatenate([x, x**2], axis=1)  # (N, 2K): sums and sums of squares in one product
    total, total_sq = x.sum(0), (x**2).sum(0)
    out = np.empty((len(permutations), n_categories, k))
    step = max(1, chunk_elements // (n * n_categories))
    with progress(total=len(permutations), desc="permutations", unit="perm") as bar:
        for s in range(0, len(permutations), step):
            labels = member[permutations[s:s + step]]  # (b, N, C)
            b = len(labels)
            onehot = labels.transpose(0, 2, 1).reshape(b * n_categories, n).astype(float)
            sums = (onehot @ both).reshape(b, n_categories, 2 * k)
            out[s:s + b] = _welch_t_from_sums(sums[..., :k], sums[..., k:], counts, total, total_sq, n)
            bar.update(b)
    return out


def _welch_t_from_sums(sums: np.ndarray, squares: np.ndarray, counts: np.ndarray, total: np.ndarray,
                       total_squares: np.ndarray, n: int) -> np.ndarray:
    """Welch t only (no df), with few temporaries: the permutation loop's hot path.

    Same arithmetic as ``welch_t(moments_from_sums(...))[0]``, which the tests check.
    """
    n1 = np.asarray(counts, float).reshape(-1, 1)
    n2 = n - n1
    rest = total - sums
    m1, m2 = sums / n1, rest / n2
    se2 = np.maximum(squares - sums * m1, 0.0)
    se2 /= (n1 - 1) * n1  # v1 / n1
    v2 = total_squares - squares
    v2 -= rest * m2
    np.maximum(v2, 0.0, out=v2)
    v2 /= (n2 - 1) * n2  # v2 / n2
    se2 += v2
    m1 -= m2
    with np.errstate(invalid="ignore", divide="ignore"):
        m1 /= np.sqrt(se2, out=se2)
    return m1


def random_permutations(n: int, n_permutations: int, rng: np.random.Generator) -> np.ndarray:
    """``(B, N)`` independent uniform permutations of ``range(n)``."""
    return rng.permuted(np.broadcast_to(np.arange(n), (n_permutations, n)), axis=1)


def permutation_p(observed: np.ndarray, null: np.ndarray, alternative: str = "greater") -> np.ndarray:
    """``(1 + #{null at least as extreme}) / (B + 1)`` along the first axis of ``null``.

    Ties within floating-point rounding count as "at least as extreme", so
    the identity permutation is never counted as beating itself.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {', '.join(ALTERNATIVES)}")
    side = ALTERNATIVES[alternative]
    obs = side(observed)
    tolerance = 1e-9 * np.maximum(1.0, np.abs(obs))
    exceed = (side(null) >= obs - tolerance).sum(0)
    p = (1.0 + exceed) / (len(null) + 1.0)
    return np.where(np.isfinite(observed), p, np.nan)


def permutation_test(x: np.ndarray, codes: np.ndarray, n_categories: int, n_permutations: int = 10_000,
                     rng: np.random.Generator | int | None = 0, alternative: str = "greater") -> tuple[np.ndarray, np.ndarray]:
    """Welch t of every category-vs-rest contrast and its permutation p-value, each ``(C, K)``.

    Under the null hypothesis the labels are exchangeable (responses do
    not depend on category), so shuffling them gives the exact null
    distribution of the statistic.
    """
    rng = np.random.default_rng(rng)
    x = _as_2d(x)
    observed = welch_t(category_moments(x, codes, n_categories))[0]
    null = permutation_statistics(x, codes, n_categories, random_permutations(len(x), n_permutations, rng))
    return observed, permutation_p(observed, null, alternative)


# --------------------------------------------------------------------------
# Intervals and multiple comparisons
# --------------------------------------------------------------------------

def bootstrap_mean_ci(x: np.ndarray, confidence: float = 0.95, n_resamples: int = 2000,
                      rng: np.random.Generator | int | None = 0, method: str = "BCa") -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap confidence interval of the mean of each column of ``x`` (images, K)."""
    x = _as_2d(x)
    if len(x) < 2:
        return np.full(x.shape[1], np.nan), np.full(x.shape[1], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate columns (constant responses) give NaN, said in the table
        res = stats.bootstrap((x,), np.mean, axis=0, vectorized=True, confidence_level=confidence,
                              n_resamples=n_resamples, method=method, rng=np.random.default_rng(rng))
    return np.asarray(res.confidence_interval.low), np.asarray(res.confidence_interval.high)


def fdr_bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values over all finite entries of ``p`` (NaN stays NaN)."""
    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = stats.false_discovery_control(p[finite], method="bh")
    return out


def binomial_interval(k: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson (exact) interval of a proportion ``k / n``, from beta quantiles.

    Equals ``scipy.stats.binomtest(k, n).proportion_ci(method='exact')`` for
    whole numbers and also takes the effective (fractional) counts of
    :func:`clustered_rate`.
    """
    if n <= 0:
        return np.nan, np.nan
    a = (1 - confidence) / 2
    low = stats.beta.ppf(a, k, n - k + 1) if k > 0 else 0.0
    high = stats.beta.ppf(1 - a, k + 1, n - k) if k < n else 1.0
    return float(low), float(high)


def clustered_rate(hits: np.ndarray, confidence: float = 0.95) -> dict:
    """Rate of ``hits`` (clusters x tests per cluster) with an interval that respects clustering.

    Tests of one seed share its images and labels, so they are not
    independent; the Clopper-Pearson interval is computed at the Kish
    effective sample size ``n / deff``, with the design effect
    ``deff = m * var(per-cluster rate) / (p (1 - p))`` (at least 1).
    """
    hits = np.asarray(hits, bool)
    hits = hits.reshape(len(hits), -1)
    n, (k, m) = hits.size, hits.shape
    rate = float(hits.mean()) if n else np.nan
    deff = 1.0
    if k > 1 and m > 1 and 0 < rate < 1:
        deff = max(1.0, float(hits.mean(1).var(ddof=1)) * m / (rate * (1 - rate)))
    n_eff = n / deff
    low, high = binomial_interval(rate * n_eff, n_eff, confidence)
    return {"rate": rate, "rate_ci_low": low, "rate_ci_high": high, "n_effective": n_eff, "design_effect": deff}


def auc(scores: np.ndarray, members: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for telling ``members`` from the rest (Mann-Whitney U)."""
    scores, members = np.asarray(scores, float), np.asarray(members, bool)
    ok = np.isfinite(scores)
    pos, neg = scores[ok & members], scores[ok & ~members]
    if not len(pos) or not len(neg):
        return np.nan
    return float(stats.mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """``2 |a & b| / (|a| + |b|)`` of two boolean maps (NaN when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else np.nan
