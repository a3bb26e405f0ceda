"""Training, the run directory, resume, baselines, the seed's command line and DDP."""
from __future__ import annotations

import json
import os
import socket
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from model.errors import InputError
from model.rois import HEMIS
from model.runs import open_run, predict
from model.runs.run import read_tensors
from model.subject import load_subject

from .conftest import QUICK_TRAIN, tbe


def test_training_learns(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["val_r"]["mean"] > 0.3
    first = metrics["history"][0]["val_r"]
    assert max(h["val_r"] for h in metrics["history"]) > first + 0.05, "validation r improves with training"
    assert metrics["best_epoch"] == max(metrics["history"], key=lambda h: h["val_r"])["epoch"], "model selection on val r"


def test_run_directory_and_submission(trained_run, small_data):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.json", "model.safetensors", "metrics.json", "lh_val_corr.npy", "rh_val_corr.npy",
            "lh_pred_test.npy", "rh_pred_test.npy", "val_indices.npy"} <= names
    assert not any(".partial-" in n for n in names)
    subject = load_subject(small_data, 1)
    for hemi in HEMIS:
        pred = np.load(trained_run / f"{hemi}_pred_test.npy")
        assert pred.dtype == np.float32 and pred.shape == (subject.n_test, subject.n_vertices(hemi))
        assert np.isfinite(pred).all()
        assert np.load(trained_run / f"{hemi}_val_corr.npy").shape == (subject.n_vertices(hemi),)
    assert not any(k.startswith("backbone") or ".blocks." in k for k in read_tensors(trained_run / "model.safetensors")), \
        "the backbone is referenced, not copied"


def test_safetensors_round_trip(trained_run, cache_dir):
    """A reopened run predicts exactly what the run saved."""
    from model.features import subject_features

    run = open_run(trained_run)
    feats = subject_features(run.config.data_dir, 1, run.config.backbone, cache_dir)
    pred = predict(run.model, feats["test"].features)
    for hemi in HEMIS:
        assert np.allclose(pred[:, run.hemi_slice(hemi)], np.load(trained_run / f"{hemi}_pred_test.npy"), atol=1e-5)
    rows = np.array([7, 2, 3, 0])  # predict reads only these rows of the memory-mapped features, in this order
    assert np.allclose(predict(run.model, feats["test"].features, rows, batch_size=3), pred[rows], atol=1e-5)


def test_corrupted_or_mismatched_checkpoint_is_refused(trained_run, tmp_path, small_data):
    broken = tmp_path / "run"
    shutil.copytree(trained_run, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(InputError, match="model.safetensors: corrupted"):
        open_run(broken)
    from safetensors.torch import save_file

    state = read_tensors(trained_run / "model.safetensors")
    state["core.query_embed.weight"] = torch.zeros(3, 3)
    save_file(state, str(weights))
    with pytest.raises(InputError, match="core.query_embed.weight has shape"):
        open_run(broken)
    del state["core.query_embed.weight"]
    save_file(state, str(weights))
    with pytest.raises(InputError, match="does not match the encoder"):
        open_run(broken)


def test_run_and_data_mismatch_is_refused(trained_run, small_data, tmp_path):
    other = tmp_path / "data"
    shutil.copytree(small_data, other)
    path = other / "subj01" / "roi_masks" / "lh.floc-faces_challenge_space.npy"
    labels = np.load(path)
    labels[labels == 1] = 0  # OFA disappears from the left hemisphere
    np.save(path, labels)
    with pytest.raises(InputError, match="config.json: run's ROI queries differ"):
        open_run(trained_run, data_dir=other)


def test_incomplete_run_is_refused(tmp_path, trained_run):
    partial = tmp_path / "partial"
    shutil.copytree(trained_run, partial)
    (partial / "metrics.json").unlink()
    with pytest.raises(InputError, match="training did not finish"):
        open_run(partial)


def test_resume_equals_uninterrupted(small_data, cache_dir, tmp_path):
    from analyses.cli import build_parser, run_config
    from model.training import train

    args = ["train", "--data-dir", str(small_data), "--cache-dir", str(cache_dir), "--epochs", "3", *QUICK_TRAIN]
    whole = tmp_path / "whole"
    train(run_config(build_parser().parse_args(args + ["--out", str(whole)])), whole, cache_dir)
    parts = tmp_path / "parts"
    config = run_config(build_parser().parse_args(args + ["--out", str(parts)]))
    train(config, parts, cache_dir, stop_after_epoch=1)
    assert not (parts / "metrics.json").exists() and (parts / "checkpoint.safetensors").exists()
    assert tbe("-q", *args, "--out", parts) == 2, "refuses to overwrite an interrupted run without --resume"
    assert tbe("-q", *args, "--out", parts, "--resume") == 0
    a, b = read_tensors(whole / "model.safetensors"), read_tensors(parts / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for hemi in HEMIS:
        assert np.array_equal(np.load(whole / f"{hemi}_pred_test.npy"), np.load(parts / f"{hemi}_pred_test.npy"))


@pytest.mark.parametrize("arch, extra", [("ridge", ["--ridge-features", "pooled_squared"]), ("linear", ["--epochs", "1", "--batch-size", "32"]),
                                         ("spatial_feature", ["--epochs", "2"])])
def test_baselines_share_the_interface(arch, extra, small_data, cache_dir, tmp_path):
    out = tmp_path / arch
    assert tbe("-q", "train", "--data-dir", small_data, "--cache-dir", cache_dir, "--out", out, "--encoder-arch", arch,
               *QUICK_TRAIN, *extra) == 0
    run = open_run(out)
    assert run.config.encoder_arch == arch
    r = json.loads((out / "metrics.json").read_text())["val_r"]["mean"]
    assert np.isfinite(r)
    if arch == "ridge":
        assert r > 0.2, "ridge on pooled squared tokens predicts early visual cortex"
        alphas = run.model.core.alphas.numpy()
        assert np.unique(alphas).size > 1, "one alpha per vertex"


def _main_py(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "main.py", *map(str, args)], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))


