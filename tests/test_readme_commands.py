"""Every `tbe ...` command line of the README runs as written (issue 15).

Each example is taken from the README itself (table rows, code blocks, and
inline commands with options), checked against the real parser with its
placeholders (RUN, DIR, N, ...) filled in, and the cheap ones (synth,
surface, report --list) are run on a tiny virtual subject. Optional parts in
brackets are checked with and without them. Training, prediction and
reports need a trained run and are covered by their own tests.
"""
from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from analyses.cli import build_parser
from model.rois import HEMIS

from .conftest import tbe

README = Path(__file__).resolve().parents[1] / "README.md"

#: Placeholders of the README's examples that must be numbers to parse
NUMBERS = {"N": "20", "M": "4", "S": "64", "K": "0"}


def _join_continuations(lines: list[str]) -> list[str]:
    out, current = [], ""
    for line in lines:
        current += " " + line.strip().rstrip("\\").strip() if current else line.strip().rstrip("\\").strip()
        if not line.rstrip().endswith("\\"):
            out.append(current)
            current = ""
    return out + ([current] if current else [])


def readme_commands(text: str | None = None) -> list[str]:
    """The README's `tbe` command lines: code-block lines, table cells and inline commands with options."""
    text = README.read_text() if text is None else text
    found = []
    for block in re.findall(r"```[\w-]*\n(.*?)```", text, flags=re.S):
        for line in _join_continuations(block.splitlines()):
            line = re.sub(r"\s+#.*$", "", line).strip()  # a trailing comment
            if line.startswith("tbe "):
                found.append(line)
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`(tbe [^`]+)`", outside):
        if re.match(r"tbe [a-z-]+ .*-", span):  # a subcommand with options, not a mention of one
            found.append(span.replace("\\|", "|"))
    return list(dict.fromkeys(found))


def _alternatives(group: str) -> list[str]:
    """``--a X | --b Y`` gives each option; ``--w a|b|c`` gives each value."""
    out = []
    for part in group.split(" | "):
        words = part.split()
        choices = [w.split("|") if "|" in w else [w] for w in words]
        out += [" ".join(w[i] if len(w) > 1 else w[0] for w in choices) for i in range(max(map(len, choices)))]
    return out


def variants(command: str) -> list[list[str]]:
    """The command as arguments without its optional [...] parts, and with each option group (each alternative of it)."""
    groups = re.findall(r"(?<!')\[([^\]']+)\](?!')", command)
    base = re.sub(r"\s*(?<!')\[[^\]']+\](?!')", "", command)
    filled = [base] + [f"{base} {a}" for g in groups if g.startswith("-") and "..." not in g for a in _alternatives(g)]
    out = []
    for c in filled:
        args = shlex.split(c)[1:]
        out.append([NUMBERS.get(a, a) for a in args])
    return out


def parse_error(args: list[str]) -> str:
    """'' when the parser accepts ``args``, else its message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            build_parser().parse_args(args)
    except SystemExit as exc:
        return err.getvalue().strip().splitlines()[-1] if exc.code else ""
    return ""


COMMANDS = readme_commands()


def test_the_readme_has_examples_of_every_command():
    used = {shlex.split(c)[1] for c in COMMANDS}
    commands = set(next(a for a in build_parser()._actions if a.dest == "command").choices)
    assert commands - used <= {"calibrate"}, commands - used
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_line_parses(command):
    for args in variants(command):
        assert parse_error(args) == "", f"README: {command!r} -> {parse_error(args)}"


def test_the_checker_catches_a_wrong_command_line():
    """The surface line the README used to show: it must not pass (it needs --data-dir)."""
    wrong = "tbe surface --data-dir DIR --values lh_val_corr.npy,rh_val_corr.npy --output PREFIX"
    assert "--out" in parse_error(variants(wrong)[0])
    assert readme_commands("| `tbe surface --x 1` | y |\n```bash\ntbe demo \\\n  --out D  # c\n```\n") == [
        "tbe demo --out D", "tbe surface --x 1"]
    assert variants("tbe a --b 1 [--c 2] [options]") == [["a", "--b", "1"], ["a", "--b", "1", "--c", "2"]]
    assert variants("tbe a [--w x|y] [--s v | --i D]") == [["a"], ["a", "--w", "x"], ["a", "--w", "y"],
                                                             ["a", "--s", "v"], ["a", "--i", "D"]]


def _cheap(name: str) -> list[str]:
    return [c for c in COMMANDS if shlex.split(c)[1] == name]


def test_the_readme_surface_command_runs_as_written(tiny_data, tmp_path):
    from model.subject import load_subject

    (command,) = [c for c in _cheap("surface") if "--data-dir" in c]  # the table's row: per-hemisphere files
    subject = load_subject(tiny_data, 1, check_images=False)
    run = tmp_path / "RUN"
    run.mkdir()
    rng = np.random.default_rng(0)
    for hemi in HEMIS:
        np.save(run / f"{hemi}_val_corr.npy", rng.uniform(-0.2, 0.8, subject.n_vertices(hemi)).astype(np.float32))
    args = [a.replace("RUN", str(run)) for a in variants(command)[0]]
    args = [str(tiny_data) if a == "DIR" else str(tmp_path / "out") if a == "PREFIX" else a for a in args]
    assert tbe(*args) == 0
    assert (tmp_path / "out.png").stat().st_size > 5000 and (tmp_path / "out.lh.func.gii").is_file()


def test_the_readme_synth_command_runs_as_written(tmp_path):
    (command,) = _cheap("synth")
    args = [str(tmp_path / "data") if a == "DIR" else a for a in variants(command)[0]]
    assert tbe(*args) == 0
    assert (tmp_path / "data" / "subj01" / "ground_truth").is_dir()


def test_the_readme_report_list_runs_as_written(capsys):
    assert ["report", "--list"] in [v for c in _cheap("report") for v in variants(c)]
    assert tbe("report", "--list") == 0
    assert "roi_selectivity" in capsys.readouterr().out
