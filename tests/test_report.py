"""Reports: every notebook under papermill on a small virtual subject, the index, failures, and the HTML in Chromium."""
from __future__ import annotations

import ast
import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

from analyses import report, report_execution, report_html, report_notebooks
from analyses.report_notebooks import NOTEBOOK_DIR, NOTEBOOKS
from model.errors import InputError

from .conftest import tbe

#: Small parameters: every notebook runs in seconds on the small subject.
SMALL = [
    "-p", "n_images", "2",
    "-p", "rois", "[V1v, FFA-1]",
    "-p", "hemis", "[lh]",
    "-p", "n_boot", "20",
    "-p", "attention_maps.heads", "true",
    "-p", "attributions.n_steps", "8",
    "-p", "map_checks.methods", "[attention, saliency]",
    "-p", "map_checks.sanity_methods", "[attention]",
    "-p", "map_checks.n_steps", "4",
    "-p", "map_checks.faithfulness_rois", "[FFA-1]",
    "-p", "n_permutations", "200",
]


# --------------------------------------------------------------------------
# The notebooks themselves
# --------------------------------------------------------------------------

def _parameters_cell(nb) -> list:
    return [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_notebook_has_one_parameters_cell_that_papermill_reads(name):
    path = NOTEBOOK_DIR / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    cells = _parameters_cell(nb)
    assert len(cells) == 1
    assigned = [t.id for node in ast.parse(cells[0].source).body for t in node.targets]
    assert list(report_notebooks.declared_parameters(path)) == assigned  # papermill parses every line
    assert {"run_dir", "data_dir", "subj", "seed", "out_dir"} <= set(assigned)
    defaults = {k: v["default"] for k, v in report_notebooks.declared_parameters(path).items()}
    assert defaults["run_dir"] == '"../demo/runs/transformer"' and defaults["data_dir"] == '"../demo/data"'
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"


def test_notebooks_read_demo_paths_relative_to_the_notebook_folder():
    """Run by hand in Jupyter (cwd = notebooks/), the defaults name the folders `tbe demo --out demo` writes."""
    for name in NOTEBOOKS:
        declared = report_notebooks.declared_parameters(NOTEBOOK_DIR / f"{name}.ipynb")
        for key in ("run_dir", "data_dir", "cache_dir", "ridge_run"):
            if key in declared:
                assert declared[key]["default"].strip('"').startswith("../demo/"), (name, key)


def test_kernel_is_registered_for_this_environment():
    from jupyter_client.kernelspec import KernelSpecManager

    name = report_execution.ensure_kernel()
    assert name == report_execution.kernel_name() and name.startswith("tbe-")
    spec = KernelSpecManager().get_kernel_spec(name)
    assert os.path.realpath(spec.argv[0]) == os.path.realpath(sys.executable)
    assert report_execution.ensure_kernel() == name  # idempotent


# --------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------

def test_parameter_values_are_parsed_as_yaml():
    assert report_notebooks.parse_value("3") == 3 and report_notebooks.parse_value("0.5") == 0.5
    assert report_notebooks.parse_value("true") is True
    assert report_notebooks.parse_value("[V1v, FFA-1]") == ["V1v", "FFA-1"]
    assert report_notebooks.parse_value("V1v,FFA-1") == "V1v,FFA-1"
    assert report_notebooks.parse_value("") == "" and report_notebooks.parse_value("null") is None
    assert report_notebooks.parse_value("../demo/data") == "../demo/data"


def test_parameters_are_routed_to_the_notebooks_declaring_them():
    declared = {"a": {"rois": {}, "seed": {}}, "b": {"rois": {}, "heads": {}}}
    routed = report_notebooks.split_parameters({"rois": ["V1v"], "b.heads": True, "a.rois": ["PPA"]}, declared)
    assert routed == {"a": {"rois": ["PPA"]}, "b": {"rois": ["V1v"], "heads": True}}
    with pytest.raises(InputError, match="no notebook in this report has a parameter 'nope'"):
        report_notebooks.split_parameters({"nope": 1}, declared)
    with pytest.raises(InputError, match="a has no parameter 'heads'"):
        report_notebooks.split_parameters({"a.heads": 1}, declared)
    with pytest.raises(InputError, match="notebook 'c' is not in this report"):
        report_notebooks.split_parameters({"c.rois": 1}, declared)


def test_bad_report_options_stop_with_one_line_before_any_kernel(trained_run, tmp_path, capsys):
    assert tbe("report", "--run", trained_run, "--out", tmp_path / "r", "-p", "no_such_parameter", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: -p: no notebook in this report has a parameter 'no_such_parameter'")
    assert tbe("report", "--run", trained_run, "--out", tmp_path / "r", "--notebooks", "nope") == 2
    assert "unknown notebook 'nope'" in capsys.readouterr().err
    assert tbe("report", "--run", tmp_path / "missing", "--out", tmp_path / "r") == 2
    assert "not a run directory" in capsys.readouterr().err
    assert not (tmp_path / "r" / "index.html").exists()


def test_list_shows_every_notebook_and_its_parameters(capsys):
    assert tbe("report", "--list") == 0
    out = capsys.readouterr().out
    for name in NOTEBOOKS:
        assert out.count(f"\n{name}: ") + out.startswith(f"{name}: ") == 1
    assert "n_images = 4" in out and "(set by the report)" in out


# --------------------------------------------------------------------------
# A whole report on the small subject
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def baseline_run(trained_run, tmp_path_factory) -> Path:
    """A stand-in baseline run: the trained run's files, labelled ridge, with noisier test predictions."""
    out = tmp_path_factory.mktemp("baseline") / "ridge"
    shutil.copytree(trained_run, out, ignore=shutil.ignore_patterns("checkpoint.safetensors"))
    config = json.loads((out / "config.json").read_text())
    config["encoder_arch"] = "ridge"
    (out / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    for hemi in ("lh", "rh"):
        pred = np.load(out / f"{hemi}_pred_test.npy")
        np.save(out / f"{hemi}_pred_test.npy", (pred + rng.normal(0, pred.std(), pred.shape)).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def small_report(trained_run, baseline_run, small_data, cache_dir, tmp_path_factory):
    """Every notebook on the small subject: (report folder, exit status, report.json)."""
    out = tmp_path_factory.mktemp("reports") / "small"
    code = tbe("report", "--run", trained_run, "--data-dir", small_data, "--ridge-run", baseline_run,
               "--cache-dir", cache_dir, "--out", out, *SMALL)
    return out, code, json.loads((out / "report.json").read_text())


def _outputs(nb) -> list:
    return [o for cell in nb.cells for o in cell.get("outputs", [])]


def test_every_notebook_executes_with_figures_and_no_error_output(small_report):
    out, code, summary = small_report
    failed = {e["name"]: e["error"] for e in summary["entries"] if e["status"] != "ok"}
    assert code == 0 and not failed, failed
    assert [e["name"] for e in summary["entries"]] == list(NOTEBOOKS)
    for entry in summary["entries"]:
        nb = nbformat.read(out / entry["notebook"], as_version=4)
        outputs = _outputs(nb)
        assert not [o for o in outputs if o.output_type == "error"], entry["name"]
        stderr = [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"]
        assert not stderr, (entry["name"], stderr)
        pngs = report_html.figures(nb)
        assert len(pngs) >= 2 and entry["n_figures"] == len(pngs), entry["name"]
        assert entry["summary"], entry["name"]
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1 and str(out / "files" / entry["name"]) in injected[0].source
        assert any((out / "files" / entry["name"]).iterdir()), f"{entry['name']} wrote no files"


def test_notebooks_answer_what_they_are_asked(small_report):
    out, _, summary = small_report
    entries = {e["name"]: e for e in summary["entries"]}
    assert "challenge score" in entries["encoding_accuracy"]["summary"] and "ridge" in entries["encoding_accuracy"]["summary"]
    roi_table = (out / "files" / "encoding_accuracy" / "roi_accuracy.csv").read_text()
    assert "FFA-1" in roi_table and "r_ceiling" in roi_table and "r_ridge" in roi_table
    assert (out / "files" / "encoding_accuracy" / "transformer_minus_ridge_r.png").is_file()
    assert (out / "files" / "attention_maps" / "heads_lh_V1v.png").is_file()  # head by head, as asked
    assert not (out / "files" / "attention_maps" / "attention_rh.png").exists()  # hemis: [lh]
    convergence = (out / "files" / "attributions" / "convergence.csv").read_text()
    assert "integrated_gradients" in convergence and "relative_delta" in convergence
    for table in ("sanity", "localization", "faithfulness"):
        assert (out / "files" / "map_checks" / f"{table}.csv").is_file()
    selectivity = (out / "roi_selectivity.html").read_text()
    assert "mean_ci_low" in selectivity and "verdict" in selectivity  # intervals named; every contrast judged
    assert "Localizer run here: 24 images per category" in selectivity  # no localizer of this run: its own, stated
    assert "planted ROIs" in entries["roi_selectivity"]["summary"]  # null ROIs counted apart
    assert "hands as faces" in (out / "attributions.html").read_text()  # the stimuli's known confound, stated


def test_html_reports_embed_their_figures(small_report):
    out, _, summary = small_report
    index = (out / "index.html").read_text()
    for entry in summary["entries"]:
        html = (out / entry["html"]).read_text()
        sources = [re.search(r'src="([^"]*)"', tag).group(1) for tag in re.findall(r"<img\b[^>]*>", html)]
        assert len(sources) == entry["n_figures"], entry["name"]
        prefix = "data:image/png;base64,"
        assert all(src.startswith(prefix) for src in sources), "every figure is embedded, no file is linked"
        for src in sources[:3]:
            assert Image.open(io.BytesIO(base64.b64decode(src[len(prefix):]))).format == "PNG"
        assert "require.min.js" not in html
        assert "setup_notebook(seed)" not in html  # code is hidden by default ...
        assert str(out / "files" / entry["name"]) in html  # ... but the parameters it ran with (injected) show
        assert html.count("<strong>Settings</strong>") == 1 and "# Parameters" not in html  # once, as a table
        assert "../demo/runs/transformer" not in html  # not the default the report replaced
        assert not re.search(r"\d\.\d\de(\+0\d|-0[0-3])\b", html), entry["name"]  # e-notation only for tiny p
        assert f'href="{entry["html"]}"' in index
        assert entry["summary"].split(";")[0] in index
    assert index.count('src="data:image/png;base64,') == len(summary["entries"])  # one thumbnail each
    assert "all notebooks ran" in index


def _tiny_notebook():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("n_images = 6", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("secret_code_line(42)", outputs=[
                    nbformat.v4.new_output("stream", name="stdout", text="the answer")]),
                nbformat.v4.new_markdown_cell("Some *text*.")]
    return nb


def test_report_html_hides_code_by_default_and_shows_it_when_asked(tmp_path):
    hidden = report_html.export_html(_tiny_notebook(), tmp_path / "hidden.html", "t").read_text()
    shown = report_html.export_html(_tiny_notebook(), tmp_path / "shown.html", "t", show_code=True).read_text()
    assert "secret_code_line" not in hidden and "the answer" in hidden and "Some" in hidden
    assert "n_images" in hidden  # the parameters cell stays: the settings of the report
    assert "secret_code_line" in shown and "the answer" in shown


def test_show_code_reaches_the_report_and_its_reproduce_command():
    from analyses.cli import build_parser

    args = build_parser().parse_args(["report", "--run", "r", "--out", "o", "--show-code"])
    assert args.show_code is True
    assert build_parser().parse_args(["report", "--run", "r", "--out", "o"]).show_code is False
    command = report.reproduce_command(Path("/r"), Path("/d"), Path("/o"), None, None, None, None, show_code=True)
    assert "--show-code" in command


def test_the_reproduce_command_stores_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    command = report.reproduce_command(Path("/r"), Path("/d"), Path("/o"),
                                       {"map_checks.checks_dir": "demo/interpret/checks", "n_images": 6},
                                       None, None, None)
    assert str(tmp_path / "demo" / "interpret" / "checks") in command and " demo/interpret" not in command
    assert "-p n_images 6" in command


def test_a_report_states_its_settings_once_as_a_table(tmp_path):
    """The defaults cell and papermill's injected cell become one table: each setting, its value, where it came from."""
    import papermill

    nb = _tiny_notebook()
    nb.cells[0].source = 'run_dir = "../demo/runs/x"  # the run\nn_images = 6  # number of images\nrois = ["V1v", "FFA-1"]'
    nb.metadata["papermill"] = {}
    for cell in nb.cells:
        cell.metadata.setdefault("tags", [])
    nb = papermill.parameterize.parameterize_notebook(nb, {"run_dir": "/runs/<script>alert(1)</script>"},
                                                      kernel_name="python3", language="python")
    assert [r["setting"] for r in report_html.notebook_settings(nb)] == ["run_dir", "n_images", "rois"]
    assert [r["from"] for r in report_html.notebook_settings(nb)] == ["report", "default", "default"]
    for show_code in (False, True):
        html = report_html.export_html(nb, tmp_path / "settings.html", "t", show_code=show_code).read_text()
        assert html.count("<strong>Settings</strong>") == 1 and "# Parameters" not in html
        assert "../demo/runs/x" not in html and html.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 1
        assert "<script>alert" not in html
        assert ">V1v, FFA-1<" in html and ">number of images<" in html and ">6<" in html
        assert html.index("Settings</strong>") < html.index("the answer")  # where the parameters cell was
        assert ("secret_code_line" in html) == show_code
    assert len(nb.cells) == 4  # the notebook itself keeps both cells


def test_the_index_page_escapes_what_it_shows():
    """A run, summary or error holding markup shows as text: the index is a jinja2 template with autoescaping."""
    entries = [report_execution.Entry("encoding_accuracy", "Encoding accuracy", "ok", 12.4, html="encoding_accuracy.html",
                            notebook="notebooks/encoding_accuracy.ipynb", summary="r 0.5 <b>bold</b> & more",
                            n_figures=3, thumbnail="QUJD"),
               report_execution.Entry("routing", "Routing", "failed", 3.0, error="ValueError: <img src=x onerror=alert(1)>",
                            failed_cell=4)]
    context = {"run": "/runs/<script>alert(1)<\\script>", "data": "/d", "ridge_run": "", "subject": 1}
    page = report.render_index(entries, context, {"manifest": "manifest.json"})
    assert "<script>" not in page and "<img src=x" not in page and "<b>bold" not in page
    assert "<title>tbe report: &lt;script&gt;alert(1)&lt;\\script&gt;</title>" in page
    assert "<h1>Report: &lt;script&gt;alert(1)&lt;\\script&gt;</h1>" in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; more" in page
    assert 'href="encoding_accuracy.html"' in page and 'href="manifest.json"' in page
    assert 'src="data:image/png;base64,QUJD"' in page and "failed at cell [4]: ValueError: &lt;img" in page
    assert "1 of 2 notebooks failed" in page and "ridge_run" not in page  # empty context rows are left out
    assert page.count("<tr id=") == 2


def test_the_index_template_installs_with_the_package():
    """``pip install .`` (not editable) copies analyses/templates: pyproject's package-data names every file there."""
    import fnmatch
    import tomllib

    root = Path(report.__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["analyses"]
    files = [p.relative_to(root / "analyses").as_posix() for p in (root / "analyses" / "templates").rglob("*")
             if p.is_file()]
    assert report.INDEX_TEMPLATE in [Path(f).name for f in files]
    assert all(any(fnmatch.fnmatch(f, pattern) for pattern in patterns) for f in files), (files, patterns)


def test_a_report_records_what_made_it_and_links_its_environment(small_report, trained_run, small_data):
    """manifest.json, environment.yml and requirements.txt next to index.html, which links all three."""
    import importlib.metadata as metadata

    import yaml
    from packaging.requirements import Requirement

    from model.runs import data_fingerprint

    out, _, summary = small_report
    manifest = json.loads((out / "manifest.json").read_text())
    run_manifest = json.loads((trained_run / "manifest.json").read_text())
    assert manifest["kind"] == "report" and manifest["command"]["reproduce"].startswith("tbe report --run")
    assert manifest["run"]["path"] == str(trained_run.resolve()) and manifest["run"]["manifest_digest"]
    assert manifest["run"]["changed_distributions"] == {}, "the same environment trained and rendered"
    assert manifest["seeds"]["run"] == run_manifest["seeds"]
    assert manifest["seeds"]["notebooks"] and all(str(v) == "0" for v in manifest["seeds"]["notebooks"].values())
    assert manifest["feature_cache"] == run_manifest["feature_cache"]
    assert manifest["backbone"] == run_manifest["backbone"]
    assert manifest["data"]["digest"] == data_fingerprint(small_data, 1)["digest"]
    assert manifest["distributions"]["numpy"] == metadata.version("numpy")
    env = yaml.safe_load((out / "environment.yml").read_text())
    assert f"numpy=={metadata.version('numpy')}" in env["dependencies"]
    requirements = [line for line in (out / "requirements.txt").read_text().splitlines()
                    if line and not line.startswith(("#", "--"))]
    assert f"numpy=={metadata.version('numpy')}" in requirements and all(Requirement(r) for r in requirements)
    index = (out / "index.html").read_text()
    for name in ("manifest.json", "environment.yml", "requirements.txt"):
        assert f'href="{name}"' in index


def test_a_failing_notebook_is_marked_and_the_others_complete(small_report, trained_run, small_data, cache_dir,
                                                             tmp_path, capsys):
    """attention_maps gets an unknown ROI; the others run after it (map_checks shows saved tables, no recomputing)."""
    out = tmp_path / "reports" / "broken"
    code = tbe("report", "--run", trained_run, "--data-dir", small_data, "--cache-dir", cache_dir, "--out", out,
               "--notebooks", "attention_maps,encoding_accuracy,map_checks", "-p", "attention_maps.rois", "[NOPE]",
               "-p", "surface_maps", "false", "-p", "n_boot", "0",
               "-p", "checks_dir", small_report[0] / "files" / "map_checks")
    assert code == 1
    assert "attention_maps" in capsys.readouterr().err.strip().splitlines()[-1]
    entries = {e["name"]: e for e in json.loads((out / "report.json").read_text())["entries"]}
    assert entries["attention_maps"]["status"] == "failed"
    # the library's error, naming the notebook's parameter (an OptionError is an InputError)
    assert "OptionError: rois: " in entries["attention_maps"]["error"] and "NOPE" in entries["attention_maps"]["error"]
    assert entries["encoding_accuracy"]["status"] == "ok" and entries["map_checks"]["status"] == "ok"
    assert entries["map_checks"]["n_figures"] >= 2 and "sanity" in entries["map_checks"]["summary"]
    executed = nbformat.read(out / entries["attention_maps"]["notebook"], as_version=4)
    assert [o for o in _outputs(executed) if o.output_type == "error"]  # the executed copy shows where
    assert all((out / f"{name}.html").is_file() for name in entries)
    index = (out / "index.html").read_text()
    assert "1 of 3 notebooks failed" in index
    row = re.search(r'<tr id="attention_maps">.*?</tr>', index, re.S).group(0)
    assert 'class="failed"' in row and "NOPE" in row


def test_a_notebook_runs_by_hand_from_its_demo_defaults(trained_run, baseline_run, small_data, cache_dir, tmp_path):
    """As in Jupyter: opened from notebooks/, nothing injected, demo/ laid out as `tbe demo --out demo` does."""
    import papermill

    demo = tmp_path / "demo"
    (demo / "runs").mkdir(parents=True)
    for link, target in {"data": small_data, "cache": cache_dir, "runs/transformer": trained_run,
                         "runs/ridge": baseline_run}.items():
        (demo / link).symlink_to(target, target_is_directory=True)
    shutil.copytree(NOTEBOOK_DIR, tmp_path / "notebooks")
    papermill.execute_notebook(str(tmp_path / "notebooks" / "attention_maps.ipynb"), str(tmp_path / "executed.ipynb"),
                               kernel_name=report_execution.ensure_kernel(), cwd=str(tmp_path / "notebooks"), progress_bar=False)
    written = demo / "reports" / "files" / "attention_maps"
    assert (written / "attention_lh.png").is_file() and (written / "attention_rh.png").is_file()
    assert (written / "attention.nc").is_file()


# --------------------------------------------------------------------------
# In a browser
# --------------------------------------------------------------------------

def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("TBE_REQUIRE_CHROMIUM"):
        pytest.fail("chromium is required (TBE_REQUIRE_CHROMIUM is set) but not installed")
    pytest.skip("chromium not installed (apt-get install chromium)")


#: Appended to a copy of a page: once loaded, the body records how many of its images decoded.
_COUNT_IMAGES = ('<script>window.addEventListener("load", () => { const all = [...document.images]; '
                 'document.body.setAttribute("data-images", all.filter(i => i.complete && i.naturalWidth > 0).length '
                 '+ "/" + all.length); });</script></body>')


def _headless(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args],
                          capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("page", ["index.html", "encoding_accuracy.html", "attention_maps.html"])
def test_report_renders_in_headless_chromium(small_report, tmp_path, page):
    out, _, _ = small_report
    probe = out / f".probe-{page}"
    probe.write_text((out / page).read_text().replace("</body>", _COUNT_IMAGES))
    try:
        dom = _headless("--dump-dom", probe.as_uri(), profile=tmp_path / "profile").stdout
    finally:
        probe.unlink()
    loaded, total = map(int, re.search(r'data-images="(\d+)/(\d+)"', dom).groups())
    assert total >= 2 and loaded == total, f"{page}: {loaded} of {total} images decoded"
    shot = tmp_path / "page.png"
    _headless(f"--screenshot={shot}", "--window-size=1200,1600", (out / page).as_uri(), profile=tmp_path / "profile")
    pixels = np.asarray(Image.open(shot).convert("RGB"), float)
    assert pixels.shape[:2] == (1600, 1200)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3)[::97], axis=0)) > 50  # text and figures, not blank


# --------------------------------------------------------------------------
# What encoding_accuracy computes (also for real data without test fMRI)
# --------------------------------------------------------------------------

def test_accuracy_without_a_test_reference_falls_back_to_validation_r(trained_run, small_data):
    from analyses import accuracy
    from model.subject import load_subject

    subject = load_subject(small_data, 1, check_images=False)
    scores = accuracy.vertex_scores(trained_run, None, "transformer")
    assert scores.split == "val" and scores.score is None and not scores.pred
    table = accuracy.roi_table([scores], subject, None, ["V1v", "FFA-1"])
    assert set(table.roi) == {"all", "V1v", "FFA-1"} and "r_ceiling" not in table
    v1 = subject.roi_mask("V1v", "lh")
    expected = np.nanmean(np.load(trained_run / "lh_val_corr.npy")[v1])
    assert table.set_index(["hemi", "roi"]).loc[("lh", "V1v"), "r_transformer"] == pytest.approx(expected)
    assert [m[1] for m in accuracy.surface_maps([scores])] == ["transformer_val_r"]


def test_an_encoder_compared_with_itself_differs_by_nothing(trained_run, small_data):
    from analyses import accuracy
    from model.subject import load_subject

    subject = load_subject(small_data, 1, check_images=False)
    reference = accuracy.find_reference(subject)
    a, b = accuracy.run_scores([trained_run, trained_run], reference)
    assert a.name == "transformer (transformer)" and b.name == "transformer (transformer) #2"
    diff = accuracy.bootstrap_difference(a, b, reference, subject, ["V1v"], n_boot=10, seed=0)
    assert np.allclose(diff[["difference", "difference_ci_low", "difference_ci_high"]].to_numpy(), 0) and not diff.excludes_zero.any()
    table = accuracy.roi_table([a], subject, reference, ["V1v"])
    assert table.r_ceiling.between(0, 1).all() and table[f"score_nc_positive_{a.name}"].between(0, 100).all()
    assert table[f"challenge_score_{a.name}"].between(0, 100).all()


def test_the_routing_notebook_labels_as_tbe_routing_does():
    """Its default floors and test sizes are RoutingSettings' (one question, one answer: the report and the CLI agree)."""
    from interpret.routing import RoutingSettings

    declared = report_notebooks.declared_parameters(NOTEBOOK_DIR / "routing.ipynb")
    defaults = RoutingSettings()
    for name, field in {"n_permutations": "n_permutations", "n_boot": "n_bootstrap", "alpha": "alpha",
                        "min_location": "min_location", "min_content": "min_content"}.items():
        assert report_notebooks.parse_value(declared[name]["default"]) == getattr(defaults, field), name
