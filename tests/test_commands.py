"""The tbe commands around a trained run: predict, score, surface."""
from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from analyses.surface import load_gifti, to_fsaverage
from model.errors import InputError
from model.rois import HEMIS
from model.subject import load_subject

from .conftest import tbe


def test_predict_a_folder_of_images(trained_run, small_data, cache_dir, tmp_path):
    images = small_data / "subj01" / "test_split" / "test_images"
    out = tmp_path / "pred.nc"
    assert tbe("-q", "predict", "--run", trained_run, "--images", images, "--out", out, "--cache-dir", cache_dir) == 0
    ds = xr.open_dataset(out)
    assert list(ds["image"].values[:2]) == sorted(p.name for p in images.iterdir())[:2]
    for hemi in HEMIS:
        assert np.allclose(ds[hemi].values, np.load(trained_run / f"{hemi}_pred_test.npy"), atol=1e-5)
    npz = tmp_path / "pred.npz"
    assert tbe("-q", "predict", "--run", trained_run, "--images", images, "--out", npz, "--cache-dir", cache_dir) == 0
    with np.load(npz, allow_pickle=False) as f:
        assert f["lh"].shape == ds["lh"].shape
        assert (f["lh_floc_faces"] == "FFA-1").sum() > 0
    assert tbe("-q", "predict", "--run", trained_run, "--images", images, "--out", tmp_path / "p.csv") == 2


def test_score_command(trained_run, tmp_path, capsys):
    out = tmp_path / "scores.json"
    assert tbe("-q", "score", "--run", trained_run, "--out", out) == 0
    scores = json.loads(out.read_text())
    assert 0 < scores["challenge_score"] < 100
    assert "challenge score" in capsys.readouterr().out


def test_surface_maps_and_gifti(trained_run, small_data, tmp_path, monkeypatch):
    import analyses.surface

    titles = []
    plot = analyses.surface.plot_surface
    monkeypatch.setattr(analyses.surface, "plot_surface", lambda *a, **kw: titles.append(kw["title"]) or plot(*a, **kw))
    prefix = tmp_path / "val_r"
    assert tbe("-q", "surface", "--data-dir", small_data, "--values", f"{trained_run}/{{hemi}}_val_corr.npy",
               "--out", prefix) == 0
    assert titles == ["val_corr"]  # the file stem, never the template's {hemi}
    assert (tmp_path / "val_r.png").stat().st_size > 10_000
    s = load_subject(small_data, 1)
    for hemi in HEMIS:
        values = np.load(trained_run / f"{hemi}_val_corr.npy")
        on_surface = load_gifti(f"{prefix}.{hemi}.func.gii")
        assert on_surface.shape == (10242,)
        mask = s.fsaverage_masks[hemi]
        assert np.allclose(on_surface[mask], values, equal_nan=True)
        assert np.isnan(on_surface[~mask]).all()


def test_a_figure_title_never_shows_a_template():
    from analyses.surface import values_title

    assert values_title("RUN/{hemi}_val_corr.npy") == "val_corr"
    assert values_title("{hemi}_best_layer.npy") == "best_layer"
    assert values_title("maps/{hemi}.r-{hemi}.npy") == "r"
    assert values_title("{hemi}.npy") == "values"
    assert "{" not in values_title("x/{hemi}/{hemi}__corr.npy")


def test_surface_rejects_wrong_lengths(small_data):
    s = load_subject(small_data, 1)
    with pytest.raises(InputError, match="lh values"):
        to_fsaverage(np.zeros(5), s, "lh")


def test_predict_a_folder_of_mixed_sizes(trained_run, small_data, cache_dir, tmp_path):
    """Images of any size are brought to the run's input size, as preprocessing does; 16-bit PNGs are scaled."""
    from PIL import Image

    test_images = sorted((small_data / "subj01" / "test_split" / "test_images").iterdir())[:2]
    folder = tmp_path / "mixed"
    folder.mkdir()
    originals = [Image.open(p).convert("RGB") for p in test_images]
    originals[0].save(folder / "a_native.png")
    originals[0].resize((300, 300), Image.BICUBIC).save(folder / "b_larger.png")
    originals[1].save(folder / "c_native.png")
    grey = np.asarray(originals[1].convert("L"), np.uint16) * 257
    Image.fromarray(grey).save(folder / "d_grey16.png")
    originals[1].convert("L").convert("RGB").save(folder / "e_grey8.png")
    out = tmp_path / "pred.npz"
    assert tbe("-q", "predict", "--run", trained_run, "--images", folder, "--out", out, "--cache-dir", cache_dir) == 0
    with np.load(out, allow_pickle=False) as f:
        names, lh = list(f["images"]), f["lh"]
    assert names == ["a_native.png", "b_larger.png", "c_native.png", "d_grey16.png", "e_grey8.png"]
    assert np.allclose(lh[0], np.load(trained_run / "lh_pred_test.npy")[0], atol=1e-5), "native images as before"
    assert np.corrcoef(lh[0], lh[1])[0, 1] > 0.95, "a larger copy predicts nearly the same"
    assert np.allclose(lh[3], lh[4], atol=1e-5), "a 16-bit grey image predicts as its 8-bit version"


def test_predictions_carry_each_vertex_s_roi_so_sel_by_roi_works(trained_run, small_data, cache_dir, tmp_path):
    """`tbe predict`'s NetCDF labels every vertex with its ROI per class (issue 15)."""
    from model.runs.predictions import load_predictions
    from model.subject import load_subject

    images = small_data / "subj01" / "test_split" / "test_images"
    out = tmp_path / "pred.nc"
    assert tbe("-q", "predict", "--run", trained_run, "--images", images, "--out", out, "--cache-dir", cache_dir) == 0
    subject = load_subject(small_data, 1, check_images=False)
    preds = load_predictions(out)
    for hemi in HEMIS:
        mask = subject.roi_mask("FFA-1", hemi)
        ffa = preds.sel({f"{hemi}_floc_faces": "FFA-1"})[hemi]
        assert mask.sum() > 0 and ffa.shape == (len(preds.image), mask.sum())
        assert np.array_equal(ffa.values, preds[hemi].values[:, mask])
        assert np.array_equal(preds[f"{hemi}_vertex"].values, np.arange(len(mask)))
        v1 = preds[f"{hemi}_prf_visualrois"].values
        assert np.array_equal(v1 == "V1v", subject.roi_mask("V1v", hemi)) and "" in set(v1)
    plain = xr.open_dataset(out)  # without the helper, the coordinates are there too
    assert plain["lh"].where(plain["lh_floc_faces"] == "FFA-1", drop=True).shape[1] == subject.roi_mask("FFA-1", "lh").sum()
