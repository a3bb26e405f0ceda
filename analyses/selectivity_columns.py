"""The columns of the selectivity table: one registry that the table, its dataset and the report's views read.

:data:`COLUMNS` lists every column of ``selectivity.csv`` in its order.
A statistic of the category-vs-rest contrast is one :class:`Column` with a
``value``: a function of :class:`Contrasts` (the arrays of one response
source, categories x ROI columns) that returns one value per contrast,
usually a function of :mod:`analyses.stats` (as ``d_prime`` is).
``dataset`` puts it into ``selectivity.nc``, ``shown`` into the report's
selectivity tables (:mod:`analyses.report_views`); the columns without a
``value`` are filled by :func:`analyses.selectivity.selectivity_table` and
the steps after it (the FDR, the reliability, the planted preference).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import stats as S


@dataclass(frozen=True)
class Contrasts:
    """What the tests of one response source give, each array (categories, ROI columns)."""

    moments: S.GroupMoments
    t: np.ndarray
    df: np.ndarray
    p: np.ndarray  # permutation p
    p_parametric: np.ndarray
    mean_ci_low: np.ndarray
    mean_ci_high: np.ndarray


@dataclass(frozen=True)
class Column:
    """One column of the selectivity table; see the module docstring."""

    name: str
    value: Callable[[Contrasts], np.ndarray] | None = None
    dataset: bool = False
    shown: bool = False


#: every column of the selectivity table, in its order
COLUMNS: tuple[Column, ...] = (
    Column("source", shown=True), Column("hemi", shown=True), Column("roi", shown=True), Column("roi_class"),
    Column("category", shown=True),
    Column("n", dataset=True, shown=True), Column("n_rest"),
    Column("mean", dataset=True, shown=True),
    Column("mean_ci_low", lambda c: c.mean_ci_low, dataset=True, shown=True),
    Column("mean_ci_high", lambda c: c.mean_ci_high, dataset=True, shown=True),
    Column("sd"),
    Column("mean_rest", lambda c: c.moments.mean_out),
    Column("t", lambda c: c.t, dataset=True),
    Column("df", lambda c: c.df),
    Column("d_prime", lambda c: S.d_prime(c.moments), dataset=True, shown=True),
    Column("selectivity_index", lambda c: S.selectivity_index(c.moments), dataset=True),
    Column("p_parametric", lambda c: c.p_parametric),
    Column("p", lambda c: c.p, dataset=True),
    Column("p_fdr", dataset=True, shown=True),
    Column("significant", dataset=True, shown=True),
    Column("preferred"), Column("expected"),
    Column("planted", shown=True), Column("r_heldout", shown=True), Column("reliable"), Column("supported", shown=True),
)


def names(*, dataset: bool = False, shown: bool = False) -> list[str]:
    """The columns' names in table order; ``dataset``/``shown``: only those of ``selectivity.nc``/the report's tables."""
    return [c.name for c in COLUMNS if (c.dataset or not dataset) and (c.shown or not shown)]


def statistics(contrasts: Contrasts) -> dict[str, np.ndarray]:
    """Every column that has a ``value``, computed: name -> (categories, ROI columns), in table order."""
    return {c.name: c.value(contrasts) for c in COLUMNS if c.value is not None}
