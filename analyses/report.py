"""Reports: the parametrized notebooks of ``notebooks/``, executed by papermill, shared as HTML.

``tbe report --run RUN --out reports/NAME`` runs each notebook of
:data:`NOTEBOOKS` on a Jupyter kernel registered for the current Python
environment (:func:`ensure_kernel`), exports every executed notebook to one
self-contained HTML file (figures embedded as base64 PNG, so a report can be
mailed) and writes ``index.html`` linking them::

    reports/NAME/index.html                 one line per notebook: status, summary, thumbnail
    reports/NAME/<notebook>.html            the rendered notebook
    reports/NAME/report.json                the same, machine-readable (parameters, status, errors)
    reports/NAME/manifest.json              what produced it: code, environment, seeds, data (model.manifest)
    reports/NAME/environment.yml            that environment for conda, pinned; requirements.txt for pip
    reports/NAME/notebooks/<notebook>.ipynb the executed notebook (open and re-run it in Jupyter)
    reports/NAME/files/<notebook>/          tables (CSV), figures (PNG) and maps (NetCDF) it wrote
    reports/NAME/logs/<notebook>.kernel.log the kernel's own messages

A notebook that fails still leaves its executed copy and HTML; the index
marks it failed with the failing cell's error, the other notebooks still
run, and :attr:`Report.failed` names it (``tbe report`` then exits 1).

Parameters: every notebook has one cell tagged ``parameters``. The report
fills in what it knows (:data:`STANDARD_PARAMETERS`: the run, data and cache
directories, the subject, where to write files, the device); ``params`` sets any other
parameter in every notebook that declares it, or in one notebook only when
written ``notebook.name``. The HTML states the settings once, as a table
(:func:`settings_once`); the executed notebook keeps papermill's two cells.
"""
from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import io
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model.errors import InputError, OptionError
from model.files import atomic_path, write_json
from model.progress import progress

from .report_views import SUMMARY_KEY

log = logging.getLogger(__name__)
#: papermill's own INFO lines ("Input Notebook: ...") would drown the report's progress
logging.getLogger("papermill").setLevel(logging.WARNING)

#: Where the notebooks live (a checkout or an editable install of the project).
NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


@dataclass(frozen=True)
class Notebook:
    """A report notebook: ``notebooks/<name>.ipynb``, its title and what it shows."""

    title: str
    description: str


#: The report notebooks, in the order the index lists them.
NOTEBOOKS: dict[str, Notebook] = {
    "encoding_accuracy": Notebook(
        "Encoding accuracy",
        "test r per ROI against the ridge baseline and the noise ceiling; maps on the cortical surface"),
    "attention_maps": Notebook(
        "Attention maps",
        "where each ROI query looks: decoder cross-attention over chosen images, head by head on request"),
    "attributions": Notebook(
        "Attributions",
        "what pixels and tokens drive each ROI's predicted response (Captum), with convergence deltas"),
    "map_checks": Notebook(
        "Map checks",
        "can the maps be trusted: sanity (randomisation), localization and faithfulness tables"),
    "roi_selectivity": Notebook(
        "ROI selectivity",
        "category preferences of each ROI with permutation statistics; in-silico localizers on the surface"),
    "routing": Notebook(
        "Routing",
        "does each ROI query pick tokens by location, by content, by both or by neither: indices, tests, examples"),
    "hypotheses": Notebook(
        "Hypotheses",
        "your claims as sentences ('FFA-1 prefers face'), each tested with calibrated statistics and FDR"),
}

#: Parameters holding paths: made absolute (against the current directory) before they reach a kernel.
PATH_PARAMETERS = frozenset({"run_dir", "data_dir", "cache_dir", "ridge_run", "out_dir", "test_fmri", "noise_ceiling",
                             "stimuli_dir", "stimuli_labels", "checks_dir", "localizer_dir"})


# --------------------------------------------------------------------------
# The kernel
# --------------------------------------------------------------------------

def kernel_name(prefix: str | None = None) -> str:
    """The kernel name of a Python environment: ``tbe-<hash of its sys.prefix>``."""
    prefix = prefix or sys.prefix
    return "tbe-" + hashlib.blake2b(os.path.realpath(prefix).encode(), digest_size=4).hexdigest()


