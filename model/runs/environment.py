"""Exact environments from a manifest: a conda ``environment.yml`` and a pip ``requirements.txt``.

Both pin every distribution of :func:`model.runs.manifest.distributions` to the
version the manifest recorded, except:

* the suite itself (installed from its checkout, at the manifest's commit);
* distributions installed from elsewhere than an index (editable, local
  paths, VCS): listed in a comment with where they came from;
* pip itself in ``requirements.txt`` (the installer; it is a conda package in
  ``environment.yml``);
* in ``environment.yml``, the CUDA wheels that PyPI's torch needs
  (``nvidia-*``, ``cuda-*``, ``triton``): conda-forge's ``pytorch`` brings its
  own CUDA, constrained by ``cuda-version`` to the one the run used.

Conda packages use their conda-forge names (:data:`CONDA_FORGE`: ``torch``
is ``pytorch``, ``tzdata`` is ``python-tzdata``, ...); a distribution whose
conda-forge name is not in that table goes to the file's ``pip:`` section,
pinned the same way. A version with a local label (``2.5.1+cu121``) keeps it
for pip, which then needs PyTorch's own index (an ``--extra-index-url``
line); conda-forge has no local labels, so the conda pin drops it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..errors import InputError, OptionError
from ..files import atomic_path
from .manifest import SUITE

#: PyPI name (``packaging.utils.canonicalize_name``) -> conda-forge name, for the distributions known to be on conda-forge.
CONDA_FORGE: dict[str, str] = {
    **{n: n for n in (
        "numpy", "scipy", "torchvision", "timm", "safetensors", "pillow", "tqdm", "nilearn", "nibabel", "matplotlib",
        "xarray", "netcdf4", "pandas", "scikit-image", "scikit-learn", "himalaya", "captum", "seaborn", "papermill",
        "nbconvert", "nbformat", "nbclient", "ipykernel", "ipython", "pyyaml", "jinja2", "markupsafe", "statsmodels",
        "pytest", "packaging", "pluggy", "iniconfig", "cftime", "contourpy", "cycler", "fonttools", "kiwisolver",
        "pyparsing", "python-dateutil", "six", "requests", "urllib3", "idna", "certifi", "charset-normalizer",
        "filelock", "fsspec", "networkx", "sympy", "mpmath", "joblib", "threadpoolctl", "patsy", "imageio", "tifffile",
        "traitlets", "tornado", "pyzmq", "psutil", "debugpy", "comm", "nest-asyncio", "jedi", "parso", "pexpect",
        "ptyprocess", "prompt-toolkit", "wcwidth", "pygments", "decorator", "executing", "asttokens",
        "matplotlib-inline", "platformdirs", "attrs", "jsonschema", "jsonschema-specifications", "referencing",
        "rpds-py", "mistune", "bleach", "tinycss2", "webencodings", "defusedxml", "pandocfilters", "beautifulsoup4",
        "soupsieve", "entrypoints", "click", "tenacity", "anyio", "h11", "httpcore", "httpx", "sniffio", "narwhals",
        "wrapt", "setuptools", "wheel", "pip", "zipp", "cloudpickle", "formulaic", "pytz", "tzlocal", "lazy-loader",
        "importlib-metadata", "pooch", "lxml", "pyarrow", "numexpr", "bottleneck", "h5py", "h5netcdf")},
    "torch": "pytorch",
    "tzdata": "python-tzdata",
    "jupyter-client": "jupyter_client",
    "jupyter-core": "jupyter_core",
    "jupyterlab-pygments": "jupyterlab_pygments",
    "huggingface-hub": "huggingface_hub",
    "typing-extensions": "typing_extensions",
    "pure-eval": "pure_eval",
    "stack-data": "stack_data",
    "ipython-pygments-lexers": "ipython_pygments_lexers",
    "importlib-resources": "importlib_resources",
    "interface-meta": "interface_meta",
    "fastjsonschema": "python-fastjsonschema",
}
#: PyPI's CUDA wheels for torch: conda-forge's pytorch brings CUDA itself.
CONDA_PROVIDED_WITH_PYTORCH = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")
#: torch's own wheels with a local label (+cu121, +cpu) come from PyTorch's index, not PyPI.
TORCH_FAMILY = ("torch", "torchvision", "torchaudio")
PYTORCH_INDEX = "https://download.pytorch.org/whl/{label}"


def _public(version: str) -> str:
    try:
        return Version(version).public
    except InvalidVersion:
        return version.split("+")[0]


def _local(version: str) -> str | None:
    try:
        return Version(version).local
    except InvalidVersion:
        return None


def _pinned(manifest: dict) -> tuple[dict[str, str], list[str]]:
    """Distributions to pin (name -> version), and comment lines for the ones left out and why."""
    sources = manifest.get("sources") or {}
    pins, notes = {}, []
    for name, version in manifest["distributions"].items():
        if canonicalize_name(name) == SUITE:
            continue
        if name in sources:
            notes.append(f"{name}=={version} was installed from {_source(sources[name])}: not pinned here")
            continue
        pins[name] = version
    return pins, notes


def _source(info: dict) -> str:
    url = info.get("url", "unknown")
    if info.get("dir_info", {}).get("editable"):
        return f"an editable checkout ({url})"
    vcs = info.get("vcs_info")
    if vcs:
        return f"{vcs.get('vcs', 'vcs')} {url}@{vcs.get('commit_id', '?')}"
    return str(url)


def _header(manifest: dict, path_hint: str, recreate: str) -> list[str]:
    suite = manifest.get("suite") or {}
    git = suite.get("git") or {}
    torch = manifest.get("torch") or {}
    python = manifest.get("python") or {}
    lines = [f"Exact environment of the {manifest.get('kind', 'job')} in {path_hint}, "
             f"from its manifest.json (created {manifest.get('created', '?')}).",
             f"Python {python.get('version', '?')} ({python.get('implementation', '?')}); torch {torch.get('version', '?')}"
             + (f" with CUDA {torch['cuda']}" if torch.get("cuda") else "")
             + (f" on {', '.join(torch['gpus'])}" if torch.get("gpus") else ""),
             f"Recreate: {recreate}"]
    if git.get("commit"):
        dirty = " (the tree had uncommitted changes then: " + \
                ", ".join(git.get("changed_files", [])[:5]) + ")" if git.get("dirty") else ""
        lines.append(f"Then the suite itself at commit {git['commit']}{dirty}:")
        lines.append(f"  git checkout {git['commit']} && pip install --no-deps -e .")
    else:
        lines.append(f"Then the suite itself: {SUITE} {suite.get('version') or '(version unknown)'}"
                     f" ({suite.get('note', 'no git commit recorded')}): pip install --no-deps -e .")
    return lines


def pip_requirements(manifest: dict, path_hint: str = "") -> str:
    """A ``requirements.txt`` that pins every distribution of the manifest (see the module docstring)."""
    pins, notes = _pinned(manifest)
    pins = {n: v for n, v in pins.items() if canonicalize_name(n) != "pip"}
    lines = [f"# {line}" for line in _header(manifest, path_hint, "python -m venv ENV && ENV/bin/pip install -r requirements.txt")]
    lines += [f"# {note}" for note in notes]
    labels = sorted({_local(v) for n, v in pins.items() if canonicalize_name(n) in TORCH_FAMILY and _local(v)})
    lines += [f"--extra-index-url {PYTORCH_INDEX.format(label=label)}" for label in labels]
    lines += [f"{name}=={version}" for name, version in pins.items()]
    return "\n".join(lines) + "\n"


def conda_environment(manifest: dict, path_hint: str = "", name: str | None = None) -> str:
    """A conda-forge ``environment.yml`` pinned to the manifest's versions (see the module docstring)."""
    import yaml

    pins, notes = _pinned(manifest)
    torch = manifest.get("torch") or {}
    python = (manifest.get("python") or {}).get("version")
    conda, pip, omitted = [], [], []
    has_pytorch = any(canonicalize_name(n) == "torch" for n in pins)
    for dist, version in pins.items():
        key = canonicalize_name(dist)
        if has_pytorch and CONDA_PROVIDED_WITH_PYTORCH.match(key):
            omitted.append(f"{dist}=={version}")
        elif key in CONDA_FORGE and key in TORCH_FAMILY:  # conda-forge's builds carry no +cuXXX label
            conda.append(f"{CONDA_FORGE[key]}=={_public(version)}")
        elif key in CONDA_FORGE and not _local(version):
            conda.append(f"{CONDA_FORGE[key]}=={version}")
        else:
            pip.append(f"{dist}=={version}")
    if python:
        conda.insert(0, f"python=={python}")
    if has_pytorch and torch.get("cuda"):
        conda.append(f"cuda-version=={'.'.join(str(torch['cuda']).split('.')[:2])}")
    if pip and not any(c.startswith("pip==") for c in conda):
        conda.append("pip")
    suite = manifest.get("suite") or {}
    tag = ((suite.get("git") or {}).get("commit") or suite.get("version") or "env")[:12]
    env: dict[str, Any] = {"name": name or f"tbe-{tag}", "channels": ["conda-forge"],
                           "dependencies": conda + ([{"pip": pip}] if pip else [])}
    lines = _header(manifest, path_hint, "conda env create -f environment.yml")
    lines += notes
    if omitted:
        lines.append("Left to conda-forge's pytorch (it brings its own CUDA): " + ", ".join(omitted))
    header = "".join(f"# {line}\n" for line in lines)
    return header + yaml.safe_dump(env, sort_keys=False, default_flow_style=False)


#: ``tbe env --format`` -> (writer, conventional file name)
FORMATS: dict[str, tuple[Callable[..., str], str]] = {
    "conda": (conda_environment, "environment.yml"),
    "pip": (pip_requirements, "requirements.txt"),
}


def write_environment(manifest: dict, fmt: str, out: str | Path, path_hint: str = "") -> Path:
    """Write the ``fmt`` ('conda' or 'pip') environment of ``manifest`` to ``out``, atomically."""
    if fmt not in FORMATS:
        raise OptionError("format", f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    out = Path(out)
    text = FORMATS[fmt][0](manifest, path_hint)
    try:
        with atomic_path(out) as tmp:
            tmp.write_text(text)
    except OSError as exc:
        raise InputError(out, f"cannot write ({exc.strerror or type(exc).__name__})") from None
    return out


def write_environments(manifest: dict, folder: str | Path, path_hint: str = "") -> dict[str, Path]:
    """Both environment files next to a manifest: ``environment.yml`` and ``requirements.txt``."""
    return {fmt: write_environment(manifest, fmt, Path(folder) / filename, path_hint)
            for fmt, (_, filename) in FORMATS.items()}
