"""The challenge workflow: several subjects in one command, their pooled score, and the submission archive."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from model.metrics import challenge_vertex_scores, pearson_r
from model.rois import HEMIS
from model.runs import PRED_TEST
from model.scoring.submission import read_submission
from model.synthetic import VirtualConfig, write_virtual_subject
from model.truth import load_ground_truth

from .conftest import TINY, tbe
from .test_ensemble import GRID_TRAIN, error_line


@pytest.fixture(scope="module")
def subjects(tiny_data, tmp_path_factory) -> tuple[Path, Path]:
    """Tiny subjects 1 and 2 in one data directory, and runs of both from one `tbe train --subj 1,2`."""
    base = tmp_path_factory.mktemp("challenge")
    data = base / "data"
    shutil.copytree(tiny_data / "subj01", data / "subj01")
    write_virtual_subject(data, VirtualConfig(subj=2, n_train=TINY.n_train, n_test=TINY.n_test,
                                              image_size=TINY.image_size, seed=TINY.seed + 1))
    runs = base / "runs"
    assert tbe("-q", "train", "--data-dir", data, "--subj", "1,2", "--cache-dir", base / "cache", "--out", runs,
               "--enc-output-layer", "6", *GRID_TRAIN) == 0
    return data, runs


def test_several_subjects_train_into_subject_folders_and_score_pooled(subjects, capsys):
    data, runs = subjects
    assert sorted(p.name for p in runs.iterdir()) == ["subj01", "subj02"]
    assert json.loads((runs / "subj02" / "config.json").read_text())["subj"] == 2
    assert tbe("score", "--run", runs) == 0
    shown = capsys.readouterr().out
    assert "pooled over the vertices of 2 subjects" in shown and "challenge score (Algonauts 2023 definition" in shown
    scores = json.loads((runs / "test_scores.json").read_text())
    assert set(scores["subjects"]) == {"subj01", "subj02"}
    pooled = []
    for subj in (1, 2):
        truth = load_ground_truth(data / f"subj{subj:02d}")
        for hemi in HEMIS:
            r = pearson_r(np.load(runs / f"subj{subj:02d}" / PRED_TEST.format(hemi=hemi)), truth.array("test_fmri", hemi))
            pooled.append(challenge_vertex_scores(r, truth.array("noise_ceiling", hemi)))
    assert scores["pooled"]["challenge_score"] == pytest.approx(np.nanmean(np.concatenate(pooled)), rel=1e-9)
    assert scores["pooled"]["score_nc_positive"] < scores["pooled"]["challenge_score"]
    assert (runs / "subj01" / "test_scores.json").is_file()


def test_submit_round_trips(subjects, tmp_path):
    _, runs = subjects
    out = tmp_path / "submission.zip"
    assert tbe("-q", "submit", "--runs", runs, "--out", out, "--allow-partial") == 0
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
    assert names == ["subj01/", "subj01/lh_pred_test.npy", "subj01/rh_pred_test.npy",
                     "subj02/", "subj02/lh_pred_test.npy", "subj02/rh_pred_test.npy"], "subject folders at the top level"
    arrays = read_submission(out)
    for subj in (1, 2):
        for hemi in HEMIS:
            expected = np.load(runs / f"subj{subj:02d}" / PRED_TEST.format(hemi=hemi))
            assert arrays[subj][hemi].dtype == np.float32 and np.array_equal(arrays[subj][hemi], expected)


def broken_copy(run: Path, where: Path, array: np.ndarray | None = None) -> Path:
    """A copy of ``run`` whose lh test predictions are replaced by ``array``."""
    copy = where / run.name
    shutil.copytree(run, copy)
    if array is not None:
        np.save(copy / PRED_TEST.format(hemi="lh"), array)
    return copy


def test_submit_refuses_bad_input_and_writes_nothing(subjects, tmp_path, capsys):
    _, runs = subjects
    s1, s2 = runs / "subj01", runs / "subj02"
    good = np.load(s1 / PRED_TEST.format(hemi="lh"))
    nan = good.copy()
    nan[0, 3] = np.nan
    cases = {
        "missing": ([s1, s2], (), ("--runs", "subjects 3, 4, 5, 6, 7, 8", "--allow-partial")),
        "duplicate": ([s1, s2, broken_copy(s1, tmp_path / "dup")], ("--allow-partial",), ("second run of subject 1",)),
        "shape": ([broken_copy(s1, tmp_path / "shape", good[:, :-1]), s2], ("--allow-partial",), ("has shape", "needs")),
        "nan": ([broken_copy(s1, tmp_path / "nan", nan), s2], ("--allow-partial",), ("1 NaN or infinite",)),
        "float64": ([broken_copy(s1, tmp_path / "f64", good.astype(np.float64)), s2], ("--allow-partial",),
                    ("float64", "float32")),
    }
    out = tmp_path / "submission.zip"
    for name, (runs_, extra, words) in cases.items():
        line = error_line(capsys, "-q", "submit", "--runs", *runs_, "--out", out, *extra)
        assert all(w in line for w in words), (name, line)
        assert not out.exists() and not list(tmp_path.glob(".submission.zip*")), name
    line = error_line(capsys, "-q", "submit", "--runs", s1, "--out", tmp_path / "submission.tar", "--allow-partial")
    assert ".zip" in line
