"""Can the selectivity p-values be trusted? Measured on a virtual subject, where the truth is known.

Repeated over seeds, with the run's predictions computed once:

* **shuffled labels** (predicted and measured responses): the category
  labels of the held-out images are shuffled, so no ROI is selective; the
  rate of p < alpha over all tests must be alpha, and the rate of seeds
  with any FDR-significant result at most alpha (BH controls the
  family-wise rate when every null hypothesis is true);
* **null ROIs, measured**: the ROIs planted to respond to nothing
  (mTL-faces, aTL-faces, mTL-bodies, mTL-words) get fresh measurement
  noise, drawn as the generator draws it, for every seed; their tests with
  the true labels must be significant at rate alpha;
* **null ROIs, predicted**: a claim from predicted responses needs the ROI
  to be reliably predicted (:mod:`analyses.responses`); with fresh noise in
  the held-out measurements, the rate of *supported* preferences of null
  ROIs must stay at or below alpha. The rate without that check is
  reported too: a run's predictions for an ROI it cannot predict may still
  differ between categories (they are a function of the image), and that
  is a statement about the model, not the brain;
* **planted recovery**: every category ROI with a planted preference must
  show that preference as FDR-significant, in each hemisphere where it
  exists (predicted: supported; measured: significant).

Rates come with exact (Clopper-Pearson) 95% intervals. Tests within a seed
are correlated (ROIs share images), so the intervals of per-test rates are
somewhat narrower than they would be for independent tests; the per-seed
family-wise rates have no such caveat.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from model.errors import InputError, OptionError
from model.files import write_csv
from model.progress import progress
from model.rois import HEMIS
from model.runs import Run, open_run

from . import stats as S
from .responses import heldout_responses, reliability
from .selectivity import SelectivitySettings, add_planted, add_reliability, selectivity_table
from .stimuli import subject_heldout

log = logging.getLogger(__name__)

N_SEEDS = 200
#: As many as the analysis uses: BH over ~250 tests needs p-values down to alpha / 250 = 2e-4, and a
#: permutation p-value cannot go below 1 / (B + 1); with fewer permutations a lone false positive could
#: never survive FDR and the family-wise rates would look better than they are.
N_PERMUTATIONS = 10_000


def rate_row(kind: str, test: str, source: str, hits: np.ndarray, alpha: float, unit: str) -> dict:
    """One calibration row: the rate of ``hits`` (seeds x tests) with its clustered exact interval."""
    hits = np.asarray(hits, bool).reshape(len(hits), -1)
    rate = S.clustered_rate(hits)
    row = {"kind": kind, "test": test, "source": source, "unit": unit, "n_seeds": len(hits), "n_tests": hits.size,
           "n_significant": int(hits.sum()), **rate, "alpha": alpha}
    # false positives: the nominal level is not exceeded beyond doubt; recovery: nothing missed
    row["nominal_ok"] = bool(rate["rate_ci_low"] <= alpha) if kind == "false_positive_rate" else bool(hits.all())
    return row


# --------------------------------------------------------------------------
# Shuffled labels: one pass of permutations serves every seed
# --------------------------------------------------------------------------

def shuffled_label_p(x: np.ndarray, codes: np.ndarray, n_categories: int, n_seeds: int, n_permutations: int,
                     rng: np.random.Generator) -> np.ndarray:
    """p-values ``(seed, C, K)`` of the tests run on ``n_seeds`` independently shuffled labellings.

    A shuffled labelling is itself a random permutation, so its statistics
    are drawn together with an independent reference set of permutations,
    against which each seed's p-value is computed.
    """
    perms = S.random_permutations(len(x), n_seeds + n_permutations, rng)
    t = S.permutation_statistics(x, codes, n_categories, perms)
    reference = np.sort(t[n_seeds:], axis=0)  # (B, C, K)
    observed = t[:n_seeds]
    tolerance = 1e-9 * np.maximum(1.0, np.abs(observed))
    # number of reference statistics >= each observed one, by binary search per (C, K) column
    flat_ref = reference.reshape(n_permutations, -1)
    flat_obs = (observed - tolerance).reshape(n_seeds, -1)
    below = np.stack([np.searchsorted(flat_ref[:, j], flat_obs[:, j], side="left") for j in range(flat_ref.shape[1])], 1)
    exceed = n_permutations - below
    return ((1.0 + exceed) / (n_permutations + 1.0)).reshape(observed.shape)


def shuffled_rows(x: np.ndarray, codes: np.ndarray, n_categories: int, source: str, n_seeds: int,
                  n_permutations: int, alpha: float, rng: np.random.Generator) -> list[dict]:
    p = shuffled_label_p(x, codes, n_categories, n_seeds, n_permutations, rng)
    per_seed_fdr = np.stack([S.fdr_bh(ps.ravel()) for ps in p])
    return [
        rate_row("false_positive_rate", "shuffled labels: p < alpha", source, p < alpha, alpha, "test"),
        rate_row("false_positive_rate", "shuffled labels: any FDR-significant result", source,
                 (per_seed_fdr < alpha).any(1), alpha, "seed"),
    ]


# --------------------------------------------------------------------------
# Null ROIs: fresh measurement noise
# --------------------------------------------------------------------------

def null_rois(run: Run) -> list[tuple[str, str]]:
    """(hemi, ROI) of the ROIs planted to respond to nothing."""
    return run.subject.truth.null_rois()


def fresh_null_measurements(run: Run, rois: list[tuple[str, str]], n_images: int, n_seeds: int,
                            rng: np.random.Generator) -> np.ndarray:
    """ROI means of fresh noise ``(seed, image, roi)``, drawn as the generator draws measurements.

    Null vertices have no signal, so a measurement is the average of
    ``n_repeats`` z-scored noise trials (:meth:`model.truth.GroundTruth.null_measurements`).
    """
    truth = run.subject.truth
    masks = {hemi: [run.subject.roi_mask(roi, hemi) for h, roi in rois if h == hemi] for hemi in HEMIS}
    out = np.empty((n_seeds, n_images, len(rois)))
    for s in progress(range(n_seeds), desc="fresh noise", unit="seed"):
        column = 0
        for hemi in HEMIS:
            if not masks[hemi]:
                continue
            union = np.any(masks[hemi], axis=0)
            noise = truth.null_measurements(hemi, union, n_images, rng)
            for mask in masks[hemi]:
                out[s, :, column] = noise[:, mask[union]].mean(1)
                column += 1
    return out


def _order(rois: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(h, r) for h in HEMIS for (hh, r) in rois if hh == h]


# --------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------

def calibrate(run: Run, n_seeds: int = N_SEEDS, alpha: float = 0.05, cache_dir: str | Path | None = None,
              n_permutations: int = N_PERMUTATIONS, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The calibration table, and the selectivity table of the true labels it was measured with."""
    if run.subject.truth is None:
        raise InputError(run.subject.root, "calibration needs a virtual subject (its ground truth says which ROIs are null)")
    if n_seeds < 1:
        raise OptionError("n_seeds", f"must be at least 1, got {n_seeds}")
    rng = np.random.default_rng([seed, 7])
    settings = SelectivitySettings(n_permutations=n_permutations, n_bootstrap=200, alpha=alpha)
    stimuli = subject_heldout(run)
    rows_all, predicted_all, measured_all = heldout_responses(run, cache_dir)
    position = {r: i for i, r in enumerate(rows_all)}
    labelled = np.array([position[r] for r in stimuli.fmri_rows])
    sources = {"predicted": predicted_all.isel(image=labelled), "measured": measured_all.isel(image=labelled)}
    codes = stimuli.codes
    n_cat = len(stimuli.categories)

    # the analysis itself, with the true labels
    reliable = reliability(predicted_all, measured_all, alpha)
    table = pd.concat([selectivity_table(r, stimuli.labels, stimuli.categories, settings, seed, name)
                       for name, r in sources.items()], ignore_index=True)
    table = add_planted(add_reliability(table, reliable), run)

    rows = []
    for name, responses in sources.items():
        x = responses.stack(target=("hemi", "roi")).transpose("image", "target").values
        x = x[:, np.isfinite(x).all(0)]
        rows += shuffled_rows(x, codes, n_cat, name, n_seeds, n_permutations, alpha, rng)

    # null ROIs: fresh noise in every measurement
    nulls = _order(null_rois(run))
    fresh = fresh_null_measurements(run, nulls, len(rows_all), n_seeds, rng)  # (seed, all held-out, roi)
    x = fresh[:, labelled].transpose(1, 0, 2).reshape(len(labelled), -1)  # every seed's ROIs side by side
    _, p = S.permutation_test(x, codes, n_cat, n_permutations, rng)  # (C, seed * roi)
    hits = (p < alpha).reshape(n_cat, n_seeds, len(nulls)).transpose(1, 0, 2)
    rows.append(rate_row("false_positive_rate", "null ROIs, fresh noise: p < alpha", "measured", hits, alpha, "test"))
    rows += _null_predicted_rows(table, reliable, predicted_all, fresh, nulls, alpha, n_seeds)
    rows += _recovery_rows(table, alpha)
    return pd.DataFrame(rows), table


