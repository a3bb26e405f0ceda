"""Metrics against known answers, and scoring against the virtual subject's truth."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from model.metrics import challenge_score, noise_normalised, pearson_r, roi_summary, within_roi_r
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
    r = np.array([0.5, 0.9, -0.3, 0.2, np.nan, 0.4])
    nc = np.array([0.5, 0.5, 0.5, 0.0, 0.5, 0.64])
    per_vertex = noise_normalised(r, nc)
    assert np.allclose(per_vertex[[0, 1, 2, 4, 5]], [50, 100, 0, 0, 25])
    assert np.isnan(per_vertex[3]), "vertices without a noise ceiling are left out"
    assert challenge_score(r, nc) == pytest.approx(np.mean([50, 100, 0, 0, 25]))


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
