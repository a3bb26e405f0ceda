"""The one error type for bad input.

Every problem a user can cause (a missing file, a wrong shape, NaNs, an
unreadable image, an unknown ROI name, a mismatched checkpoint) is raised as
:class:`InputError`. The command line prints it as a single line,
``error: <file>: <problem>``, and exits non-zero.
"""
from __future__ import annotations

from os import PathLike


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
