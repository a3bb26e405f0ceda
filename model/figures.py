"""Figures for files: made without pyplot, written atomically as PNG, coloured by one rule.

Library code draws on :func:`figure` (a :class:`matplotlib.figure.Figure`
outside pyplot: no backend is chosen, no window can open, nothing stays
registered once the figure is dropped) and writes with :func:`save_figure`,
which renders with Agg whatever the session's backend, so importing a
module of this suite never changes the backend of a notebook or a GUI. A
reader never sees a half-written PNG.

Colour maps are chosen in one place, :func:`colour_scale`: a diverging map
centred on 0 for signed values (r, differences, t), a sequential one from 0
for non-negative values (attention, percentages).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from .files import atomic_path


def figure(**kwargs: Any) -> Figure:
    """A new figure outside pyplot (``figsize`` ...); draw on ``fig.subplots(...)``."""
    return Figure(**kwargs)


def png_bytes(fig: Figure, dpi: int = 90) -> bytes:
    """``fig`` rendered as PNG (tight bounding box); a pyplot figure is closed after."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    if fig.canvas.manager is not None:  # made by pyplot: registered there until closed
        import matplotlib.pyplot as plt

        plt.close(fig)
    return buffer.getvalue()


def save_figure(fig: Figure, out: str | Path, dpi: int = 90) -> Path:
    """Write ``fig`` to ``out`` as PNG, atomically (see :func:`png_bytes`); returns ``out``."""
    out = Path(out)
    data = png_bytes(fig, dpi)
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return out


# --------------------------------------------------------------------------
# Colour maps: chosen here, for every figure of the suite
# --------------------------------------------------------------------------

#: Signed quantities (r, differences, t, d', signed attributions): white at 0, red above, blue below.
DIVERGING = "RdBu_r"
#: Non-negative quantities (attention, percent of the noise ceiling, magnitudes): dark at 0, bright at the top.
SEQUENTIAL = "inferno"


@dataclass(frozen=True)
class ColourScale:
    """A colour map and its limits: ``DIVERGING`` is always centred on 0 (``vmin == -vmax``)."""

    cmap: str
    vmin: float
    vmax: float

    @property
    def signed(self) -> bool:
        return self.cmap == DIVERGING

    @property
    def norm(self) -> Normalize:
        return Normalize(self.vmin, self.vmax)

    def imshow_kwargs(self) -> dict[str, Any]:
        """``cmap``, ``vmin`` and ``vmax`` for ``Axes.imshow`` and friends."""
        return {"cmap": self.cmap, "vmin": self.vmin, "vmax": self.vmax}


def is_signed(values: Any) -> bool:
    """Whether any finite value is negative."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return bool(v.size and v.min() < 0)


def colour_scale(values: Any = (), signed: bool | None = None, vmin: float | None = None, vmax: float | None = None,
                 percentile: float = 100.0) -> ColourScale:
    """The colour map and limits of a map of ``values``.

    Signed values (``signed=True``, or any negative value when ``signed`` is
    None) get :data:`DIVERGING` over ``[-L, L]``, so 0 is always the middle
    colour: r close to 0 looks neutral, not warm. Non-negative values get
    :data:`SEQUENTIAL` over ``[0, L]``. ``L`` is the ``percentile`` of the
    absolute values (100: the largest) unless ``vmax`` (or, signed, the
    larger of ``|vmin|`` and ``|vmax|``) is given; ``vmin`` of a sequential
    scale defaults to 0.
    """
    v = np.abs(np.asarray(values, float)).ravel()
    v = v[np.isfinite(v)]
    signed = is_signed(values) if signed is None else bool(signed)
    top = float(np.percentile(v, percentile)) if v.size else 1.0
    if signed:
        given = [abs(x) for x in (vmin, vmax) if x is not None]
        limit = max(given) if given else top
        limit = limit if limit > 0 else 1.0
        return ColourScale(DIVERGING, -limit, limit)
    low = 0.0 if vmin is None else float(vmin)
    high = float(vmax) if vmax is not None else top
    return ColourScale(SEQUENTIAL, low, high if high > low else low + 1.0)


def colormap_for(values: Any = (), signed: bool | None = None) -> str:
    """The colour map name :func:`colour_scale` chooses for ``values``."""
    return colour_scale(values, signed).cmap
