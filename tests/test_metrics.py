"""Metrics against known answers, and scoring against the virtual subject's truth."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from model.metrics import (challenge_score, challenge_vertex_scores, noise_ceiling, noise_normalised, pearson_r,
                           roi_summary, score_nc_positive, within_roi_r)
from model.rois import HEMIS
from model.scoring import file_reference, score, virtual_reference
from model.subject import load_subject
from model.truth import load_ground_truth


def test_pearson_r_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 7)), rng.normal(size=(50, 7))
    b[:, 3] += 2 * a[:, 3]
    expected = [stats.pearsonr(a[:, i], b[:, i])[0] for i in range(7)]
    assert np.allclose(pearson_r(a, b, chunk=3), expected)
    a[:, 5] = 1.0
    assert np.isnan(pearson_r(a, b)[5]), "a constant column has no correlation"


def test_within_roi_r_ignores_roi_wide_shifts():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(40, 10))
    shift = rng.normal(size=(40, 1)) * 3
    roi = np.ones(10, bool)
    # a prediction that only gets the ROI-wide shift right: high plain r, zero specificity
    shared = truth.mean(1, keepdims=True) + shift
    flat = np.repeat(shared, 10, axis=1)
    assert np.all(np.isnan(within_roi_r(flat, truth + shift, roi)))
    # a prediction right up to an ROI-wide offset: within-ROI r is perfect
    assert np.allclose(within_roi_r(truth + 5 * rng.normal(size=(40, 1)), truth, roi), 1)


def test_challenge_score_known_values():
    """The challenge's definition (ceiling 0 -> 1e-14, r < 0 -> 0, cap 100, every vertex) and ours, by hand."""
    r = np.array([0.5, 0.9, -0.3, 0.2, np.nan, 0.4, 0.0])
    nc = np.array([0.5, 0.5, 0.5, 0.0, 0.5, 0.64, 0.0])
    challenge = challenge_vertex_scores(r, nc)
    # 0.25/0.5, 0.81/0.5 capped, negative r, r > 0 over a zero ceiling (1e-14) capped, NaN r, 0.16/0.64, 0/1e-14
    assert np.allclose(challenge[[0, 1, 2, 3, 5, 6]], [50, 100, 0, 100, 25, 0]) and np.isnan(challenge[4])
    assert challenge_score(r, nc) == pytest.approx(np.mean([50, 100, 0, 100, 25, 0]))
    per_vertex = noise_normalised(r, nc)
    assert np.allclose(per_vertex[[0, 1, 2, 4, 5]], [50, 100, 0, 0, 25])
    assert np.isnan(per_vertex[[3, 6]]).all(), "our variant leaves vertices without a noise ceiling out"
    assert score_nc_positive(r, nc) == pytest.approx(np.mean([50, 100, 0, 0, 25]))


def test_noise_ceiling_from_ncsnr_and_trial_counts():
    """NC = ncsnr^2 / (ncsnr^2 + k), k = (A/3 + B/2 + C/1) / (A + B + C)."""
    ncsnr = np.array([0.0, 1.0, 2.0])
    assert np.allclose(noise_ceiling(ncsnr, {3: 159}), [0, 1 / (1 + 1 / 3), 4 / (4 + 1 / 3)])
    k = (50 / 3 + 30 / 2 + 20 / 1) / 100
    assert np.allclose(noise_ceiling(ncsnr, {3: 50, 2: 30, 1: 20}), ncsnr ** 2 / (ncsnr ** 2 + k))
    with pytest.raises(ValueError):
        noise_ceiling(ncsnr, {})


def test_subject_and_pooled_scores_average_every_vertex():
    """A subject's score pools both hemispheres' vertices, and subjects pool theirs (not a mean of means)."""
    from model.scoring import pool_scores

    a = {"challenge_score": 10.0, "score_nc_positive": 20.0, "n_scored": {"challenge_score": 100, "score_nc_positive": 80}}
    b = {"challenge_score": 40.0, "score_nc_positive": 60.0, "n_scored": {"challenge_score": 300, "score_nc_positive": 120}}
    pooled = pool_scores([a, b])
    assert pooled["challenge_score"] == pytest.approx((10 * 100 + 40 * 300) / 400)
    assert pooled["score_nc_positive"] == pytest.approx((20 * 80 + 60 * 120) / 200)


