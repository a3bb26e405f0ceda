"""``--precision``: backbone features in float32 or bf16, chosen once, keyed in the cache, recorded in the run."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from model.backbone import BackboneConfig, build_backbone
from model.device import feature_precision, native_bf16, resolve_precision
from model.errors import InputError
from model.features import cache_key, extract_features, feature_key
from model.files import digest_json
from model.runs import CONFIG, MANIFEST, RunConfig, open_run, read_config
from model.subject import load_subject

from .conftest import QUICK_TRAIN, TINY_BACKBONE, tbe

#: the key fields of a feature-cache entry before precision existed: float32 entries must keep exactly these
KEY_BEFORE_PRECISION = ["format", "backbone", "weights", "block", "depth", "feature", "image_size", "input_size"]


@pytest.mark.parametrize("flags, native", [("fpu vme avx512f avx512_bf16 amx_tile", True), ("fpu amx_bf16", True),
                                           ("fpu sse4_2 avx2 avx512f", False)])
def test_auto_is_bf16_where_the_cpu_computes_it_natively(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert native_bf16("cpu", cpuinfo) is native
    assert resolve_precision("auto", "cpu", cpuinfo) == ("bf16" if native else "float32")
    for explicit in ("float32", "bf16"):  # named: whatever the CPU
        assert resolve_precision(explicit, "cpu", cpuinfo) == explicit
    assert resolve_precision("auto", "cpu", tmp_path / "missing") == "float32"  # no /proc/cpuinfo: no bf16 claimed
    assert resolve_precision("auto", "mps", cpuinfo) == "float32"
    if not torch.cuda.is_available():
        assert native_bf16("cuda") is False
    with pytest.raises(InputError, match="^precision: unknown precision 'fp16'"):
        resolve_precision("fp16", "cpu", cpuinfo)


def test_bf16_is_refused_where_it_is_not_computed():
    with pytest.raises(InputError, match="^precision: bf16 features are computed on the CPU or CUDA"):
        feature_precision(torch.device("mps"), "bf16")
    with feature_precision(torch.device("cpu"), "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with feature_precision(torch.device("cpu"), "float32"):
        assert not torch.is_autocast_enabled("cpu")


def test_float32_keys_are_the_keys_written_before_precision_existed(tiny_data, tmp_path):
    images = load_subject(tiny_data, 1).train_images[:8]
    backbone = build_backbone(TINY_BACKBONE, native_size=112)
    key = feature_key(backbone)
    assert list(key) == KEY_BEFORE_PRECISION
    fs = extract_features(backbone, images, tmp_path)
    assert fs.path.name == digest_json(cache_key(backbone, images)) and "precision" not in fs.meta
    assert fs.key == key  # what a run records as its feature_key: unchanged too


def test_bf16_features_are_keyed_apart_and_agree_with_float32(tiny_data, tmp_path):
    images = load_subject(tiny_data, 1).train_images[:8]
    fp32 = extract_features(build_backbone(TINY_BACKBONE, native_size=112), images, tmp_path)
    bf16_backbone = build_backbone(dataclasses.replace(TINY_BACKBONE, precision="bf16"), native_size=112)
    bf16 = extract_features(bf16_backbone, images, tmp_path)
    assert bf16.path != fp32.path and bf16.meta["precision"] == "bf16" and bf16.key["precision"] == "bf16"
    assert "bf16" in bf16.meta["describe"]
    a, b = np.asarray(fp32.features, np.float32).ravel(), np.asarray(bf16.features, np.float32).ravel()
    assert not np.array_equal(a, b), "bf16 autocast must change the arithmetic, or it is not in effect"
    assert np.corrcoef(a, b)[0, 1] > 0.99


def test_a_configuration_without_precision_reads_as_float32(trained_run, tmp_path):
    d = json.loads((trained_run / CONFIG).read_text())
    d["backbone"].pop("precision", None)
    assert RunConfig.from_dict(d).backbone.precision == "float32"
    old = tmp_path / "old_run"
    shutil.copytree(trained_run, old)
    (old / CONFIG).write_text(json.dumps(d))
    assert open_run(old).config.backbone.precision == "float32"
    assert BackboneConfig(**{k: v for k, v in TINY_BACKBONE.to_dict().items() if k != "precision"}).precision == "float32"


@pytest.mark.parametrize("value", ["auto", "fp16", 16])
def test_a_configuration_must_name_what_was_computed(trained_run, tmp_path, value):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    d = json.loads((run / CONFIG).read_text())
    d["backbone"]["precision"] = value
    (run / CONFIG).write_text(json.dumps(d))
    with pytest.raises(InputError, match="backbone.precision must be one of float32, bf16"):
        read_config(run)


def test_bf16_run_records_its_precision_and_is_checked(tiny_data, tmp_path, capsys):
    run, cache = tmp_path / "run", tmp_path / "cache"
    assert tbe("-q", "train", "--data-dir", tiny_data, "--cache-dir", cache, "--out", run, "--epochs", "1",
               "--precision", "bf16", "--device", "cpu", *QUICK_TRAIN) == 0
    config = read_config(run)
    assert config.backbone.precision == "bf16" and config.feature_key["precision"] == "bf16"
    manifest = json.loads((run / MANIFEST).read_text())
    assert manifest["backbone"]["config"]["precision"] == "bf16"
    for split in ("train", "test"):
        assert json.loads((cache / manifest["feature_cache"][split]["key"] / "meta.json").read_text())["precision"] == "bf16"
    capsys.readouterr()
    assert tbe("predict", "--run", run, "--images", tiny_data / "subj01" / "test_split" / "test_images",
               "--cache-dir", cache, "--out", tmp_path / "pred.npz") == 0
    entries = [json.loads(p.read_text()) for p in cache.glob("*/meta.json")]
    assert all(e.get("precision") == "bf16" for e in entries), "new images get the run's precision"
    d = json.loads((run / CONFIG).read_text())
    d["backbone"]["precision"] = "float32"
    (run / CONFIG).write_text(json.dumps(d))
    assert tbe("predict", "--run", run, "--images", tiny_data / "subj01" / "test_split" / "test_images",
               "--out", tmp_path / "pred2.npz") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "backbone.precision gives 'float32'" in err[0] and str(run / CONFIG) in err[0]


def test_auto_is_resolved_when_the_command_starts(tiny_data, tmp_path, monkeypatch, capsys):
    from analyses import cli

    monkeypatch.setattr("model.device.native_bf16", lambda device, cpuinfo=None: True)
    args = cli.build_parser().parse_args(["features", "--data-dir", str(tiny_data), "--precision", "auto",
                                          "--no-pretrained", "--device", "cpu"])
    assert cli.backbone_config(args).precision == "bf16"
    monkeypatch.setattr("model.device.native_bf16", lambda device, cpuinfo=None: False)
    assert cli.backbone_config(args).precision == "float32"
    default = cli.build_parser().parse_args(["features", "--data-dir", str(tiny_data), "--no-pretrained"])
    assert cli.backbone_config(default).precision == "float32"
    assert tbe("features", "--data-dir", tiny_data, "--no-pretrained", "--precision", "half",
               "--cache-dir", tmp_path) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --precision: unknown precision 'half'; choose from auto, float32, bf16"]
    assert not any(tmp_path.iterdir()), "refused before any feature is computed"