def _null_predicted_rows(table: pd.DataFrame, reliable: pd.DataFrame, predicted_all: xr.DataArray, fresh: np.ndarray,
                         nulls: list[tuple[str, str]], alpha: float, n_seeds: int) -> list[dict]:
    """Null ROIs from predicted responses, with and without the reliability check (fresh noise per seed)."""
    predicted = table[table["source"] == "predicted"]
    is_null = predicted.set_index(["hemi", "roi"]).index.isin(nulls)
    significant = predicted[is_null].pivot(index=["hemi", "roi"], columns="category", values="significant")
    significant = significant.reindex(nulls).to_numpy(bool)  # (null roi, category)
    rows = [rate_row("false_positive_rate", "null ROIs: predicted responses significant (no reliability check)",
                     "predicted", significant[None], alpha, "test")]
    # reliability p of every ROI, the null ones recomputed against each seed's fresh measurements
    pred = np.stack([predicted_all.sel(hemi=h, roi=r).values for h, r in nulls], axis=1)  # (image, roi)
    res = stats.pearsonr(pred[None], fresh, axis=1, alternative="greater")
    p_null = np.asarray(res.pvalue)  # (seed, roi)
    keys = list(zip(reliable["hemi"], reliable["roi"]))
    null_index = [keys.index(k) for k in nulls]
    supported = np.empty((n_seeds, *significant.shape), bool)
    for s in range(n_seeds):
        p_all = reliable["p_reliable"].to_numpy().copy()
        p_all[null_index] = p_null[s]
        gate = S.fdr_bh(p_all)[null_index] < alpha
        supported[s] = significant & gate[:, None]
    rows.append(rate_row("false_positive_rate", "null ROIs: predicted preference supported (with reliability check)",
                         "predicted", supported, alpha, "test"))
    return rows


