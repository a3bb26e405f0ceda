"""Settings dataclasses whose fields carry their own option: help, type, allowed values.

A field made with :func:`setting` is checked by :func:`check_settings`
(one :class:`~model.errors.OptionError` naming the parameter, e.g.
``n_steps: must be at least 2, got 1``), and the CLI makes its flag from
the same metadata (:func:`analyses.cli.add_settings_args`; it prints the
error as ``--n-steps: ...``), so a new setting is one line in its dataclass.
The library names parameters, never flags: only the CLI turns one into the other.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from .errors import OptionError


def setting(default: Any, help: str | Callable[[], str], *, minimum: float | None = None, maximum: float | None = None,
            choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None, kind: type | None = None,
            metavar: str | None = None) -> Any:
    """A dataclass field with its option's metadata.

    ``minimum`` is inclusive unless ``maximum`` is also given, in which case
    the value must lie strictly between the two (a level such as alpha);
    ``kind`` is the option's type where the default (None) does not say it.
    ``help`` and ``choices`` may be functions of no arguments where they come
    from a registry defined after the dataclass (:func:`option_help`,
    :func:`option_choices` call them); ``metavar`` is how the help shows the value.
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "minimum": minimum, "maximum": maximum, "choices": choices, "type": kind or type(default),
        "metavar": metavar})


def option_help(meta: Any) -> str:
    """The help text of a :func:`setting` field's metadata."""
    text = meta.get("help", "")
    return text() if callable(text) else text


def option_choices(meta: Any) -> tuple[str, ...] | None:
    """The allowed values of a :func:`setting` field's metadata (None: any value of its type)."""
    choices = meta.get("choices")
    return tuple(choices()) if callable(choices) else choices


def check_settings(settings: Any) -> None:
    """Raise one :class:`OptionError` naming the parameter (the field) of the first field out of range."""
    for f in dataclasses.fields(settings):
        value, meta = getattr(settings, f.name), f.metadata
        if not meta or value is None:
            continue
        low, high, choices = meta.get("minimum"), meta.get("maximum"), option_choices(meta)
        if choices and value not in choices:
            raise OptionError(f.name, f"unknown {f.name} {value!r}; choose from {', '.join(choices)}")
        if low is not None and high is not None and not low < value < high:
            raise OptionError(f.name, f"must be between {low} and {high}, got {value}")
        if low is not None and high is None and value < low:
            raise OptionError(f.name, f"must be at least {low}, got {value}")
