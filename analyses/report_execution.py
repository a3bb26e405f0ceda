"""Running one report notebook: on a Jupyter kernel of this environment, executed by papermill, exported to HTML.

:func:`ensure_kernel` registers this environment's Python as a kernel once;
:func:`execute` runs a notebook with its parameters into the report folder
and records what happened (an :class:`Entry`; a failure is recorded, not
raised).
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .report_html import export_html, figures, notebook_summary, thumbnail
from .report_notebooks import NOTEBOOKS, notebook_path

log = logging.getLogger(__name__)
#: papermill's own INFO lines ("Input Notebook: ...") would drown the report's progress
logging.getLogger("papermill").setLevel(logging.WARNING)


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
