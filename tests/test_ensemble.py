"""Ensembles of runs (tbe ensemble), grids of runs (tbe train with lists), and ensembles read as runs.

Weights and the cross-fitted validation r are checked against hand computations on fixed arrays;
the commands on tiny virtual subjects (2 layers x 2 seeds of a narrow decoder, 2 epochs).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from model.metrics import pearson_r
from model.rois import HEMIS
from model.runs import (BEST_LAYER, BEST_MEMBER, ENSEMBLE_WEIGHTS, METRICS, PRED_TEST, VAL_CORR, VAL_CORR_IN_SAMPLE,
                        VAL_INDICES, VAL_PRED, cross_fit, open_run, predict, read_config, validation_halves)
from model.runs.ensemble_weights import member_weights
from model.subject import load_subject
from model.synthetic import VirtualConfig, write_virtual_subject

from .conftest import TINY, TINY_BACKBONE, tbe

LAYERS = (5, 6)
SEEDS = (0, 1)
#: a narrow decoder on the tiny random backbone: a member trains in about a second
GRID_TRAIN = ["--no-pretrained", "--backbone", TINY_BACKBONE.name, "--feature", TINY_BACKBONE.feature,
              "--hidden-dim", "64", "--nheads", "4", "--dim-feedforward", "128", "--batch-size", "16", "--lr", "1e-3",
              "--epochs", "2"]


def error_line(capsys, *args) -> str:
    """Run tbe; it must exit 2 with one ``error:`` line and no traceback. Returns that line."""
    capsys.readouterr()
    assert tbe(*args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------
# Weights and cross-fitting on fixed arrays
# --------------------------------------------------------------------------

def test_weights_sum_to_one_and_skip_nan():
    r = np.random.default_rng(0).uniform(-0.2, 0.9, (4, 30))
    r[1, 3] = np.nan
    r[:, 7] = np.nan
    for weighting in ("softmax", "best", "mean"):
        w = member_weights(r, weighting, 40)
        assert w.shape == r.shape and np.allclose(w.sum(0), 1)
        assert w[1, 3] == 0, "a member without r at a vertex gets no weight there"
        assert np.allclose(w[:, 7], 0.25), "a vertex where no member has r gets equal weights"
    by_hand = np.exp(40 * r[:, 0]) / np.exp(40 * r[:, 0]).sum()
    assert np.allclose(member_weights(r, "softmax", 40)[:, 0], by_hand)


def test_temperature_zero_is_mean_and_a_huge_one_is_best():
    r = np.random.default_rng(1).uniform(-0.2, 0.9, (5, 40))
    assert np.allclose(member_weights(r, "softmax", 0), member_weights(r, "mean"))
    assert np.allclose(member_weights(r, "softmax", 1e9), member_weights(r, "best"))
    assert np.array_equal(member_weights(r, "best").argmax(0), r.argmax(0))
    assert not np.allclose(member_weights(r, "softmax", 40), member_weights(r, "mean"))


def test_cross_fitted_r_scores_only_images_its_weights_never_saw():
    """Member 0 predicts half A, member 1 half B: in-sample weighting looks good, cross-fitting sees through it."""
    rng = np.random.default_rng(2)
    n, v = 16, 3
    true = rng.normal(size=(n, v))
    a, b = np.arange(8), np.arange(8, 16)
    noise = rng.normal(size=(2, n, v))
    p0, p1 = noise[0].copy(), noise[1].copy()
    p0[a] = true[a] + 0.1 * noise[0][a]  # member 0 is right on A only
    p1[b] = true[b] + 0.1 * noise[1][b]  # member 1 on B only
    res = cross_fit([p0, p1], true, "best", halves=(a, b))
    # by hand: weights chosen on A pick member 0, scored on B, and the other way round
    r_a = np.stack([pearson_r(p[a], true[a]) for p in (p0, p1)])
    r_b = np.stack([pearson_r(p[b], true[b]) for p in (p0, p1)])
    assert (r_a.argmax(0) == 0).all() and (r_b.argmax(0) == 1).all()
    by_hand = (pearson_r(p0[b], true[b]) + pearson_r(p1[a], true[a])) / 2
    assert np.allclose(res.cross_fitted, by_hand)
    r_all = np.stack([pearson_r(p, true) for p in (p0, p1)])
    chosen = np.where(r_all.argmax(0) == 0, 1.0, 0.0)
    in_sample = pearson_r(p0 * chosen + p1 * (1 - chosen), true)
    assert np.allclose(res.in_sample, in_sample) and np.allclose(res.members_r, r_all)
    assert (res.cross_fitted < res.in_sample - 0.3).all(), "weights scored on their own images flatter the ensemble"
    # softmax, by hand, on the same halves
    soft = cross_fit([p0, p1], true, "softmax", 10.0, halves=(a, b))
    w_a = np.exp(10 * r_a) / np.exp(10 * r_a).sum(0)
    w_b = np.exp(10 * r_b) / np.exp(10 * r_b).sum(0)
    hand = (pearson_r(w_a[0] * p0[b] + w_a[1] * p1[b], true[b]) + pearson_r(w_b[0] * p0[a] + w_b[1] * p1[a], true[a])) / 2
    assert np.allclose(soft.cross_fitted, hand)


def test_halves_are_disjoint_and_cover_the_validation_images():
    a, b = validation_halves(9)
    assert len(a) == 4 and len(b) == 5 and not set(a) & set(b) and set(a) | set(b) == set(range(9))
    assert np.array_equal(validation_halves(9)[0], a), "seeded"


# --------------------------------------------------------------------------
# A grid of members, and ensembles of it
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_subjects(tiny_data, tmp_path_factory) -> Path:
    """The tiny subject 1 and a second tiny subject 2 in one data directory."""
    out = tmp_path_factory.mktemp("two_subjects")
    shutil.copytree(tiny_data / "subj01", out / "subj01")
    write_virtual_subject(out, VirtualConfig(subj=2, n_train=TINY.n_train, n_test=TINY.n_test,
                                             image_size=TINY.image_size, seed=TINY.seed + 1))
    return out


@pytest.fixture(scope="module")
def grid(two_subjects, tmp_path_factory) -> tuple[Path, Path]:
    """2 layers x 2 seeds of subject 1 (folder, and its private feature cache)."""
    base = tmp_path_factory.mktemp("grid")
    out, cache = base / "grid", base / "cache"
    assert tbe("-q", "train", "--data-dir", two_subjects, "--cache-dir", cache, "--out", out,
               "--enc-output-layer", ",".join(map(str, LAYERS)), "--seeds", "0-1", *GRID_TRAIN) == 0
    return out, cache


def members(grid_dir: Path) -> list[Path]:
    return [grid_dir / f"layer{layer}_seed{seed}" for layer in LAYERS for seed in SEEDS]


def test_grid_trains_every_member_with_features_once_per_layer(grid, two_subjects, caplog):
    out, cache = grid
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in members(out))
    for run in members(out):
        config = read_config(run)
        layer, seed = (int(x) for x in run.name.replace("layer", "").split("_seed"))
        assert (config.backbone.layer, config.train.seed, config.train.split_seed) == (layer, seed, 0)
        assert (run / METRICS).is_file() and np.load(run / VAL_PRED.format(hemi="lh")).dtype == np.float32
        assert np.array_equal(np.load(run / VAL_INDICES), np.load(members(out)[0] / VAL_INDICES))
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(entries) == len(LAYERS) * 2, "one cache entry per layer and split: features extracted once per layer"


def test_grid_skips_complete_members_and_resumes_interrupted_ones(grid, two_subjects, capsys, caplog):
    out, cache = grid
    stamps = {run: (run / METRICS).stat().st_mtime_ns for run in members(out)}
    interrupted = members(out)[-1]
    (interrupted / METRICS).unlink()  # a checkpoint and no metrics: as if killed after its last epoch
    args = ["train", "--data-dir", two_subjects, "--cache-dir", cache, "--out", out,
            "--enc-output-layer", ",".join(map(str, LAYERS)), "--seeds", "0-1", *GRID_TRAIN]
    with caplog.at_level("INFO", logger="model"):
        assert tbe(*args) == 0
    assert sum("complete, skipped" in m for m in caplog.messages) == len(stamps) - 1
    assert any("interrupted, resuming" in m for m in caplog.messages)
    for run, stamp in stamps.items():
        assert (run / METRICS).is_file()
        assert ((run / METRICS).stat().st_mtime_ns == stamp) == (run != interrupted)
    line = error_line(capsys, *[a if a != "2" else "3" for a in args])  # --epochs 3: not what the members were
    assert "complete run trained with other settings" in line and "train" in line


def test_ensemble_files_match_a_hand_computation(grid, two_subjects, tmp_path):
    out, _ = grid
    ens = tmp_path / "ens"
    assert tbe("-q", "ensemble", "--runs", *members(out), "--out", ens) == 0
    config = json.loads((ens / "ensemble.json").read_text())
    assert config["members"] == [str(p.resolve()) for p in members(out)] and config["temperature"] == 40
    subject = load_subject(two_subjects, 1)
    val_idx = np.load(ens / VAL_INDICES)
    weights = np.load(ens / ENSEMBLE_WEIGHTS)
    assert np.allclose(weights.sum(0), 1)
    start = 0
    metrics = json.loads((ens / METRICS).read_text())
    for hemi in HEMIS:
        v = subject.n_vertices(hemi)
        w = weights[:, start:start + v]
        true = np.asarray(subject.fmri[hemi])[val_idx]
        r = np.stack([pearson_r(np.load(m / VAL_PRED.format(hemi=hemi)), true) for m in members(out)])
        assert np.allclose(w, np.exp(40 * r) / np.exp(40 * r).sum(0), atol=1e-6)
        test = sum(wm * np.load(m / PRED_TEST.format(hemi=hemi)).astype(np.float64) for wm, m in zip(w, members(out)))
        assert np.allclose(np.load(ens / PRED_TEST.format(hemi=hemi)), test, atol=1e-5)
        assert np.load(ens / PRED_TEST.format(hemi=hemi)).dtype == np.float32
        best = np.load(ens / BEST_MEMBER.format(hemi=hemi))
        assert np.array_equal(best, r.argmax(0))
        layers = np.array([read_config(m).backbone.layer for m in members(out)])
        assert np.array_equal(np.load(ens / BEST_LAYER.format(hemi=hemi)), layers[best])
        in_sample = pearson_r((w[:, None, :] * np.stack([np.load(m / VAL_PRED.format(hemi=hemi)) for m in members(out)])).sum(0), true)
        assert np.allclose(np.load(ens / VAL_CORR_IN_SAMPLE.format(hemi=hemi)), in_sample, atol=1e-5, equal_nan=True)
        assert metrics["val_r"][hemi] == pytest.approx(np.nanmean(np.load(ens / VAL_CORR.format(hemi=hemi))), abs=1e-6)
        start += v
    assert metrics["val_r"] == metrics["val_r_cross_fitted"] and "val_r_in_sample" in metrics
    assert metrics["val_r_in_sample"]["mean"] > metrics["val_r"]["mean"], "in-sample flatters (6 validation images)"
    assert len(metrics["members"]) == 4 and "cross-fitted" in metrics["note"]


def test_ensemble_of_one_run_is_that_run(grid, tmp_path):
    out, cache = grid
    member = members(out)[0]
    ens = tmp_path / "one"
    assert tbe("-q", "ensemble", "--runs", member, "--out", ens) == 0
    for hemi in HEMIS:
        assert np.array_equal(np.load(ens / PRED_TEST.format(hemi=hemi)), np.load(member / PRED_TEST.format(hemi=hemi)))
        assert np.allclose(np.load(ens / VAL_CORR_IN_SAMPLE.format(hemi=hemi)), np.load(member / VAL_CORR.format(hemi=hemi)),
                           atol=1e-6, equal_nan=True)
    a, b = open_run(member), open_run(ens)
    paths = list(a.subject.test_images)
    pa = predict(a.model, a.features(paths, cache, "cpu"))
    pb = predict(b.model, b.features(paths, cache, "cpu"))
    assert np.array_equal(pa, pb)


def test_mismatched_members_are_refused_naming_the_run(grid, two_subjects, tmp_path, capsys):
    out, cache = grid
    other_split, other_subject = tmp_path / "split1", tmp_path / "subj2"
    common = ["-q", "train", "--data-dir", two_subjects, "--cache-dir", cache, "--enc-output-layer", "6", *GRID_TRAIN]
    assert tbe(*common, "--out", other_split, "--split-seed", "1") == 0
    assert tbe(*common, "--out", other_subject, "--subj", "2") == 0
    first = members(out)[0]
    ens = tmp_path / "ens"
    cases = [((first, other_split), (str(other_split / VAL_INDICES), "other validation images")),
             ((first, other_subject), (str(other_subject), "subject 2")),
             ((first, first), (str(first), "listed twice"))]
    for runs, words in cases:
        line = error_line(capsys, "-q", "ensemble", "--runs", *runs, "--out", ens)
        assert all(w in line for w in words), line
        assert not ens.exists()
    no_val_pred = tmp_path / "old_run"
    shutil.copytree(first, no_val_pred)
    (no_val_pred / VAL_PRED.format(hemi="lh")).unlink()
    line = error_line(capsys, "-q", "ensemble", "--runs", first, no_val_pred, "--out", ens)
    assert "lh_val_pred.npy" in line and "missing validation predictions" in line


def test_an_ensemble_reads_as_a_run(grid, two_subjects, tmp_path, capsys):
    """score, predict, submit, surface and attention maps work on an ensemble; attention follows the per-ROI weighting."""
    import torch

    from interpret.attention import decoder_attention
    from interpret.maps import MapGrid

    out, cache = grid
    ens = tmp_path / "ens"
    assert tbe("-q", "ensemble", "--runs", *members(out), "--out", ens) == 0
    assert tbe("-q", "score", "--run", ens) == 0
    shown = capsys.readouterr().out
    assert "challenge score (Algonauts 2023 definition" in shown and "noise ceiling > 0 (ours" in shown
    scores = json.loads((ens / "test_scores.json").read_text())
    assert {"challenge_score", "score_nc_positive"} <= set(scores)
    images = two_subjects / "subj01" / "test_split" / "test_images"
    assert tbe("-q", "predict", "--run", ens, "--images", images, "--out", tmp_path / "p.npz", "--cache-dir", cache) == 0
    with np.load(tmp_path / "p.npz") as f:
        for hemi in HEMIS:
            assert np.allclose(f[hemi], np.load(ens / PRED_TEST.format(hemi=hemi)), atol=1e-5)
    from model.scoring.submission import read_submission

    assert tbe("-q", "submit", "--runs", ens, "--out", tmp_path / "sub.zip", "--allow-partial") == 0
    for hemi in HEMIS:
        assert np.array_equal(read_submission(tmp_path / "sub.zip")[1][hemi], np.load(ens / PRED_TEST.format(hemi=hemi)))
    run = open_run(ens)
    assert len(run.groups) == len(LAYERS), "one feature group per layer"
    paths = list(run.subject.test_images)[:2]
    tokens = np.asarray(run.features(paths, cache, "cpu"))
    grid_ = MapGrid.for_backbone(run.backbone(), None)
    ours = decoder_attention(run, tokens, grid_, [p.name for p in paths])["attention_mean"]
    weights = torch.as_tensor(np.load(ens / ENSEMBLE_WEIGHTS), dtype=torch.float32)
    memberships = torch.as_tensor(run.queries.memberships, dtype=torch.float32)
    per_roi = (weights @ memberships) / memberships.sum(0).clamp_min(1)  # mean vertex weight of each ROI's vertices
    expected = 0
    for m, member in enumerate(run.members):
        lo, hi = run.model.channels[m]
        att = member.model(torch.from_numpy(tokens[..., lo:hi]).float(), return_attention=True)["attention"]
        expected = expected + att[:, -1].mean(1) * per_roi[m][None, :, None]
    by_hand = decoder_attention_like(run, expected, grid_, [p.name for p in paths])
    assert np.allclose(ours.values, by_hand.values, atol=1e-5, equal_nan=True)
    assert tbe("-q", "surface", "--run", ens, "--values", "{hemi}_best_layer.npy", "--out", tmp_path / "best_layer") == 0
    assert (tmp_path / "best_layer.png").is_file()
    from analyses.surface import load_gifti

    shown = load_gifti(tmp_path / "best_layer.lh.func.gii")
    assert np.array_equal(np.sort(shown[np.isfinite(shown)]), np.sort(np.load(ens / BEST_LAYER.format(hemi="lh"))))


def decoder_attention_like(run, attention, grid, names):
    """Arrange (N, Q, T) attention as decoder_attention does, for comparing with the ensemble's maps."""
    import torch

    from interpret.maps import Targets, by_hemi_roi

    per_query = grid.from_tokens(attention.detach())
    arranged, rois = by_hemi_roi(per_query, Targets(list(run.queries.hemis), list(run.queries.rois), torch.empty(0)))
    import xarray as xr

    return xr.DataArray(arranged.numpy(), dims=("image", "hemi", "roi", "y", "x"))


