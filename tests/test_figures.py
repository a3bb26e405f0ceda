"""Figures are written whole or not at all, and leave no pyplot figure open."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.artist import Artist
import pytest
from PIL import Image

from model.figures import figure, png_bytes, save_figure


def test_a_figure_is_saved_as_a_png(tmp_path):
    fig = figure(figsize=(2, 1))
    fig.subplots().plot([0, 1], [1, 0])
    out = save_figure(fig, tmp_path / "sub" / "line.png", dpi=50)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] <= 100
    assert [p.name for p in out.parent.iterdir()] == ["line.png"]  # no temporary file left


class _Broken(Artist):
    def draw(self, renderer):
        raise RuntimeError("cannot draw")


def test_a_failing_save_leaves_the_old_file_and_no_partial(tmp_path):
    out = tmp_path / "figure.png"
    out.write_bytes(b"old")
    fig = figure()
    fig.add_artist(_Broken())
    with pytest.raises(RuntimeError, match="cannot draw"):
        save_figure(fig, out)
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["figure.png"]


def test_pyplot_figures_are_closed_after_rendering():
    before = set(plt.get_fignums())
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    assert png_bytes(fig)[:4] == b"\x89PNG"
    assert set(plt.get_fignums()) == before
