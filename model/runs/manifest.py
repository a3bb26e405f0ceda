"""Reproducibility manifests: what produced a run or a report, in one ``manifest.json``.

Every run directory (written by rank 0 when training starts) and every
report folder holds one::

    format, kind ("run" or "report"), created
    command        argv and working directory of the process
    suite          this package's name and version, its git commit and a dirty flag
                   (or why there is none: an installed copy has no .git)
    python, platform, torch   interpreter; torch, CUDA, cuDNN and the GPUs (or none)
    distributions  every installed distribution -> version (importlib.metadata)
    sources        distributions not installed from an index (editable, local, VCS)
    seeds          every seed that decides the result
    data           the subject's fingerprint (:func:`data_fingerprint`)
    backbone       its configuration and the weights' digest
    feature_cache  the cache entry (key) of each split's features

``tbe env`` turns a manifest into an exact conda or pip environment
(:mod:`model.runs.environment`).

Fingerprints stay cheap at real size (about 1.5 GB of fMRI and 9841 images
per subject): see :func:`model.files.file_fingerprint` (small files hashed
whole, large ones by their size and evenly spaced blocks) and
:func:`model.files.image_list_fingerprint` (file names and sizes; the
feature-cache key already holds a digest of every image's bytes). They are
the same digests a run's ``config.json`` records
(:meth:`model.subject.Subject.fingerprint`).
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata as metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

from packaging.utils import canonicalize_name

from ..errors import InputError
from ..files import digest_json, file_fingerprint, image_list_fingerprint, write_json
from .layout import MANIFEST

MANIFEST_FORMAT = 1
SUITE = "transformer-brain-encoder"
#: Files up to this size are hashed whole; larger ones are sampled.

_command: list[str] | None = None


def record_command(argv: Iterable[str] | None) -> None:
    """Remember the ``tbe`` command being run, for the manifests it writes (None: it has ended)."""
    global _command
    _command = [str(a) for a in argv] if argv is not None else None


def command_line() -> dict[str, Any]:
    """The process's command line, the ``tbe`` command it ran (if any; ``main.py`` runs one) and the directory."""
    return {"argv": [sys.executable, *sys.argv], "tbe": list(_command) if _command is not None else None,
            "cwd": os.getcwd()}


# --------------------------------------------------------------------------
# Software
# --------------------------------------------------------------------------

def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30,
                          check=True).stdout


def suite_info(root: Path | None = None) -> dict[str, Any]:
    """This package's version and, in a git checkout, its commit and whether the tree differs from it."""
    try:
        version = metadata.version(SUITE)
    except metadata.PackageNotFoundError:
        version = None
    root = Path(root) if root is not None else Path(__file__).resolve().parents[1]
    info: dict[str, Any] = {"name": SUITE, "version": version, "path": str(root), "git": None}
    if not ((root / ".git").exists() and (root / "pyproject.toml").is_file()):
        info["note"] = "not a git checkout (an installed copy): the version is all that identifies the code"
        return info
    if shutil.which("git") is None:
        info["note"] = "a git checkout, but no git command to read its commit"
        return info
    try:
        commit = _git(root, "rev-parse", "HEAD").strip()
        changed = [line[3:] for line in _git(root, "status", "--porcelain").splitlines() if line.strip()]
    except (subprocess.SubprocessError, OSError) as exc:
        info["note"] = f"git could not read the checkout ({type(exc).__name__})"
        return info
    info["git"] = {"commit": commit, "dirty": bool(changed), "changed_files": changed[:50],
                   "n_changed_files": len(changed)}
    return info


def python_info() -> dict[str, Any]:
    return {"version": platform.python_version(), "implementation": platform.python_implementation(),
            "executable": sys.executable, "prefix": sys.prefix}


def platform_info() -> dict[str, Any]:
    return {"system": platform.system(), "release": platform.release(), "machine": platform.machine(),
            "processor": platform.processor(), "cpus": os.cpu_count()}


def torch_info() -> dict[str, Any]:
    """torch's version, the CUDA and cuDNN it was built with, and the GPUs it sees (an empty list: none)."""
    import torch

    cuda = torch.cuda.is_available()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "mps": bool(getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()),
        "threads": torch.get_num_threads(),
    }


