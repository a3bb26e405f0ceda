"""Numbers as a paper's tables print them: one format per kind of quantity, chosen by the column's name.

Every table a report shows goes through :func:`format_table` (the notebooks
display DataFrames with :func:`analyses.report_views.table_html`, which calls
it), so one kind of number reads the same in every table:

========  ==============================================  =========================
kind      columns (by name)                               printed as
========  ==============================================  =========================
p         ``p``, ``p_fdr``, ``content_p_fdr``, ...        ``0.012``; below 0.001 ``4.00e-04``
count     ``n``, ``n_vertices``, ...; integer columns     ``19004``
percent   ``challenge_score*``, ``score_nc_positive*``    ``54.1``
small     ``*delta*``, ``*loss*``                         ``0.012``; outside [0.001, 10^4) ``2.50e-05``
effect    everything else: r, d', indices, means, ...     ``0.569`` (three decimals)
========  ==============================================  =========================

A table whose rows hold different quantities (a ``measure`` column naming
each row's, as :func:`analyses.accuracy.compare_scores` has) formats each row
by its measure. Adding a kind: a function in :data:`FORMATTERS` and a rule in
:data:`COLUMN_KINDS`. Only the text changes: the numbers (and the CSV files
the notebooks write) stay as computed.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

import pandas as pd


def _finite(x: Any) -> float | None:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _fixed(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # no "-0.000"


def effect(x: Any) -> str:
    """r, d', an index, a mean: three decimals (``0.569``, ``1.206``)."""
    value = _finite(x)
    return "" if value is None else _fixed(value, 3)


def p_value(x: Any) -> str:
    """A p-value: three decimals, in e-notation only below 0.001 (``0.012``, ``4.00e-04``)."""
    value = _finite(x)
    if value is None:
        return ""
    return f"{value:.2e}" if 0 < abs(value) < 1e-3 else _fixed(value, 3)


def count(x: Any) -> str:
    """A count: an integer (``19004``); a count that is not whole (a mean count) keeps one decimal."""
    value = _finite(x)
    if value is None:
        return ""
    return str(int(round(value))) if float(value).is_integer() else f"{value:.1f}"


def percent(x: Any) -> str:
    """A score in percent (the challenge score): one decimal (``54.1``)."""
    value = _finite(x)
    return "" if value is None else _fixed(value, 1)


def small(x: Any) -> str:
    """A quantity of any magnitude (a convergence delta, a loss): three decimals, in e-notation outside [0.001, 10^4)."""
    value = _finite(x)
    if value is None:
        return ""
    return f"{value:.2e}" if value != 0 and not 1e-3 <= abs(value) < 1e4 else _fixed(value, 3)


#: Kind -> formatter of one value (NaN and None print as blank)
FORMATTERS: dict[str, Callable[[Any], str]] = {
    "p": p_value, "count": count, "percent": percent, "small": small, "effect": effect,
}

#: Column-name rules, first match wins (matched against the name's ``_``-separated words); the rest is ``effect``
COLUMN_KINDS: list[tuple[str, re.Pattern]] = [
    ("p", re.compile(r"(^|_)p(_|$)")),  # p, p_fdr, p_parametric, location_p_shift, content_p_fdr, p_fdr_vs_contrast
    ("count", re.compile(r"^(n|count)(_|$)|_count$")),  # n, n_rest, n_vertices, n_significant, count
    ("percent", re.compile(r"(^|_)(challenge_score|score_nc_positive|percent)(_|$)")),
    ("small", re.compile(r"(^|_)(delta|loss)(_|$)")),  # mean_abs_delta, relative_delta, train_loss
]

#: Columns that name the quantity of each row (a long table): its kind then applies to the row
ROW_KIND_COLUMNS = ("measure",)


def column_name(column: Any) -> str:
    """A column's name as text (a MultiIndex column's levels joined by ``_``)."""
    if isinstance(column, tuple):
        return "_".join(str(c) for c in column if str(c))
    return str(column)


def kind_of(name: Any) -> str | None:
    """The kind a name declares (a column or a measure), or None: no rule matches it."""
    text = column_name(name).lower().replace(" ", "_").replace("-", "_")
    for kind, pattern in COLUMN_KINDS:
        if pattern.search(text):
            return kind
    return None


def column_kind(values: pd.Series, name: Any = None) -> str:
    """The kind of a numeric column: by its name, else ``count`` for integers and ``effect`` for the rest."""
    kind = kind_of(values.name if name is None else name)
    if kind is not None:
        return kind
    return "count" if pd.api.types.is_integer_dtype(values) else "effect"


def format_value(value: Any, kind: str) -> str:
    """``value`` as text by ``kind`` (one of :data:`FORMATTERS`); NaN as blank."""
    return FORMATTERS[kind](value)


def _is_number(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` with every numeric column as text, each value formatted by its kind.

    Columns of text, booleans and other objects are left as they are (NaN
    and None become blank). In a table with a :data:`ROW_KIND_COLUMNS`
    column, a numeric column whose own name declares no kind takes each
    row's kind from that column (``r`` rows: three decimals; ``challenge_score``
    rows: one).
    """
    shown = table.copy()
    row_column = next((c for c in table.columns if column_name(c) in ROW_KIND_COLUMNS), None)
    row_kinds = ([kind_of(m) for m in table[row_column]] if row_column is not None else None)
    for i, column in enumerate(table.columns):
        values = table.iloc[:, i]
        if not _is_number(values):
            shown.isetitem(i, values.astype(object).where(values.notna(), ""))
            continue
        own = kind_of(column)
        default = column_kind(values, column)
        kinds = ([k or default for k in row_kinds] if own is None and row_kinds is not None
                 else [default] * len(values))
        shown.isetitem(i, pd.Series([format_value(v, k) for v, k in zip(values.to_numpy(), kinds)],
                                    index=table.index, dtype=object))
    return shown

