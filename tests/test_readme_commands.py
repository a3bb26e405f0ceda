"""Every `tbe ...` command line of the README and of the docs runs as written (issues 15 and 24).

Each example is taken from the pages themselves (the README, every `docs/*.md`, `notebooks/README.md`:
table rows, code blocks, and inline commands with options), checked against the real parser with its
placeholders (RUN, DIR, N, ...) filled in, and the cheap ones (synth, surface, report --list) are run
on a tiny virtual subject: synth with its sizes made tiny, surface with `--data-dir` on per-hemisphere
files. Optional parts in brackets are checked with and without them. Training, prediction and reports
need a trained run and are covered by their own tests. The benchmark and `main.py` command lines the
pages give for their numbers name a script that exists and options it has. Links between the pages
lead to a file and a heading that exist.
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

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The pages whose command lines are checked: the README, every docs page, the notebooks' README
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "notebooks" / "README.md"]

#: Placeholders of the pages' examples that must be numbers to parse
NUMBERS = {"N": "20", "M": "4", "S": "64", "K": "0"}
#: The sizes a synth command of the pages is run with: its own, made tiny
TINY_SYNTH = {"--n-train": "20", "--n-test": "4", "--image-size": "64"}


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _join_continuations(lines: list[str]) -> list[str]:
    out, current = [], ""
    for line in lines:
        current += " " + line.strip().rstrip("\\").strip() if current else line.strip().rstrip("\\").strip()
        if not line.rstrip().endswith("\\"):
            out.append(current)
            current = ""
    return out + ([current] if current else [])


def _code_lines(text: str) -> list[str]:
    """The lines of the fenced code blocks, continuations joined, trailing comments removed."""
    found = []
    for block in re.findall(r"```[\w-]*\n(.*?)```", text, flags=re.S):
        for line in _join_continuations(block.splitlines()):
            found.append(re.sub(r"\s+#.*$", "", line).strip())
    return found


def readme_commands(text: str | None = None) -> list[str]:
    """A page's `tbe` command lines: code-block lines, table cells and inline commands with options."""
    text = README.read_text() if text is None else text
    found = [line for line in _code_lines(text) if line.startswith("tbe ")]
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`(tbe [^`]+)`", outside):
        if re.match(r"tbe [a-z-]+ .*-", span):  # a subcommand with options, not a mention of one
            found.append(" ".join(span.replace("\\|", "|").split()))
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


#: page -> its command lines
COMMANDS = {_name(page): readme_commands(page.read_text()) for page in PAGES}
ALL = [(page, c) for page, commands in COMMANDS.items() for c in commands]


def test_the_pages_have_examples_of_every_command():
    used = {shlex.split(c)[1] for _, c in ALL}
    commands = set(next(a for a in build_parser()._actions if a.dest == "command").choices)
    assert commands - used <= {"calibrate"}, commands - used
    assert len(ALL) >= 20
    assert len(COMMANDS["README.md"]) >= 10, "the README's tour"


@pytest.mark.parametrize("page,command", ALL, ids=[f"{p}: {c}" for p, c in ALL])
def test_every_command_line_parses(page, command):
    for args in variants(command):
        assert parse_error(args) == "", f"{page}: {command!r} -> {parse_error(args)}"


def test_the_checker_catches_a_wrong_command_line():
    """The surface line the README used to show: it must not pass (it needs --data-dir)."""
    wrong = "tbe surface --data-dir DIR --values lh_val_corr.npy,rh_val_corr.npy --output PREFIX"
    assert "--out" in parse_error(variants(wrong)[0])
    assert readme_commands("| `tbe surface --x 1` | y |\n```bash\ntbe demo \\\n  --out D  # c\n```\n") == [
        "tbe demo --out D", "tbe surface --x 1"]
    assert readme_commands("a (`tbe synth --out\nD`) b") == ["tbe synth --out D"]
    assert variants("tbe a --b 1 [--c 2] [options]") == [["a", "--b", "1"], ["a", "--b", "1", "--c", "2"]]
    assert variants("tbe a [--w x|y] [--s v | --i D]") == [["a"], ["a", "--w", "x"], ["a", "--w", "y"],
                                                             ["a", "--s", "v"], ["a", "--i", "D"]]


def _cheap(name: str) -> list[tuple[str, str]]:
    return [(page, c) for page, c in ALL if shlex.split(c)[1] == name]


