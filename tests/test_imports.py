"""No import circle between the suite's modules, and imports flow analyses -> interpret -> model.

Every ``import`` of every module is read from the syntax tree, those inside
functions and ``if TYPE_CHECKING:`` blocks included, relative imports
resolved, and turned into edges of a module graph:

- ``import a.b.c`` and ``from a.b.c import x`` are edges to ``a.b.c``, or to
  ``a.b.c.x`` where ``x`` is itself a module (``from model import virtual``);
- importing a module also runs the ``__init__`` of every package above it,
  so each such package is an edge too, except the importer's own packages
  (they are already running when the importer runs);
- a package's ``__init__`` is the node named after the package, so an
  ``__init__`` that re-exports a submodule's names is an edge from the
  package to that submodule, and a submodule that imports names from its own
  package's ``__init__`` closes a circle.

The graph must have no cycle (a strongly connected component of more than
one module); a failure prints each circle. The subpackages of ``model`` that
declare ``__all__`` export exactly what the rest of the suite (and the
notebooks) imports from them, and the rest imports it from the package, not
from its modules (tests and benchmarks may reach inside).
"""
from __future__ import annotations

import ast
import json
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "interpret", "analyses")
TOP_MODULES = ("main",)
LAYERS = ("model", "interpret", "analyses")  # each may import only those before it


def module_files() -> dict[str, Path]:
    """Dotted name -> file of every module of the packages (a package's ``__init__`` under the package's name)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    for name in TOP_MODULES:
        out[name] = ROOT / f"{name}.py"
    return out


def is_package(name: str, files: dict[str, Path]) -> bool:
    return files[name].name == "__init__.py"


def imports_of(name: str, source: str, files: dict[str, Path]) -> set[str]:
    """The suite's modules that running ``name`` (whose code is ``source``) imports, anywhere in it."""
    own = name if is_package(name, files) else name.rpartition(".")[0]  # the package a relative import starts from
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    targets: set[str] = set()

    def add(module: str) -> None:
        parts = module.split(".")
        for i in range(1, len(parts) + 1):  # the packages above it run first
            prefix = ".".join(parts[:i])
            if prefix in files and (prefix == module or prefix not in ancestors):
                targets.add(prefix)

    for node in ast.walk(ast.parse(source, filename=str(files[name]))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = own.split(".")
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            if base.split(".")[0] not in (*PACKAGES, *TOP_MODULES):
                continue
            for alias in node.names:
                if f"{base}.{alias.name}" in files:  # from model import virtual: the submodule
                    add(f"{base}.{alias.name}")
                    if base not in ancestors and base != name:
                        add(base)
                else:  # a name defined in (or re-exported by) base
                    add(base)
    targets.discard(name)
    return targets


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path.read_text(), files) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(root: str) -> None:  # iterative, so a deep graph cannot exhaust the recursion limit
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def describe(component: list[str], graph: dict[str, set[str]]) -> str:
    """One circle through the component's first module, as ``a -> b -> ... -> a``, then every edge inside it."""
    members = set(component)
    start = component[0]
    path, seen = [start], {start}
    while True:  # walk inside the component until a module repeats
        step = sorted(graph[path[-1]] & members)
        nxt = next((m for m in step if m == start), None) or next((m for m in step if m not in seen), step[0])
        path.append(nxt)
        if nxt in seen:
            break
        seen.add(nxt)
    circle = path[path.index(path[-1]):]
    edges = sorted(f"    {a} -> {b}" for a in component for b in sorted(graph[a] & members))
    return " -> ".join(circle) + "\n" + "\n".join(edges)


