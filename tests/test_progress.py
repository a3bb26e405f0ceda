"""Progress: tqdm bars on a terminal, plain timed lines (done/total, rate, ETA) in a log file."""
from __future__ import annotations

import io
import logging
import re
import time

import pytest
from tqdm import tqdm

from model.progress import INTERVAL_ENV, LineProgress, activity, interval_seconds, progress

LINE = re.compile(r"^work: (?P<done>\d+)/(?P<total>\d+) item \(\d+%\), (?P<rate>[\d.e+-]+) item/s, "
                  r"elapsed \d+ s(, ETA \d+ s)?")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def progress_log(caplog):
    caplog.set_level(logging.INFO, logger="tbe.progress")
    return caplog


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tbe.progress"]


def test_a_log_file_gets_plain_lines_with_done_total_rate_and_eta(progress_log):
    stream = io.StringIO()  # not a terminal: a batch job's log
    bar = progress(range(6), desc="work", unit="item", stream=stream, interval=0.05)
    assert isinstance(bar, LineProgress)
    for _ in bar:
        time.sleep(0.03)
    lines = _lines(progress_log)
    assert len(lines) >= 2, lines
    during = [LINE.match(line) for line in lines[:-1]]
    assert all(during), lines
    assert all(m["total"] == "6" and 0 < int(m["done"]) <= 6 and float(m["rate"]) > 0 for m in during)
    assert any("ETA" in line for line in lines[:-1])
    assert lines[-1].startswith("work: 6/6 item (100%)") and lines[-1].endswith("(done)")
    assert stream.getvalue() == "", "nothing drawn on a non-terminal stream"


def test_a_single_slow_item_still_gets_its_line_from_the_timer(progress_log):
    bar = progress(range(1), desc="work", unit="item", stream=io.StringIO(), interval=0.05)
    for _ in bar:
        time.sleep(0.3)  # the loop itself never gets a chance to write during this item
    lines = _lines(progress_log)
    assert sum(line.startswith("work: 0/1 item") for line in lines) >= 2, lines
    assert "ETA unknown" in lines[0]


def test_a_short_loop_says_nothing(progress_log):
    for _ in progress(range(3), desc="work", unit="item", stream=io.StringIO(), interval=60):
        pass
    assert _lines(progress_log) == []


def test_a_terminal_gets_a_tqdm_bar(progress_log):
    stream = Terminal()
    bar = progress(range(3), desc="work", unit="item", stream=stream, interval=0.01)
    assert isinstance(bar, tqdm)
    assert list(bar) == [0, 1, 2]
    assert "work" in stream.getvalue() and "3/3" in stream.getvalue()
    assert _lines(progress_log) == []


def test_manual_updates_postfix_and_disable(progress_log):
    with progress(total=4, desc="work", unit="item", stream=io.StringIO(), interval=0.01) as bar:
        for _ in range(4):
            time.sleep(0.02)
            bar.update(1)
            bar.set_postfix(val_r="0.123")
    lines = _lines(progress_log)
    assert lines and "val_r=0.123" in lines[-1]
    quiet = progress(range(3), desc="x", disable=True, stream=Terminal())
    assert list(quiet) == [0, 1, 2]


def test_activity_says_a_long_step_is_still_running(progress_log):
    with activity("ridge fit", stream=io.StringIO(), interval=0.05):
        time.sleep(0.25)
    lines = _lines(progress_log)
    assert lines[0].startswith("ridge fit: still running, elapsed"), lines
    assert lines[-1].startswith("ridge fit: 1/1 step (100%)")


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "2.5")
    assert interval_seconds() == 2.5
    monkeypatch.setenv(INTERVAL_ENV, "nonsense")
    assert interval_seconds() == 30.0
    monkeypatch.delenv(INTERVAL_ENV)
    assert interval_seconds() == 30.0
