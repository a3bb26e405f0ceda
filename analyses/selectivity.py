"""ROI selectivity with calibrated statistics: ``tbe selectivity``.

For every hemisphere x ROI x category, the ROI-mean response to that
category's images is compared with its response to all other images:

* ``mean`` with a bootstrap confidence interval (``mean_ci_low``, ``mean_ci_high``);
* Welch's ``t``, ``d_prime`` and the ``selectivity_index``
  (:mod:`analyses.stats` defines them);
* ``p``: a permutation p-value (category labels shuffled, 10,000 times by
  default, one-sided: the category drives the ROI *more* than the rest, the
  direction of a claim like "FFA prefers faces");
* ``p_fdr``: Benjamini-Hochberg over every test of the analysis (all
  hemispheres, ROIs and categories of one response source).

Sources: ``predicted`` (the run's predictions) and ``measured`` (the fMRI,
for the images that have it). An image may show several categories (a
labels file with several rows per image, :mod:`analyses.stimuli`): the rest
of a category is then every image that does not show it, and a permutation
moves an image's whole set of categories. A prediction can be selective without the
brain being so, when the run does not predict that ROI at all; so predicted
rows also carry the ROI's held-out reliability (``r_heldout``,
``reliable``), and ``supported`` marks a predicted preference that is both
significant and reliably predicted. The attention analysis
(:mod:`analyses.attention_selectivity`) asks the same of each ROI query's
attention.

Outputs in ``OUT/``: ``selectivity.csv``, ``attention_selectivity.csv``
(transformer runs), ``selectivity.nc``, ``selectivity.png``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from model.errors import InputError, OptionError
from model.files import atomic_path, write_csv
from model.progress import progress
from model.options import check_settings, setting
from model.runs import Run, open_run

from . import selectivity_columns as columns
from . import stats as S
from .responses import features_for, heldout_responses, measured_roi_means, predicted_roi_means, reliability
from .stimuli import CLASS_CATEGORY, StimulusOptions, StimulusSet, choose_stimuli

log = logging.getLogger(__name__)

ALPHA = 0.05
N_PERMUTATIONS = 10_000
N_BOOTSTRAP = 2000
#: The table's columns, in order (the registry: :mod:`analyses.selectivity_columns`).
COLUMNS = columns.names()


@dataclass(frozen=True)
class SelectivitySettings:
    """How the contrasts are tested; each field is also a ``tbe selectivity`` option (``--n-permutations`` ...)."""

    n_permutations: int = setting(N_PERMUTATIONS, "label permutations per test", minimum=1)
    n_bootstrap: int = setting(N_BOOTSTRAP, "bootstrap resamples of the confidence intervals", minimum=1)
    alpha: float = setting(ALPHA, "FDR level", minimum=0, maximum=1)
    alternative: str = setting("greater", "category vs rest: greater (a preference), less or two-sided",
                               choices=tuple(S.ALTERNATIVES))
    confidence: float = setting(0.95, "level of the bootstrap confidence intervals", minimum=0, maximum=1)

    def check(self) -> None:
        """One clear error naming the option of the first setting out of range."""
        check_settings(self)


# --------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------

def _columns(responses: xr.DataArray) -> tuple[np.ndarray, list[tuple[str, str, str]], np.ndarray]:
    """(images, K) matrix of the hemi x ROI columns that exist, their (hemi, roi, class), and which images it keeps.

    Images without any response (no fMRI: held-out test images of a real
    subject) are left out first, so that they cannot remove every column.
    """
    stacked = responses.stack(target=("hemi", "roi")).transpose("image", "target")
    values = stacked.values
    images = np.isfinite(values).any(1)
    present = np.isfinite(values[images]).all(0) & images.any()
    keys = [(str(h), str(r), str(c)) for (h, r), c, ok in
            zip(stacked.target.values, stacked.roi_class.values, present) if ok]
    return values[images][:, present], keys, images


def comparable(member: np.ndarray, min_images: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Which images and categories a category-vs-rest test can use: ``(image mask, category mask)``.

    A category needs ``min_images`` images that show it and as many that do
    not. An image whose every category is dropped is dropped too (it was
    labelled, but with nothing tested here), unless it showed none to begin
    with (the rest of every category). Repeated until nothing changes.
    """
    images, categories = np.ones(len(member), bool), np.ones(member.shape[1], bool)
    showed_none = ~member.any(1)
    while True:
        shown = member[images].sum(0)
        keep = categories & (shown >= min_images) & (images.sum() - shown >= min_images)
        kept_images = images & (member[:, keep].any(1) | showed_none)
        if (keep == categories).all() and (kept_images == images).all():
            return images, categories
        images, categories = kept_images, keep