def ensure_kernel() -> str:
    """Register this environment's Python as a Jupyter kernel (once) and return its name.

    The kernel spec goes into ``sys.prefix/share/jupyter/kernels`` (found by
    papermill and by any Jupyter started from this environment); where that is
    not writable, into the user's Jupyter directory. An existing spec is
    reused when it runs this interpreter.
    """
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    name = kernel_name()
    try:
        spec = KernelSpecManager().get_kernel_spec(name)
        if spec.argv and os.path.realpath(spec.argv[0]) == os.path.realpath(sys.executable):
            return name
    except NoSuchKernel:
        pass
    display = f"Python {platform.python_version()} (tbe, {sys.prefix})"
    try:
        install(kernel_name=name, display_name=display, prefix=sys.prefix)
    except OSError:
        install(kernel_name=name, display_name=display, user=True)
    log.info("registered Jupyter kernel %s for %s", name, sys.executable)
    return name


def _kernel_manager_logging_to(path: Path) -> type:
    """A kernel manager class whose kernel writes its own messages to ``path``, not to our terminal."""
    from jupyter_client.manager import AsyncKernelManager

    class LoggedKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw: Any) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._tbe_log = open(path, "w")  # noqa: SIM115 - closed at shutdown
            kw.setdefault("stderr", self._tbe_log)
            kw.setdefault("stdout", self._tbe_log)
            return await super().start_kernel(**kw)

        async def shutdown_kernel(self, *args: Any, **kw: Any) -> None:
            try:
                return await super().shutdown_kernel(*args, **kw)
            finally:
                log_file = getattr(self, "_tbe_log", None)
                if log_file is not None:
                    log_file.close()

    return LoggedKernelManager


# --------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------

def notebook_path(name: str, notebook_dir: str | Path = NOTEBOOK_DIR) -> Path:
    if name not in NOTEBOOKS:
        raise OptionError("notebooks", f"unknown notebook {name!r}; choose from {', '.join(NOTEBOOKS)}")
    path = Path(notebook_dir) / f"{name}.ipynb"
    if not path.is_file():
        raise InputError(path, "missing notebook")
    return path


def declared_parameters(path: str | Path) -> dict[str, dict]:
    """The parameters a notebook declares in its ``parameters`` cell: name -> {default, type, help}."""
    import papermill

    return {name: {"default": p["default"], "type": p["inferred_type_name"], "help": p["help"]}
            for name, p in papermill.inspect_notebook(str(path)).items()}


def parse_value(text: str) -> Any:
    """A ``-p`` value: YAML scalars and lists (``3``, ``0.5``, ``true``, ``null``, ``[V1v, FFA-1]``), else the text.

    An empty value stays an empty string (the notebooks read it as "none").
    """
    import yaml

    if not text.strip():
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def split_parameters(params: dict[str, Any], declared: dict[str, dict[str, dict]]) -> dict[str, dict[str, Any]]:
    """Route user parameters to notebooks: ``key`` to every notebook declaring it, ``notebook.key`` to one.

    Raises :class:`InputError` for a parameter no selected notebook declares.
    """
    routed: dict[str, dict[str, Any]] = {name: {} for name in declared}
    for key, value in params.items():
        notebook, _, name = key.rpartition(".")
        if notebook:
            if notebook not in declared:
                raise InputError("-p", f"{key}: notebook {notebook!r} is not in this report ({', '.join(declared)})")
            if name not in declared[notebook]:
                raise InputError("-p", f"{key}: {notebook} has no parameter {name!r}; it has {', '.join(declared[notebook])}")
            routed[notebook][name] = value
            continue
        takers = [nb for nb, names in declared.items() if key in names]
        if not takers:
            known = sorted({n for names in declared.values() for n in names})
            raise InputError("-p", f"no notebook in this report has a parameter {key!r}; parameters: {', '.join(known)}")
        for nb in takers:
            routed[nb].setdefault(key, value)
    return routed


def _absolute(params: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(Path(v).expanduser().resolve()) if k in PATH_PARAMETERS and isinstance(v, (str, Path)) and str(v)
                else v) for k, v in params.items()}


# --------------------------------------------------------------------------
# Running one notebook
# --------------------------------------------------------------------------

