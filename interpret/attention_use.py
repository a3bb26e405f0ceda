"""Does the prediction use the attention? One row per ROI query: focus, token deletion, agreement with token IG.

An attention map is worth showing only as far as the model's prediction
depends on it. For each query of a run with decoder attention, on the
images of a map job:

* ``focus``: 1 minus the normalised entropy of the head-averaged attention
  (:func:`interpret.focus.focus`), mean over images: 0 for a uniform map;
* ``deletion_ratio``: how much more the ROI's prediction changes when the
  query's top-attended 20% of tokens are replaced by the mean token than
  when a random 20% are, and ``specificity``: than when the other queries'
  top-attended tokens are, each with its bootstrap interval over images
  (:mod:`model.scoring.faithfulness`); ``faithful`` when both reach their minimum;
* ``ig_rank_correlation``: Spearman correlation, per image, of the
  attention map with the magnitude of the token integrated gradients of
  the ROI's prediction (what the prediction depends on), mean over images;
* ``r_heldout`` and ``reliable``: does the run predict the ROI at all
  (validation images; :func:`model.scoring.faithfulness.query_reliability`)?

:func:`verdict` turns the table into the one sentence every report that
shows attention prints above it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import spearmanr

from model.rois import HEMIS
from model.runs import VAL_PRED, Run, load_run_array
from model.scoring import (MIN_RATIO, MIN_SPECIFICITY, SUMMARY_IMAGES, concatenate, deletion_changes, deletion_ratios,
                           describe_faithfulness, faithfulness_summary, query_reliability, run_summary)

from .focus import focus
from .maps import Inputs

#: the columns of :func:`attention_use`, in order
COLUMNS = ["hemi", "roi", "focus", "deletion_ratio", "deletion_ratio_ci_low", "deletion_ratio_ci_high", "specificity",
           "specificity_ci_low", "specificity_ci_high", "faithful", "ig_rank_correlation", "r_heldout", "reliable",
           "n_images"]


def run_reliability(run: Run) -> pd.DataFrame:
    """Per query of ``run``: ``r_heldout`` and ``reliable`` on its validation images (``query`` = ``hemi:roi``)."""
    idx = run.val_indices
    pred = np.concatenate([load_run_array(run.path, VAL_PRED, h, run.subject.n_vertices(h), len(idx)) for h in HEMIS], 1)
    measured = np.concatenate([np.asarray(run.subject.fmri[h][np.sort(idx)], np.float32)[np.argsort(np.argsort(idx))]
                               for h in HEMIS], 1)
    valid = np.isfinite(measured).all(0)
    table = query_reliability(pred, np.nan_to_num(measured), run.queries.memberships, valid)
    return table.assign(query=run.queries.names)


def _spearman_per_image(a: np.ndarray, g: np.ndarray) -> list[float]:
    """Spearman r of each image's two maps (images whose maps are constant or not finite left out)."""
    return [spearmanr(x.ravel(), y.ravel())[0] for x, y in zip(a, g)
            if np.isfinite(x).all() and np.isfinite(y).all() and x.std() > 0 and y.std() > 0]