def selectivity_table(responses: xr.DataArray, labels: Sequence[str] | np.ndarray, categories: Sequence[str],
                      settings: SelectivitySettings = SelectivitySettings(), seed: int = 0, source: str = "predicted") -> pd.DataFrame:
    """Every hemi x ROI x category contrast of one response source, with BH-FDR over all of them.

    Parameters
    ----------
    responses : xarray.DataArray
        ROI means ``(image, hemi, roi)`` (see :func:`analyses.responses.roi_means`);
        images whose responses are missing for every ROI are left out.
    labels : sequence of str, or ndarray
        Category of each image, or an ``(image, category)`` bool membership
        matrix (images that show several categories, or none).
    categories : sequence of str
        Category order of the table (and of a membership matrix's columns).
    settings : SelectivitySettings
        Permutations, bootstrap resamples, alpha and the alternative.
    seed : int
        Seed of the permutations and the bootstrap.
    source : str
        Written into the ``source`` column.
    """
    settings.check()
    categories = list(categories)
    labels = np.asarray(labels)
    member = (labels.astype(bool) if labels.ndim == 2 else
              np.array([[label == c for c in categories] for label in labels], bool).reshape(len(labels), -1))
    x, keys, rows = _columns(responses)
    member = member[rows]
    images, usable = comparable(member)
    if not keys or not usable.any():
        raise InputError(source, f"responses exist for {len(member)} labelled image(s): no category has two images "
                                 "that show it and two that do not")
    x, member = x[images], member[images][:, usable]
    present = [c for c, ok in zip(categories, usable) if ok]
    rng = np.random.default_rng(seed)
    moments = S.category_moments(x, member, len(present))
    t, df = S.welch_t(moments)
    _, p = S.permutation_test(x, member, len(present), settings.n_permutations, rng, settings.alternative)
    p_parametric = _parametric_p(t, df, settings.alternative)
    lows, highs = np.empty_like(t), np.empty_like(t)
    for c in progress(range(len(present)), desc=f"{source} bootstrap intervals", unit="category"):
        lows[c], highs[c] = S.bootstrap_mean_ci(x[member[:, c]], settings.confidence, settings.n_bootstrap, rng)
    statistics = columns.statistics(columns.Contrasts(moments, t, df, p, p_parametric, lows, highs))

    rows = []
    for c, category in enumerate(present):
        for k, (hemi, roi, roi_class) in enumerate(keys):
            rows.append({
                "source": source, "hemi": hemi, "roi": roi, "roi_class": roi_class, "category": category,
                "n": int(moments.n_in[c, 0]), "n_rest": int(moments.n_out[c, 0]),
                "mean": moments.mean_in[c, k], "sd": np.sqrt(moments.var_in[c, k]),
                **{name: values[c, k] for name, values in statistics.items()},
                "preferred": bool(c == np.argmax(moments.mean_in[:, k])),
                "expected": CLASS_CATEGORY.get(roi_class) == category,
            })
    table = pd.DataFrame(rows)
    table["p_fdr"] = S.fdr_bh(table["p"].to_numpy())
    table["significant"] = table["p_fdr"] < settings.alpha
    return table