def test_the_surface_commands_run_as_written(tiny_data, tmp_path):
    from model.subject import load_subject

    commands = [(page, c) for page, c in _cheap("surface") if "--data-dir" in c]  # per-hemisphere files
    assert commands, "the pages show tbe surface on per-hemisphere files"
    subject = load_subject(tiny_data, 1, check_images=False)
    run = tmp_path / "RUN"
    run.mkdir()
    rng = np.random.default_rng(0)
    for hemi in HEMIS:
        np.save(run / f"{hemi}_val_corr.npy", rng.uniform(-0.2, 0.8, subject.n_vertices(hemi)).astype(np.float32))
    for i, (page, command) in enumerate(commands):
        out = tmp_path / f"out{i}"
        args = [a.replace("RUN", str(run)) for a in variants(command)[0]]
        args = [str(tiny_data) if a == "DIR" else str(out) if a == "PREFIX" else a for a in args]
        assert tbe(*args) == 0, f"{page}: {command}"
        assert out.with_suffix(".png").stat().st_size > 5000 and out.with_suffix(".lh.func.gii").is_file()


def _tiny_synth(args: list[str], out: Path) -> list[str]:
    """A synth command's arguments with its output in ``out`` and its sizes made tiny."""
    args = list(args)
    for flag, value in [("--out", str(out)), *TINY_SYNTH.items()]:
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args


def test_the_synth_commands_run_as_written(tmp_path):
    commands = _cheap("synth")
    assert commands, "the pages show tbe synth"
    for i, (page, command) in enumerate(commands):
        args = variants(command)[0]
        out = tmp_path / f"data{i}"
        assert tbe(*_tiny_synth(args, out)) == 0, f"{page}: {command}"
        subj = int(args[args.index("--subj") + 1]) if "--subj" in args else 1
        assert (out / f"subj{subj:02d}" / "ground_truth").is_dir()


def test_the_report_list_runs_as_written(capsys):
    assert ["report", "--list"] in [v for _, c in _cheap("report") for v in variants(c)]
    assert tbe("report", "--list") == 0
    assert "roi_selectivity" in capsys.readouterr().out


# --------------------------------------------------------------------------
# The commands behind the pages' numbers, and the links between the pages
# --------------------------------------------------------------------------

def _python_commands() -> list[tuple[str, list[str]]]:
    """Every `python benchmarks/....py ...` and `python main.py ...` of the pages, as arguments."""
    found = []
    for page in PAGES:
        text = page.read_text()
        lines = [line for line in _code_lines(text) if line.startswith("python ")]
        outside = re.sub(r"```.*?```", "", text, flags=re.S)
        lines += [" ".join(span.split()) for span in re.findall(r"`(python [^`]+)`", outside)]
        for line in dict.fromkeys(lines):
            args = shlex.split(line)[1:]
            if args and (args[0].startswith("benchmarks/") or args[0] == "main.py"):
                found.append((_name(page), args))
    return found


def test_the_benchmark_commands_name_scripts_and_options_that_exist():
    commands = _python_commands()
    assert sum(args[0].startswith("benchmarks/") for _, args in commands) >= 20
    for page, args in commands:
        if args[0] == "main.py":
            from main import seed_parser

            with contextlib.redirect_stderr(io.StringIO()):
                seed_parser().parse_args(args[1:])
            continue
        script = ROOT / args[0]
        assert script.is_file(), f"{page}: {' '.join(args)}: no such script"
        text = script.read_text()
        for option in (a for a in args[1:] if a.startswith("--")):
            assert f'"{option}"' in text, f"{page}: {' '.join(args)}: {script.name} has no {option}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but hyphens dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_links_between_the_pages_lead_somewhere():
    assert _anchor("Backbone features at the CPU's native precision: `--precision`") == \
        "backbone-features-at-the-cpus-native-precision---precision"
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{_name(page)}: {target}: no such file"
            if anchor:
                assert anchor in _anchors(linked), f"{_name(page)}: {target}: no such heading"


def test_the_readme_leads_to_every_docs_page():
    readme = README.read_text()
    read_on = readme[readme.index("## Read on"):]
    for page in PAGES[1:]:
        assert f"]({_name(page)})" in read_on, f"README's 'Read on' does not link {_name(page)}"


def test_the_notebooks_readme_lists_every_notebook():
    text = (ROOT / "notebooks" / "README.md").read_text()
    listed = set(re.findall(r"^\| `(\w+)` \|", text, flags=re.M))
    assert listed == {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}
