"""Progress of long loops: tqdm bars on a terminal, plain log lines in a log file.

A bar redrawn with carriage returns is unreadable in a file, so tqdm turns
itself off when stderr is not a terminal, and a batch job (``make demo >
log 2>&1``, a cluster job) was silent for minutes. :func:`progress` keeps
tqdm for terminals and otherwise logs one plain line at most every
``TBE_PROGRESS_SECONDS`` seconds (default 30), from a background timer so
that a single slow item (one report notebook, one ridge fit) still gets its
line on time::

    tbe: training: 6/15 epoch (40%), 0.21 epoch/s, elapsed 28 s, ETA 43 s

Lines go to the ``tbe.progress`` logger at INFO level: ``tbe`` prints them
on stderr with its other messages, and ``tbe -q`` silences them.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import weakref
from typing import IO, Any, Iterable, Iterator

from tqdm.auto import tqdm

log = logging.getLogger("tbe.progress")

#: Environment variable: seconds between two plain progress lines (default :data:`DEFAULT_SECONDS`).
INTERVAL_ENV = "TBE_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0


def interval_seconds() -> float:
    """Seconds between plain progress lines: ``$TBE_PROGRESS_SECONDS`` or 30."""
    text = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(text) if text.strip() else DEFAULT_SECONDS
    except ValueError:
        value = DEFAULT_SECONDS
    return value if value > 0 else DEFAULT_SECONDS


def is_terminal(stream: IO | None) -> bool:
    """Whether ``stream`` is an interactive terminal (where a redrawn bar is readable)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except (ValueError, OSError):  # a closed stream
        return False


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it", *,
             disable: bool = False, stream: IO | None = None, interval: float | None = None):
    """A progress indicator over ``iterable`` (or updated by hand with ``.update(n)``).

    Parameters
    ----------
    iterable : iterable, optional
        What to loop over; None for a bar advanced with ``update``.
    total : int, optional
        Number of items (default: ``len(iterable)`` where it has one).
    desc, unit : str
        What is being done, and what one item is ("epoch", "batch", "notebook").
    disable : bool
        No output at all (e.g. on every DDP rank but the first).
    stream : file, optional
        Where a terminal bar is drawn (default ``sys.stderr``); whether it is a
        terminal decides between a tqdm bar and plain log lines.
    interval : float, optional
        Seconds between plain lines (default :func:`interval_seconds`).

    Returns
    -------
    tqdm or LineProgress
        Both iterate, and both have ``update``, ``set_postfix``, ``close`` and
        work as context managers.
    """
    stream = sys.stderr if stream is None else stream
    if disable:
        return tqdm(iterable, total=total, disable=True)
    if is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream)
    return LineProgress(iterable, total, desc, unit, interval if interval is not None else interval_seconds())


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min"


class LineProgress:
    """tqdm's interface, writing a plain line (done/total, rate, elapsed, ETA) at most every ``interval`` s.

    A daemon timer writes the line even while one item takes long; the loop
    itself also writes one when it advances past the interval. A loop that
    ends within the first interval writes nothing; a longer one ends with a
    closing line (``(done)``, or ``(stopped)`` short of its total).
    """

    def __init__(self, iterable: Iterable | None, total: int | None, desc: str, unit: str, interval: float,
                 running: bool = False):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.interval = float(interval)
        self.n = 0
        self.postfix = ""
        self.running = running  # a single step: say "still running", not 0/1
        self.start = time.monotonic()
        self._last = self.start
        self._lines = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # the timer holds only a weak reference, so a bar dropped without close() ends its thread
        threading.Thread(target=_tick, args=(weakref.ref(self), self._stop, self.interval),
                         name=f"progress:{desc}", daemon=True).start()

    # -- what a line says -------------------------------------------------
    def line(self) -> str:
        """``desc: done/total unit (pct), rate, elapsed, ETA`` (total and ETA only when known)."""
        elapsed = time.monotonic() - self.start
        if self.running and self.n == 0:
            return f"{self.desc or 'working'}: still running, elapsed {_duration(elapsed)}"
        rate = self.n / elapsed if elapsed > 0 else 0.0
        done = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        parts = [f"{done} {self.unit}" + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        if self.n:
            parts.append(f"{rate:.3g} {self.unit}/s" if rate >= 0.01 else f"{1 / rate:.3g} s/{self.unit}")
        parts.append(f"elapsed {_duration(elapsed)}")
        if self.total is not None and self.n < self.total:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}" if rate > 0 else "ETA unknown")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc + ': ' if self.desc else ''}{', '.join(parts)}"

    def _emit(self) -> None:
        with self._lock:
            self._last = time.monotonic()
            self._lines += 1
            text = self.line()
        log.info("%s", text)

    def _due(self) -> float:
        """Seconds until the next line is due (<= 0: now)."""
        return self.interval - (time.monotonic() - self._last)

    # -- tqdm's interface -------------------------------------------------
    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total if self.total is not None else len(self.iterable)

    def update(self, n: int = 1) -> None:
        self.n += n
        finished = self.total is not None and self.n >= self.total  # close() says so
        if not finished and time.monotonic() - self._last >= self.interval:
            self._emit()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._lines or time.monotonic() - self.start >= self.interval:
            ended = "done" if self.total is None or self.n >= self.total else "stopped"
            log.info("%s", self.line().replace(", ETA unknown", "") + f" ({ended})")

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()



def _tick(ref: weakref.ref, stop: threading.Event, interval: float) -> None:
    """The timer of a :class:`LineProgress`: a line whenever one is due, until closed or dropped."""
    wait = interval
    while not stop.wait(max(0.01, wait)):
        bar = ref()
        if bar is None:
            return
        if bar._due() <= 0:  # noqa: SLF001 - the bar's own timer
            bar._emit()  # noqa: SLF001
        wait = bar._due()  # noqa: SLF001
        del bar


@contextlib.contextmanager
def activity(desc: str, *, stream: IO | None = None, interval: float | None = None) -> Iterator[None]:
    """Say every ``interval`` s that a step with nothing to count is still running.

    For single long calls (a closed-form ridge fit): ``with activity("ridge
    fit"): model.fit(...)``. On a terminal, a tqdm bar of one step with its
    elapsed time; in a log, ``ridge fit: still running, elapsed 1 min 30 s``
    and, if it ran past the interval, a closing line.
    """
    stream = sys.stderr if stream is None else stream
    if is_terminal(stream):
        with tqdm(total=1, desc=desc, unit="step", file=stream) as bar:
            yield
            bar.update(1)
        return
    bar = LineProgress(None, 1, desc, "step", interval if interval is not None else interval_seconds(), running=True)
    try:
        yield
        bar.n = 1
    finally:
        bar.close()
