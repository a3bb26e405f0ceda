"""The virtual subject, as the rest of the suite sees it: write one, render the localizer.

:mod:`model.virtual` is the simulator (surface, stimuli, responses, the
writer); it is private to :mod:`model`. Commands and analyses that need to
*make* synthetic data import it from here; those that need to *read* what a
virtual subject planted use :attr:`model.subject.Subject.truth`
(:mod:`model.truth`). A test (``tests/test_layers.py``) keeps it that way.
"""
from __future__ import annotations

from .virtual.localizer import LocalizerConfig, write_localizer
from .virtual.writer import VirtualConfig, write_virtual_subject

__all__ = ["LocalizerConfig", "VirtualConfig", "write_localizer", "write_virtual_subject"]
