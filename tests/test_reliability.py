"""Bad input and faults: each is answered with one line naming the file or option, exit status 2,
and nothing half-written left behind.

One test (or parametrized family) per failure class: concurrent writers, non-finite fMRI, a diverging
training, data and feature fingerprints, option validation before any write, stale partial
directories, damaged cache entries, file-system errors (read-only, full, files in the way),
corrupted run files, exit status 2 for every error, and byte-identical weights of identical runs.
Read-only folders are made with chmod, or for root (which ignores permissions) with a read-only bind
mount in a user namespace; a full disk is a file-size limit (RLIMIT_FSIZE: writes fail with EFBIG,
as they fail with ENOSPC on a full disk).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from analyses import cli
from model.backbone import BackboneConfig, build_backbone
from model.encoders import DecoderConfig, RidgeConfig
from model.errors import InputError
from model.features import extract_features
from model.files import FileLock, atomic_directory, save_safetensors
from model.images import read_image
from model.runs import CONFIG, TrainConfig, open_run
from model.subject import load_subject

from .conftest import QUICK_TRAIN, TINY_BACKBONE, tbe
from .labelfiles import subject_images, true_masks, write_labels

ROOT = Path(__file__).resolve().parents[1]


def one_error_line(stderr: str, *words: str) -> str:
    """The single ``error:`` line of a failed command, which must contain ``words``; no traceback."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def fails(capsys, *args, words=()) -> str:
    """Run tbe in-process; it must exit 2 with one error line containing ``words``."""
    capsys.readouterr()
    assert tbe(*args) == 2
    return one_error_line(capsys.readouterr().err, *words)


def tree(path: Path) -> set[str]:
    """Every file and folder under ``path`` (relative), to show that nothing was added."""
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.exists() else set()


def train_args(data, cache, out, *extra) -> list:
    return ["-q", "train", "--data-dir", data, "--cache-dir", cache, "--out", out, *QUICK_TRAIN, *extra]


def subprocess_tbe(*args, prefix=(), limit_bytes=None, timeout=300) -> subprocess.CompletedProcess:
    """Run tbe in a fresh process (for exit codes, kill -9 and file-size limits)."""
    def limit():
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*prefix, sys.executable, "-m", "analyses.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=ROOT, preexec_fn=limit, timeout=timeout)


# --------------------------------------------------------------------------
# Concurrent writers and kill -9
# --------------------------------------------------------------------------

def test_second_writer_is_refused_while_a_job_holds_the_run(small_data, cache_dir, tmp_path, capsys, monkeypatch):
    """A second `tbe train` into the same --out, started while the first trains, fails at once and changes nothing."""
    from model.training import loop as train_module

    out = tmp_path / "run"
    seen = {}
    original = train_module.save_checkpoint

    def save_then_intrude(path, *args):
        original(path, *args)
        if "rc" not in seen:
            before = {p: p.read_bytes() for p in out.iterdir()}
            seen["rc"] = tbe(*train_args(small_data, cache_dir, out, "--seed", "7"))
            seen["err"] = capsys.readouterr().err
            seen["unchanged"] = before == {p: p.read_bytes() for p in out.iterdir()}

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_intrude)
    assert tbe(*train_args(small_data, cache_dir, out, "--epochs", "2")) == 0
    assert seen["rc"] == 2 and seen["unchanged"], "the intruder wrote nothing"
    one_error_line(seen["err"], str(out), "another tbe job", f"process {os.getpid()}")
    assert json.loads((out / CONFIG).read_text())["train"]["seed"] == 0, "the run is the first job's alone"
    assert (out / "metrics.json").is_file()


