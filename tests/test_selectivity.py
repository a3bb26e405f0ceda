"""Selectivity statistics, the localizer and their calibration, against known answers and planted truth."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats
from statsmodels.stats.multitest import multipletests

from analyses import stats as S
from analyses.attention_selectivity import mass_test
from analyses.responses import roi_means
from analyses.selectivity import SelectivitySettings, selectivity_table
from analyses.stimuli import from_labels_csv, scene_labels
from model.rois import NON_STREAM_CLASSES
from model.subject import load_subject
from model.virtual.localizer import LOCALIZER_CATEGORIES, LocalizerConfig, render_localizer, write_localizer
from model.truth import load_ground_truth

from .conftest import tbe

# --------------------------------------------------------------------------
# Known answers on fixed arrays
# --------------------------------------------------------------------------

A = np.array([1.0, 2.0, 3.0, 4.0])  # mean 2.5, var 5/3
B = np.array([2.0, 4.0, 6.0])  # mean 4, var 4


def test_welch_t_and_df_match_scipy():
    m = S.two_group_moments(np.concatenate([A, B]), np.arange(7) < 4, np.arange(7) >= 4)
    t, df = S.welch_t(m)
    ref = stats.ttest_ind(A, B, equal_var=False)
    assert np.isclose(t, ref.statistic) and np.isclose(df, ref.df)


def test_category_vs_rest_t_matches_scipy_for_every_category_and_column():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3))
    codes = np.repeat(np.arange(4), 10)
    t, df = S.welch_t(S.category_moments(x, codes, 4))
    for c in range(4):
        ref = stats.ttest_ind(x[codes == c], x[codes != c], equal_var=False, axis=0)
        assert np.allclose(t[c], ref.statistic) and np.allclose(df[c], ref.df)


def test_d_prime_and_selectivity_index_known_values():
    m = S.two_group_moments(np.concatenate([A, B]), np.arange(7) < 4, np.arange(7) >= 4)
    assert np.isclose(S.d_prime(m), (2.5 - 4.0) / np.sqrt((5 / 3 + 4.0) / 2))  # -0.8911
    assert np.isclose(S.d_prime(m), -0.891132, atol=1e-6)
    assert np.isclose(S.selectivity_index(m), (2.5 - 4.0) / (2.5 + 4.0))  # -3/13
    # negative means (z-scored responses): magnitudes in the denominator keep it within [-1, 1]
    neg = S.two_group_moments(np.array([1.0, 1.0, -1.0, -1.0]), np.array([1, 1, 0, 0], bool), np.array([0, 0, 1, 1], bool))
    assert np.isclose(S.selectivity_index(neg), 1.0)


def test_fdr_bh_matches_statsmodels_and_keeps_nan():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216, 0.5, np.nan, 0.9])
    ours = S.fdr_bh(p)
    ok = np.isfinite(p)
    assert np.allclose(ours[ok], multipletests(p[ok], method="fdr_bh")[1])
    assert np.isnan(ours[~ok]).all()


def test_binomial_interval_matches_scipy_clopper_pearson():
    for k, n in ((0, 20), (3, 40), (20, 20), (2396, 45000)):
        ref = stats.binomtest(k, n).proportion_ci(method="exact")
        assert np.allclose(S.binomial_interval(k, n), (ref.low, ref.high))


def test_clustered_rate_widens_the_interval_for_correlated_tests():
    independent = S.clustered_rate(np.random.default_rng(0).random((200, 50)) < 0.05)
    shared = S.clustered_rate(np.repeat(np.random.default_rng(0).random((200, 1)) < 0.05, 50, axis=1))
    assert independent["design_effect"] < 1.5 and shared["design_effect"] > 20
    assert shared["rate_ci_high"] - shared["rate_ci_low"] > 3 * (independent["rate_ci_high"] - independent["rate_ci_low"])


def test_auc_and_dice_known_values():
    assert S.auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == 0.75
    assert S.dice(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)) == 0.5


def test_bootstrap_interval_brackets_the_mean():
    x = np.random.default_rng(2).normal(1.0, 1.0, size=(50, 4))
    low, high = S.bootstrap_mean_ci(x, n_resamples=999)
    assert (low < x.mean(0)).all() and (x.mean(0) < high).all()


# --------------------------------------------------------------------------
# Permutation tests: exact under the null, powerful under an effect
# --------------------------------------------------------------------------

def test_permutation_identity_reproduces_the_observed_statistic():
    rng = np.random.default_rng(3)
    x, codes = rng.normal(size=(30, 5)), np.repeat(np.arange(3), 10)
    observed = S.welch_t(S.category_moments(x, codes, 3))[0]
    assert np.allclose(S.permutation_statistics(x, codes, 3, np.arange(30)[None])[0], observed)


@pytest.mark.parametrize("alternative", ["greater", "two-sided"])
def test_permutation_false_positive_rate_within_its_binomial_interval(alternative):
    """Under the null (noise, unequal group sizes), P(p < 0.05) must be 0.05."""
    rng = np.random.default_rng(4)
    n_datasets, alpha = 3000, 0.05
    codes = np.repeat(np.arange(3), [8, 12, 20])
    x = rng.standard_t(df=3, size=(len(codes), n_datasets))  # heavy tails: no normality to lean on
    _, p = S.permutation_test(x, codes, 3, n_permutations=999, rng=rng, alternative=alternative)
    assert p.min() >= 1 / 1000
    hits = int((p[0] < alpha).sum())  # one test per independent dataset
    low, high = S.binomial_interval(hits, n_datasets, confidence=0.999)
    assert low <= alpha <= high, (hits / n_datasets, low, high)


def test_permutation_test_detects_an_effect():
    rng = np.random.default_rng(5)
    codes = np.repeat(np.arange(3), 10)
    x = rng.normal(size=(30, 1)) + (codes == 1)[:, None] * 1.5
    _, p = S.permutation_test(x, codes, 3, 2000, rng)
    assert p[1, 0] < 0.01 and p[0, 0] > 0.05


def test_attention_mass_test_known_answers():
    rng = np.random.default_rng(6)
    n, tokens = 20, 16
    image = np.ones(tokens)
    masks = np.zeros((n, tokens))
    for i in range(n):
        masks[i, rng.choice(tokens, 4, replace=False)] = 1.0
    uniform = np.ones((n, 2, tokens)) / tokens
    on_mask = np.stack([masks / 4, np.roll(masks, 1, axis=0) / 4], axis=1)  # query 0 follows the mask, 1 another image's
    mass, chance, p = mass_test(np.concatenate([uniform, on_mask], 1), masks, image, 999, rng)
    assert np.allclose(chance, 0.25) and np.allclose(mass[:2], 0.25)
    assert np.isclose(mass[2], 1.0) and p[2] < 0.01 and p[3] > 0.05


# --------------------------------------------------------------------------
# Planted selectivity on a tiny virtual subject
# --------------------------------------------------------------------------

def test_planted_selectivity_recovered_on_tiny_virtual_subject(tiny_data):
    """Measured responses of every image: each planted ROI prefers its category; null ROIs in at most 5% of tests."""
    subject = load_subject(tiny_data, 1)
    truth = load_ground_truth(subject.root)
    labels = scene_labels(truth.images)
    values = {h: np.concatenate([np.asarray(subject.fmri[h]), truth.array("test_fmri", h)]) for h in ("lh", "rh")}
    keep = np.flatnonzero(labels != "")
    responses = roi_means(values, subject).isel(image=keep)
    categories = [c for c in LOCALIZER_CATEGORIES if c in set(labels[keep])]
    table = selectivity_table(responses, list(labels[keep]), categories, SelectivitySettings(n_permutations=2000, n_bootstrap=200))
    table["planted"] = [truth.preferences()[r] or "none" for r in table["roi"]]
    planted = table[table["category"] == table["planted"]]
    assert len(planted) == 24  # every planted category ROI, in each hemisphere where it exists
    assert planted["significant"].all(), planted.loc[~planted["significant"], ["hemi", "roi", "t", "p_fdr"]]
    assert (planted["t"] > 0).all() and (planted["d_prime"] > 0.5).all()
    # FDR bounds the expected share of false discoveries, not their number in one draw (with ~30 true
    # discoveries a null test passes at p < ~0.007): allow 5% of the null tests; the rate over many
    # seeds is measured by the calibration tests
    null = table.loc[table["planted"] == "none", "significant"]
    assert len(null) >= 30 and null.sum() <= np.ceil(0.05 * len(null)), table[(table["planted"] == "none") & table["significant"]]
    assert set(table.columns) >= {"hemi", "roi", "category", "n", "mean", "mean_ci_low", "mean_ci_high", "t", "d_prime",
                                  "selectivity_index", "p", "p_fdr"}


# --------------------------------------------------------------------------
# Stimulus sets
# --------------------------------------------------------------------------

def test_localizer_is_deterministic_and_labelled(tmp_path):
    config = LocalizerConfig(n_per_category=2, image_size=64, seed=1)
    a, b = render_localizer(config), render_localizer(config)
    assert np.array_equal(a.images, b.images) and a.categories == b.categories
    assert a.categories.count("scrambled") == 2 and set(a.categories) == set(LOCALIZER_CATEGORIES)
    scrambled = np.array(a.categories) == "scrambled"
    assert not a.masks[scrambled].any() and a.masks[~scrambled].any(axis=(1, 2, 3)).all()
    labels = write_localizer(tmp_path / "loc", config)
    stimuli = from_labels_csv(labels, exhaustive_masks=True)
    assert len(stimuli) == 12 and stimuli.categories == LOCALIZER_CATEGORIES
    assert np.isfinite(stimuli.masks).all()  # other categories' masks are known to be empty


def _labels_file(small_data, tmp_path, rows):
    images = small_data / "subj01" / "test_split" / "test_images"
    path = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=["image", "category"]).to_csv(path, index=False)
    return images, path


def test_labels_file_with_plural_names_and_masks(small_data, tmp_path):
    images = sorted((small_data / "subj01" / "test_split" / "test_images").iterdir())[:6]
    mask = tmp_path / "mask.png"
    from PIL import Image

    Image.fromarray(np.pad(np.full((56, 56), 255, np.uint8), ((0, 56), (0, 56)))).save(mask)
    rows = [{"image": p.name, "category": c, "mask": str(mask)} for p, c in zip(images, ["Faces", "faces", "face", "places", "Places", "place"])]
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    stimuli = from_labels_csv(tmp_path / "labels.csv", images[0].parent)
    assert stimuli.labels == ["face"] * 3 + ["place"] * 3 and stimuli.categories == ("face", "place")
    assert np.isclose(np.nanmean(stimuli.masks[:3, 0]), 0.25)
    assert (stimuli.masks[:3, 1] == 0).all(), "a face image's unlisted place mask is known empty"
    partial = from_labels_csv(tmp_path / "labels.csv", images[0].parent, partial_masks=True)
    assert np.isnan(partial.masks[:3, 1]).all() and np.isclose(np.nanmean(partial.masks[:3, 0]), 0.25)


@pytest.mark.parametrize("case, problem", [
    ("unknown", "line 3: unknown category 'fcae'"),
    ("missing", "line 2: image 'no-such-image.png' not found"),
    ("single", "only one category ('face')"),
])
def test_bad_labels_give_one_clear_line_exit_2_and_write_nothing(trained_run, small_data, tmp_path, capsys, case, problem):
    names = sorted(p.name for p in (small_data / "subj01" / "test_split" / "test_images").iterdir())[:6]
    rows = {
        "unknown": [(names[0], "face"), (names[1], "fcae"), *[(n, "place") for n in names[2:]]],
        "missing": [("no-such-image.png", "face"), *[(n, "place") for n in names[1:]]],
        "single": [(n, "face") for n in names],
    }[case]
    images, labels = _labels_file(small_data, tmp_path, rows)
    out = tmp_path / "out"
    capsys.readouterr()
    code = tbe("-q", "selectivity", "--run", trained_run, "--data-dir", small_data, "--images", images,
               "--labels", labels, "--out", out, "--n-permutations", "50")
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and err.startswith(f"error: {labels}") and problem in err, err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv"]


# --------------------------------------------------------------------------
# End to end on a trained run
# --------------------------------------------------------------------------

def test_selectivity_command_on_heldout_images(trained_run, small_data, cache_dir, tmp_path, capsys):
    out = tmp_path / "sel"
    # the default 10,000 permutations, so that the few place images' tests are not limited by
    # the permutation resolution (with 1,000, p >= 0.001 did not pass BH over 450 tests)
    assert tbe("-q", "selectivity", "--run", trained_run, "--data-dir", small_data, "--cache-dir", cache_dir,
               "--out", out, "--n-bootstrap", "200") == 0
    assert "selectivity.csv" in capsys.readouterr().out
    table = pd.read_csv(out / "selectivity.csv")
    required = ["hemi", "roi", "category", "n", "mean", "mean_ci_low", "mean_ci_high", "t", "d_prime", "selectivity_index", "p", "p_fdr"]
    assert set(required) <= set(table.columns)
    assert not table.duplicated(["source", "hemi", "roi", "category"]).any()
    assert set(table["source"]) == {"predicted", "measured"}
    assert ((table["p"] > 0) & (table["p"] <= 1)).all() and (table["p_fdr"] >= table["p"]).all()
    assert (table["mean_ci_low"] <= table["mean"]).all() and (table["mean"] <= table["mean_ci_high"]).all()
    predicted = table[table["source"] == "predicted"]
    subject = load_subject(small_data, 1)
    n_rois = sum(len(subject.roi_names(c, h)) for c in NON_STREAM_CLASSES for h in ("lh", "rh"))
    assert len(predicted) == n_rois * predicted["category"].nunique()
    # the 12-epoch run already predicts the place ROIs' preference: preferred and significant, with 4 place
    # images as uncorrected p < 0.05 (as for the measured responses below; with the MLP key lh RSC's p of
    # 0.0055 is 0.09 after BH over the table's 450 tests), most of them after BH too
    places = predicted[(predicted["roi"].isin(["OPA", "PPA", "RSC"])) & (predicted["category"] == "place")]
    assert len(places) == 6 and places["preferred"].all() and (places["p"] < 0.05).all()
    assert places["supported"].sum() >= 4
    # measured responses of the held-out images recover the planted preferences (few place images: p < 0.05)
    measured = table[(table["source"] == "measured") & (table["category"] == table["planted"])]
    assert measured[measured["planted"].isin(["face", "body"])]["significant"].all()
    assert (measured.loc[measured["planted"] == "place", "p"] < 0.05).all()
    attention = pd.read_csv(out / "attention_selectivity.csv")
    assert {"mass", "chance", "ratio", "p", "p_fdr"} <= set(attention.columns)
    ds = xr.open_dataset(out / "selectivity.nc")
    assert set(ds["t"].dims) == {"source", "hemi", "roi", "category"} and "responses" in ds
    assert list(ds.roi.values[:2]) == ["V1v", "V1d"]  # Algonauts order, not alphabetical
    assert (out / "selectivity.png").stat().st_size > 10_000


def test_localizer_command_maps_and_scores(trained_run, small_data, cache_dir, tmp_path):
    out = tmp_path / "loc"
    assert tbe("-q", "localizer", "--run", trained_run, "--data-dir", small_data, "--cache-dir", cache_dir,
               "--out", out, "--n-per-category", "16", "--no-surface") == 0
    table = pd.read_csv(out / "localizer.csv", keep_default_na=False, na_values=[""])
    assert {"contrast", "hemi", "reference", "dice", "auc", "dice_ceiling", "rho_true_t"} <= set(table.columns)
    places = table[(table["contrast"] == "places")]
    assert len(places) == 4  # two hemispheres x (ROI masks, planted)
    assert (places["auc"] > 0.95).all() and (places["dice"] > 0.5).all() and (places["rho_true_t"] > 0.5).all()
    assert (places["dice_ceiling"] > 0.9).all()  # the true responses localize the place ROIs
    ds = xr.open_dataset(out / "localizer_tmaps.nc")
    assert list(ds.contrast.values) == ["faces", "bodies", "places", "words", "objects"]
    from analyses.surface import load_gifti

    t = load_gifti(out / "surface" / "places_t.lh.func.gii")
    assert t.shape == (10242,) and np.isfinite(t).sum() == ds.sizes["lh_vertex"]


def test_localizer_surface_figures(trained_run, small_data, cache_dir, tmp_path):
    from analyses.localizer import run_localizer

    run_localizer(trained_run, small_data, tmp_path, cache_dir=cache_dir, n_per_category=4)
    for contrast in ("faces", "places"):
        assert (tmp_path / "surface" / f"{contrast}_t.png").stat().st_size > 10_000
        assert (tmp_path / "surface" / f"{contrast}_roi.rh.func.gii").is_file()


def test_calibration_false_positives_at_nominal_level(trained_run, small_data, cache_dir, tmp_path):
    from analyses.calibration import run_calibration

    table = run_calibration(trained_run, small_data, tmp_path, n_seeds=60, cache_dir=cache_dir, n_permutations=500)
    rates = table[table["kind"] == "false_positive_rate"]
    assert len(rates) >= 6
    assert rates["nominal_ok"].all(), rates[["test", "source", "rate", "rate_ci_low", "rate_ci_high"]]
    shuffled = rates[rates["test"] == "shuffled labels: p < alpha"]
    assert ((shuffled["rate"] > 0.02) & (shuffled["rate"] < 0.08)).all()  # not conservative to uselessness either
    gated = rates[rates["test"].str.contains("with reliability check")]
    assert (gated["rate"] <= 0.05).all()
    recovery = table[(table["kind"] == "planted_recovery") & (table["source"] == "measured")]
    assert recovery["rate"].iloc[0] >= 0.75  # the small subject has only 5 held-out place images
    assert (tmp_path / "calibration.csv").is_file() and (tmp_path / "calibration.png").is_file()


def test_selectivity_without_ground_truth_uses_the_localizer(trained_run, small_data, cache_dir, tmp_path):
    """A real subject has no labels of its own: the rendered localizer is tested, reliability from validation."""
    import shutil

    from analyses.selectivity import run_selectivity

    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    shutil.rmtree(data / "subj01" / "ground_truth")
    settings = SelectivitySettings(n_permutations=500, n_bootstrap=100)
    table = run_selectivity(trained_run, data, tmp_path / "out", settings=settings, cache_dir=cache_dir)
    assert set(table["source"]) == {"predicted"} and (table["planted"] == "").all()
    assert set(table["category"]) == set(LOCALIZER_CATEGORIES)
    assert table["r_heldout"].notna().any()  # from the validation images, which have fMRI
    reliability = pd.read_csv(tmp_path / "out" / "reliability.csv")
    assert (reliability["n_heldout"] == len(np.load(trained_run / "val_indices.npy"))).all()