def _recovery_rows(table: pd.DataFrame, alpha: float) -> list[dict]:
    """Planted category ROIs whose planted category is significant (predicted: supported)."""
    rows = []
    for source, column in (("predicted", "supported"), ("measured", "significant")):
        part = table[(table["source"] == source) & (table["category"] == table["planted"])]
        if part.empty:
            continue
        hits = part[column].astype(bool)
        row = rate_row("planted_recovery", "planted category ROIs: preferred category FDR-significant", source,
                       hits.to_numpy()[None], alpha, "roi")
        row["missed"] = ";".join(f"{h}:{r}" for h, r in zip(part["hemi"][~hits], part["roi"][~hits]))
        rows.append(row)
    return rows


def run_calibration(run_dir: str | Path, data_dir: str | Path | None, out_dir: str | Path, n_seeds: int = N_SEEDS,
                    alpha: float = 0.05, cache_dir: str | Path | None = None, n_permutations: int = N_PERMUTATIONS,
                    seed: int = 0, device: str = "cpu") -> pd.DataFrame:
    """Measured false-positive rates and planted recovery of the selectivity tests (virtual subjects).

    The run's backbone and encoder run on ``device`` (see :mod:`model.device`).

    Parameters
    ----------
    run_dir : path
        A complete run directory trained on a virtual subject.
    data_dir : path or None
        The data directory (None: the run's).
    out_dir : path
        Folder for ``calibration.csv``, ``calibration_selectivity.csv`` and ``calibration.png``.
    n_seeds : int
        Repetitions (label shuffles, fresh noise draws).
    alpha : float
        The nominal level.
    cache_dir : path, optional
        Feature cache (the training entries are reused).
    n_permutations : int
        Permutations per test.
    seed : int
        Seed of everything random.

    Returns
    -------
    pandas.DataFrame
        One row per rate: ``test``, ``source``, ``n_tests``, ``n_significant``,
        ``rate``, ``rate_ci_low``, ``rate_ci_high`` (Clopper-Pearson 95%), ``nominal_ok``.
    """
    from .selectivity_figures import plot_calibration

    run = open_run(run_dir, data_dir, device)
    table, selectivity = calibrate(run, n_seeds, alpha, cache_dir, n_permutations, seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "calibration.csv", table)
    write_csv(out_dir / "calibration_selectivity.csv", selectivity)
    plot_calibration(table, out_dir / "calibration.png", alpha)
    for row in table.itertuples():
        log.info("%-70s %-9s %.4f [%.4f, %.4f] (%d/%d)", row.test, row.source, row.rate, row.rate_ci_low, row.rate_ci_high,
                 row.n_significant, row.n_tests)
    return table