def test_lock_of_a_dead_job_is_free_and_a_live_one_is_not(tmp_path):
    lock_path = tmp_path / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
                               "from model.files import FileLock; l = FileLock(sys.argv[2]); l.acquire();"
                               "print('held', flush=True); time.sleep(60)", str(ROOT), str(lock_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not FileLock(lock_path).try_acquire(), "held by a live process"
        assert FileLock(lock_path).holder() == str(holder.pid)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    mine = FileLock(lock_path)
    assert mine.try_acquire(), "kill -9 released the lock"
    mine.release()


def test_run_killed_before_its_first_checkpoint_restarts(tiny_data, tmp_path):
    """kill -9 after config.json but before the first checkpoint: a plain re-run and --resume both start over."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "analyses.cli", *train_args(tiny_data, cache, out, "--batch-size", "1", "--epochs", "3")]
    job = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (out / CONFIG).is_file() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert (out / CONFIG).is_file() and not (out / "checkpoint.safetensors").exists(), "killed in the window tested"
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert tbe(*train_args(tiny_data, cache, out, "--batch-size", "16", "--epochs", "3")) == 0, "a plain re-run starts over"
    assert (out / "metrics.json").is_file()
    same_settings = ["--batch-size", "1", "--epochs", "1"]  # the epoch budget may change on resume
    assert tbe(*train_args(tiny_data, cache, copy, *same_settings), "--resume") == 0, "so does --resume"
    assert (copy / "metrics.json").is_file()


# --------------------------------------------------------------------------
# Non-finite data, diverging training
# --------------------------------------------------------------------------

@pytest.mark.parametrize("value, words", [(np.inf, "infinite values"), (-np.inf, "infinite values"),
                                          (3e38, "absurd magnitude")])
def test_non_finite_fmri_is_refused_before_anything_is_written(data_copy, tmp_path, capsys, value, words):
    path = data_copy / "subj01" / "training_split" / "training_fmri" / "rh_training_fmri.npy"
    fmri = np.load(path)
    fmri[4, 17] = value
    np.save(path, fmri)
    out, cache = tmp_path / "run", tmp_path / "cache"
    line = fails(capsys, *train_args(data_copy, cache, out), words=("rh_training_fmri.npy", words, "row 4, vertex 17"))
    assert "1000" in line, "the bound is stated"
    assert not out.exists() and not cache.exists()


def test_diverging_training_stops_with_an_error_and_keeps_nothing(small_data, cache_dir, tmp_path, capsys):
    out = tmp_path / "run"
    fails(capsys, *train_args(small_data, cache_dir, out, "--lr", "1e30", "--clip-max-norm", "0", "--epochs", "3"),
          words=(str(out), "training diverged", "lower learning rate"))
    assert not out.exists(), "no run directory claims a run"


# --------------------------------------------------------------------------
# What a run was trained on
# --------------------------------------------------------------------------

def test_run_used_with_other_data_is_refused(trained_run, small_data, tmp_path, capsys):
    """Same vertex counts and ROIs (as every virtual subject has), other fMRI: scoring and predicting refuse."""
    other = tmp_path / "other"
    shutil.copytree(small_data, other)
    path = other / "subj01" / "training_split" / "training_fmri" / "lh_training_fmri.npy"
    fmri = np.load(path)
    fmri[0] = np.random.default_rng(0).standard_normal(fmri.shape[1]).astype(fmri.dtype)
    np.save(path, fmri)
    with pytest.raises(InputError, match="lh_training_fmri.npy: differs from the data the run"):
        open_run(trained_run, data_dir=other)
    before = tree(trained_run)
    fails(capsys, "score", "--run", trained_run, "--data-dir", other, words=("lh_training_fmri.npy", "differs from"))
    images = small_data / "subj01" / "test_split" / "test_images"
    fails(capsys, "predict", "--run", trained_run, "--data-dir", other, "--images", images, "--out", tmp_path / "p.nc",
          words=("lh_training_fmri.npy",))
    assert tree(trained_run) == before and not (tmp_path / "p.nc").exists()
    mask = other / "subj01" / "roi_masks" / "rh.floc-words_fsaverage_space.npy"
    shutil.copy(small_data / "subj01" / "training_split" / "training_fmri" / "lh_training_fmri.npy", path)
    labels = np.load(mask)
    labels[np.flatnonzero(labels == 0)[:3]] = labels.max()
    np.save(mask, labels)
    with pytest.raises(InputError, match="rh.floc-words_fsaverage_space.npy: differs"):
        open_run(trained_run, data_dir=other)
    assert open_run(trained_run, data_dir=small_data).config.data_fingerprint, "the run records its data"


@pytest.mark.parametrize("edit, words", [
    (lambda c: c["backbone"].update(layer=5), "backbone.layer gives 'block 8 of 12'"),
    (lambda c: c["backbone"].update(feature="q"), "backbone.feature"),
    (lambda c: c["backbone"].update(seed=3), "backbone.weights"),
    (lambda c: c["backbone"].update(name="vit_base_patch14_dinov2.lvd142m"), "backbone.name"),
], ids=["layer", "feature", "weights", "name"])
def test_config_edited_to_other_features_is_refused(trained_run, small_data, tmp_path, capsys, edit, words):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / CONFIG).read_text())
    edit(config)
    (run / CONFIG).write_text(json.dumps(config))
    images = small_data / "subj01" / "test_split" / "test_images"
    fails(capsys, "predict", "--run", run, "--images", images, "--out", tmp_path / "p.nc", words=(str(run / CONFIG), words))
    assert not (tmp_path / "p.nc").exists()


def test_old_runs_without_fingerprints_still_open_but_are_checked_by_shape(trained_run, tmp_path, capsys, small_data):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / CONFIG).read_text())
    for key in ("data_fingerprint", "feature_key"):
        del config[key]
    config["format"] = 1
    (run / CONFIG).write_text(json.dumps(config))
    assert open_run(run).config.feature_key == {}
    config["backbone"]["name"] = "vit_base_patch14_dinov2.lvd142m"  # 768 channels; the encoder was trained on 384
    (run / CONFIG).write_text(json.dumps(config))
    images = small_data / "subj01" / "test_split" / "test_images"
    fails(capsys, "predict", "--run", run, "--images", images, "--out", tmp_path / "p.nc",
          words=(str(run / CONFIG), "x 768", "x 384"))


def test_resume_on_other_data_is_refused(small_data, cache_dir, tmp_path, capsys):
    from model.training import train

    args = cli.build_parser().parse_args([str(a) for a in train_args(small_data, cache_dir, tmp_path / "run")][1:])
    out = tmp_path / "run"
    train(cli.run_config(args), out, cache_dir, stop_after_epoch=1)
    other = tmp_path / "other"
    shutil.copytree(small_data, other)
    path = other / "subj01" / "training_split" / "training_fmri" / "rh_training_fmri.npy"
    np.save(path, np.load(path) * 0.5)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    fails(capsys, *train_args(other, cache_dir, out), "--resume", words=(str(out / CONFIG), "data_fingerprint"))
    assert before == {p.name: p.read_bytes() for p in out.iterdir()}


# --------------------------------------------------------------------------
# Options: checked before anything is written, named by their flag
# --------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value, words", [
    ("--lr", "-1", "positive"), ("--lr", "nan", "positive"), ("--dropout", "2", "[0, 1)"),
    ("--nheads", "5", "must divide --hidden-dim (128)"), ("--hidden-dim", "66", "multiple of 4"),
    ("--lr-drop", "0", ">= 1"), ("--readout-maps", "0", ">= 1"), ("--val-fraction", "0", "between 0 and 1"),
    ("--val-fraction", "0.999", "leaves 0 for training"), ("--val-fraction", "0.001", "need at least 1 and 2"),
    ("--image-size", "-50", "at least one patch"), ("--image-size", "0", "at least one patch"),
    ("--epochs", "0", ">= 1"), ("--batch-size", "0", ">= 1"), ("--ridge-components", "0", ">= 1"),
    ("--enc-output-layer", "13", "1 (last) to 12"), ("--seed", "-1", ">= 0"), ("--weight-decay", "-1", ">= 0"),
])
def test_bad_option_is_refused_before_anything_is_written(small_data, tmp_path, capsys, flag, value, words):
    out, cache = tmp_path / "runs" / "run", tmp_path / "cache"
    fails(capsys, *train_args(small_data, cache, out, flag, value), words=(f"error: {flag}: ", words))
    assert tree(tmp_path) == set(), "neither --out nor the cache was created"


def test_missing_backbone_weights_file_is_refused_before_writing(small_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = [a for a in train_args(small_data, tmp_path / "cache", out) if a != "--no-pretrained"]
    fails(capsys, *args, "--backbone-weights", tmp_path / "none.pth", words=("none.pth", "missing checkpoint file"))
    assert tree(tmp_path) == set()


def test_train_flags_cover_every_config_field():
    """CLI flags cannot drift from the config dataclasses: every field has a flag, defaults agree, values land."""
    import argparse

    train_parser = argparse.ArgumentParser()
    cli.add_train_args(train_parser)
    flags = {s for action in train_parser._actions for s in action.option_strings}
    parser = cli.build_parser()
    sections = {"backbone": BackboneConfig, "decoder": DecoderConfig, "train": TrainConfig, "ridge": RidgeConfig}
    for section, cls in sections.items():
        for f in dataclasses.fields(cls):
            assert f"{section}.{f.name}" in cli.config_flags(), f"{section}.{f.name} has no flag"
    for name in ("data_dir", "subj", "readout_res", "encoder_arch"):
        assert name in cli.config_flags()
    assert set(cli.config_flags().values()) <= flags, set(cli.config_flags().values()) - flags
    base = ["train", "--data-dir", "d", "--out", "o"]
    config = cli.run_config(parser.parse_args(base))
    assert (config.train, config.decoder, config.ridge) == (TrainConfig(), DecoderConfig(), RidgeConfig())
    changed = {"--epochs": "7", "--lr": "0.25", "--hidden-dim": "96", "--readout-maps": "3", "--ridge-components": "17",
               "--ridge-pool": "2", "--val-fraction": "0.3", "--image-size": "98", "--backbone-seed": "4"}
    config = cli.run_config(parser.parse_args(base + [x for kv in changed.items() for x in kv]))
    assert (config.train.epochs, config.train.lr, config.train.val_fraction) == (7, 0.25, 0.3)
    assert (config.decoder.hidden_dim, config.decoder.readout_maps) == (96, 3)
    assert (config.ridge.n_components, config.ridge.pool) == (17, 2)
    assert (config.backbone.image_size, config.backbone.seed) == (98, 4)


def test_wrong_config_json_is_blamed_on_the_file_not_a_flag(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / CONFIG).read_text())
    config["encoder_arch"] = "transfomer"
    (run / CONFIG).write_text(json.dumps(config))
    line = fails(capsys, "score", "--run", run, words=(str(run / CONFIG), "encoder_arch", "transfomer"))
    assert "--encoder-arch" not in line
    (run / CONFIG).write_text("{not json")
    fails(capsys, "score", "--run", run, words=(str(run / CONFIG), "unreadable run configuration"))
    assert not (run / "test_scores.json").exists()


# --------------------------------------------------------------------------
# The feature cache: stale partials, damaged entries, a full disk
# --------------------------------------------------------------------------

def _images(tiny_data, n=8):
    return list(load_subject(tiny_data, 1).train_images[:n])


def _backbone():
    return build_backbone(TINY_BACKBONE, native_size=112)


def test_stale_partials_of_dead_writers_are_removed_live_ones_kept(tiny_data, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from model.files import atomic_directory\n"
            "with atomic_directory(sys.argv[2]) as tmp:\n    print(tmp, flush=True); time.sleep(60)")
    writer = subprocess.Popen([sys.executable, "-c", code, str(ROOT), str(cache / "entry")], stdout=subprocess.PIPE, text=True)
    dead = Path(writer.stdout.readline().strip())
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert dead.is_dir(), "kill -9 leaves the partial directory"
    with atomic_directory(cache / "other") as live:  # a live writer, e.g. another DDP rank
        (live / "features.npy").write_bytes(b"x")
        extract_features(_backbone(), _images(tiny_data, 4), cache)
        assert not dead.exists(), "the dead writer's leftover is removed"
        assert live.is_dir(), "the live writer's directory is kept"
    assert (cache / "other").is_dir()
    assert not list(cache.glob(".*partial*"))


@pytest.mark.parametrize("damage", ["truncate", "zero", "meta"])
def test_damaged_cache_entry_is_rebuilt_with_a_warning(tiny_data, tmp_path, caplog, damage):
    images = _images(tiny_data)
    first = extract_features(_backbone(), images, tmp_path)
    original = np.array(first.features)
    path = first.path / "features.npy"
    del first
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-1000])
    elif damage == "zero":
        raw = bytearray(path.read_bytes())
        header = len(raw) - original.nbytes
        raw[header:] = bytes(len(raw) - header)
        path.write_bytes(bytes(raw))
    else:
        (path.parent / "meta.json").write_text("{")
    with caplog.at_level(logging.WARNING):
        again = extract_features(_backbone(), images, tmp_path)
    assert "damaged feature cache entry" in caplog.text and "rebuilding" in caplog.text
    assert np.array_equal(np.array(again.features), original)
    assert [p.name for p in tmp_path.iterdir()] == [again.path.name], "no damaged or partial leftovers"


def test_full_disk_while_writing_features_is_one_line_and_leaves_nothing(tiny_data, tmp_path):
    """No SIGBUS (features are never written through a memory map): the write fails cleanly."""
    cache = tmp_path / "cache"
    proc = subprocess_tbe("features", "--data-dir", tiny_data, "--no-pretrained", "--backbone", TINY_BACKBONE.name,
                          "--enc-output-layer", TINY_BACKBONE.layer, "--feature", "tokens", "--cache-dir", cache,
                          limit_bytes=200_000)
    assert proc.returncode == 2, proc.stderr[-2000:]
    one_error_line(proc.stderr, str(cache), "no room for the feature cache")
    assert tree(cache) == set()


# --------------------------------------------------------------------------
# File-system errors
# --------------------------------------------------------------------------

@pytest.fixture
def read_only(tmp_path):
    """A read-only folder, and the command prefix that makes it read-only for the command."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder, []
        folder.chmod(0o755)
        return
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode:
        pytest.skip("root without user namespaces: cannot make a folder read-only for root here")
    yield folder, ["unshare", "-rm", "sh", "-c", 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"',
                   str(folder)]


def test_read_only_out_is_one_line_before_any_work(read_only, trained_run, small_data, cache_dir):
    folder, prefix = read_only
    images = small_data / "subj01" / "test_split" / "test_images"
    fresh_cache = folder.parent / "fresh-cache"
    proc = subprocess_tbe("predict", "--run", trained_run, "--images", images, "--out", folder / "p.nc",
                          "--cache-dir", fresh_cache, prefix=prefix)
    assert proc.returncode == 2, proc.stderr[-2000:]
    one_error_line(proc.stderr, str(folder / "p.nc"), "cannot write")
    assert not fresh_cache.exists(), "refused before computing any feature"
    proc = subprocess_tbe(*train_args(small_data, cache_dir, folder / "run"), prefix=prefix)
    assert proc.returncode == 2, proc.stderr[-2000:]
    one_error_line(proc.stderr, str(folder / "run"), "cannot write")
    assert tree(folder) == set()


def test_paths_in_the_way_are_one_line(small_data, cache_dir, trained_run, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    fails(capsys, *train_args(small_data, cache_dir, blocker / "run"), words=(str(blocker / "run"), "which is a file"))
    fails(capsys, *train_args(small_data, blocker, tmp_path / "run"), words=(str(blocker), "is a file, not a folder"))
    images = small_data / "subj01" / "test_split" / "test_images"
    fails(capsys, "predict", "--run", trained_run, "--images", images, "--out", tmp_path / "p.csv", "--cache-dir",
          tmp_path / "cache", words=("p.csv", "unknown output format"))
    assert tree(tmp_path) == {"file"}, "no run directory, no cache, no output"


def test_full_disk_for_the_checkpoint_is_one_line_and_leaves_nothing(trained_run, small_data, cache_dir, tmp_path):
    """The file-size limit lets model.safetensors through but not the (three times larger) checkpoint."""
    out = tmp_path / "run"
    size = (trained_run / "model.safetensors").stat().st_size
    proc = subprocess_tbe(*train_args(small_data, cache_dir, out, "--epochs", "1"), limit_bytes=2 * size)
    assert proc.returncode == 2, proc.stderr[-2000:]
    one_error_line(proc.stderr, str(out / "checkpoint.safetensors"), "no room to write it")
    assert not out.exists()


# --------------------------------------------------------------------------
# Corrupted run files
# --------------------------------------------------------------------------

def test_corrupted_run_files_are_one_line_naming_the_file(trained_run, small_data, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    pred = run / "rh_pred_test.npy"
    pred.write_bytes(pred.read_bytes()[:-4000])
    fails(capsys, "score", "--run", run, words=(str(pred), "truncated"))
    assert not (run / "test_scores.json").exists()
    (run / "val_indices.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputError, match="val_indices.npy: truncated or corrupt"):
        open_run(run).val_indices
    np.save(run / "val_indices.npy", np.array([0, 9999]))
    with pytest.raises(InputError, match="val_indices.npy: validation indices must be distinct rows"):
        open_run(run).val_indices


def test_pickled_values_for_surface_are_refused_unexecuted(small_data, tmp_path, capsys):
    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {target}",))

    for hemi in ("lh", "rh"):
        (tmp_path / f"{hemi}.npy").write_bytes(pickle.dumps(Evil()))
    fails(capsys, "surface", "--data-dir", small_data, "--values", f"{tmp_path}/{{hemi}}.npy", "--out", tmp_path / "map",
          words=("lh.npy", "pickle", "refused"))
    np.save(tmp_path / "lh.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    fails(capsys, "surface", "--data-dir", small_data, "--values", f"{tmp_path}/{{hemi}}.npy", "--out", tmp_path / "map",
          words=("lh.npy", "pickled Python objects", "refused"))
    assert not target.exists() and not list(tmp_path.glob("map*"))


# --------------------------------------------------------------------------
# Bad and odd labels files: every command that takes labels reads them alike
# --------------------------------------------------------------------------

def _labels_case(case: str, small_data: Path, folder: Path) -> Path:
    """A labels file of the small subject's test images with one defect (``case``), in ``folder``."""
    paths = subject_images(small_data, 12)
    masks = true_masks(small_data, paths)
    if case == "another subject":  # the same images, in a second subject's folder of the Algonauts layout
        other = folder / "data" / "subj02"
        (other / "roi_masks").mkdir(parents=True)
        (other / "test_split" / "test_images").mkdir(parents=True)
        paths = [Path(shutil.copy(p, other / "test_split" / "test_images")) for p in paths]
    labels = write_labels(folder, paths, masks)
    table = pd.read_csv(labels, keep_default_na=False)
    if case == "empty file":
        labels.write_text("")
    elif case == "header only":
        labels.write_text("image,category,mask\n")
    elif case == "one category only":
        table.drop_duplicates("image").assign(category="face", mask="").to_csv(labels, index=False)
    elif case == "an image listed twice with one category":
        pd.concat([table, table.iloc[[3]]]).to_csv(labels, index=False)
    elif case == "a category with one image":
        one = table.drop_duplicates("image").assign(category="place", mask="")
        one.iloc[0, one.columns.get_loc("category")] = "face"
        one.to_csv(labels, index=False)
    elif case in ("a mask of the wrong size", "a mask that is all zero"):
        mask = folder / table["mask"].iloc[2]
        image = Image.open(mask)
        blank = np.zeros(image.size[::-1], np.uint8)
        (image.resize((50, 50)) if case == "a mask of the wrong size" else Image.fromarray(blank)).save(mask)
    return labels


LABEL_CASES = {
    "empty file": ("is empty",),
    "header only": ("has a header but no rows",),
    "one category only": ("only one category ('face'), shown by every image",),
    "an image listed twice with one category": ("is listed twice with category", "(first on line 5)"),
    "a category with one image": ("category 'face' has 1 image(s)",),
    "a mask of the wrong size": ("line 4:", "is 50x50 px, its image 112x112 px"),
    "a mask that is all zero": ("line 4:", "marks no pixel"),
    "another subject": ("line 2: image", "is subject 2's", "the run is of subject 1"),
}


@pytest.mark.parametrize("case", list(LABEL_CASES))
def test_bad_labels_files_are_one_line_in_every_command(trained_run, small_data, tmp_path, capsys, case):
    """Refused by selectivity, routing and claims alike: exit 2, one line naming the file, nothing written."""
    labels = _labels_case(case, small_data, tmp_path / "in")
    (tmp_path / "claims.txt").write_text("FFA-1 prefers face\n")
    before = tree(tmp_path)
    for command, extra in (("selectivity", ()), ("routing", ()), ("claims", ("--claims", tmp_path / "claims.txt"))):
        line = fails(capsys, command, "--run", trained_run, "--labels", labels, "--out", tmp_path / command, *extra,
                     words=(str(labels), *LABEL_CASES[case]))
        assert "internal error" not in line
        assert tree(tmp_path) == before, f"{command} wrote something"


LABELS_IMPORT_CASES = {
    "no stim-info row": ("nsd_stim_info.csv: has no row for nsdId",),
    "not shown to the subject": ("was not shown to subject 1: is --subj right?",),
    "COCO image missing": ("instances.json: has no image", "pass every split's instances file to --coco"),
    "bad crop box": ("nsd_stim_info.csv: line 3: cropBox", "four numbers"),
    "COCO file not JSON": ("instances.json: not a readable JSON file",),
    "unknown category": ("--categories: 'animal' is no COCO category or supercategory",),
    "not a csv": ("use a .csv file name",),
}


@pytest.mark.parametrize("case", list(LABELS_IMPORT_CASES))
def test_bad_coco_inputs_of_tbe_labels_are_one_line(tiny_data, tmp_path, capsys, case):
    truth = load_subject(tiny_data, 1).truth
    coco, info = tmp_path / "instances.json", tmp_path / "nsd_stim_info.csv"
    shutil.copy(truth.coco_instances, coco)
    table = pd.read_csv(truth.nsd_stim_info, index_col=0)
    extra, out = [], tmp_path / "out" / "labels.csv"
    if case == "no stim-info row":
        table = table.drop(table.index[5])
    elif case == "not shown to the subject":
        table.loc[table.index[5], "subject1"] = 0
    elif case == "COCO image missing":
        data = json.loads(coco.read_text())
        data["images"] = data["images"][1:]
        coco.write_text(json.dumps(data))
    elif case == "bad crop box":
        table["cropBox"] = table["cropBox"].astype(object)
        table.loc[table.index[1], "cropBox"] = "(0.1, 0.2)"
    elif case == "COCO file not JSON":
        coco.write_text("{\"images\": [")
    elif case == "unknown category":
        extra = ["--categories", "face,animal"]
    elif case == "not a csv":
        out = tmp_path / "out" / "labels.txt"
    table.to_csv(info)
    (tmp_path / "out").mkdir()
    fails(capsys, "labels", "--coco", coco, "--stim-info", info, "--data-dir", tiny_data, "--out", out, *extra,
          words=LABELS_IMPORT_CASES[case])
    assert tree(tmp_path / "out") == set(), "nothing written, not even a partial masks folder"


# --------------------------------------------------------------------------
# Exit status 2 for every error; internal errors say how to see the traceback
# --------------------------------------------------------------------------

def test_every_error_exits_2_with_one_line(tmp_path, capsys, monkeypatch):
    proc = subprocess_tbe("score", "--run", tmp_path / "nowhere")
    assert proc.returncode == 2
    one_error_line(proc.stderr, "config.json", "not a run directory")

    def broken(args):
        raise RuntimeError("something unexpected\non two lines")

    def os_error(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "locked.npy"))

    name, add, _ = cli.COMMANDS["score"]
    for handler, words in ((broken, ("internal error: RuntimeError: something unexpected on two lines", "--traceback")),
                           (os_error, (str(tmp_path / "locked.npy"), "Permission denied"))):
        monkeypatch.setitem(cli.COMMANDS, "score", (name, add, handler))
        fails(capsys, "score", "--run", tmp_path, words=words)
    monkeypatch.setitem(cli.COMMANDS, "score", (name, add, broken))
    assert tbe("--traceback", "score", "--run", tmp_path) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: internal error")
    proc = subprocess.run([sys.executable, "main.py", "--data_dir", str(tmp_path / "none"), "--output_path", f"{tmp_path}/",
                           "--no-pretrained"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    one_error_line(proc.stderr, "subj01", "missing subject directory")


# --------------------------------------------------------------------------
# Images, weights files, determinism
# --------------------------------------------------------------------------

def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    rgb = read_image(tmp_path / "ramp16.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (64, 64, 3)
    assert np.array_equal(rgb[..., 0], np.rint(ramp / 257).astype(np.uint8))
    assert 120 < rgb.mean() < 135, "mid-grey on average, not white"


def test_corrupt_pth_is_explained_in_our_words(tmp_path):
    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {target}",))

    torch.save({"w": Evil()}, tmp_path / "evil.pth")
    (tmp_path / "garbage.pth").write_bytes(os.urandom(600))
    torch.save({"w": torch.zeros(9)}, tmp_path / "whole.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:200])
    for name in ("evil.pth", "garbage.pth", "cut.pth"):
        with pytest.raises(InputError) as info:
            build_backbone(BackboneConfig("vit_small_patch14_dinov2.lvd142m", str(tmp_path / name)), 112)
        message = str(info.value)
        assert message.startswith(str(tmp_path / name)) and "unreadable checkpoint" in message
        assert "weights_only" not in message and "Re-running" not in message and "\n" not in message
    assert not target.exists()


def test_safetensors_files_are_byte_identical_for_identical_content(tmp_path):
    tensors = {"b": torch.arange(6.0), "a": torch.ones(2, 3, dtype=torch.float64)}
    metadata = {f"key{i}": f"value {i} é" for i in range(8)}
    digests = set()
    for i in range(6):
        save_safetensors(tmp_path / f"{i}.safetensors", tensors, metadata)
        digests.add(hashlib.sha256((tmp_path / f"{i}.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1
    from safetensors import safe_open

    with safe_open(str(tmp_path / "0.safetensors"), "pt") as f:
        assert f.metadata() == metadata and torch.equal(f.get_tensor("a"), tensors["a"])


def test_identical_runs_write_identical_files(small_data, cache_dir, tmp_path):
    """Same seed, same thread count: the weights and predictions have equal checksums.

    (checkpoint.safetensors and metrics.json also record how long each epoch took.)
    """
    for name in ("a", "b"):
        assert tbe(*train_args(small_data, cache_dir, tmp_path / name, "--epochs", "2")) == 0
    for file in ("model.safetensors", "lh_pred_test.npy", "rh_val_corr.npy", "val_indices.npy"):
        a, b = ((tmp_path / r / file).read_bytes() for r in ("a", "b"))
        assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest(), file
