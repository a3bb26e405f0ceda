"""Every option of every command explains itself: help text, default and choices (issue 15)."""
from __future__ import annotations

import argparse

import pytest

from analyses.cli import build_parser, show_defaults


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"tbe": parser, **sub.choices}


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and a.help != argparse.SUPPRESS]


@pytest.mark.parametrize("name", list(_commands()))
def test_every_option_has_help_with_its_default_and_choices(name):
    parser = _commands()[name]
    formatter = parser._get_formatter()
    text = " ".join(parser.format_help().split())
    for action in _options(parser):
        where = f"tbe {name} {'/'.join(action.option_strings) or action.dest}"
        assert action.help and action.help.strip(), f"{where}: no help text"
        shown = " ".join(formatter._expand_help(action).split())
        if action.default not in (None, False):
            assert "default" in shown.lower(), f"{where}: help does not show the default ({action.default!r})"
        if action.choices:
            assert all(str(c) in text for c in action.choices), f"{where}: choices not shown"


def test_train_explains_the_readout_and_the_architecture():
    text = " ".join(_commands()["train"].format_help().split())
    for words in ("which ROIs get a query", "rois_all: a query per ROI", "(default rois_all)",
                  "the encoder: transformer:", "(default transformer)"):
        assert words in text, words


def test_show_defaults_appends_only_what_is_missing():
    p = argparse.ArgumentParser()
    p.add_argument("--a", default=3, help="a number")
    p.add_argument("--b", default=4, help="b (default four)")
    p.add_argument("--c", action="store_true", help="a flag")
    p.add_argument("--d", default=["x", "y"], help="a list")
    show_defaults(p)
    text = " ".join(p.format_help().split())
    assert "a number (default 3)" in text and "b (default four)" in text and "default four) (default" not in text
    assert "a flag" in text and "a flag (default" not in text and "a list (default x,y)" in text
