"""Reproducibility: every run's manifest.json, data fingerprints, and exact environments from ``tbe env``."""
from __future__ import annotations

import importlib.metadata as metadata
import json
import platform
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from model.features import FeatureSet
from model.files import SAMPLE_BLOCK_BYTES, file_fingerprint
from model.runs import MANIFEST, data_fingerprint, read_config, read_manifest, write_run_manifest
from model.runs.environment import CONDA_FORGE, CONDA_PROVIDED_WITH_PYTORCH, TORCH_FAMILY
from model.runs.manifest import SUITE, suite_info
from model.subject import load_subject

from .conftest import tbe


def installed() -> dict[str, str]:
    """What importlib.metadata reports: normalised name -> version (first on sys.path wins)."""
    out: dict[str, str] = {}
    for dist in metadata.distributions():
        out.setdefault(canonicalize_name(dist.metadata["Name"]), dist.version)
    return out


def not_from_an_index() -> set[str]:
    return {canonicalize_name(d.metadata["Name"]) for d in metadata.distributions() if d.read_text("direct_url.json")}


# --------------------------------------------------------------------------
# The run's manifest
# --------------------------------------------------------------------------

def test_a_run_has_a_manifest_with_every_field(trained_run, small_data, cache_dir):
    manifest = json.loads((trained_run / MANIFEST).read_text())
    config = read_config(trained_run)
    assert manifest["kind"] == "run" and manifest["format"] == 1
    suite = manifest["suite"]
    assert suite["name"] == SUITE and suite["version"] == metadata.version(SUITE)
    if suite["git"] is not None:
        assert re.fullmatch(r"[0-9a-f]{40}", suite["git"]["commit"]) and isinstance(suite["git"]["dirty"], bool)
    else:
        assert "not a git checkout" in suite["note"] or "git" in suite["note"]
    assert manifest["command"]["tbe"][0] == "tbe" and "train" in manifest["command"]["tbe"]
    assert str(trained_run) in manifest["command"]["tbe"]
    assert manifest["python"]["version"] == platform.python_version()
    assert manifest["torch"]["version"] == torch.__version__ and manifest["torch"]["cuda"] == torch.version.cuda
    assert "cudnn" in manifest["torch"] and manifest["torch"]["gpus"] == (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else [])
    assert {canonicalize_name(k): v for k, v in manifest["distributions"].items()} == installed()
    assert manifest["seeds"] == {"train": config.train.seed, "split": config.train.split_seed,
                                 "backbone": config.backbone.seed}

    data = manifest["data"]
    subject = load_subject(small_data, 1)
    files = {f["path"]: f for f in data["files"]}
    for hemi in ("lh", "rh"):
        fmri = files[f"training_split/training_fmri/{hemi}_training_fmri.npy"]
        assert fmri["bytes"] == (subject.root / fmri["path"]).stat().st_size
        assert fmri == file_fingerprint(subject.root / fmri["path"], subject.root)
    masks = [f for f in data["files"] if f["path"].startswith("roi_masks/")]
    assert len(masks) == len(list((subject.root / "roi_masks").glob("*.npy"))) and all(f["hashed"] == "full" for f in masks)
    assert data["images"]["train"]["n_files"] == subject.n_train and data["images"]["test"]["n_files"] == subject.n_test
    assert data["digest"] == data_fingerprint(small_data, 1)["digest"]

    assert manifest["backbone"]["config"] == config.backbone.to_dict()
    assert manifest["backbone"]["weights_digest"] == f"random:seed={config.backbone.seed}:layerscale=1.0"
    for split in ("train", "test"):
        entry = manifest["feature_cache"][split]
        assert (cache_dir / entry["key"] / "meta.json").is_file()
        assert json.loads((cache_dir / entry["key"] / "meta.json").read_text())["weights"] == \
            manifest["backbone"]["weights_digest"]


def _fake_features(n: int = 3) -> dict[str, FeatureSet]:
    fs = FeatureSet(Path("/cache/0123abcd"), np.zeros((n, 1, 1), np.float16), [f"{i}.png" for i in range(n)], (1, 1),
                    {"weights": "random:seed=0:layerscale=1.0"})
    return {"train": fs, "test": fs}


def test_resume_keeps_the_start_and_records_what_changed(tiny_data, tmp_path, monkeypatch):
    from analyses.cli import build_parser, run_config

    config = run_config(build_parser().parse_args(["train", "--data-dir", str(tiny_data), "--out", "x", "--no-pretrained"]))
    path = write_run_manifest(tmp_path, config, _fake_features())
    first = json.loads(path.read_text())
    assert "resumes" not in first
    fake = {**first["distributions"], "numpy": "0.0.1"}
    monkeypatch.setattr("model.runs.manifest.distributions", lambda: (fake, {}))
    write_run_manifest(tmp_path, config, _fake_features(), resume=True)
    second = json.loads(path.read_text())
    assert second["created"] == first["created"] and second["distributions"] == first["distributions"]
    assert len(second["resumes"]) == 1
    assert second["resumes"][0]["changed_distributions"] == {"numpy": [first["distributions"]["numpy"], "0.0.1"]}


