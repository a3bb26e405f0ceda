"""The layering rules, checked on the source: analyses -> interpret -> model, and the simulator private to model.

Every import is read from the syntax tree (function-level imports and
notebook code cells included), so a rule broken anywhere fails here.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "interpret", "analyses")


def imported_modules(source: str, module: str) -> set[str]:
    """Absolute names of every module ``source`` imports (``module`` is its own dotted name, for relative imports)."""
    names = set()
    package = module.split(".")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # from model import virtual
    return names


def python_sources(folder: str) -> dict[str, str]:
    """Dotted module name -> source of every module of a package."""
    out = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1] + ["__init__"]
        out[".".join(parts)] = path.read_text()
    return out


def notebook_sources() -> dict[str, str]:
    out = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        out[f"notebooks.{path.stem}"] = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
    return out


def violations(sources: dict[str, str], forbidden: tuple[str, ...]) -> list[str]:
    """``module imports name`` for every import of a module under one of ``forbidden``."""
    found = []
    for module, source in sources.items():
        for name in sorted(imported_modules(source, module)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{module} imports {name}")
    return found


def test_the_checker_sees_every_form_of_import():
    """The rule tests below can fail: each spelling of an import of the simulator is caught."""
    spellings = ["import model.virtual.truth", "from model.virtual.truth import GroundTruth",
                 "from model import virtual", "def f():\n    from model.virtual import writer\n"]
    for source in spellings:
        assert violations({"interpret.x": source}, ("model.virtual",)), source
    assert violations({"model.scoring": "from .virtual.truth import load_ground_truth"}, ("model.virtual",))
    assert not violations({"interpret.x": "from model.truth import GroundTruth\nimport model.vision"}, ("model.virtual",))


def test_nothing_outside_model_imports_the_simulator():
    """interpret/, analyses/ and the notebooks reach the virtual subject only through model.truth and model.synthetic."""
    sources = {**python_sources("interpret"), **python_sources("analyses"), **notebook_sources()}
    assert len(sources) > 20
    assert violations(sources, ("model.virtual",)) == []


def test_imports_flow_from_analyses_to_interpret_to_model():
    assert violations(python_sources("model"), ("interpret", "analyses")) == []
    assert violations(python_sources("interpret"), ("analyses",)) == []


def test_library_modules_set_no_matplotlib_backend():
    """Importing the suite (and saving a figure) leaves a session's backend alone; only notebook set-up chooses one."""
    code = (
        "import matplotlib; matplotlib.use('svg')\n"
        "import importlib, pkgutil, tempfile, pathlib, pandas as pd\n"
        f"for package in {PACKAGES!r}:\n"
        "    p = importlib.import_module(package)\n"
        "    for m in pkgutil.walk_packages(p.__path__, package + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "from interpret.overlay import plot_sanity\n"
        "table = pd.DataFrame(dict(method=['a', 'a'], step=[1, 2], randomised=['x', 'y'],\n"
        "                          rank_correlation=[0.9, 0.1], flagged=[False, False]))\n"
        "out = plot_sanity(table, pathlib.Path(tempfile.mkdtemp()) / 's.png')\n"
        "assert out.read_bytes()[:8] == b'\\x89PNG\\r\\n\\x1a\\n'\n"
        "print(matplotlib.get_backend())\n")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "svg"


def _calls(tree: ast.AST, owner: str, attr: str) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == attr and (not owner or getattr(node.func.value, "id", None) == owner)]


@pytest.mark.parametrize("package", PACKAGES)
def test_figures_are_written_through_one_helper(package):
    """PNG files are written by model.figures (atomically); only the notebook set-up chooses a backend."""
    for module, source in python_sources(package).items():
        tree = ast.parse(source)
        if module != "model.figures":
            assert not _calls(tree, "", "savefig"), f"{module} writes a figure itself: use model.figures"
        allowed = [f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "setup_notebook"]
        inside = {id(c) for f in allowed for c in _calls(f, "matplotlib", "use")}
        assert all(id(c) in inside for c in _calls(tree, "matplotlib", "use")), f"{module} sets a matplotlib backend"
