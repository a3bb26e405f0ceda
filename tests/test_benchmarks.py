"""The accuracy benchmarks reuse a finished run only when it was trained with the settings of its row."""
from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from model.runs import read_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_accuracy  # noqa: E402


def test_rows_at_other_epochs_get_their_own_run_folders():
    assert bench_accuracy.run_name("transformer", None) == "transformer"  # the demo's own run
    assert bench_accuracy.run_name("ridge_squared", None) == "ridge"
    assert bench_accuracy.run_name("transformer", 5) == "transformer-5-epochs"
    assert bench_accuracy.run_name("voxels", None) == "voxels"


def test_a_finished_run_is_reused_only_with_the_same_settings(trained_run, cache_dir, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run with the same settings was trained again")

    monkeypatch.setattr(bench_accuracy, "train", no_training)
    config = read_config(trained_run)
    # as a benchmark asks for it: before training fills in the data's part (a relative data_dir included)
    fresh = replace(config, data_dir=os.path.relpath(config.data_dir), queries=[], n_vertices={}, data_fingerprint={})
    assert bench_accuracy.trained_run(fresh, trained_run, cache_dir) == trained_run

    longer = replace(fresh, train=replace(config.train, epochs=config.train.epochs + 1))
    with pytest.raises(SystemExit, match=f"{trained_run}: a finished run with other settings "
                                         f"\\(epochs {config.train.epochs}, not {config.train.epochs + 1}\\)"):
        bench_accuracy.trained_run(longer, trained_run, cache_dir)
    other_readout = replace(fresh, decoder=replace(fresh.decoder, readout="linear"))
    with pytest.raises(SystemExit, match="other settings \\(decoder\\)"):
        bench_accuracy.trained_run(other_readout, trained_run, cache_dir)


def test_a_row_says_what_the_runs_attention_check_recorded(trained_run, tmp_path):
    """The accuracy tables' faithful column: the run's own summary, or empty for runs without one (ridge)."""
    import json

    summary = json.loads((trained_run / "metrics.json").read_text())["attention_faithfulness"]
    assert bench_accuracy.recorded_faithfulness(trained_run) == (
        f"{summary['n_faithful_reliable']}/{summary['n_reliable']} ({summary['n_images']} val images)")
    (tmp_path / "metrics.json").write_text(json.dumps({"val_r": 0.5}))
    assert bench_accuracy.recorded_faithfulness(tmp_path) == ""


def test_the_training_benchmark_times_the_attention_check_at_both_image_counts(trained_run, cache_dir, capsys):
    """bench_training.py part 3: one row per image count, the larger clipped to the validation images there are."""
    import bench_training

    n_val = len(np.load(trained_run / "val_indices.npy"))
    seconds = bench_training.faithfulness_check_cost(trained_run, cache_dir, counts=(2, n_val + 5))
    assert sorted(seconds) == [2, n_val] and all(s > 0 for s in seconds.values())
    out = capsys.readouterr().out
    assert f"{n_val:3d} validation images:" in out and "of the training" in out


def test_the_interpret_memory_benchmark_prints_both_counts_side_by_side(trained_run, cache_dir, tmp_path, capsys):
    """bench_interpret.py part 5 runs each command in its own process and prints RSS, ratio and time (not checked:
    numbers belong to the benchmark, not to a test)."""
    import bench_interpret

    bench_interpret.memory_against_images(trained_run, cache_dir, (2, 3), "attention", 1, tmp_path)
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if "ratio" in line)
    assert "2 images GiB" in header and "3 images GiB" in header and "s per added image" in header
    for command in ("interpret", "routing"):
        values = next(line for line in lines if line.strip().startswith(command)).split()[1:]
        assert len(values) == 6 and all(float(v) == float(v) for v in values), values
    assert (tmp_path / "maps3.nc").is_file() and (tmp_path / "routing3" / "routing.csv").is_file()


def test_the_pointing_benchmark_says_where_each_missed_peak_falls():
    import bench_pointing

    grid, categories = (4, 4), ["face", "body", "word", "place"]
    coverage = np.zeros((4, 4, 16))
    coverage[:, 0, 0] = 1.0  # a face in the top-left token of images 0-2
    coverage[3, 0] = 0.0  # image 3 shows no face: not scored
    coverage[1, 1, 15] = 0.6  # a body in the bottom-right token of image 1
    coverage[2, 1, 15] = 0.1  # too little of a body there in image 2
    att = np.full((4, 1, 16), 0.01)
    att[0, 0, 1] = 1.0  # next to the face: a hit within the pointing game's one token of tolerance
    att[1, 0, 15] = 1.0  # on the body
    att[2, 0, 15] = 1.0  # on the background
    att[3, 0, 5] = 1.0
    table = bench_pointing.peaks(att, coverage, categories, {0: "face"}, grid, min_coverage=0.2)
    assert table["image"].tolist() == [0, 1, 2]
    assert table["hit"].tolist() == [True, False, False]
    assert table["at"].tolist() == ["face", "body", "none"]
    assert table["peak"].tolist() == [1, 15, 15]
