"""benchmarks/bench_gpu.py and benchmarks/gpu_checks.py stay runnable: their scaled-down CPU versions.

The real-scale figures need a CUDA machine (docs/speed-and-memory.md, "Real scale on a GPU");
here the same code runs at toy size on the CPU, in Pythons (the benchmark,
and the processes its DDP section launches) that cannot import what the GPU
machine lacks, so a project import that would break the GPU run breaks
this test.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Not on the GPU machine (captum is carried there as a wheel).
ABSENT_ON_GPU_MACHINE = ("nilearn", "himalaya", "nibabel", "papermill", "netCDF4", "h5netcdf", "skimage", "sklearn",
                         "seaborn", "nbconvert", "nbformat", "ipykernel", "IPython", "ipywidgets", "statsmodels")
SITECUSTOMIZE = '''
import os, sys

_BLOCKED = set(os.environ.get("TBE_TEST_BLOCKED", "").split(","))


class _WithoutBlocked:
    """A finder that finds nothing of the blocked packages, as if they were not installed."""

    def __init__(self, inner):
        self._inner = inner

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            return None
        return self._inner.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self._inner, attr)


sys.meta_path[:] = [_WithoutBlocked(finder) for finder in sys.meta_path]
'''


def run_script(script: str, args: list[str], tmp_path: Path, timeout: float) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "HF_HUB_OFFLINE": "1",
           "TBE_TEST_BLOCKED": ",".join(ABSENT_ON_GPU_MACHINE), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)


def test_blocked_modules_are_really_blocked(tmp_path):
    done = run_script("bench_gpu.py", ["--device", "cpu", "--sections", "nothing"], tmp_path, 120)
    assert done.returncode == 2 and "error: --sections: unknown section 'nothing'" in done.stderr
    probe = subprocess.run([sys.executable, "-c", "import nilearn"], capture_output=True, text=True, env={
        **os.environ, "PYTHONPATH": str(tmp_path / "site"), "TBE_TEST_BLOCKED": "nilearn"})
    assert probe.returncode != 0 and "No module named 'nilearn'" in probe.stderr


@pytest.mark.slow
def test_bench_gpu_small_runs_every_section_on_the_cpu(tmp_path):
    out = tmp_path / "bench.json"
    done = run_script("bench_gpu.py", ["--small", "--device", "cpu", "--threads", "1", "--json", str(out)], tmp_path, 600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["scale"] == "small"
    sections = result["sections"]
    expected = {
        "feature extraction": ["images/s, float32", "images/s, bfloat16", "r per feature, bf16 vs float32: median",
                               "r per vertex of predictions, bf16 vs float32: min"],
        "readout": ["vectorised (ours), forward + backward", "every query, then mask (seed), forward + backward",
                    "vectorised: speed-up over the seed's"],
        "training epoch": ["epoch, retinotopic readout", "epoch, linear readout", "peak memory, retinotopic readout",
                           "epoch, backbone in the loop (float32)", "speed-up of cached features over the backbone (float32)"],
        "integrated gradients": ["pixel level, s per image per ROI", "token level, s per image per ROI",
                                 "pixel level, completeness error (max)"],
        "DDP": ["processes (world size)", "seconds per step", "images/s"],
        "feature cache": ["bytes per image", "subject 1, one layer: train + test"],
        "voxels readout": ["training step, rois_all", "training step, voxels", "peak memory, voxels",
                           "voxels / rois_all, step time"],
    }
    for section, measures in expected.items():
        assert sections[section]["ok"] is True, sections[section].get("error")
        for measure in measures:
            value = sections[section]["results"][measure]["value"]
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (section, measure, value)
            assert measure in done.stdout, f"{measure} missing from the printed table"
    features = sections["feature extraction"]["results"]
    assert features["r per vertex of predictions, bf16 vs float32: min"]["value"] > 0.9
    assert sections["DDP"]["results"]["processes (world size)"]["value"] == 2
    assert sections["DDP"]["results"]["parameters agree across processes"]["value"] == "yes"
    # the cache holds float16 features: 2 bytes per token and channel of ViT-S (8 x 8 tokens at 112 px, 384 channels)
    assert sections["feature cache"]["results"]["bytes per image"]["value"] == 64 * 384 * 2
    assert "features and fMRI included" in done.stdout and "FAILED" not in done.stdout


@pytest.mark.slow
def test_gpu_checks_run_on_the_cpu(tmp_path):
    out = tmp_path / "checks.json"
    done = run_script("gpu_checks.py", ["--device", "cpu", "--json", str(out)], tmp_path, 300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    checks = json.loads(out.read_text())["checks"]
    names = {c["name"] for c in checks}
    assert {"attention maps, bf16 (max abs diff)", "token integrated gradients, float32 (rel. error)",
            "pixel integrated gradients, float32 (rel. error)", "retinotopic: training gradients, bf16 (rel. error)",
            "backbone q features, bf16 (rel. error)"} <= names
    assert all(c["ok"] for c in checks)
    # bf16 autocast really ran: its results differ from float32, within tolerance
    bf16 = [c for c in checks if "bf16" in c["name"] and "rel. error" in c["name"]]
    assert bf16 and all(0 < c["value"] <= c["tolerance"] for c in bf16)


def test_an_unknown_device_is_one_clear_line(tmp_path):
    for script in ("bench_gpu.py", "gpu_checks.py"):
        done = run_script(script, ["--device", "tpu"], tmp_path, 120)
        assert done.returncode == 2
        assert done.stderr.strip() == "error: --device: unknown device 'tpu'; choose from auto, cpu, cuda, mps"


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_gpu_for_test", ROOT / "benchmarks" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_ddp_launch_is_isolated_from_leftover_settings(monkeypatch, tmp_path):
    """The DDP section's rendezvous is its own: an explicit loopback port, no inherited RANK/MASTER_PORT/TORCHELASTIC_*."""
    bench = _bench_module()
    for name, value in {"MASTER_PORT": "29500", "MASTER_ADDR": "10.0.0.9", "RANK": "3", "WORLD_SIZE": "8",
                        "TORCHELASTIC_RUN_ID": "other"}.items():
        monkeypatch.setenv(name, value)
    env = bench.ddp_env()
    assert not {"MASTER_PORT", "MASTER_ADDR", "RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"} & set(env)
    port = bench.free_port()
    command = bench.ddp_command(2, tmp_path / "o.json", bench.torch.device("cpu"), True, port)
    assert f"--rdzv-endpoint=127.0.0.1:{port}" in command and "--local-addr=127.0.0.1" in command
    assert "--standalone" not in command