def test_attributions_and_the_report_read_an_ensemble(grid, tmp_path):
    """An attribution explains the ensemble's own prediction (the weighted sum); the report names its two r."""
    import torch
    import xarray as xr

    out, cache = grid
    ens = tmp_path / "ens"
    assert tbe("-q", "ensemble", "--runs", *members(out), "--out", ens) == 0
    maps = tmp_path / "maps.nc"
    assert tbe("-q", "interpret", "--run", ens, "--split", "val", "--n-images", "1", "--methods", "saliency",
               "--rois", "V1v", "--cache-dir", cache, "--out", maps, "--overlays", "0") == 0
    with xr.open_dataset(maps) as ds:
        values = np.asarray(ds[list(ds.data_vars)[0]])
    assert np.isfinite(values).any() and np.nanmax(np.abs(values)) > 0
    run = open_run(ens)
    assert list(run.model.weights.shape) == [len(LAYERS) * len(SEEDS), sum(run.subject.n_vertices(h) for h in HEMIS)]
    # the ensemble's prediction is the weighted sum of its members' (the model the attributions differentiate)
    tokens = torch.from_numpy(np.asarray(run.features(list(run.subject.test_images)[:2], cache, "cpu"))).float()
    summed = sum(run.model.weights[m] * member.model(tokens[..., lo:hi])["pred"]
                 for m, (member, (lo, hi)) in enumerate(zip(run.members, run.model.channels)))
    assert torch.allclose(run.model(tokens)["pred"], summed, atol=1e-5)
    report = tmp_path / "report"
    assert tbe("-q", "report", "--run", ens, "--notebooks", "encoding_accuracy", "--cache-dir", cache,
               "--out", report) == 0
    html = (report / "encoding_accuracy.html").read_text()
    assert "Ensemble" in html and "cross-fitted" in html and "challenge_score" in html and "score_nc_positive" in html