def test_an_installed_copy_without_git_says_so(tmp_path):
    info = suite_info(tmp_path)
    assert info["git"] is None and "not a git checkout" in info["note"] and info["version"] == metadata.version(SUITE)


def test_package_names_have_one_normaliser_and_it_is_packaging_s(monkeypatch):
    """The manifest's list and the environment files read a distribution's name the same way (PEP 503)."""
    import packaging.utils

    import model.runs.environment
    import model.runs.manifest
    from model.runs.environment import pip_requirements

    assert model.runs.manifest.canonicalize_name is model.runs.environment.canonicalize_name is packaging.utils.canonicalize_name
    for module in (model.runs.manifest, model.runs.environment):
        names = [n for n in vars(module) if "normalis" in n.lower() or "normaliz" in n.lower()]
        assert not names, f"{module.__name__} has its own name normaliser: {names}"

    class Dist:
        def __init__(self, name, version):
            self.metadata, self.version = {"Name": name}, version

        def read_text(self, name):
            return None

    found = [Dist("Foo__Bar", "1.0"), Dist("foo.bar", "2.0"), Dist("Transformer_Brain.Encoder", "0.1.0")]
    monkeypatch.setattr(model.runs.manifest.metadata, "distributions", lambda: iter(found))
    versions, sources = model.runs.manifest.distributions()
    assert versions == {"Foo__Bar": "1.0", "Transformer_Brain.Encoder": "0.1.0"} and sources == {}  # first one wins
    pins = pip_requirements({"distributions": versions}).splitlines()
    assert "Foo__Bar==1.0" in pins and not [p for p in pins if "Transformer" in p and not p.startswith("#")]


# --------------------------------------------------------------------------
# Data fingerprints: cheap at real size, and they see what changed
# --------------------------------------------------------------------------

def test_a_large_file_is_sampled_not_read_whole(tmp_path):
    """A 2 GB (sparse) file, larger than a real subject's fMRI, is fingerprinted from 16 blocks."""
    big = tmp_path / "big.npy"
    with open(big, "wb") as f:
        f.truncate(2 * 2**30)
    fp = file_fingerprint(big)
    assert fp["bytes"] == 2 * 2**30 and fp["hashed"].startswith("sampled")
    with open(big, "r+b") as f:  # a change in the first block (the .npy header) is seen
        f.write(b"\x93NUMPY")
    assert file_fingerprint(big)["blake2b"] != fp["blake2b"]
    changed = file_fingerprint(big)["blake2b"]
    with open(big, "r+b") as f:  # ... and so is a change in the last block, and a truncation
        f.seek(2 * 2**30 - 10)
        f.write(b"x")
    assert file_fingerprint(big)["blake2b"] != changed
    with open(big, "r+b") as f:
        f.truncate(2 * 2**30 - SAMPLE_BLOCK_BYTES)
    assert file_fingerprint(big)["bytes"] == 2 * 2**30 - SAMPLE_BLOCK_BYTES


def test_the_data_fingerprint_sees_every_kind_of_change(data_copy):
    before = data_fingerprint(data_copy, 1)
    root = data_copy / "subj01"
    fmri = root / "training_split" / "training_fmri" / "lh_training_fmri.npy"
    array = np.load(fmri)
    array[5, 7] += 1
    np.save(fmri, array)
    after_fmri = data_fingerprint(data_copy, 1)
    assert after_fmri["digest"] != before["digest"]
    mask = root / "roi_masks" / "lh.floc-faces_challenge_space.npy"
    labels = np.load(mask)
    np.save(mask, labels[::-1].copy())
    after_mask = data_fingerprint(data_copy, 1)
    assert after_mask["digest"] != after_fmri["digest"]
    image = sorted((root / "test_split" / "test_images").iterdir())[0]
    image.rename(image.with_name("test-9999_nsd-99999.png"))
    assert data_fingerprint(data_copy, 1)["digest"] != after_mask["digest"]