class AttentionUse:
    """:func:`attention_use` over images that come in batches.

    What is kept of an image is a few numbers per query (its deletion
    changes, focus and IG correlation), not its maps.
    """

    def __init__(self, run: Run, seed: int = 0):
        self.run, self.seed = run, seed
        self.changes: list = []
        self.focus: dict[tuple[str, str], list[float]] = {}
        self.ig: dict[tuple[str, str], list[float]] = {}
        self.n = 0

    def add(self, batch: Inputs, ds: xr.Dataset) -> None:
        """Measure one batch: its tokens, and its maps ``ds`` (``attention_mean``, maybe token IG)."""
        self.changes.append(deletion_changes(self.run.model, batch.tokens, self.run.queries.memberships,
                                             seed=self.seed, first_image=self.n))
        self.n += len(batch.names)
        att = ds["attention_mean"]
        ig = np.abs(ds["token_integrated_gradients"]) if "token_integrated_gradients" in ds else None
        for hemi in att.hemi.values:
            for roi in att.roi.values:
                maps = att.sel(hemi=hemi, roi=roi).values
                if not np.isfinite(maps).all():
                    continue
                key = (str(hemi), str(roi))
                self.focus.setdefault(key, []).extend(focus(maps).tolist())
                if ig is not None:
                    self.ig.setdefault(key, []).extend(_spearman_per_image(maps, ig.sel(hemi=hemi, roi=roi).values))

    def table(self) -> pd.DataFrame:
        """The table of :func:`attention_use` (:data:`COLUMNS`) over every image added."""
        table = deletion_ratios(concatenate(self.changes), self.run.queries.names, seed=self.seed)
        table = table.merge(run_reliability(self.run)[["query", "r_heldout", "reliable"]], on="query")
        shown = pd.DataFrame([{"hemi": h, "roi": r, "focus": float(np.mean(v)),
                               "ig_rank_correlation": float(np.mean(self.ig[(h, r)])) if self.ig.get((h, r)) else np.nan}
                              for (h, r), v in self.focus.items()], columns=["hemi", "roi", "focus", "ig_rank_correlation"])
        return shown.merge(table, on=["hemi", "roi"])[COLUMNS]


def attention_use(run: Run, inputs: Inputs, ds: xr.Dataset, seed: int = 0) -> pd.DataFrame:
    """The table of the module for the queries whose attention ``ds`` holds (``attention_mean``).

    ``ds`` must hold the head-averaged attention of ``inputs``' images; the
    IG agreement column is filled where it also holds
    ``token_integrated_gradients`` (NaN otherwise).
    """
    use = AttentionUse(run, seed)
    use.add(inputs, ds)
    return use.table()


def run_faithfulness(run: Run, cache_dir=None) -> dict | None:
    """The run's attention faithfulness as ``tbe train`` measured it (``metrics.json``), or measured now the same way.

    None for encoders without decoder attention. Runs trained before the
    test existed (and ensembles) get it computed on the first
    :data:`~model.scoring.faithfulness.SUMMARY_IMAGES` validation images, as
    training would have; nothing is written.
    """
    if not run.model.capabilities.decoder_attention:
        return None
    recorded = run.metrics.get("attention_faithfulness")
    if recorded:
        return recorded
    idx = np.sort(run.val_indices)[:SUMMARY_IMAGES]
    paths = [run.subject.train_images[i] for i in idx]
    return run_summary(run.model, lambda: run.features(paths, cache_dir, device=str(run.device),
                                                       rows=[("train", int(i)) for i in idx]),
                       run.queries.memberships, run.queries.names,
                       run_reliability(run).drop(columns=["n_heldout", "query"]))


def describe_run(run: Run, cache_dir=None) -> str | None:
    """The run's faithfulness line (:func:`model.scoring.faithfulness.describe_faithfulness`), None without attention."""
    summary = run_faithfulness(run, cache_dir)
    return describe_faithfulness(summary) if summary else None


def verdict(table: pd.DataFrame) -> str:
    """The sentence above every attention figure: is this run's attention used by its predictions?"""
    summary = faithfulness_summary(table.assign(query=table["hemi"] + ":" + table["roi"]))
    n, total = summary["n_faithful_reliable"], summary["n_reliable"]
    rule = (f"replacing a query's top-attended 20% of tokens changes its ROI's prediction at least {MIN_RATIO:g}x more "
            f"than a random 20% and {MIN_SPECIFICITY:g}x more than the other queries' top-attended tokens")
    if total == 0:
        return "Attention faithfulness cannot be judged: no ROI shown here is reliably predicted."
    if summary["faithful"]:
        return f"Attention is faithful for all {total} reliably predicted ROIs shown ({rule})."
    worst = ", ".join(sorted(summary["unfaithful"], key=lambda q: summary["unfaithful"][q]["specificity"])[:6])
    return (f"WARNING: attention is NOT faithful for {total - n} of {total} reliably predicted ROIs ({worst}): their "
            f"attention maps do not show what their predictions use (faithful: {rule}).")


__all__ = ["AttentionUse", "COLUMNS", "attention_use", "describe_run", "run_faithfulness", "run_reliability", "verdict"]
