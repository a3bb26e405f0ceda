"""``--device`` on every command that computes: one rule (model.device), refusals, determinism on the CPU.

That CUDA computes what the CPU computes (the maps, predictions and
attention of these commands) cannot be tested on a machine without a GPU:
benchmarks/gpu_checks.py does it on one ("analysis on the device" rows);
tests/test_bench_gpu.py runs that script on the CPU so it cannot rot.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from analyses.cli import COMMANDS, build_parser
from analyses.report_notebooks import (NOTEBOOKS, STANDARD_PARAMETERS, declared_parameters, notebook_path,
                                       standard_parameters)
from model.device import DEVICE_HELP, add_device_arg, available_devices, module_device, pick_device
from model.errors import InputError
from model.runs import open_run

from .conftest import tbe

#: The commands that compute (backbone, encoder, attributions or attention) and so take --device
COMPUTING = ("features", "train", "predict", "interpret", "check-maps", "selectivity", "localizer", "routing", "claims",
             "report", "demo")
#: Each command's required options, with paths that need not exist: --device is refused before any is read
REQUIRED = {
    "features": ["--data-dir", "{tmp}/data"],
    "train": ["--data-dir", "{tmp}/data", "--out", "{tmp}/out"],
    "predict": ["--run", "{tmp}/run", "--images", "{tmp}/images", "--out", "{tmp}/out/p.nc"],
    "interpret": ["--run", "{tmp}/run", "--out", "{tmp}/out/m.nc"],
    "check-maps": ["--run", "{tmp}/run", "--out", "{tmp}/out"],
    "selectivity": ["--run", "{tmp}/run", "--out", "{tmp}/out"],
    "localizer": ["--run", "{tmp}/run", "--out", "{tmp}/out"],
    "routing": ["--run", "{tmp}/run", "--out", "{tmp}/out"],
    "claims": ["--run", "{tmp}/run", "--claims", "{tmp}/claims.txt", "--out", "{tmp}/out"],
    "report": ["--run", "{tmp}/run", "--out", "{tmp}/out"],
    "demo": ["--out", "{tmp}/out"],
}


def absent_device() -> str:
    """A device this machine does not have: cuda here (no GPU), else one past the last GPU."""
    available = available_devices()
    if not available["cuda"]:
        return "cuda"
    return "mps" if not available["mps"] else f"cuda:{torch.cuda.device_count()}"


def test_the_rule_auto_cuda_then_mps_then_cpu(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    for have, expected in (({"cuda": True, "mps": True}, "cuda"), ({"cuda": False, "mps": True}, "mps"),
                           ({"cuda": False, "mps": False}, "cpu")):
        monkeypatch.setattr("model.device.available_devices", lambda have=have: {"cpu": True, **have})
        assert pick_device("auto").type == expected
    monkeypatch.setattr("model.device.available_devices", lambda: {"cpu": True, "cuda": False, "mps": False})
    with pytest.raises(InputError, match=r"^device: mps is not available on this machine"):
        pick_device("mps")
    for bad in ("tpu", "cuda:x", "cpu:zero"):
        with pytest.raises(InputError, match="unknown device"):
            pick_device(bad)


def test_every_computing_command_has_the_shared_device_option():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in COMPUTING:
        options = {o: a for a in sub.choices[name]._actions for o in a.option_strings}
        assert "--device" in options, name
        assert options["--device"].default == "auto" and options["--device"].help == DEVICE_HELP, name
    assert set(COMPUTING) <= set(COMMANDS)
    p = argparse.ArgumentParser()
    add_device_arg(p)
    assert p.parse_args([]).device == "auto" and p.parse_args(["--device", "cpu"]).device == "cpu"


@pytest.mark.parametrize("command", COMPUTING)
def test_an_unavailable_device_is_refused_with_one_line(command, tmp_path, capsys):
    device = absent_device()
    args = [a.format(tmp=tmp_path) for a in REQUIRED[command]]
    assert tbe("-q", command, *args, "--device", device) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --device: {device} is not available on this machine (choose auto or cpu)"
    assert not (tmp_path / "out").exists()
    assert tbe("-q", command, *args, "--device", "tpu") == 2
    assert capsys.readouterr().err.strip().startswith("error: --device: unknown device 'tpu'")


def test_every_notebook_takes_a_device_that_the_report_sets():
    assert "device" in STANDARD_PARAMETERS
    for name in NOTEBOOKS:
        declared = declared_parameters(notebook_path(name))
        assert declared["device"]["default"] == '"auto"', name
    assert standard_parameters(None, None, 1, Path("report"), "attributions", None, None, "cpu")["device"] == "cpu"


def test_open_run_places_the_encoder_and_backbone_on_the_device(trained_run):
    run = open_run(trained_run, device="cpu")
    assert run.device == torch.device("cpu") and module_device(run.model) == run.device
    assert module_device(run.backbone()) == run.device
    with pytest.raises(InputError, match="^device: "):
        open_run(trained_run, device=absent_device())


def test_interpret_and_predict_on_the_cpu_twice_are_identical(trained_run, small_data, cache_dir, tmp_path):
    """Device-independent results are deterministic: the same command on ``cpu`` twice gives the same bytes."""
    maps = []
    for i in range(2):
        out = tmp_path / f"maps{i}.nc"
        assert tbe("-q", "interpret", "--run", trained_run, "--split", "test", "--n-images", "2", "--device", "cpu",
                   "--methods", "attention,integrated_gradients,token_integrated_gradients", "--rois", "V1v,FFA-1",
                   "--n-steps", "4", "--out", out, "--cache-dir", cache_dir, "--overlays", "0") == 0
        maps.append(xr.load_dataset(out))
    assert {"attention_mean", "integrated_gradients", "token_integrated_gradients_delta"} <= set(maps[0].data_vars)
    xr.testing.assert_identical(maps[0], maps[1])
    images = small_data / "subj01" / "test_split" / "test_images"
    preds = []
    for i in range(2):
        out = tmp_path / f"pred{i}.npz"
        assert tbe("-q", "predict", "--run", trained_run, "--images", images, "--out", out, "--cache-dir", cache_dir,
                   "--device", "cpu") == 0
        with np.load(out, allow_pickle=False) as f:
            preds.append({k: f[k] for k in ("lh", "rh")})
    for hemi in ("lh", "rh"):
        assert np.array_equal(preds[0][hemi], preds[1][hemi])


# --------------------------------------------------------------------------
# Training features resident on the device (--features-on-device)
# --------------------------------------------------------------------------

def test_residency_policy():
    from model.features import RESIDENT_SHARE, keep_resident

    cuda, cpu, mps = torch.device("cuda"), torch.device("cpu"), torch.device("mps")
    free = 1000
    assert keep_resident("auto", int(RESIDENT_SHARE * free), cuda, free_bytes=free)
    assert not keep_resident("auto", int(RESIDENT_SHARE * free) + 1, cuda, free_bytes=free)
    assert not keep_resident("auto", 1, cpu, free_bytes=free)  # the page cache is the CPU's in-memory copy
    assert not keep_resident("auto", 1, mps)  # free memory unknown: stream
    assert keep_resident("always", 10**15, cpu) and not keep_resident("never", 1, cuda, free_bytes=free)
    with pytest.raises(InputError, match="^features_on_device: unknown policy 'sometimes'"):
        keep_resident("sometimes", 1, cpu)


def test_resident_rows_are_the_streamed_rows(tmp_path):
    from model.features import FeatureRows, training_rows
    values = np.random.default_rng(0).standard_normal((37, 6, 5)).astype(np.float16)
    np.save(tmp_path / "f.npy", values)
    features = np.load(tmp_path / "f.npy", mmap_mode="r")
    streamed, resident = FeatureRows(features, "cpu"), FeatureRows(features, "cpu", resident=True)
    assert streamed.resident is None and resident.resident is not None
    idx = np.array([30, 2, 2, 17, 0, 36])
    assert streamed.rows(idx).dtype == torch.float32
    assert torch.equal(streamed.rows(idx), resident.rows(idx))
    assert torch.equal(streamed.rows(idx), torch.from_numpy(values[idx].astype(np.float32)))
    for a, b in zip(streamed.batches(idx, 4), resident.batches(idx, 4)):
        assert torch.equal(a, b)
    assert training_rows(features, torch.device("cpu")).resident is None  # auto on the CPU: streamed
    assert training_rows(features, torch.device("cpu"), "always").resident is not None


def test_training_is_identical_with_resident_or_streamed_features(tiny_data, cache_dir, tmp_path):
    """On the CPU ``always`` exercises the resident path (the in-memory copy) that a GPU takes under ``auto``."""
    from safetensors.torch import load_file

    from model.runs import WEIGHTS, read_metrics

    from .conftest import QUICK_TRAIN

    runs = {}
    for policy in ("never", "always"):
        out = tmp_path / policy
        assert tbe("-q", "train", "--data-dir", tiny_data, "--cache-dir", cache_dir, "--out", out, "--epochs", "2",
                   "--device", "cpu", "--features-on-device", policy, *QUICK_TRAIN) == 0
        runs[policy] = (load_file(out / WEIGHTS), read_metrics(out))
    (w0, m0), (w1, m1) = runs["never"], runs["always"]
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    assert m0["val_r"] == m1["val_r"] and m0["history"][0]["train_loss"] == m1["history"][0]["train_loss"]
    assert np.array_equal(np.load(tmp_path / "never" / "lh_pred_test.npy"), np.load(tmp_path / "always" / "lh_pred_test.npy"))