@dataclass
class Entry:
    """What happened to one notebook of a report."""

    name: str
    title: str
    status: str  # "ok" or "failed"
    seconds: float
    html: str | None = None  # file name inside the report folder
    notebook: str | None = None  # executed copy, relative to the report folder
    summary: str = ""
    error: str = ""
    failed_cell: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    n_figures: int = 0
    thumbnail: str | None = None  # base64 PNG


@dataclass
class Report:
    """A rendered report: its index and one :class:`Entry` per notebook."""

    index: Path
    entries: list[Entry]

    @property
    def failed(self) -> list[str]:
        return [e.name for e in self.entries if e.status != "ok"]

    @property
    def ok(self) -> bool:
        return not self.failed


def execute(name: str, parameters: dict[str, Any], out: Path, kernel: str, notebook_dir: Path,
            timeout: float | None = None, show_code: bool = False) -> Entry:
    """Execute one notebook into ``out`` and export it to HTML; failures are recorded, not raised."""
    import nbformat
    import papermill

    source = notebook_path(name, notebook_dir)
    executed = out / "notebooks" / f"{name}.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    entry = Entry(name, NOTEBOOKS[name].title, "ok", 0.0, parameters=parameters,
                  notebook=str(executed.relative_to(out)))
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(source), str(executed), parameters=parameters, kernel_name=kernel, progress_bar=False,
            log_output=False, cwd=str(notebook_dir), execution_timeout=timeout,
            kernel_manager_class=_kernel_manager_logging_to(out / "logs" / f"{name}.kernel.log"))
    except papermill.PapermillExecutionError as exc:
        entry.status, entry.failed_cell = "failed", exc.exec_count
        entry.error = f"{exc.ename}: {_first_line(exc.evalue)}"
    except Exception as exc:  # noqa: BLE001 - a dead kernel, a timeout: record it, go on with the others
        entry.status, entry.error = "failed", f"{type(exc).__name__}: {_first_line(str(exc))}"
    entry.seconds = round(time.perf_counter() - start, 1)
    if executed.is_file():
        nb = nbformat.read(executed, as_version=4)
        entry.summary = notebook_summary(nb)
        pngs = figures(nb)
        entry.n_figures = len(pngs)
        entry.thumbnail = thumbnail(pngs[0]) if pngs else None
        entry.html = f"{name}.html"
        export_html(nb, out / entry.html, f"{NOTEBOOKS[name].title} - {entry.status}", show_code)
    else:
        entry.notebook = None
    return entry


def _first_line(text: str) -> str:
    lines = [line for line in str(text).splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


def notebook_summary(nb) -> str:
    """The summary a notebook displayed with :func:`analyses.report_views.summary` (last one wins)."""
    found = ""
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            text = output.get("metadata", {}).get(SUMMARY_KEY)
            if text:
                found = str(text)
    return found


def figures(nb) -> list[str]:
    """Every PNG (base64) a notebook displayed, in order."""
    return [output["data"]["image/png"] for cell in nb.cells for output in cell.get("outputs", [])
            if "image/png" in output.get("data", {})]


def thumbnail(png_base64: str, width: int = 320) -> str:
    """A smaller copy of a base64 PNG, for the index."""
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(png_base64)))
    image.thumbnail((width, width))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode()


