"""Figures for files: made without pyplot, written atomically as PNG.

Library code draws on :func:`figure` (a :class:`matplotlib.figure.Figure`
outside pyplot: no backend is chosen, no window can open, nothing stays
registered once the figure is dropped) and writes with :func:`save_figure`,
which renders with Agg whatever the session's backend, so importing a
module of this suite never changes the backend of a notebook or a GUI. A
reader never sees a half-written PNG.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

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
