"""Packaging: environment.yml and pyproject.toml name the same runtime dependencies."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
#: conda-forge package name -> PyPI name, where they differ
CONDA_TO_PYPI = {"pytorch": "torch"}
NOT_RUNTIME = {"python", "pip"}


def _split(requirement: str) -> tuple[str, str]:
    match = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", requirement.strip())
    return match[1].lower().replace("_", "-"), match[2].replace(" ", "")


def test_environment_yml_matches_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pip_deps = dict(_split(r) for r in pyproject["project"]["dependencies"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda_deps = {}
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            assert entry["pip"] == ["-e ."], "the project itself is installed with pip"
            continue
        name, spec = _split(entry)
        if name in NOT_RUNTIME:
            continue
        conda_deps[CONDA_TO_PYPI.get(name, name)] = spec
    assert conda_deps == pip_deps
    assert any(str(e).startswith("python=3.11") for e in env["dependencies"])


def test_console_script_and_layout():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "transformer-brain-encoder"
    assert pyproject["project"]["scripts"]["tbe"] == "analyses.cli:main"
    for folder in ("model", "interpret", "analyses", "notebooks", "reports", "tests", "benchmarks"):
        assert (ROOT / folder).is_dir(), folder
    assert [p.name for p in (ROOT / "reports").iterdir()] == ["README.md"] or (ROOT / "reports" / "README.md").is_file()


def test_readme_has_the_two_setup_commands_and_ci_runs_one():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, flags=re.S)
    assert "make demo" in blocks[0] and "make test" in blocks[0]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_imports_flow_one_way():
    """analyses -> interpret -> model: model imports neither, interpret does not import analyses."""
    forbidden = {"model": ("interpret", "analyses"), "interpret": ("analyses",)}
    for package, banned in forbidden.items():
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            for name in banned:
                assert not re.search(rf"^\s*(from|import)\s+{name}\b", text, flags=re.M), f"{path} imports {name}"
