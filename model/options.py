"""Settings dataclasses whose fields carry their own option: help, type, allowed values.

A field made with :func:`setting` is checked by :func:`check_settings`
(one :class:`~model.errors.InputError` naming the option, e.g.
``--n-steps: must be at least 2, got 1``), and the CLI makes its flag from
the same metadata (:func:`analyses.cli.add_settings_args`), so a new
setting is one line in its dataclass.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from .errors import InputError


def setting(default: Any, help: str, *, minimum: float | None = None, maximum: float | None = None,
            choices: tuple[str, ...] | None = None, kind: type | None = None) -> Any:
    """A dataclass field with its option's metadata.

    ``minimum`` is inclusive unless ``maximum`` is also given, in which case
    the value must lie strictly between the two (a level such as alpha);
    ``kind`` is the option's type where the default (None) does not say it.
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "minimum": minimum, "maximum": maximum, "choices": choices, "type": kind or type(default)})


def option_name(name: str) -> str:
    """The command-line option of a field: ``n_steps`` -> ``--n-steps``."""
    return "--" + name.replace("_", "-")


def check_settings(settings: Any) -> None:
    """Raise one :class:`InputError` naming the option of the first field out of range."""
    for f in dataclasses.fields(settings):
        value, meta = getattr(settings, f.name), f.metadata
        if not meta or value is None:
            continue
        low, high, choices = meta.get("minimum"), meta.get("maximum"), meta.get("choices")
        if choices and value not in choices:
            raise InputError(option_name(f.name), f"unknown {f.name} {value!r}; choose from {', '.join(choices)}")
        if low is not None and high is not None and not low < value < high:
            raise InputError(option_name(f.name), f"must be between {low} and {high}, got {value}")
        if low is not None and high is None and value < low:
            raise InputError(option_name(f.name), f"must be at least {low}, got {value}")