def _parametric_p(t: np.ndarray, df: np.ndarray, alternative: str) -> np.ndarray:
    """Welch's p from the t distribution, next to the permutation p for comparison."""
    tails = {"greater": lambda: stats.t.sf(t, df), "less": lambda: stats.t.cdf(t, df),
             "two-sided": lambda: 2 * stats.t.sf(np.abs(t), df)}
    return tails[alternative]()


def add_reliability(table: pd.DataFrame, reliable: pd.DataFrame | None) -> pd.DataFrame:
    """Join the held-out reliability to predicted rows; ``supported`` = significant and reliable."""
    table = table.copy()
    if reliable is None or table.empty:
        table["r_heldout"], table["reliable"] = np.nan, pd.array([pd.NA] * len(table), dtype="boolean")
        table["supported"] = table["significant"]
        return table
    joined = table.merge(reliable[["hemi", "roi", "r_heldout", "reliable"]], on=["hemi", "roi"], how="left")
    predicted = joined["source"].eq("predicted")
    joined["r_heldout"] = joined["r_heldout"].where(predicted)
    joined["reliable"] = joined["reliable"].astype("boolean").where(predicted)  # measured rows: not applicable
    joined["supported"] = joined["significant"] & (~predicted | joined["reliable"].fillna(False)).astype(bool)
    return joined


def add_planted(table: pd.DataFrame, run: Run) -> pd.DataFrame:
    """The virtual subject's planted preference of each ROI ('' for real subjects, 'none' for null ROIs)."""
    table = table.copy()
    if run.subject.truth is None:
        table["planted"] = ""
        return table
    preferences = run.subject.truth.preferences()
    table["planted"] = [preferences.get(r) or "none" for r in table["roi"]]
    return table


# --------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------

def analyse(run: Run, stimuli: StimulusSet, settings: SelectivitySettings = SelectivitySettings(), seed: int = 0,
            cache_dir: str | Path | None = None, attention: bool = True) -> dict:
    """Selectivity of predicted (and measured) responses, and of attention, for one stimulus set.

    Returns a dict with ``table`` (selectivity rows), ``attention``
    (attention rows or None), ``reliability`` and ``responses``
    (``(source, image, hemi, roi)``).
    """
    features = features_for(run, stimuli.paths, stimuli.fmri_rows, cache_dir)
    sources = {"predicted": predicted_roi_means(run, features)}
    if stimuli.fmri_rows is not None:
        measured = measured_roi_means(run, stimuli.fmri_rows)
        if measured is not None:
            sources["measured"] = measured
    tables = []
    for name, responses in sources.items():
        try:
            tables.append(selectivity_table(responses, stimuli.membership, stimuli.categories, settings, seed, name))
        except InputError as exc:
            if name == "predicted":
                raise
            log.info("measured responses not tested: %s", exc.problem)
    _, held_pred, held_meas = heldout_responses(run, cache_dir)
    reliable = reliability(held_pred, held_meas, settings.alpha) if held_pred is not None else None
    table = add_planted(add_reliability(pd.concat(tables, ignore_index=True), reliable), run)
    att = None
    if attention and stimuli.masks is not None and run.model.capabilities.decoder_attention:
        from .attention_selectivity import attention_table

        att = add_planted(attention_table(run, features, stimuli, settings, seed), run)
    elif attention:
        log.info("attention selectivity skipped: %s", "no category masks" if stimuli.masks is None
                 else f"the run is {run.config.encoder_arch!r}, not a transformer")
    names = [p.name for p in stimuli.paths]
    responses = xr.concat([r.assign_coords(image=names) for r in sources.values()], dim="source")
    responses = responses.assign_coords(source=list(sources), label=("image", list(stimuli.labels)))
    return {"table": table[COLUMNS], "attention": att, "reliability": reliable, "responses": responses}


