"""Attention, attributions and the checks of the maps, against recomputation and planted truth."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from interpret import checks
from interpret.attribution import ImageModel, Settings, baseline_images
from interpret.maps import MapGrid, roi_targets
from interpret.completeness import completeness_gaps, convergence_table
from interpret.pipeline import (DEFAULT_METHODS, MapJob, check_maps, compute_maps, localize, map_job, prepare,
                                read_check_settings)
from model.encoders import DecoderConfig
from model.encoders.transformer import BrainEncoder
from model.errors import InputError
from model.rois import EARLY_VISUAL
from model.runs import open_run

from .conftest import tbe
from .test_encoder import _random_queries


def test_attention_rows_sum_to_one_and_match_q_k():
    queries = _random_queries(60, 5)
    torch.manual_seed(0)
    cfg = DecoderConfig(hidden_dim=32, nheads=4, dropout=0.0, dim_feedforward=64, attention="standard")
    model = BrainEncoder(queries, feature_dim=32, grid=(3, 4), cfg=cfg).eval()
    x = torch.randn(2, 12, 32)
    with torch.no_grad():
        att = model(x, return_attention=True)["attention"][:, 0]  # (B, heads, Q, T)
    assert torch.allclose(att.sum(-1), torch.ones_like(att.sum(-1)), atol=1e-5)
    layer = model.layers[0]
    mha = layer.cross_attn
    d = cfg.hidden_dim
    w_q, w_k = mha.in_proj_weight[:d], mha.in_proj_weight[d:2 * d]
    b_q, b_k = mha.in_proj_bias[:d], mha.in_proj_bias[d:2 * d]
    query_pos = model.query_embed.weight
    q = (layer.norm_cross(torch.zeros_like(query_pos)) + query_pos) @ w_q.T + b_q  # the target starts at zero
    k = (x + model.pos(3, 4)) @ w_k.T + b_k
    heads, hd = cfg.nheads, d // cfg.nheads
    logits = torch.einsum("qhd,bthd->bhqt", q.view(-1, heads, hd), k.view(2, 12, heads, hd)) / hd**0.5
    assert torch.allclose(att, logits.softmax(-1), atol=1e-5)


def test_interpret_attention_is_the_one_the_prediction_uses(trained_run, cache_dir):
    run = open_run(trained_run)
    job = MapJob("val", 3, ("attention",), None, map_size=None, backbone_attention=False)
    inputs = prepare(run, job, cache_dir)
    grid = MapGrid(inputs.grid.token_grid[0], inputs.grid.input_size, inputs.grid.input_size, inputs.grid.token_grid)
    inputs.grid = grid  # one cell per token, so maps are the raw weights
    ds = compute_maps(run, job, inputs)
    seen = {}

    def keep_window(module, args):
        seen["window"] = args[2]

    handle = run.model.core.readout.register_forward_pre_hook(keep_window)
    with torch.no_grad():
        run.model(torch.from_numpy(inputs.tokens))
    handle.remove()
    window = seen["window"].mean(1)  # (B, heads, Q, T): what the prediction's readout was given
    for q, (hemi, roi) in enumerate(zip(run.queries.hemis, run.queries.rois)):
        ours = ds["attention_mean"].sel(hemi=hemi, roi=roi).values.reshape(3, -1)
        assert np.allclose(ours, window[:, q].numpy(), atol=1e-6), (hemi, roi)


def test_integrated_gradients_are_complete(trained_run, cache_dir):
    """Sum of attributions = f(x) - f(baseline), for pixels and for tokens."""
    run = open_run(trained_run)
    job = MapJob("val", 2, ("integrated_gradients", "token_integrated_gradients"), ("V1v", "FFA-1"),
                 settings=Settings(n_steps=64, internal_batch_size=32), backbone_attention=False)
    inputs = prepare(run, job, cache_dir)
    ds = compute_maps(run, job, inputs)
    targets = roi_targets(run, ["V1v", "FFA-1"])
    model = ImageModel(inputs.backbone, run.model, targets).eval()
    with torch.no_grad():
        full = run.model(inputs.backbone(inputs.backbone.preprocess(inputs.images)))["pred"] @ targets.weights.T
        assert torch.allclose(model(inputs.images), full, atol=1e-4)  # the readout restricted to the targets' vertices
        gap = (model(inputs.images) - model(baseline_images(inputs.images, "black", inputs.backbone))).abs()
    delta = np.abs(ds["integrated_gradients_delta"].values)
    assert np.nanmax(delta) < 0.05 * float(gap.max()) + 1e-3
    assert np.nanmax(np.abs(ds["token_integrated_gradients_delta"].values)) < 1e-2


def test_completeness_gaps_are_what_integrated_gradients_explain(trained_run, cache_dir):
    """f(x) - f(baseline) per image and target, and the completeness error relative to it."""
    run = open_run(trained_run)
    job = map_job(run, "val", 2, ["integrated_gradients", "saliency"], ["V1v"], Settings(n_steps=48, baseline="grey"),
                  backbone_attention=False)
    inputs = prepare(run, job, cache_dir)
    ds = compute_maps(run, job, inputs)
    gaps = completeness_gaps(run, inputs, ["V1v"], list(job.methods), "grey")
    targets = roi_targets(run, ["V1v"])
    model = ImageModel(inputs.backbone, run.model, targets).eval()
    with torch.no_grad():
        direct = (model(inputs.images) - model(baseline_images(inputs.images, "grey", inputs.backbone))).numpy()
    assert set(gaps.method) == {"integrated_gradients"} and len(gaps) == 2 * len(targets)
    for row in gaps.itertuples():
        t = [i for i, h in enumerate(targets.hemis) if h == row.hemi][0]
        assert row.gap == pytest.approx(float(direct[row.image, t]), rel=1e-5, abs=1e-6)
    table = convergence_table(ds, gaps)
    assert set(table.method) == {"integrated_gradients"} and (table.relative_delta < 0.1).all(), table
    assert completeness_gaps(run, inputs, ["V1v"], ["saliency", "attention"], "grey").empty


def test_one_job_builder_checks_against_the_run_before_any_image(trained_run):
    run = open_run(trained_run)
    job = map_job(run, rois=["all"], methods=None)
    assert job.rois is None and job.methods == DEFAULT_METHODS and not job.backbone_attention  # only when asked
    with pytest.raises(InputError, match="no query for ROI 'NOPE'"):
        map_job(run, rois=["V1v", "NOPE"])
    with pytest.raises(InputError, match="^n_steps: "):
        map_job(run, methods=["integrated_gradients"], settings=Settings(n_steps=1))


#: attention, and integrated gradients at the decoder input (LayerIntegratedGradients over the
#: tokens): pixel-level IG through the random backbone is tested for completeness above
LOCALIZED = ("attention_mean", "token_integrated_gradients")
#: of the 14 early visual ROIs, how many must point to their quadrant in most images (chance: 0.25 of
#: them): most; query attention, the broadest map (demo: 0.56 against 0.89 for token IG), half
ROIS_IN_THEIR_QUADRANT = {"attention_mean": 7, "token_integrated_gradients": 8}


@pytest.fixture(scope="module")
def map_checks(trained_run, cache_dir):
    """The three checks on the small trained virtual subject (cheap methods, 16 images: with 8, an ROI's share of
    images in its quadrant moved in steps of 1/8 and the count of ROIs above half flipped between training runs
    that differ only in floating-point rounding)."""
    run = open_run(trained_run)
    job = MapJob("val", 16, ("attention", "saliency", "token_integrated_gradients"), EARLY_VISUAL,
                 settings=Settings(n_steps=16), backbone_attention=False)
    inputs = prepare(run, job, cache_dir)
    maps = compute_maps(run, job, inputs)
    return run, job, inputs, maps, check_maps(run, job, inputs, maps=maps, faithfulness_rois=("V1v", "hV4"))


@pytest.fixture(scope="module")
def face_maps(trained_run, cache_dir):
    """Maps of the face ROIs on validation images that show faces."""
    run = open_run(trained_run)
    job = MapJob("val", 6, ("attention", "token_integrated_gradients"), ("FFA-1", "OFA"),
                 settings=Settings(n_steps=16), backbone_attention=False, containing="face")
    inputs = prepare(run, job, cache_dir)
    return run, job, inputs, compute_maps(run, job, inputs)


def test_early_visual_maps_point_to_the_planted_quadrant(map_checks):
    _, _, _, _, tables = map_checks
    loc = tables["localization"]
    quadrant = loc[loc.measure == "same_quadrant"]
    for name in LOCALIZED:
        rows = quadrant[quadrant.method == name]
        assert len(rows) == 14
        assert (rows.value > 0.5).sum() >= ROIS_IN_THEIR_QUADRANT[name] and rows.value.mean() > 0.45, rows


def test_face_relevance_exceeds_chance(face_maps):
    run, _, inputs, ds = face_maps
    assert len(inputs.names) >= 3  # the small subject has few validation images with faces
    loc = localize(run, inputs, ds)
    mass = loc[loc.measure == "relevance_mass"]
    for name in LOCALIZED:
        rows = mass[mass.method == name]
        assert len(rows) >= 2 and (rows.value > rows.chance).all(), rows


def test_randomised_decoder_drops_to_chance(map_checks, face_maps):
    run, job, inputs, _, tables = map_checks
    *_, (_, random_encoder) = checks.randomised(run.model, seed=1)
    loc = localize(run, inputs, compute_maps(run, job, inputs, encoder=random_encoder))
    trained = tables["localization"]
    for name in LOCALIZED:
        q_before = trained[(trained.method == name) & (trained.measure == "same_quadrant")].value.mean()
        q_after = loc[(loc.method == name) & (loc.measure == "same_quadrant")].value.mean()
        assert q_after < q_before - 0.2 and q_after < 0.45, (name, q_before, q_after)
    run, job, inputs, ds = face_maps
    before = localize(run, inputs, ds)
    after = localize(run, inputs, compute_maps(run, job, inputs, encoder=random_encoder))
    for name in LOCALIZED:
        gain = [table[(table.method == name) & (table.measure == "relevance_mass")].eval("value / chance").mean()
                for table in (before, after)]
        assert gain[1] < gain[0], (name, gain)
    sanity = tables["sanity"]
    last = sanity[sanity.step == sanity.step.max()].set_index("method")
    assert last.loc["token_integrated_gradients", "rank_correlation"] < 0.5


def test_faithfulness_beats_random_order(map_checks):
    _, _, _, _, tables = map_checks
    f = tables["faithfulness"].groupby("method")[["deletion_auc", "insertion_auc"]].mean()
    assert f.loc["token_integrated_gradients", "deletion_auc"] < f.loc["random", "deletion_auc"]
    assert f.loc["token_integrated_gradients", "insertion_auc"] > f.loc["random", "insertion_auc"]


def test_faithfulness_curve_matches_its_definition(map_checks):
    """One image, one ROI: the AUCs equal the curve built patch by patch from the definition."""
    run, _, inputs, ds, _ = map_checks
    one = ds[["token_integrated_gradients"]].isel(image=slice(1))
    targets = roi_targets(run, ["hV4"])
    table = checks.faithfulness(one, inputs.backbone, run.model, targets, inputs.images[:1], inputs.grid, steps=4)
    model = ImageModel(inputs.backbone, run.model, targets).eval()
    image = inputs.images[0]
    blurred = baseline_images(inputs.images[:1], "blur", inputs.backbone)[0]
    patch, side = inputs.backbone.patch, image.shape[-1]
    cols = -(-side // patch)
    score = torch.nn.functional.adaptive_avg_pool2d(
        torch.from_numpy(one["token_integrated_gradients"].sel(hemi=targets.hemis[0], roi="hV4").values[0])[None, None],
        (cols, cols)).ravel()
    order = np.argsort(-score.numpy(), kind="stable")
    fractions = np.linspace(0, 1, 5)
    for mode, start, end in (("deletion", image, blurred), ("insertion", blurred, image)):
        curve = []
        for f in fractions:
            x = start.clone()
            for k in order[: int(round(f * cols * cols))]:
                r, c = divmod(int(k), cols)
                x[:, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = end[:, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch]
            with torch.no_grad():
                curve.append(float(model(x[None])[0, 0]))
        with torch.no_grad():
            intact, blank = (float(v) for v in model(torch.stack([image, blurred]))[:, 0])
        expected = np.trapezoid((np.array(curve) - blank) / (intact - blank), fractions)
        row = (table.method == "token_integrated_gradients") & (table.hemi == targets.hemis[0])
        got = table.loc[row, f"{mode}_auc"].item()
        assert got == pytest.approx(expected, rel=1e-4, abs=1e-5), mode
    assert set(table.method) == {"token_integrated_gradients", "random"}


def test_faithfulness_averages_images_by_their_gap():
    """A near-zero gap cannot blow the mean up: images are weighted by |intact - blurred|."""
    per_image = pd.DataFrame({
        "method": ["m"] * 3, "hemi": ["lh"] * 3, "roi": ["V1v"] * 3,
        "gap": [2.0, -1.0, 1e-4], "deletion_auc": [0.2, 0.5, 60.0], "insertion_auc": [0.8, 0.6, -40.0]})
    out = checks.gap_weighted_mean(per_image).iloc[0]
    assert out.deletion_auc == pytest.approx((2 * 0.2 + 1 * 0.5 + 1e-4 * 60) / (3 + 1e-4))
    assert out.insertion_auc == pytest.approx((2 * 0.8 + 1 * 0.6 - 1e-4 * 40) / (3 + 1e-4))
    assert out.mean_abs_gap == pytest.approx((3 + 1e-4) / 3)
    assert 0 < out.deletion_auc < 1 and 0 < out.insertion_auc < 1
    flat = checks.gap_weighted_mean(per_image.assign(gap=0.0, deletion_auc=np.nan, insertion_auc=np.nan))
    assert flat[["deletion_auc", "insertion_auc"]].isna().all(axis=None)
    broken = checks.gap_weighted_mean(per_image.assign(deletion_auc=[0.2, np.nan, 60.0])).iloc[0]
    assert broken.deletion_auc == pytest.approx((2 * 0.2 + 1e-4 * 60) / (2 + 1e-4))  # NaN skipped, not read as 0


def test_maps_dataset_layout(map_checks):
    _, _, inputs, ds, _ = map_checks
    assert ds["attention_mean"].dims == ds["saliency"].dims == ("image", "hemi", "roi", "y", "x")
    assert "attention" not in ds, "each head's map is kept only when asked (--attention-heads each)"
    assert ds["attention_mean"].attrs["heads"] == map_checks[0].config.decoder.nheads
    assert list(ds.image.values) == inputs.names and "V1v" in list(ds.roi.values)


def test_interpret_command_writes_netcdf_and_overlays(trained_run, cache_dir, tmp_path):
    out = tmp_path / "maps.nc"
    assert tbe("-q", "interpret", "--run", trained_run, "--split", "test", "--n-images", "2",
               "--methods", "attention,saliency,token_integrated_gradients", "--rois", "V1v,FFA-1",
               "--attention-heads", "each", "--out", out, "--cache-dir", cache_dir, "--overlays", "1") == 0
    ds = xr.open_dataset(out)
    assert {"attention", "attention_mean", "saliency", "token_integrated_gradients"} <= set(ds.data_vars)
    assert ds["attention"].dims == ("image", "hemi", "roi", "head", "y", "x")
    assert ds.sizes["head"] == ds["attention_mean"].attrs["heads"] > 1
    assert np.isfinite(ds["attention"].values).all()  # the backbone's heads do not pad the decoder's
    np.testing.assert_allclose(ds["attention"].mean("head").values, ds["attention_mean"].values, rtol=1e-5, atol=1e-7)
    assert ds.image.values[0].startswith("test-0001")
    assert (tmp_path / "maps_overlay_0_lh.png").stat().st_size > 5000


def test_check_maps_command_writes_the_three_tables_and_figures(trained_run, cache_dir, tmp_path, capsys):
    out = tmp_path / "checks"
    assert tbe("-q", "check-maps", "--run", trained_run, "--split", "test", "--n-images", "2",
               "--methods", "attention", "--rois", "V1v,FFA-1", "--faithfulness-rois", "V1v",
               "--out", out, "--cache-dir", cache_dir) == 0
    printed = capsys.readouterr().out.split()
    for name in ("sanity", "localization", "faithfulness"):
        table = pd.read_csv(out / f"{name}.csv")
        assert len(table) and set(table.method) >= {"attention_mean"}, (name, table)
        assert (out / f"{name}.png").stat().st_size > 5000 and str(out / f"{name}.png") in printed
    loc = pd.read_csv(out / "localization.csv")  # test images: scored against the test images' truth
    assert {"same_quadrant", "centre_error_deg"} <= set(loc[loc.roi == "V1v"].measure)
    used = read_check_settings(out)  # what a report reading these tables shows as their settings
    assert used["n_images"] == 2 and used["split"] == "test" and used["faithfulness_rois"] == ["V1v"]
    assert used["skipped"] == [] and "skipped" not in " ".join(printed)



def test_check_maps_on_a_folder_runs_sanity_and_faithfulness_and_says_localization_is_skipped(
        trained_run, small_data, cache_dir, tmp_path, capsys):
    """A folder of images has no planted masks: localization is skipped, in settings.json and on stdout."""
    import shutil

    folder = tmp_path / "mine"
    folder.mkdir()
    for src in sorted((small_data / "subj01" / "test_split" / "test_images").iterdir())[:2]:
        shutil.copy(src, folder / f"my_{src.name}")
    out = tmp_path / "checks"
    assert tbe("-q", "check-maps", "--run", trained_run, "--images", folder, "--n-images", "2", "--methods", "attention",
               "--rois", "V1v", "--out", out, "--cache-dir", cache_dir) == 0
    printed = capsys.readouterr().out
    assert f"skipped localization: the images of {folder} are not the virtual subject's" in printed
    assert not (out / "localization.csv").exists()
    for name in ("sanity", "faithfulness"):
        assert len(pd.read_csv(out / f"{name}.csv")), name
    used = read_check_settings(out)
    assert used["folder"] == str(folder) and used["split"] is None
    assert used["images"] == sorted(p.name for p in folder.iterdir())
    assert len(used["skipped"]) == 1 and used["skipped"][0].startswith("localization: ")
    assert tbe("-q", "check-maps", "--run", trained_run, "--images", folder, "--containing", "face",
               "--out", tmp_path / "x") == 2
    assert "--containing" in capsys.readouterr().err and not (tmp_path / "x").exists()

@pytest.mark.parametrize("option, value, message", [
    ("--rois", "FFA", "no query for ROI 'FFA'"),
    ("--methods", "gradcam", "unknown method 'gradcam'"),
    ("--split", "train", "unknown split 'train'"),
    ("--containing", "car", "unknown category 'car'"),
    ("--n-steps", "1", "--n-steps: must be at least 2, got 1"),
])
def test_bad_input_is_a_clear_error(trained_run, tmp_path, capsys, option, value, message):
    args = {"--rois": "V1v", "--methods": "saliency", "--split": "val", option: value}
    code = tbe("-q", "interpret", "--run", trained_run, "--out", tmp_path / "m.nc", *sum(([k, v] for k, v in args.items()), []))
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.nc").exists()


def test_run_data_mismatch_is_a_clear_error(trained_run, tiny_data, tmp_path, capsys):
    import shutil

    other = tmp_path / "data"
    shutil.copytree(tiny_data, other)
    path = other / "subj01" / "roi_masks" / "rh.floc-places_challenge_space.npy"
    labels = np.load(path)
    labels[labels == 2] = 0
    np.save(path, labels)
    assert tbe("-q", "interpret", "--run", trained_run, "--data-dir", other, "--out", tmp_path / "m.nc") == 2
    assert "ROI queries differ" in capsys.readouterr().err
