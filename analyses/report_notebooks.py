"""The report's notebooks and their parameters (``tbe report --list``, ``-p``).

:data:`NOTEBOOKS` lists the notebooks of ``notebooks/`` that a report runs;
every one declares its parameters in one cell tagged ``parameters``, which
:func:`declared_parameters` reads. The report fills in what it knows
(:data:`STANDARD_PARAMETERS`) and :func:`split_parameters` routes the user's
``-p`` values: ``name`` to every notebook declaring it, ``notebook.name`` to one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.errors import InputError, OptionError

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