def to_dataset(result: dict, stimuli: StimulusSet) -> xr.Dataset:
    """The tables as labelled arrays ``(source, hemi, roi, category)``, plus the per-image responses."""
    table = result["table"]
    order = {k: list(dict.fromkeys(table[k])) for k in ("source", "hemi", "roi", "category")}  # keep Algonauts order
    numeric = columns.names(dataset=True)
    ds = table.set_index(list(order))[numeric].astype({"significant": "int8"}).to_xarray().reindex(order)
    ds["responses"] = result["responses"].drop_vars("roi_class").reindex(roi=order["roi"], source=order["source"])
    if result["attention"] is not None and len(result["attention"]):
        att_cols = ["n", "mass", "chance", "ratio", "p", "p_fdr", "significant"]
        att = result["attention"].set_index(["hemi", "roi", "category"])[att_cols].astype({"significant": "int8"})
        ds = ds.merge(att.to_xarray().rename({c: f"attention_{c}" for c in att_cols}), join="left")
    ds.attrs.update({"stimuli": stimuli.name, "alternative": "category > rest (one-sided)",
                     "units": "ROI-mean response (z-scored per vertex)"})
    return ds


def write_outputs(result: dict, stimuli: StimulusSet, out_dir: Path) -> list[Path]:
    """Every output file, each written atomically."""
    from .selectivity_figures import plot_attention, plot_selectivity

    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "selectivity.csv"]
    write_csv(written[-1], result["table"])
    if result["reliability"] is not None:
        write_csv(out_dir / "reliability.csv", result["reliability"])
        written.append(out_dir / "reliability.csv")
    if result["attention"] is not None:
        write_csv(out_dir / "attention_selectivity.csv", result["attention"])
        written.append(out_dir / "attention_selectivity.csv")
        if len(result["attention"]):
            written.append(plot_attention(result["attention"], out_dir / "attention_selectivity.png"))
    with atomic_path(out_dir / "selectivity.nc") as tmp:
        to_dataset(result, stimuli).to_netcdf(tmp)
    written.append(out_dir / "selectivity.nc")
    written.append(plot_selectivity(result["table"], out_dir / "selectivity.png"))
    return written


def run_selectivity(run_dir: str | Path, data_dir: str | Path | None, out_dir: str | Path, subj: int | None = 1,
                    settings: SelectivitySettings = SelectivitySettings(), stimuli: StimulusOptions | None = None,
                    seed: int = 0, cache_dir: str | Path | None = None, device: str = "cpu") -> pd.DataFrame:
    """ROI selectivity of a run's predictions (and the fMRI where the images have it).

    Parameters
    ----------
    run_dir : path
        A complete run directory.
    data_dir : path or None
        The data directory (None: the one the run was trained on).
    out_dir : path
        Folder for ``selectivity.csv``, ``attention_selectivity.csv``,
        ``reliability.csv``, ``selectivity.nc`` and ``selectivity.png``.
    subj : int or None
        Subject number; must be the run's (None: the run's).
    settings : SelectivitySettings
        Permutations, bootstrap resamples, FDR level, the alternative and
        the confidence level (checked before anything is read).
    stimuli : StimulusOptions, optional
        A labels file (:mod:`analyses.stimuli`) with its folder, categories
        and masks. Without one: a virtual subject's held-out images, else the
        rendered localizer.
    seed : int
        Seed of permutations, bootstrap and the rendered localizer.
    cache_dir : path, optional
        Feature cache (default ``$TBE_CACHE_DIR`` or ``~/.cache/tbe``).
    device : str
        Where the backbone, the encoder and the attention run (``auto``: CUDA,
        then MPS, then CPU; bf16 autocast on CUDA, see :mod:`model.device`).

    Returns
    -------
    pandas.DataFrame
        The selectivity table (one row per source x hemi x ROI x category).
    """
    settings.check()
    run = open_run(run_dir, data_dir, device)
    if subj is not None and subj != run.config.subj:
        raise OptionError("subj", f"the run was trained on subject {run.config.subj}, not {subj}")
    chosen = choose_stimuli(run, stimuli, cache_dir, seed)
    result = analyse(run, chosen, settings, seed, cache_dir)
    for path in write_outputs(result, chosen, Path(out_dir)):
        log.info("wrote %s", path)
    return result["table"]