def distributions() -> tuple[dict[str, str], dict[str, dict]]:
    """Every installed distribution -> version, and the ones installed from elsewhere than an index.

    Names are as the distributions spell them, sorted case-insensitively;
    the second dict holds each non-index install's ``direct_url.json``
    (editable checkouts, local paths, VCS URLs).
    """
    versions: dict[str, str] = {}
    sources: dict[str, dict] = {}
    seen: set[str] = set()
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name or canonicalize_name(name) in seen:  # the first on sys.path wins, as for imports
            continue
        seen.add(canonicalize_name(name))
        versions[name] = dist.version
        direct = dist.read_text("direct_url.json")
        if direct:
            try:
                sources[name] = json.loads(direct)
            except json.JSONDecodeError:
                sources[name] = {"url": "unknown"}
    order = sorted(versions, key=str.lower)
    return {n: versions[n] for n in order}, {n: sources[n] for n in sorted(sources, key=str.lower)}


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def data_fingerprint(data_dir: str | Path, subj: int) -> dict[str, Any]:
    """Fingerprint of one subject in the Algonauts layout, cheap at real size.

    The fMRI files (about 1.5 GB per subject) are sampled, the ROI masks and
    mappings (a few MB) hashed whole, the image folders fingerprinted by
    their file names and sizes; ``digest`` summarises them all. A file the
    layout names but the folder lacks is recorded as missing, not an error
    (the reader says what is wrong with a subject; this only describes it).
    """
    from ..subject import SPLIT_DIRS, subject_dir

    root = subject_dir(data_dir, subj)
    files = []
    fmri_dir = root / "training_split" / "training_fmri"
    for path in sorted(fmri_dir.glob("*.npy")) + sorted((root / "roi_masks").glob("*.npy")):
        files.append(file_fingerprint(path, root))
    images = {split: image_list_fingerprint(root / folder) if (root / folder).is_dir() else {"missing": folder}
              for split, folder in SPLIT_DIRS.items()}
    out = {"subject_dir": str(root.resolve()), "subj": subj, "files": files, "images": images}
    out["digest"] = digest_json({"files": [(f["path"], f["bytes"], f["blake2b"]) for f in files],
                                 "images": {k: v.get("blake2b") for k, v in images.items()}})
    return out


# --------------------------------------------------------------------------
# Backbone weights
# --------------------------------------------------------------------------

def hub_weights(name: str) -> dict[str, Any]:
    """Where timm's pretrained weights for ``name`` are in the Hugging Face cache, and their SHA-256.

    The hub cache stores each large file under its SHA-256 (``blobs/<sha256>``),
    so the digest costs nothing; ``cached: False`` when they are not there.
    """
    try:
        from huggingface_hub import try_to_load_from_cache
        from timm.models import get_pretrained_cfg
    except ImportError:  # pragma: no cover - both are dependencies
        return {"cached": False}
    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        return {"cached": False, "hf_hub_id": None}
    for filename in ([cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]):
        found = try_to_load_from_cache(cfg.hf_hub_id, filename)
        if isinstance(found, str):
            link, blob = Path(found), Path(found).resolve()
            sha = blob.name if len(blob.name) == 64 and all(c in "0123456789abcdef" for c in blob.name) else None
            return {"cached": True, "hf_hub_id": cfg.hf_hub_id, "file": filename, "revision": link.parent.name,
                    "sha256": sha, "bytes": blob.stat().st_size}
    return {"cached": False, "hf_hub_id": cfg.hf_hub_id}


def backbone_info(config, weights_digest: str | None) -> dict[str, Any]:
    """A backbone's configuration and the digest of its weights.

    ``weights_digest`` is the one the feature cache keys on
    (``random:seed=...``, ``file:<blake2b of the checkpoint>`` or
    ``timm:<name>``); for timm's pretrained weights the hub file's SHA-256 is added.
    """
    out: dict[str, Any] = {"config": config.to_dict(), "weights_digest": weights_digest}
    if config.weights == "pretrained":
        out["pretrained"] = hub_weights(config.name)
    return out


# --------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------

def software_manifest(kind: str) -> dict[str, Any]:
    """The part of every manifest that describes the process and its environment."""
    versions, sources = distributions()
    return {
        "format": MANIFEST_FORMAT,
        "kind": kind,
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command_line(),
        "suite": suite_info(),
        "python": python_info(),
        "platform": platform_info(),
        "torch": torch_info(),
        "distributions": versions,
        "sources": sources,
    }