#: nbconvert's "lab" HTML without require.js: a blocking script from a CDN that only widgets need,
#: so that a mailed report opens at once offline
_HTML_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
"""


#: Tags of the cells that set a notebook's parameters: its defaults, and the values papermill injected
PARAMETER_TAGS = ("parameters", "injected-parameters")


def _assigned_values(source: str) -> dict[str, Any]:
    """``name = literal`` lines of a parameters cell -> {name: value} (the source text where not a literal)."""
    import ast

    values: dict[str, Any] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                values[node.targets[0].id] = ast.get_source_segment(source, node.value)
    return values


def notebook_settings(nb) -> list[dict[str, Any]]:
    """The settings a notebook ran with: one row per parameter, in the order of its ``parameters`` cell.

    Each row: ``setting``, ``value`` (the injected one where papermill
    injected it, else the notebook's default), ``from`` (``report`` or
    ``default``) and ``description`` (the parameter's comment).
    """
    from papermill.translators import PythonTranslator

    cells = {tag: next((c for c in nb.cells if c.cell_type == "code" and tag in c.metadata.get("tags", [])), None)
             for tag in PARAMETER_TAGS}
    declared = cells["parameters"]
    defaults = _assigned_values(declared.source) if declared is not None else {}
    helps = {p.name: p.help for p in PythonTranslator.inspect(declared)} if declared is not None else {}
    injected = _assigned_values(cells["injected-parameters"].source) if cells["injected-parameters"] is not None else {}
    names = list(defaults) + [n for n in injected if n not in defaults]
    return [{"setting": n, "value": injected[n] if n in injected else defaults[n],
             "from": "report" if n in injected else "default", "description": helps.get(n, "")} for n in names]


def settings_once(nb):
    """A copy of ``nb`` that states its settings once, as a table: the parameters cell (the defaults) and papermill's
    injected cell (the values given) become one output-only cell listing each setting's value where the first was."""
    import copy

    import nbformat

    from .report_views import settings_table, table_html

    rows = notebook_settings(nb)
    at = [i for i, c in enumerate(nb.cells) if set(PARAMETER_TAGS) & set(c.metadata.get("tags", []))]
    nb = copy.deepcopy(nb)
    if not at:
        return nb
    table = settings_table({r["setting"]: r["value"] for r in rows}).assign(
        **{"from": [r["from"] for r in rows], "description": [r["description"] for r in rows]})
    text = "\n".join(f"{r['setting']} = {r['value']!r}" for r in rows)
    html = ("<p><strong>Settings</strong> (<em>report</em>: given to this report; <em>default</em>: the "
            "notebook's own)</p>" + table_html(table))
    cell = nbformat.v4.new_code_cell("", metadata={"tags": ["settings"], "transient": {"remove_source": True}})
    cell.outputs = [nbformat.v4.new_output("display_data", data={"text/html": html, "text/plain": text})]
    nb.cells = nb.cells[:at[0]] + [cell] + [c for i, c in enumerate(nb.cells) if i > at[0] and i not in at]
    return nb


def hide_code(nb):
    """A copy of ``nb`` whose code cells render without their source."""
    import copy

    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.metadata.setdefault("transient", {})["remove_source"] = True
    return nb


def export_html(nb, out: Path, title: str, show_code: bool = False) -> Path:
    """One self-contained HTML file: figures are embedded as base64 PNG, no file next to it is needed.

    The settings show once, as a table (:func:`settings_once`), in place of
    the parameters cells; the other code cells are hidden unless ``show_code``.
    """
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    nb = settings_once(nb)
    if not show_code:
        nb = hide_code(nb)
    exporter = HTMLExporter(template_name="lab", extra_loaders=[DictLoader({"tbe_report.html.j2": _HTML_TEMPLATE})],
                            template_file="tbe_report.html.j2", exclude_output_prompt=not show_code)
    exporter.log = _quiet_log  # it warns about images without alternative text, and adds a generic one
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    with atomic_path(out) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return out


_quiet_log = logging.getLogger("tbe.nbconvert")
_quiet_log.setLevel(logging.ERROR)


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------

def standard_parameters(run_dir: Path, data_dir: Path, subj: int, out: Path, name: str,
                        ridge_run: Path | None, cache_dir: Path | None, device: str = "cpu") -> dict[str, Any]:
    """What the report fills in for every notebook that declares it."""
    return {
        "run_dir": str(run_dir), "data_dir": str(data_dir), "subj": subj,
        "ridge_run": str(ridge_run) if ridge_run else "",
        "cache_dir": str(cache_dir) if cache_dir else "",
        "out_dir": str(out / "files" / name),
        "device": str(device),
    }


#: The parameters the report sets (in the notebooks that declare them)
STANDARD_PARAMETERS = ("run_dir", "data_dir", "subj", "ridge_run", "cache_dir", "out_dir", "device")


def make_report(run_dir: str | Path, data_dir: str | Path | None, out_dir: str | Path,
                params: dict[str, Any] | None = None, notebooks: list[str] | None = None,
                ridge_run: str | Path | None = None, cache_dir: str | Path | None = None,
                notebook_dir: str | Path = NOTEBOOK_DIR, timeout: float | None = None,
                show_code: bool = False, device: str = "cpu") -> Report:
    """Execute the report notebooks on a run and write ``out_dir/index.html``.

    Parameters
    ----------
    run_dir : path
        A complete run directory (``tbe train``).
    data_dir : path or None
        The data directory (``subjXX`` in the Algonauts layout); None: the run's.
    out_dir : path
        The report folder, e.g. ``reports/NAME`` (created; existing files are replaced).
    params : dict, optional
        Notebook parameters: ``name`` for every notebook declaring it, ``notebook.name`` for one.
    notebooks : list of str, optional
        Which notebooks of :data:`NOTEBOOKS` (default: all, in that order).
    ridge_run : path, optional
        A baseline run to compare with (encoding accuracy).
    cache_dir : path, optional
        The feature cache.
    notebook_dir : path
        Where the notebooks are (default: the project's ``notebooks/``).
    timeout : float, optional
        Seconds a single cell may run (default: no limit).
    show_code : bool
        Show the code cells in the HTML (default: hidden; the settings always show, as one table).
    device : str
        The notebooks' ``device`` parameter: where they run the backbone,
        encoder, attributions and attention (``tbe report --device``).

    Returns
    -------
    Report
        ``index`` (the index.html) and one entry per notebook; ``failed``
        names the notebooks that failed.
    """
    from model.run import METRICS, read_config

    run_dir = Path(run_dir).expanduser().resolve()
    config = read_config(run_dir)
    if not (run_dir / METRICS).is_file():
        raise InputError(run_dir, "training did not finish (no metrics.json)")
    data_dir = Path(data_dir if data_dir is not None else config.data_dir).expanduser().resolve()
    if not data_dir.is_dir():
        raise InputError(data_dir, "data directory not found")
    if ridge_run:
        ridge_run = Path(ridge_run).expanduser().resolve()
        read_config(ridge_run)
    cache_dir = Path(cache_dir).expanduser().resolve() if cache_dir else None
    notebook_dir = Path(notebook_dir).resolve()
    names = list(notebooks) if notebooks else list(NOTEBOOKS)
    declared = {name: declared_parameters(notebook_path(name, notebook_dir)) for name in names}
    routed = split_parameters(dict(params or {}), declared)
    subj = int((params or {}).get("subj", config.subj))

    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    kernel = ensure_kernel()
    entries = []
    for name in progress(names, desc="report", unit="notebook"):
        standard = standard_parameters(run_dir, data_dir, subj, out, name, ridge_run, cache_dir, device)
        parameters = {k: v for k, v in standard.items() if k in declared[name]}
        parameters.update(routed[name])
        parameters = _absolute(parameters)
        log.info("report: running %s", name)
        entry = execute(name, parameters, out, kernel, notebook_dir, timeout, show_code)
        log.info("report: %s %s in %.0f s%s", name, entry.status, entry.seconds,
                 f" ({entry.error})" if entry.error else "")
        entries.append(entry)
    context = {"run": str(run_dir), "data": str(data_dir), "subject": subj, "ridge_run": str(ridge_run or ""),
               "backbone": _backbone_description(run_dir), "created": _dt.datetime.now().isoformat(timespec="seconds"),
               "python": sys.executable, "kernel": kernel, "command": reproduce_command(run_dir, data_dir, out, params,
                                                                                        notebooks, ridge_run, cache_dir,
                                                                                        show_code)}
    write_json(out / "report.json", {"context": context, "entries": [asdict(e) | {"thumbnail": None} for e in entries]})
    write_reproducibility_files(out, run_dir, data_dir, subj, context["command"], {
        e.name: e.parameters.get("seed", declared[e.name].get("seed", {}).get("default"))
        for e in entries if "seed" in declared[e.name]})
    index = out / "index.html"
    with atomic_path(index) as tmp:
        tmp.write_text(render_index(entries, context, REPRODUCIBILITY_FILES), encoding="utf-8")
    return Report(index, entries)


#: What the index links under "reproduce": the manifest and the environments made from it (``tbe env``)
REPRODUCIBILITY_FILES = {"manifest": "manifest.json", "conda environment": "environment.yml",
                         "pip requirements": "requirements.txt"}


def write_reproducibility_files(out: Path, run_dir: Path, data_dir: Path, subj: int, command: str,
                                seeds: dict[str, Any]) -> dict[str, Path]:
    """``manifest.json`` of the report, and the exact ``environment.yml`` and ``requirements.txt`` it implies."""
    from model.environment import write_environments
    from model.manifest import MANIFEST, report_manifest

    manifest = report_manifest(run_dir, data_dir, subj, command, seeds)
    write_json(out / MANIFEST, manifest)
    return {"manifest": out / MANIFEST, **write_environments(manifest, out, str(out))}


def _backbone_description(run_dir: Path) -> str:
    from model.run import read_metrics

    try:
        return str(read_metrics(run_dir).get("backbone", ""))
    except InputError:
        return ""


def reproduce_command(run_dir: Path, data_dir: Path, out: Path, params: dict[str, Any] | None,
                      notebooks: list[str] | None, ridge_run: Path | None, cache_dir: Path | None,
                      show_code: bool = False) -> str:
    """The ``tbe report`` command line that renders this report again, from any directory (absolute paths)."""
    import shlex

    parts = ["tbe", "report", "--run", str(run_dir), "--data-dir", str(data_dir), "--out", str(out)]
    if notebooks:
        parts += ["--notebooks", ",".join(notebooks)]
    if ridge_run:
        parts += ["--ridge-run", str(ridge_run)]
    if cache_dir:
        parts += ["--cache-dir", str(cache_dir)]
    if show_code:
        parts += ["--show-code"]
    for key, value in (params or {}).items():
        if key.rsplit(".", 1)[-1] in PATH_PARAMETERS and isinstance(value, (str, Path)) and str(value):
            value = str(Path(value).expanduser().resolve())
        parts += ["-p", key, json.dumps(value) if not isinstance(value, str) else value]
    return " ".join(shlex.quote(p) for p in parts)


# --------------------------------------------------------------------------
# The index page
# --------------------------------------------------------------------------

#: The index page's template: a package data file (``analyses/templates``), rendered with autoescaping
INDEX_TEMPLATE = "report_index.html.j2"


def _templates():
    """The jinja2 environment of the report's own templates: every value is escaped unless a template says otherwise."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    return Environment(loader=PackageLoader("analyses", "templates"), autoescape=True, undefined=StrictUndefined,
                       keep_trailing_newline=True)


def render_index(entries: list[Entry], context: dict[str, Any], files: dict[str, str] | None = None) -> str:
    """``index.html``: one row per notebook (status, one-line summary or error, thumbnail), inline CSS only.

    ``files`` (label -> file name in the report folder) are linked under the
    context, e.g. the manifest. The page is :data:`INDEX_TEMPLATE` rendered
    with autoescaping: a run, summary or error holding ``<`` or ``&`` shows
    as text.
    """
    n_failed = sum(e.status != "ok" for e in entries)
    rows = [{**{k: getattr(e, k) for k in ("name", "title", "status", "html", "notebook", "summary", "error",
                                             "failed_cell", "n_figures", "seconds", "thumbnail")},
             "description": NOTEBOOKS[e.name].description} for e in entries]
    return _templates().get_template(INDEX_TEMPLATE).render(
        run_name=Path(context["run"]).name,
        headline="all notebooks ran" if not n_failed else f"{n_failed} of {len(entries)} notebooks failed",
        n_failed=n_failed, entries=rows,
        context=[(k, str(v)) for k, v in context.items() if v != ""],
        files=list((files or {}).items()))


# --------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------

def describe_parameters(notebook_dir: str | Path = NOTEBOOK_DIR) -> str:
    """Every notebook's parameters with their defaults, as text (``tbe report --list``)."""
    lines = []
    for name, nb in NOTEBOOKS.items():
        path = Path(notebook_dir) / f"{name}.ipynb"
        if not path.is_file():
            continue
        lines.append(f"{name}: {nb.description}")
        for param, info in declared_parameters(path).items():
            tag = " (set by the report)" if param in STANDARD_PARAMETERS else ""
            comment = f"  # {info['help']}" if info["help"] else ""
            lines.append(f"    {param} = {info['default']}{tag}{comment}")
    return "\n".join(lines)


def params_from_pairs(pairs: list[tuple[str, str]] | None) -> dict[str, Any]:
    """``-p KEY VALUE`` pairs -> parameters (values parsed by :func:`parse_value`)."""
    return {key: parse_value(value) for key, value in (pairs or [])}