# --------------------------------------------------------------------------
# tbe env: exact environments
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A folder with the manifest of this very environment (what a run or report writes)."""
    from model.files import write_json
    from model.runs import software_manifest

    folder = tmp_path_factory.mktemp("recorded")
    write_json(folder / MANIFEST, software_manifest("run"))
    return folder


def _expected_pins(exclude_pip: bool) -> dict[str, str]:
    skip = {SUITE} | not_from_an_index() | ({"pip"} if exclude_pip else set())
    return {name: version for name, version in installed().items() if name not in skip}


def test_tbe_env_pip_pins_exactly_what_is_installed(recorded, tmp_path, capsys):
    out = tmp_path / "requirements.txt"
    assert tbe("env", "--run", recorded, "--format", "pip", "--out", out) == 0
    assert capsys.readouterr().out == f"{out}\n"
    pins = {}
    for line in out.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("--extra-index-url "):  # torch wheels with a local label (+cu121) come from PyTorch's index
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", line
        assert canonicalize_name(req.name) not in pins, f"{req.name} pinned twice"
        pins[canonicalize_name(req.name)] = spec.version
    assert pins == _expected_pins(exclude_pip=True)
    assert tbe("env", "--report", recorded, "--format", "pip") == 0  # without --out: printed
    assert capsys.readouterr().out == out.read_text()


def test_tbe_env_conda_parses_and_pins_exactly_what_is_installed(recorded, tmp_path):
    out = tmp_path / "environment.yml"
    assert tbe("env", "--run", recorded, "--format", "conda", "--out", out) == 0
    text = out.read_text()
    env = yaml.safe_load(text)
    assert env["channels"] == ["conda-forge"] and env["name"].startswith("tbe-")
    to_pypi = {conda: pypi for pypi, conda in CONDA_FORGE.items()}
    pins: dict[str, str] = {}
    python = cuda = None
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            for line in entry["pip"]:
                req = Requirement(line)
                (spec,) = req.specifier
                pins[canonicalize_name(req.name)] = spec.version
            continue
        name, _, version = entry.partition("==")
        if name == "python":
            python = version
        elif name == "cuda-version":
            cuda = version
        elif name != "pip" or version:
            assert version, entry
            pins[to_pypi[name]] = version
    assert python == platform.python_version()
    assert cuda == (".".join(torch.version.cuda.split(".")[:2]) if torch.version.cuda else None)
    expected = _expected_pins(exclude_pip=False)
    left_to_pytorch = {n for n in expected if CONDA_PROVIDED_WITH_PYTORCH.match(n)}
    header = [line for line in text.splitlines() if line.startswith("# Left to conda-forge's pytorch")]
    named = {canonicalize_name(n): v for n, _, v in (t.strip().partition("==") for t in header[0].split(":", 1)[1].split(","))} \
        if header else {}
    assert named == {n: expected[n] for n in left_to_pytorch}, "the CUDA wheels left to pytorch are named with versions"
    from packaging.version import Version

    expected = {n: (Version(v).public if n in TORCH_FAMILY else v) for n, v in expected.items() if n not in left_to_pytorch}
    assert pins == expected


@pytest.mark.parametrize("case", ["missing", "both", "neither", "corrupt", "not a manifest"])
def test_tbe_env_bad_input_is_one_line_and_exit_2(case, recorded, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    if case == "corrupt":
        (run / MANIFEST).write_text('{"format": 1, "distributions": {')
    elif case == "not a manifest":
        (run / MANIFEST).write_text('[1, 2]')
    args = {"missing": ["--run", run], "both": ["--run", recorded, "--report", run], "neither": [],
            "corrupt": ["--run", run], "not a manifest": ["--run", run]}[case]
    out = tmp_path / "env.yml"
    assert tbe("env", *args, "--format", "conda", "--out", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    where = {"missing": f"{run / MANIFEST}: missing", "both": "--run/--report", "neither": "--run/--report",
             "corrupt": f"{run / MANIFEST}: unreadable manifest", "not a manifest": f"{run / MANIFEST}: not a tbe manifest"}
    assert where[case] in err[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".env.yml")]


def test_read_manifest_accepts_the_folder_or_the_file(recorded):
    assert read_manifest(recorded) == read_manifest(recorded / MANIFEST)
    assert read_manifest(recorded)["kind"] == "run"


def test_pretrained_weights_are_identified_by_the_hub_cache_sha256(tmp_path, monkeypatch):
    """The hub stores a file under its SHA-256 (blobs/<sha256>): the manifest reads it, no hashing."""
    import hashlib

    from huggingface_hub import constants

    from model.backbone import BackboneConfig
    from model.runs.manifest import backbone_info

    content = b"not really weights"
    sha = hashlib.sha256(content).hexdigest()
    repo = tmp_path / "models--timm--vit_small_patch14_dinov2.lvd142m"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / sha).write_bytes(content)
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(repo / "blobs" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    info = backbone_info(BackboneConfig("vit_small_patch14_dinov2.lvd142m", "pretrained"), "timm:vit_small")
    assert info["pretrained"] == {"cached": True, "hf_hub_id": "timm/vit_small_patch14_dinov2.lvd142m",
                                  "file": "model.safetensors", "revision": "abc123", "sha256": sha,
                                  "bytes": len(content)}
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    assert backbone_info(BackboneConfig("vit_small_patch14_dinov2.lvd142m", "pretrained"), "x")["pretrained"]["cached"] is False
    assert "pretrained" not in backbone_info(BackboneConfig(weights="random"), "random:seed=0")
