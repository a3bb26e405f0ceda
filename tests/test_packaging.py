"""Packaging: environment.yml and pyproject.toml name the same runtime dependencies."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.utils import canonicalize_name

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


def test_readme_is_a_front_page():
    """At most 250 lines: the rest lives in docs/ (issue 24; its 'Read on' links each page: test_readme_commands)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move the detail to a docs/ page"
    assert "## Read on" in lines


def test_imports_flow_one_way():
    """analyses -> interpret -> model: model imports neither, interpret does not import analyses."""
    forbidden = {"model": ("interpret", "analyses"), "interpret": ("analyses",)}
    for package, banned in forbidden.items():
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            for name in banned:
                assert not re.search(rf"^\s*(from|import)\s+{name}\b", text, flags=re.M), f"{path} imports {name}"


# --------------------------------------------------------------------------
# Every third-party import is declared; every declared dependency is used
# --------------------------------------------------------------------------

#: Our own top-level packages and modules.
FIRST_PARTY = {"model", "interpret", "analyses", "main"}
#: Declared dependencies that nothing imports, each needed at run time for the reason given (none at present:
#: netcdf4, xarray's engine, is also imported by interpret/mapfile.py to append maps batch by batch).
RUNTIME_ONLY: dict[str, str] = {}


def _code_sources() -> list[tuple[Path, str]]:
    """The packages' modules, main.py, and the code cells of the notebooks (magics and shell lines removed)."""
    import json

    files = [p for package in ("model", "interpret", "analyses") for p in sorted((ROOT / package).rglob("*.py"))]
    sources = [(p, p.read_text()) for p in [*files, ROOT / "main.py"]]
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        sources.append((nb, "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))))
    return sources


def third_party_imports() -> dict[str, set[str]]:
    """Top-level name of every third-party module imported anywhere in the code -> the files importing it."""
    import ast
    import sys

    found: dict[str, set[str]] = {}
    for path, text in _code_sources():
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY and top != "__future__":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_import_is_declared_and_every_dependency_imported():
    from importlib.metadata import packages_distributions

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = {canonicalize_name(_split(r)[0]) for r in pyproject["project"]["dependencies"]}
    providers = {module: {canonicalize_name(d) for d in dists} for module, dists in packages_distributions().items()}
    imports = third_party_imports()
    assert {"torch", "numpy", "yaml", "huggingface_hub", "jinja2", "nbformat"} <= set(imports), "the scan finds imports"
    undeclared, used = {}, set()
    for module, where in sorted(imports.items()):
        dists = providers.get(module)
        assert dists, f"{module} (imported in {sorted(where)[0]}) is not installed: no distribution provides it"
        if not dists & declared:
            undeclared[module] = (sorted(dists), sorted(where)[:2])
        used |= dists & declared
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    unused = declared - used - set(RUNTIME_ONLY)
    assert not unused, f"declared but never imported (add a reason to RUNTIME_ONLY if needed at run time): {sorted(unused)}"
    assert set(RUNTIME_ONLY) <= declared, "a runtime-only dependency must be declared"
    assert not set(RUNTIME_ONLY) & used, "a runtime-only dependency that is imported needs no exception"


def test_the_import_scan_would_catch_a_miss(monkeypatch):
    """An import inside a function of an undeclared package (statsmodels is a test extra only) fails the check."""
    import pytest

    real = _code_sources()
    extra = (ROOT / "model" / "extra.py", "def fit():\n    from statsmodels.api import OLS\n    return OLS\n")
    monkeypatch.setattr(f"{__name__}._code_sources", lambda: [*real, extra])
    with pytest.raises(AssertionError, match="imported but not declared.*statsmodels"):
        test_every_import_is_declared_and_every_dependency_imported()
    without_tqdm = [(path, text.replace("from tqdm.auto import tqdm", "")) for path, text in real]
    monkeypatch.setattr(f"{__name__}._code_sources", lambda: without_tqdm)
    with pytest.raises(AssertionError, match="declared but never imported.*tqdm"):
        test_every_import_is_declared_and_every_dependency_imported()