def run_manifest(config, features: dict) -> dict[str, Any]:
    """The manifest of a run about to train: ``config`` (a RunConfig) and its FeatureSets by split."""
    first = next(iter(features.values()))
    manifest = software_manifest("run")
    manifest.update({
        "seeds": {"train": config.train.seed, "split": config.train.split_seed, "backbone": config.backbone.seed},
        "data": data_fingerprint(config.data_dir, config.subj),
        "backbone": backbone_info(config.backbone, first.meta.get("weights")),
        "feature_cache": {split: {"key": fs.path.name, "path": str(fs.path), "n_images": len(fs)}
                          for split, fs in features.items()},
    })
    return manifest


def changed_distributions(old: dict[str, str], new: dict[str, str]) -> dict[str, list]:
    """name -> [old version, new version] for every distribution that differs (None: absent)."""
    names = sorted(set(old) | set(new), key=str.lower)
    return {n: [old.get(n), new.get(n)] for n in names if old.get(n) != new.get(n)}


def write_run_manifest(run: str | Path, config, features: dict, resume: bool = False) -> Path:
    """Write ``RUN/manifest.json`` at the start of training.

    On ``resume`` an existing manifest keeps describing the run's start, and
    gains one ``resumes`` entry: when, the command, the suite, and every
    distribution whose version changed since.
    """
    path = Path(run) / MANIFEST
    manifest = run_manifest(config, features)
    if resume and path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if isinstance(old, dict) and isinstance(old.get("distributions"), dict):
            old.setdefault("resumes", []).append({
                "created": manifest["created"], "command": manifest["command"], "suite": manifest["suite"],
                "torch": manifest["torch"],
                "changed_distributions": changed_distributions(old["distributions"], manifest["distributions"])})
            manifest = old
    write_json(path, manifest)
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """A manifest from its file or the folder holding it; :class:`InputError` if missing or not one."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise InputError(path, "missing: no manifest.json here (runs and reports written before manifests have none)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"unreadable manifest ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("distributions"), dict) \
            or not isinstance(manifest.get("python"), dict):
        raise InputError(path, "not a tbe manifest (expected a JSON object with 'python' and 'distributions')")
    bad = [k for k, v in manifest["distributions"].items() if not isinstance(v, str)]
    if bad:
        raise InputError(path, f"distribution {bad[0]!r} has no version string")
    return manifest


def report_manifest(run_dir: str | Path, data_dir: str | Path, subj: int, command: str | None = None,
                    seeds: dict | None = None) -> dict[str, Any]:
    """The manifest of a report on ``run_dir``: this process's environment, the data, and the run's own record.

    The run's seeds, backbone and feature-cache key come from its
    ``manifest.json`` (a run trained before manifests has none: said, not
    guessed); ``run.changed_distributions`` lists what differs between the
    environment that trained the run and the one that rendered the report.
    """
    manifest = software_manifest("report")
    if command:
        manifest["command"]["reproduce"] = command
    run_path = Path(run_dir) / MANIFEST
    run_info: dict[str, Any] = {"path": str(Path(run_dir).resolve()), "manifest": None}
    run_manifest_ = None
    if run_path.is_file():
        try:
            run_manifest_ = json.loads(run_path.read_text())
        except (OSError, json.JSONDecodeError):
            run_info["note"] = "the run's manifest.json is unreadable"
    else:
        run_info["note"] = "the run has no manifest.json (trained before manifests were written)"
    if isinstance(run_manifest_, dict):
        run_info.update({
            "manifest": MANIFEST, "manifest_digest": digest_json(run_manifest_), "created": run_manifest_.get("created"),
            "suite": run_manifest_.get("suite"),
            "changed_distributions": changed_distributions(run_manifest_.get("distributions") or {},
                                                           manifest["distributions"])})
    manifest.update({
        "run": run_info,
        "seeds": {"run": (run_manifest_ or {}).get("seeds"), "notebooks": seeds or {}},
        "data": data_fingerprint(data_dir, subj),
        "backbone": (run_manifest_ or {}).get("backbone"),
        "feature_cache": (run_manifest_ or {}).get("feature_cache"),
    })
    return manifest