def test_seed_command_line_trains_the_original(small_data, cache_dir, tmp_path):
    """python main.py --run 1 --subj 1 --enc_output_layer 1 --readout_res 'rois_all' trains the original's model.

    Its config.json holds the original's settings where they differ from tbe train's defaults (linear readout,
    standard attention, raw tokens, N(0, 1) queries, split and weights seeded by --run, 90/10), and --run 2 draws
    another split.
    """
    runs = {}
    for run in (1, 2):
        proc = _main_py("--run", run, "--subj", "1", "--enc_output_layer", "1", "--readout_res", "rois_all",
                        "--data_dir", small_data, "--output_path", f"{tmp_path}/", "--epochs", "1", "--hidden_dim", "64",
                        "--nheads", "4", "--no-pretrained", "--backbone", "vit_small_patch14_dinov2.lvd142m",
                        "--cache-dir", cache_dir)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[run] = tmp_path / "nsd_test" / "dinov2_q_transformer" / "subj_01" / "rois_all" / "enc_1" / f"run_{run}"
    config = json.loads((runs[1] / "config.json").read_text())
    assert config["backbone"]["feature"] == "q" and config["backbone"]["layer"] == 1
    assert config["readout_res"] == "rois_all" and config["encoder_arch"] == "transformer"
    assert config["decoder"]["readout"] == "linear" and config["decoder"]["query_init"] == "normal"
    assert config["decoder"]["attention"] == "standard"
    assert config["train"]["standardise_tokens"] is False
    assert (config["train"]["seed"], config["train"]["split_seed"], config["train"]["val_fraction"]) == (1, 1, 0.1)
    assert (runs[1] / "lh_pred_test.npy").is_file()
    model = open_run(runs[1]).model
    assert not model.standardise and torch.equal(model.normalise(torch.ones(1, 2, 384)), torch.ones(1, 2, 384))
    val = {run: np.load(runs[run] / "val_indices.npy") for run in runs}
    assert len(val[1]) == len(val[2]) == 24  # 10% of 240
    assert set(val[1]) != set(val[2]), "--run 2 draws another train/validation split"
    assert json.loads((runs[2] / "config.json").read_text())["train"]["split_seed"] == 2


def test_seed_flags_we_cannot_honour_are_refused():
    proc = subprocess.run([sys.executable, "main.py", "--lr_backbone", "1e-5", "--data_dir", "/nonexistent"],
                          capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 2 and "error: --lr_backbone" in proc.stderr


def test_ddp_matches_single_process(small_data, cache_dir, tmp_path):
    """torchrun with 2 CPU processes (gloo) ends with the single-process weights (dropout off)."""
    args = ["train", "--data-dir", str(small_data), "--cache-dir", str(cache_dir), "--epochs", "2", "--dropout", "0",
            *QUICK_TRAIN]
    assert tbe("-q", *args, "--out", tmp_path / "single") == 0
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # a free loopback port: a fixed one may be taken
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
                           "-m", "analyses.cli", "-q",
                           *args, "--out", str(tmp_path / "ddp")], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, ddp = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("single", "ddp"))
    assert single["best_epoch"] == ddp["best_epoch"]
    for a, b in zip(single["history"], ddp["history"]):
        assert abs(a["val_r"] - b["val_r"]) < 1e-3, "same validation r, epoch by epoch"
    a, b = read_tensors(tmp_path / "single" / "model.safetensors"), read_tensors(tmp_path / "ddp" / "model.safetensors")
    for key in a:  # float reduction order differs between 1 and 2 processes; Adam amplifies it a little
        assert torch.allclose(a[key], b[key], atol=5e-3), key
    p1, p2 = (np.load(tmp_path / r / "lh_pred_test.npy").ravel() for r in ("single", "ddp"))
    assert np.corrcoef(p1, p2)[0, 1] > 0.999  # the attention-gated readout passes reduction-order noise on


def test_a_run_trained_from_a_relative_data_dir_opens_anywhere(small_data, cache_dir, tmp_path, monkeypatch):
    """`tbe demo --out demo` passes relative paths; the run must still open from another folder."""
    monkeypatch.chdir(small_data.parent)
    out = tmp_path / "ridge"
    assert tbe("-q", "train", "--data-dir", small_data.name, "--cache-dir", cache_dir, "--out", out,
               "--encoder-arch", "ridge", *QUICK_TRAIN) == 0
    monkeypatch.chdir(tmp_path)
    assert open_run(out).config.data_dir == str(small_data.resolve())
