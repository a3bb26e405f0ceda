"""What is computed from maps, on maps whose answer is known: centres, focus, quadrants, agreement, completeness.

Also the method registry: every map method, attention included, is looked
up and computed the same way.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from interpret import attribution
from interpret.agreement import method_agreement
from interpret.attribution import METHODS, Method, Settings, compute_methods, map_variable, method, method_variables
from interpret.completeness import convergence_table
from interpret.focus import focus, map_centres
from interpret.maps import MapGrid, centre_of_mass_deg, per_roi_variables
from interpret.pipeline import MapJob
from interpret.retinotopy import add_expected_quadrant, expected_quadrant
from model.encoders import Capabilities
from model.errors import InputError
from model.vision import FIELD_OF_VIEW_DEG

#: 8 x 8 cells over an 8-pixel image: cell (row, col) has its centre at ((col + 0.5) / 8, (row + 0.5) / 8)
GRID = MapGrid(size=8, image_side=8, input_size=8, token_grid=(2, 2))


def _maps(values: np.ndarray, hemis=("lh", "rh"), rois=("V1v", "V1d"), name="m") -> xr.DataArray:
    """(image, hemi, roi, y, x) maps on :data:`GRID`."""
    return xr.DataArray(values, dims=("image", "hemi", "roi", "y", "x"),
                        coords={"hemi": list(hemis), "roi": list(rois), "y": GRID.coords, "x": GRID.coords}, name=name)


def _one_hot(row: int, col: int) -> np.ndarray:
    m = np.zeros((8, 8), np.float32)
    m[row, col] = 1
    return m


def test_centre_of_mass_is_in_degrees_with_y_up():
    deg_per_cell = FIELD_OF_VIEW_DEG / 8
    x, y = centre_of_mass_deg(_one_hot(0, 7), GRID)  # top right
    assert x == pytest.approx(3.5 * deg_per_cell) and y == pytest.approx(3.5 * deg_per_cell)
    assert centre_of_mass_deg(np.ones((8, 8)), GRID) == pytest.approx((0.0, 0.0))
    assert np.isnan(centre_of_mass_deg(-np.ones((8, 8)), GRID)).all()  # only the positive part counts


def test_focus_is_zero_for_uniform_and_one_for_a_single_cell():
    maps = np.stack([np.ones((8, 8)), _one_hot(3, 4), np.where(np.arange(64).reshape(8, 8) < 32, 1.0, -5.0)])
    f = focus(maps)
    assert f[0] == pytest.approx(0.0, abs=1e-6) and f[1] == pytest.approx(1.0)
    assert f[2] == pytest.approx(1 - np.log(32) / np.log(64))  # negatives count as 0: half the cells


def test_map_centres_report_position_spread_and_focus():
    values = np.zeros((2, 2, 2, 8, 8), np.float32)
    values[:, 0, 0] = _one_hot(0, 7)  # lh V1v: top right in both images
    values[0, 0, 1], values[1, 0, 1] = _one_hot(7, 0), _one_hot(7, 2)  # lh V1d: bottom left, moving right
    values[:, 1, 0] = 1.0  # rh V1v: uniform
    values[:, 1, 1] = np.nan  # rh V1d: absent
    table = map_centres(xr.Dataset({"m": _maps(values)}), GRID, "m").set_index(["hemi", "roi"])
    cell = FIELD_OF_VIEW_DEG / 8
    assert list(table.index) == [("lh", "V1v"), ("lh", "V1d"), ("rh", "V1v")]
    assert table.loc[("lh", "V1v"), ["x_deg", "y_deg"]].tolist() == pytest.approx([3.5 * cell, 3.5 * cell])
    assert table.loc[("lh", "V1v"), "spread_deg"] == pytest.approx(0) and table.loc[("lh", "V1v"), "focus"] == pytest.approx(1)
    assert table.loc[("lh", "V1d"), ["x_deg", "y_deg"]].tolist() == pytest.approx([-2.5 * cell, -3.5 * cell])
    assert table.loc[("lh", "V1d"), "spread_deg"] == pytest.approx(cell)  # each image one cell from the mean
    assert table.loc[("rh", "V1v"), "focus"] == pytest.approx(0, abs=1e-6)


def test_expected_quadrants_follow_retinotopy():
    assert expected_quadrant("lh", "V1v") == (1, 1)  # left hemisphere, ventral: right upper field
    assert expected_quadrant("rh", "V3d") == (-1, -1)
    assert expected_quadrant("lh", "hV4") == (1, 1)
    assert expected_quadrant("lh", "FFA-1") is None
    centres = pd.DataFrame({"hemi": ["lh", "lh", "rh", "rh"], "roi": ["V1v", "V1d", "V2v", "FFA-1"],
                            "x_deg": [1.0, 1.0, 1.0, 1.0], "y_deg": [2.0, 2.0, 2.0, 2.0]})
    marked = add_expected_quadrant(centres)
    assert marked.in_expected_quadrant.tolist()[:3] == [1.0, 0.0, 0.0] and np.isnan(marked.in_expected_quadrant.iloc[3])
    assert "in_expected_quadrant" not in centres  # the input is left alone


def test_method_agreement_compares_absolute_maps_by_rank():
    rng = np.random.default_rng(0)
    a = rng.random((6, 2, 2, 8, 8)).astype(np.float32)
    ds = xr.Dataset({"a": _maps(a), "neg": _maps(-2 * a), "other": _maps(rng.random(a.shape)),
                     "flat": _maps(np.ones_like(a))})
    agree = method_agreement(ds, ["a", "neg", "other", "flat"])
    assert np.diag(agree.values).tolist() == [1, 1, 1, 1]
    assert agree.loc["a", "neg"] == pytest.approx(1.0) and agree.loc["neg", "a"] == pytest.approx(1.0)
    assert abs(agree.loc["a", "other"]) < 0.1
    assert np.isnan(agree.loc["a", "flat"])  # a constant map has no ranks


def test_convergence_table_relates_delta_to_the_gap():
    delta = xr.DataArray(np.array([[[0.1, np.nan]], [[-0.3, np.nan]]]), dims=("image", "hemi", "roi"),
                         coords={"hemi": ["lh"], "roi": ["V1v", "PPA"]})
    ds = xr.Dataset({"integrated_gradients_delta": delta, "saliency": _maps(np.zeros((2, 1, 2, 8, 8)), ("lh",), ("V1v", "PPA"))})
    gaps = pd.DataFrame({"method": ["integrated_gradients"] * 2, "hemi": ["lh"] * 2, "roi": ["V1v"] * 2,
                         "image": [0, 1], "gap": [2.0, -6.0]})
    table = convergence_table(ds, gaps)
    assert len(table) == 1  # PPA has no finite delta
    row = table.iloc[0]
    assert (row.method, row.hemi, row.roi) == ("integrated_gradients", "lh", "V1v")
    assert row.mean_abs_delta == pytest.approx(0.2) and row.max_abs_delta == pytest.approx(0.3)
    assert row.relative_delta == pytest.approx(0.2 / 4.0)
    assert "relative_delta" not in convergence_table(ds)


# --------------------------------------------------------------------------
# The method registry
# --------------------------------------------------------------------------

def test_attention_is_a_registered_method_like_the_others():
    from interpret.attention import query_attention

    assert METHODS["attention"].compute is query_attention and METHODS["attention"].needs_attention
    assert map_variable("attention") == "attention_mean"
    assert map_variable("saliency") == "saliency" and map_variable("nt_saliency") == "nt_saliency"
    assert method("nt_saliency") == (METHODS["saliency"], True)
    captum = [m for m, spec in METHODS.items() if spec.explainer is not None]
    assert "attention" not in captum and all(METHODS[m].compute is attribution.attribute_maps for m in captum)
    with pytest.raises(InputError, match="unknown method 'gradcam'; choose from attention, integrated_gradients"):
        method("gradcam")
    ds = xr.Dataset({"attention_mean": _maps(np.zeros((1, 2, 2, 8, 8))), "saliency": _maps(np.zeros((1, 2, 2, 8, 8)))})
    assert method_variables(ds, ["saliency", "attention", "occlusion"]) == ["saliency", "attention_mean"]


def test_methods_are_computed_in_groups_in_registry_order(monkeypatch):
    """Methods sharing a way of computing are computed together, in the order asked; groups in registry order."""
    calls = []

    def first(run, inputs, targets, names, settings, encoder):
        calls.append(("first", list(names), encoder))
        return xr.Dataset({n: xr.DataArray([1.0]) for n in names})

    def second(run, inputs, targets, names, settings, encoder):
        calls.append(("second", list(names), encoder))
        return xr.Dataset({n: xr.DataArray([2.0]) for n in names})

    registry = {"q": Method("read", "query", compute=first), "b": Method("b", "pixel", compute=second),
                "a": Method("a", "pixel", compute=second)}
    monkeypatch.setattr(attribution, "METHODS", registry)
    parts = compute_methods(None, None, None, ["a", "b", "q"], Settings(), encoder="random")
    assert calls == [("first", ["q"], "random"), ("second", ["a", "b"], "random")]
    assert [list(p.data_vars) for p in parts] == [["q"], ["a", "b"]]


def test_a_method_needing_attention_is_refused_for_other_encoders():
    ridge = SimpleNamespace(model=SimpleNamespace(capabilities=Capabilities(closed_form=True)),
                            config=SimpleNamespace(encoder_arch="ridge"))
    with pytest.raises(InputError, match="attention needs the transformer; this run is 'ridge'"):
        MapJob(methods=("saliency", "attention")).check(ridge)
    MapJob(methods=("saliency",)).check(ridge)  # the others are fine


@pytest.mark.parametrize("change, option, message", [
    ({"n_steps": 1}, "n_steps", "must be at least 2, got 1"),
    ({"baseline": "pink"}, "baseline", "unknown baseline 'pink'; choose from black, grey, blur"),
    ({"nt_stdev": -0.1}, "nt_stdev", "must be at least 0"),
    ({"occlusion_window": 0}, "occlusion_window", "must be at least 1"),
])
def test_settings_out_of_range_name_their_parameter(change, option, message):
    Settings().check()
    with pytest.raises(InputError) as err:
        MapJob(methods=("saliency",), settings=Settings(**change)).check(
            SimpleNamespace(model=SimpleNamespace(core=object()), config=SimpleNamespace(encoder_arch="ridge")))
    assert err.value.where == option and message in err.value.problem


def test_per_roi_variables_take_head_averages():
    ds = xr.Dataset({"attention": xr.DataArray(np.zeros((1, 2, 2, 3, 8, 8)), dims=("image", "hemi", "roi", "head", "y", "x")),
                     "attention_mean": _maps(np.zeros((1, 2, 2, 8, 8))), "saliency": _maps(np.zeros((1, 2, 2, 8, 8))),
                     "backbone_rollout": xr.DataArray(np.zeros((1, 8, 8)), dims=("image", "y", "x")),
                     "saliency_delta": xr.DataArray(np.zeros((1, 2, 2)), dims=("image", "hemi", "roi"))})
    assert per_roi_variables(ds) == ["attention_mean", "saliency"]