def test_the_graph_sees_every_form_of_import(tmp_path):
    """Each spelling of an import becomes an edge: absolute, relative, inside a function, a submodule by name."""
    files = {"model": tmp_path / "__init__.py", "model.sub": tmp_path / "sub" / "__init__.py",
             "model.sub.a": tmp_path / "a.py", "model.sub.b": tmp_path / "b.py", "model.c": tmp_path / "c.py",
             "interpret": tmp_path / "i" / "__init__.py", "interpret.x": tmp_path / "x.py"}
    assert imports_of("model.sub.a", "from .b import f", files) == {"model.sub.b"}
    assert imports_of("model.sub.a", "from . import b", files) == {"model.sub.b"}
    assert imports_of("model.sub.a", "from . import f", files) == {"model.sub"}  # a name from the package's __init__
    assert imports_of("model.sub.a", "def g():\n    from ..c import f\n", files) == {"model.c"}
    assert imports_of("model.sub.a", "import model.c", files) == {"model.c"}
    assert imports_of("model.sub", "from .a import f", files) == {"model.sub.a"}
    assert imports_of("model.c", "from .sub.a import f", files) == {"model.sub", "model.sub.a"}
    assert imports_of("model.c", "from model.sub import a", files) == {"model.sub", "model.sub.a"}
    assert imports_of("interpret.x", "from model.sub.b import f", files) == {"model", "model.sub", "model.sub.b"}
    assert imports_of("interpret.x", "import numpy\nfrom torch import nn", files) == set()
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    graph = import_graph()
    assert len(graph) > 60
    found = cycles(graph)
    assert not found, "import circles:\n" + "\n".join(describe(c, graph) for c in found)


def test_imports_flow_from_analyses_to_interpret_to_model():
    graph = import_graph()
    wrong = []
    for module, targets in graph.items():
        layer = module.split(".")[0]
        if layer not in LAYERS:
            continue
        allowed = LAYERS[: LAYERS.index(layer) + 1]
        wrong += [f"{module} imports {t}" for t in sorted(targets)
                  if t.split(".")[0] in LAYERS and t.split(".")[0] not in allowed]
    assert not wrong, "\n".join(wrong)


def notebook_sources() -> dict[str, str]:
    """``notebooks.<name>`` -> the code cells of each notebook (magics and shell lines left out)."""
    out = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        out[f"notebooks.{path.stem}"] = "\n".join(l for l in code.splitlines() if not l.lstrip().startswith(("%", "!")))
    return out


def exporting_subpackages(files: dict[str, Path]) -> dict[str, list[str]]:
    """The subpackages of ``model`` whose ``__init__`` declares ``__all__`` -> that list."""
    out = {}
    for name, path in files.items():
        if name.startswith("model.") and path.name == "__init__.py":
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
                    out[name] = list(ast.literal_eval(node.value))
    return out


def imported_names(module: str, source: str, is_package: bool) -> list[tuple[str, str]]:
    """(absolute module, name) of every ``from ... import name`` of ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = (module if is_package else module.rpartition(".")[0]).split(".")
                base = ".".join(package[: len(package) - (node.level - 1)] + ([base] if base else []))
            found += [(base, alias.name) for alias in node.names]
    return found


def test_subpackages_export_what_the_rest_uses_and_the_rest_imports_the_package():
    files = module_files()
    exports = exporting_subpackages(files)
    assert {"model.encoders", "model.runs", "model.scoring", "model.training"} <= set(exports)
    sources = {name: (path.read_text(), path.name == "__init__.py") for name, path in files.items()}
    sources.update({name: (code, False) for name, code in notebook_sources().items()})
    used: dict[str, set[str]] = {package: set() for package in exports}
    reached_inside = []
    for module, (source, is_package) in sources.items():
        for base, name in imported_names(module, source, is_package):
            for package in exports:
                outside = not (module == package or module.startswith(package + "."))
                if outside and (base == package or base.startswith(package + ".")):
                    used[package].add(name)
                    if base != package:
                        reached_inside.append(f"{module} imports {name} from {base}, not from {package}")
    assert not reached_inside, "\n".join(reached_inside)
    for package, names in exports.items():
        unused = sorted(set(names) - used[package])
        assert not unused, f"{package} exports what no module outside it imports: {unused}"
        assert sorted(names) == sorted(set(names)), f"{package}.__all__ lists a name twice"


def test_every_package_is_installed():
    """pyproject's package list names every package folder (a subpackage left out would be missing from a wheel)."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    files = module_files()
    packages = {name for name, path in files.items() if path.name == "__init__.py"}
    assert packages == listed


if __name__ == "__main__":  # print the graph's circles, for working on them
    g = import_graph()
    for c in cycles(g):
        print(describe(c, g), end="\n\n")
