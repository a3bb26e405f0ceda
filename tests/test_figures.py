"""Figures are written whole or not at all, and leave no pyplot figure open."""
from __future__ import annotations

from pathlib import Path

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


# --------------------------------------------------------------------------
# One colour rule (issue 15): diverging and centred for signed values, sequential from 0 otherwise
# --------------------------------------------------------------------------

import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from model.figures import DIVERGING, SEQUENTIAL, colour_scale  # noqa: E402


def test_signed_values_get_a_diverging_map_centred_on_zero():
    r = np.array([-0.05, 0.02, 0.6, np.nan])
    scale = colour_scale(r)
    assert scale.cmap == DIVERGING and scale.vmin == -scale.vmax == -0.6
    # r close to 0 sits at the middle colour, not at a warm one
    assert scale.norm(0.0) == 0.5
    # a signed quantity stays diverging even where every value happens to be positive
    assert colour_scale([0.1, 0.3], signed=True).cmap == DIVERGING


def test_non_negative_values_get_a_sequential_map_from_zero():
    scale = colour_scale([0.0, 0.2, 0.5])
    assert scale.cmap == SEQUENTIAL and (scale.vmin, scale.vmax) == (0.0, 0.5)
    assert colour_scale([50.0], signed=False, vmin=0, vmax=100).imshow_kwargs() == {
        "cmap": SEQUENTIAL, "vmin": 0.0, "vmax": 100.0}
    assert colour_scale([1, 2, 3, 100], percentile=50).vmax == 2.5


def test_surface_maps_of_r_are_signed_and_ceiling_percentages_are_not():
    from analyses.accuracy import VertexScores, surface_maps

    r = {"lh": np.array([0.1, -0.2]), "rh": np.array([0.3, 0.0])}
    scores = [VertexScores(name="transformer", split="val", r=r, val_r=r, score={h: np.array([10.0, 90.0]) for h in r}),
              VertexScores(name="ridge", split="val", r=r, val_r=r)]
    kinds = {stem: kw.get("signed") for _, stem, _, kw in surface_maps(scores)}
    assert kinds == {"transformer_val_r": True, "transformer_minus_ridge_r": True,
                     "transformer_percent_of_ceiling": False}


def _maps(rois):
    rng = np.random.default_rng(0)
    att = rng.random((2, 2, len(rois), 4, 4))
    ig = rng.normal(size=(2, 2, len(rois), 4, 4))
    att[:, :, [i for i, r in enumerate(rois) if r.startswith("vertex:")]] = np.nan  # a vertex has no query
    dims = ("image", "hemi", "roi", "y", "x")
    coords = {"image": ["a.png", "b.png"], "hemi": ["lh", "rh"], "roi": rois}
    return xr.Dataset({"attention_mean": (dims, att), "integrated_gradients": (dims, ig)}, coords=coords)


@pytest.mark.parametrize("shared", [True, False])
def test_overlays_have_colour_bars_a_sign_legend_and_vertex_targets(tmp_path, monkeypatch, shared):
    import interpret.overlay as ov

    ds = _maps(["V1v", "vertex:lh:3"])
    assert ov.rois_with_maps(ds, "lh") == ["V1v", "vertex:lh:3"]  # the vertex has attributions, so it is shown
    drawn = {}
    monkeypatch.setattr(ov, "save_figure", lambda fig, out: drawn.setdefault("fig", fig) and Path(out))
    ov.overlay(ds, np.zeros((8, 8, 3)), 0, "lh", ["V1v", "vertex:lh:3"], tmp_path / "o.png", shared_scale=shared)
    fig = drawn["fig"]
    texts = [t.get_text() for ax in fig.axes for t in ax.texts] + [t.get_text() for t in fig.texts]
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert "lh vertex:lh:3" in labels and any(t.startswith("no map") for t in texts)
    assert any(t.startswith("focus ") for t in texts)  # attention panels carry their focus
    assert any(ov.SIGN_LEGEND in t for t in texts)  # the signed IG column has a sign legend
    panels = 2 * 3  # two targets x (the image, attention, IG)
    assert len(fig.axes) - panels == (2 if shared else 3)  # colour bars: one per column, or one per drawn panel
    images = [im for ax in fig.axes for im in ax.images if im.get_cmap().name in (DIVERGING, SEQUENTIAL)]
    assert {im.get_cmap().name for im in images} == {DIVERGING, SEQUENTIAL}
    assert all(np.isclose(im.norm.vmin, -im.norm.vmax) for im in images if im.get_cmap().name == DIVERGING)


def test_the_head_figure_labels_its_rows_and_notes_near_uniform_maps():
    from analyses import report_views as rv

    ds = _maps(["V1v"])
    ds["attention"] = ds.attention_mean.expand_dims(head=2).transpose("image", "hemi", "roi", "head", "y", "x") * 0 + 1
    ds["attention_mean"] = ds.attention.mean("head")
    fig = rv.head_grid(ds, [np.zeros((8, 8, 3))] * 2, "lh", "V1v", shared_scale=True)
    assert [ax.get_ylabel() for ax in fig.axes[:4:2]] == ["a.png", "b.png"]
    assert len(fig.axes) == 2 * 2 + 1  # the panels and one colour bar
    assert "close to uniform" in rv.near_uniform_note(ds, "lh", ["V1v"])
    assert rv.near_uniform_note(_maps(["V1v"]).assign(attention_mean=lambda d: d.attention_mean ** 50), "lh", ["V1v"]) == ""
    plt.close(fig)
