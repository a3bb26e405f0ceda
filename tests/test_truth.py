"""One truth interface: a subject's ground truth read once through Subject.truth, None for real data."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from model.errors import InputError
from model.scoring import virtual_reference
from model.subject import load_subject
from model.truth import GroundTruth, load_ground_truth
from model.virtual.responses import noisy_average


def test_a_virtual_subject_carries_its_truth_read_once(tiny_data):
    subject = load_subject(tiny_data, 1, check_images=False)
    truth = subject.truth
    assert isinstance(truth, GroundTruth) and truth.root == subject.root
    assert subject.truth is truth  # cached: tuning and tables are read once per subject
    assert truth.rois == load_ground_truth(subject.root).rois
    assert truth.rois["FFA-1"]["preference"] == "face"


def test_a_real_subject_has_no_truth(data_copy):
    shutil.rmtree(data_copy / "subj01" / "ground_truth")
    subject = load_subject(data_copy, 1, check_images=False)
    assert subject.truth is None
    with pytest.raises(InputError) as err:
        virtual_reference(subject)
    assert err.value.where.endswith("ground_truth") and "not a virtual subject" in err.value.problem

    from analyses.accuracy import find_reference

    assert find_reference(subject) is None


def test_null_measurements_are_drawn_as_the_generator_draws_them(tiny_data):
    truth = load_subject(tiny_data, 1, check_images=False).truth
    null = truth.tuning["lh"].null
    assert null.any()
    fresh = truth.null_measurements("lh", null, 400, np.random.default_rng(3))
    repeats = truth.config["n_repeats"]
    expected = noisy_average(np.zeros((400, null.sum()), np.float32), truth.tuning["lh"].ncsnr[null],
                             np.random.default_rng(3), repeats)
    assert fresh.shape == (400, null.sum()) and np.array_equal(fresh, expected)
    # averages of `repeats` z-scored trials: mean 0, variance 1 / repeats per vertex
    assert np.abs(fresh.mean(0)).max() < 1e-5
    assert fresh.var(0).mean() == pytest.approx(1 / repeats, rel=0.05)
