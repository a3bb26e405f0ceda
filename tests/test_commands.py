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
    assert tbe("-q", "predict", "--run", trained_run, "--images", images, "--out", tmp_path / "p.csv") == 2


def test_score_command(trained_run, tmp_path, capsys):
    out = tmp_path / "scores.json"
    assert tbe("-q", "score", "--run", trained_run, "--out", out) == 0
    scores = json.loads(out.read_text())
    assert 0 < scores["challenge_score"] < 100
    assert "challenge score" in capsys.readouterr().out


def test_surface_maps_and_gifti(trained_run, small_data, tmp_path):
    prefix = tmp_path / "val_r"
    assert tbe("-q", "surface", "--data-dir", small_data, "--values", f"{trained_run}/{{hemi}}_val_corr.npy",
               "--out", prefix) == 0
    assert (tmp_path / "val_r.png").stat().st_size > 10_000
    s = load_subject(small_data, 1)
    for hemi in HEMIS:
        values = np.load(trained_run / f"{hemi}_val_corr.npy")
        on_surface = load_gifti(f"{prefix}.{hemi}.func.gii")
        assert on_surface.shape == (10242,)
        mask = s.fsaverage_masks[hemi]
        assert np.allclose(on_surface[mask], values, equal_nan=True)
        assert np.isnan(on_surface[~mask]).all()


def test_surface_rejects_wrong_lengths(small_data):
    s = load_subject(small_data, 1)
    with pytest.raises(InputError, match="lh values"):
        to_fsaverage(np.zeros(5), s, "lh")
