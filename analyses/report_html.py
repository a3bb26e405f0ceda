"""An executed notebook as one self-contained HTML file, and what the report's index shows of it.

:func:`export_html` writes the HTML (figures embedded, the settings once as a
table, code hidden unless asked for); :func:`notebook_summary`,
:func:`figures` and :func:`thumbnail` give the index its line and picture.
"""
from __future__ import annotations

import base64
import io
import logging
from pathlib import Path
from typing import Any

from model.files import atomic_path

from .report_views import SUMMARY_KEY


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
