"""Reports: the parametrized notebooks of ``notebooks/``, executed by papermill, shared as HTML.

``tbe report --run RUN --out reports/NAME`` runs each notebook of
:data:`~analyses.report_notebooks.NOTEBOOKS` on a Jupyter kernel registered for the current Python
environment (:func:`~analyses.report_execution.ensure_kernel`), exports every executed notebook to one
self-contained HTML file (figures embedded as base64 PNG, so a report can be
mailed) and writes ``index.html`` linking them::

    reports/NAME/index.html                 one line per notebook: status, summary, thumbnail
    reports/NAME/<notebook>.html            the rendered notebook
    reports/NAME/report.json                the same, machine-readable (parameters, status, errors)
    reports/NAME/manifest.json              what produced it: code, environment, seeds, data (model.runs.manifest)
    reports/NAME/environment.yml            that environment for conda, pinned; requirements.txt for pip
    reports/NAME/notebooks/<notebook>.ipynb the executed notebook (open and re-run it in Jupyter)
    reports/NAME/files/<notebook>/          tables (CSV), figures (PNG) and maps (NetCDF) it wrote
    reports/NAME/logs/<notebook>.kernel.log the kernel's own messages

A notebook that fails still leaves its executed copy and HTML; the index
marks it failed with the failing cell's error, the other notebooks still
run, and :attr:`Report.failed` names it (``tbe report`` then exits 1).

Parameters: every notebook has one cell tagged ``parameters``. The report
fills in what it knows (:data:`~analyses.report_notebooks.STANDARD_PARAMETERS`: the run, data and cache
directories, the subject, where to write files, the device); ``params`` sets any other
parameter in every notebook that declares it, or in one notebook only when
written ``notebook.name``. The HTML states the settings once, as a table
(:func:`~analyses.report_html.settings_once`); the executed notebook keeps papermill's two cells.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from model.errors import InputError
from model.files import atomic_path, write_json
from model.progress import progress

from .report_execution import Entry, ensure_kernel, execute
from .report_notebooks import (NOTEBOOK_DIR, NOTEBOOKS, PATH_PARAMETERS, _absolute, declared_parameters, notebook_path,
                               split_parameters, standard_parameters)

log = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------

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
        Which notebooks of :data:`~analyses.report_notebooks.NOTEBOOKS` (default: all, in that order).
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
    from model.runs import METRICS, read_config

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
    from model.runs import MANIFEST, report_manifest, write_environments

    manifest = report_manifest(run_dir, data_dir, subj, command, seeds)
    write_json(out / MANIFEST, manifest)
    return {"manifest": out / MANIFEST, **write_environments(manifest, out, str(out))}


def _backbone_description(run_dir: Path) -> str:
    from model.runs import read_metrics

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