def test_a_failed_ddp_launch_says_why_with_torchruns_stderr(monkeypatch, tmp_path, capsys):
    bench = _bench_module()
    calls = []

    def failing(processes, out, device, small, port):
        calls.append(port)
        return [sys.executable, "-c", "import sys; sys.stderr.write('worker 1 failed: Address already in use\\n'); sys.exit(1)"]

    monkeypatch.setattr(bench, "ddp_command", failing)
    with pytest.raises(RuntimeError) as info:
        bench.launch_ddp(2, tmp_path / "o.json", bench.torch.device("cpu"), True, 60)
    assert len(calls) == bench.DDP_TRIES  # a port taken in between is tried again, on another port
    assert str(info.value).count("Address already in use") == bench.DDP_TRIES and "exited 1" in str(info.value)
    assert "Address already in use" in capsys.readouterr().err


def test_voxel_steps_sets_the_timed_steps_and_refuses_zero(monkeypatch, tmp_path, capsys):
    bench = _bench_module()
    assert bench.main(["--small", "--device", "cpu", "--voxel-steps", "0", "--sections", "voxels readout"]) == 2
    assert capsys.readouterr().err.strip() == "error: --voxel-steps: must be at least 1, not 0"
    calls = []
    real_timed = bench.timed
    monkeypatch.setattr(bench, "timed", lambda device, fn: calls.append(1) or real_timed(device, fn))
    out = tmp_path / "voxels.json"
    assert bench.main(["--small", "--device", "cpu", "--voxel-steps", "2", "--sections", "voxels readout",
                       "--json", str(out)]) == 0
    assert len(calls) == 2 * 2  # rois_all and voxels, two timed steps each
    results = json.loads(out.read_text())["sections"]["voxels readout"]["results"]
    assert results["training step, voxels"]["value"] > 0
