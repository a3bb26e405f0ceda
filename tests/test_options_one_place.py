"""Options from one place: the library names parameters, only the CLI names flags, and a shared option is defined once."""
from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest

from analyses import cli
from model.errors import InputError, OptionError

ROOT = Path(__file__).resolve().parents[1]
#: the modules that turn parameters into flags
CLI_MODULES = {ROOT / "analyses" / "cli.py"}
FLAG = re.compile(r"--[a-z{]")


def library_modules() -> list[Path]:
    return sorted(p for package in ("model", "interpret", "analyses") for p in (ROOT / package).rglob("*.py")
                  if p not in CLI_MODULES)


def _is_error_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
    return name.endswith(("Error", "Exception"))


def error_texts(tree: ast.AST):
    """(line, text) of every string written into a raise statement or an error's constructor."""
    seen = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None or _is_error_call(node):
            for part in ast.walk(node.exc if isinstance(node, ast.Raise) else node):
                text = ast.unparse(part) if isinstance(part, ast.JoinedStr) else getattr(part, "value", None)
                if isinstance(part, (ast.Constant, ast.JoinedStr)) and isinstance(text, str) and id(part) not in seen:
                    seen.add(id(part))
                    yield part.lineno, text


def test_no_library_error_names_a_flag():
    """Library errors name the parameter (``OptionError('n_images', ...)``, ``choose another `out```)."""
    found = [f"{path.relative_to(ROOT)}:{line}: {text[:80]!r}" for path in library_modules()
             for line, text in error_texts(ast.parse(path.read_text())) if FLAG.search(text)]
    assert not found, "library errors naming a --flag:\n" + "\n".join(found)


def test_the_scan_finds_a_flag_in_an_error():
    source = ('def f(n):\n    raise InputError("--n-images", "bad")\n'
              'def g(k):\n    raise OptionError("k", f"pass --{k} instead")\n'
              'def h():\n    error = ValueError("use --out"); raise error\n')
    assert [line for line, text in error_texts(ast.parse(source)) if FLAG.search(text)] == [2, 4, 6]


def _parameters_named_by_the_library() -> set[str]:
    """Every parameter that a library error names: OptionError's first argument and `names` in messages."""
    names = set()
    for path in library_modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "OptionError" and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    names.add(first.value)
        for _, text in error_texts(tree):
            names.update(re.findall(r"`([A-Za-z_][\w.]*)`", text))
    return names


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _flags_of(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"}


#: parameters of functions that only notebooks call (analyses.top_images, analyses.calibration): no command sets them
NOTEBOOK_PARAMETERS = {"k", "attribution", "n_seeds"}


def test_every_parameter_the_library_names_is_a_flag_of_the_cli():
    """What the CLI prints for a library error is a flag that exists, for every parameter the library names."""
    flags = {s for p in _commands().values() for s in _flags_of(p)} | {"--no-pre-norm"}
    named = _parameters_named_by_the_library() - NOTEBOOK_PARAMETERS
    assert {"decoder.position_embedding", "n_images", "out", "resume"} <= named
    missing = {name: cli.flag_of(name) for name in named if cli.flag_of(name) not in flags}
    assert not missing, f"parameters whose flag no command has: {missing}"


@pytest.mark.parametrize("error, line", [
    (OptionError("decoder.readout_map_dim", "must be >= 1, got 0"), "--readout-map-dim: must be >= 1, got 0"),
    (OptionError("backbone.layer", "must be between 1 and 12"), "--enc-output-layer: must be between 1 and 12"),
    (OptionError("n_images", "must be at least 1, got 0"), "--n-images: must be at least 1, got 0"),
    (OptionError("decoder.nheads", "must divide decoder.hidden_dim (768)"), "--nheads: must divide --hidden-dim (768)"),
    (OptionError("split", "give either `split` or `images`/`labels`, not both"),
     "--split: give either --split or --images/--labels, not both"),
    (InputError("/runs/a", "run directory is not empty; choose another `out`"),
     "/runs/a: run directory is not empty; choose another --out"),
    (InputError("/runs/a/config.json", "(another split: `train.split_seed` or `train.val_fraction`)"),
     "/runs/a/config.json: (another split: --split-seed or --val-fraction)"),
])
def test_the_cli_prints_the_flag_of_the_parameter(error, line):
    assert cli.error_line(error) == line


def _definition(action: argparse.Action) -> tuple:
    return (type(action).__name__, action.type, action.default, action.help, action.choices, action.nargs,
            action.metavar, action.required, action.dest)


def test_commands_that_share_an_option_define_it_once():
    """A flag of several commands has one definition (type, default, help, choices...) unless it means something
    else in each command (cli.OWN_MEANING, each with its reason)."""
    by_flag: dict[str, dict[str, tuple]] = {}
    for name, parser in _commands().items():
        for flag, action in _flags_of(parser).items():
            by_flag.setdefault(flag, {})[name] = _definition(action)
    shared = {flag: defs for flag, defs in by_flag.items() if len(defs) > 1}
    differing = {flag: defs for flag, defs in shared.items() if len(set(map(repr, defs.values()))) > 1}
    unexplained = {flag: sorted(defs) for flag, defs in differing.items() if flag not in cli.OWN_MEANING}
    assert not unexplained, f"options defined differently by commands: {unexplained}"
    stale = set(cli.OWN_MEANING) - set(differing)
    assert not stale, f"cli.OWN_MEANING lists flags that no two commands define differently: {stale}"
    one_definition = set(shared) - set(differing)
    assert {"--cache-dir", "--device", "--labels", "--backbone", "--rois", "--methods"} <= one_definition


def test_settings_flags_carry_the_fields_help_default_and_choices():
    """A training (or tbe synth) option is its configuration field's: the flag's default, help and choices."""
    import dataclasses

    from model.options import option_choices, option_help
    from model.synthetic import VirtualConfig

    commands = _commands()
    fields = [(commands["train"], section, f) for section, cls in cli.config_sections().items()
              for f in dataclasses.fields(cls)]
    fields += [(commands["synth"], "", f) for f in dataclasses.fields(VirtualConfig) if f.name != "n_repeats"]
    for parser, section, f in fields:
        parameter = f"{section}.{f.name}" if section else f.name
        action = _flags_of(parser)[cli.flag_of(parameter)]
        assert action.help.startswith(cli.with_flags(option_help(f.metadata))), parameter
        if parameter not in ("backbone.weights", "backbone.layer"):  # a file or random; one layer or several
            assert (action.default, action.choices) == (f.default, option_choices(f.metadata)), parameter