def test_roi_summary_rows(tiny_data):
    s = load_subject(tiny_data, 1)
    values = {h: np.arange(s.n_vertices(h), dtype=float) for h in HEMIS}
    table = roi_summary(values, s.labels, s.mappings)
    row = table[(table.hemi == "lh") & (table.roi == "V1v")].iloc[0]
    assert row["mean_r"] == pytest.approx(values["lh"][s.roi_mask("V1v", "lh")].mean())
    assert row["n"] == s.roi_mask("V1v", "lh").sum()
    assert set(table["class"]) >= {"all", "prf-visualrois", "floc-faces", "streams"}


def test_clean_responses_score_at_the_ceiling(tiny_data):
    """Predicting the clean responses: r_clean = 1, r(measured) ~ sqrt(NC), challenge score ~ 100."""
    s = load_subject(tiny_data, 1)
    truth = load_ground_truth(tiny_data / "subj01")
    pred = {h: truth.array("test_clean", h) for h in HEMIS}
    result = score(pred, s, virtual_reference(s))
    for hemi in HEMIS:
        assert result["hemis"][hemi]["r_clean"]["all"] == pytest.approx(1.0, abs=1e-5)
        assert result["hemis"][hemi]["within_roi_r"]["V1v"] == pytest.approx(1.0, abs=1e-5)
    assert 60 < result["challenge_score"] <= 100
    # the subject's score is the mean over both hemispheres' vertices pooled, by hand
    r = {h: pearson_r(pred[h], truth.array("test_fmri", h)) for h in HEMIS}
    pooled = np.concatenate([challenge_vertex_scores(r[h], truth.array("noise_ceiling", h)) for h in HEMIS])
    assert result["challenge_score"] == pytest.approx(np.nanmean(pooled))
    assert result["n_scored"]["challenge_score"] == np.isfinite(pooled).sum()
    shuffled = {h: np.random.default_rng(0).permutation(pred[h]) for h in HEMIS}
    assert score(shuffled, s, virtual_reference(s))["challenge_score"] < 20


def test_user_files_give_the_same_scores(tiny_data, tmp_path):
    s = load_subject(tiny_data, 1)
    truth = load_ground_truth(tiny_data / "subj01")
    for hemi in HEMIS:
        np.save(tmp_path / f"{hemi}_test_fmri.npy", truth.array("test_fmri", hemi))
        np.save(tmp_path / f"{hemi}_noise_ceiling.npy", 100 * truth.array("noise_ceiling", hemi))  # NSD gives percent
    pred = {h: truth.array("test_clean", h) + 0.5 for h in HEMIS}
    ours = score(pred, s, virtual_reference(s))
    theirs = score(pred, s, file_reference(tmp_path, tmp_path))
    assert theirs["challenge_score"] == pytest.approx(ours["challenge_score"], rel=1e-6)
    assert "r_clean" not in theirs["hemis"]["lh"]


def test_reliability_needs_a_prediction_worth_the_name():
    """Columns with r 0.7 are reliable; a chance r of about 0.12 among them is not (it would be on significance alone)."""
    from model.metrics import reliability_test

    rng = np.random.default_rng(0)
    truth = rng.standard_normal((300, 41))
    pred = truth + rng.standard_normal((300, 41))  # r about 0.7
    pred[:, -1] = rng.standard_normal(300)
    pred[:, -1] += 0.125 * (truth[:, -1] - pred[:, -1] * 0)  # a weak, chance-sized relation
    table = reliability_test(pred, truth)
    assert table["reliable"][:40].all() and (table["r_heldout"][:40] > 0.6).all()
    assert 0.05 < table["r_heldout"].iloc[-1] < 0.2 and not table["reliable"].iloc[-1]
    assert reliability_test(pred, truth, minimum_r=0.0)["reliable"].iloc[-1]  # significance alone calls it reliable
    noise = reliability_test(rng.standard_normal((300, 200)), rng.standard_normal((300, 200)))
    assert not noise["reliable"].any() and (noise["n_heldout"] == 300).all()
