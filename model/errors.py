"""The one error type for bad input.

Every problem a user can cause (a missing file, a wrong shape, NaNs, an
unreadable image, an unknown ROI name, a mismatched checkpoint) is raised as
:class:`InputError`. The command line prints it as a single line,
``error: <file>: <problem>``, and exits non-zero.

The library names parameters, never command-line flags: a bad value is an
:class:`OptionError` naming its parameter (``decoder.nheads``, ``n_images``),
and a message that points to another parameter writes it in backquotes
(``choose another `out```). The ``tbe`` command prints each as the flag that
sets it (:func:`analyses.cli.flag_of`): ``--nheads``, ``--n-images``, ``--out``.
"""
from __future__ import annotations

import math
from os import PathLike
from typing import Any, Callable, Iterable


class InputError(Exception):
    """Bad input, named by the file (or option) it came from.

    Parameters
    ----------
    where : path or str
        The file, directory or command-line option at fault.
    problem : str
        What is wrong with it, in one line.
    """

    def __init__(self, where: str | PathLike, problem: str) -> None:
        self.where = str(where)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.where}: {self.problem}")


class OptionError(InputError):
    """A bad value of a parameter: a configuration field by its dotted path (``train.lr``), or a function's (``n_images``).

    The library knows parameters, not command-line flags: the ``tbe``
    command names the flag that sets the parameter instead, and a run's
    ``config.json`` is named when the value was read from it.

    Parameters
    ----------
    parameter : str
        ``section.field`` of the configuration (e.g. ``decoder.nheads``), or
        the name of a function's parameter or setting (e.g. ``rois``).
    problem : str
        What is wrong with its value, in one line.
    """

    def __init__(self, parameter: str, problem: str) -> None:
        self.parameter = parameter
        super().__init__(parameter, problem)


#: (field, test of its value, what a good value is) for :func:`check_fields`
Rule = tuple[str, Callable[[Any], bool], str]


def check_fields(section: str, config: Any, rules: Iterable[Rule]) -> None:
    """Raise :class:`OptionError` for the first field of ``config`` that fails its rule.

    ``section`` prefixes the parameter name (``'train'`` -> ``train.lr``);
    a test that raises :class:`TypeError` (a string where a number belongs,
    as a hand-edited config.json may have) counts as failed.
    """
    for name, ok, need in rules:
        value = getattr(config, name)
        try:
            good = bool(ok(value))
        except TypeError:
            good = False
        if not good:
            raise OptionError(f"{section}.{name}" if section else name, f"{need}, got {value!r}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: Any) -> bool:
    return is_int(value) and value >= 1


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool, not NaN or Inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