def test_attention_of_a_list_of_runs_is_the_mean_of_each_runs_attention(grid, two_subjects, tmp_path, capsys):
    """``tbe interpret --run A B`` opens an equal-weight ensemble in memory: its attention maps are the runs' mean."""
    import pandas as pd
    import xarray as xr

    from model.runs import open_runs

    out, cache = grid
    a, b = members(out)[0], members(out)[-1]  # two layers: the ensemble stacks two feature groups
    common = ["-q", "interpret", "--split", "test", "--n-images", "2", "--methods", "attention,saliency",
              "--rois", "V1v,FFA-1", "--cache-dir", cache, "--overlays", "0"]
    for name, runs in (("a", [a]), ("b", [b]), ("ab", [a, b])):
        assert tbe(*common, "--run", *runs, "--out", tmp_path / f"{name}.nc") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nc", "ab.nc", "b.nc"], "nothing else is written"
    with xr.open_dataset(tmp_path / "a.nc") as da, xr.open_dataset(tmp_path / "b.nc") as db, \
            xr.open_dataset(tmp_path / "ab.nc") as dab:
        mean = (da["attention_mean"].values + db["attention_mean"].values) / 2
        assert np.isfinite(mean).all()
        assert np.allclose(dab["attention_mean"].values, mean, atol=1e-5)
        assert not np.allclose(da["attention_mean"].values, db["attention_mean"].values, atol=1e-3), "runs differ"
        assert str(a) in dab.attrs["run"] and str(b) in dab.attrs["run"]
    routing = tmp_path.parent / f"{tmp_path.name}_routing"
    assert tbe("-q", "routing", "--run", a, b, "--split", "test", "--n-permutations", "20", "--n-bootstrap", "20",
               "--cache-dir", cache, "--out", routing) == 0
    assert len(pd.read_csv(routing / "routing.csv")) > 0
    run = open_runs([a, b])
    assert np.allclose(run.model.weights.numpy(), 0.5) and run.config.weighting == "mean"
    assert np.array_equal(run.val_indices, open_run(a).val_indices)
    other_subject = tmp_path / "subj2"
    assert tbe("-q", "train", "--data-dir", two_subjects, "--cache-dir", cache, "--enc-output-layer", "6", "--subj", "2",
               *GRID_TRAIN, "--out", other_subject) == 0
    line = error_line(capsys, *common, "--run", a, other_subject, "--out", tmp_path / "x.nc")
    assert str(other_subject) in line and "subject 2" in line
    assert not (tmp_path / "x.nc").exists()
