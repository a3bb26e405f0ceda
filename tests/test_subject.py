"""The Algonauts reader on a virtual subject and on hand-made broken subjects."""
from __future__ import annotations

import io
import logging
import pickle
import subprocess
import sys

import numpy as np
import pytest

from model.errors import InputError
from model.rois import HEMIS, ROI_CLASSES
from model.subject import load_subject, read_mapping, train_val_split

from .conftest import TINY


def test_reads_virtual_subject(tiny_data):
    s = load_subject(tiny_data, 1)
    assert s.n_train == TINY.n_train and s.n_test == TINY.n_test
    assert s.train_images[0].name.startswith("train-0001_nsd-")
    for hemi in HEMIS:
        assert isinstance(s.fmri[hemi], np.memmap), "fMRI must be memory-mapped, not copied"
        assert s.fmri[hemi].dtype == np.float32
        assert s.fsaverage_masks[hemi].size == 10242
        assert s.fsaverage_masks[hemi].sum() == s.n_vertices(hemi)
        for roi_class in ROI_CLASSES:
            assert s.labels[roi_class][hemi].shape == (s.n_vertices(hemi),)
    assert s.mappings["floc-faces"] == {0: "Unknown", 1: "OFA", 2: "FFA-1", 3: "FFA-2", 4: "mTL-faces", 5: "aTL-faces"}
    assert s.roi_mask("V1v", "lh").sum() > 20
    assert s.roi_names("floc-words", "lh") == ["OWFA", "VWFA-1", "VWFA-2", "mfs-words", "mTL-words"]
    assert len(s.roi_names("floc-words", "rh")) < 5, "words are left-lateralised"
    assert len(set(s.nsd_ids("train")) | set(s.nsd_ids("test"))) == TINY.n_train + TINY.n_test


def test_unknown_roi_name_is_a_clear_error(tiny_data):
    s = load_subject(tiny_data, 1)
    with pytest.raises(InputError, match="unknown ROI name 'FFA'"):
        s.roi_mask("FFA", "lh")


def test_split_is_seeded_90_10():
    train, val = train_val_split(1000, 0.1, seed=4)
    assert len(val) == 100 and len(train) == 900
    assert not set(train) & set(val)
    again, _ = train_val_split(1000, 0.1, seed=4)
    other, _ = train_val_split(1000, 0.1, seed=5)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


# --------------------------------------------------------------------------
# Broken subjects: one clear line naming the file
# --------------------------------------------------------------------------

def _masks(data):
    return data / "subj01" / "roi_masks"


def _fmri(data, hemi="lh"):
    return data / "subj01" / "training_split" / "training_fmri" / f"{hemi}_training_fmri.npy"


def _expect(data, file_name: str, words: str):
    with pytest.raises(InputError) as info:
        load_subject(data, 1)
    message = str(info.value)
    assert "\n" not in message
    assert file_name in message and words in message, message
    return message


def test_missing_file(data_copy):
    (_masks(data_copy) / "rh.floc-faces_challenge_space.npy").unlink()
    _expect(data_copy, "rh.floc-faces_challenge_space.npy", "missing file")


def test_wrong_roi_shape(data_copy):
    path = _masks(data_copy) / "lh.floc-places_challenge_space.npy"
    np.save(path, np.load(path)[:-3])
    _expect(data_copy, "lh.floc-places_challenge_space.npy", "entries")


def test_fmri_rows_do_not_match_images(data_copy):
    path = _fmri(data_copy, "rh")
    np.save(path, np.load(path)[:-1])
    _expect(data_copy, "rh_training_fmri.npy", "rows but")


def test_all_vertices_mask_does_not_match_fmri(data_copy):
    path = _masks(data_copy) / "lh.all-vertices_fsaverage_space.npy"
    mask = np.load(path)
    mask[np.flatnonzero(mask == 0)[0]] = 1
    np.save(path, mask)
    _expect(data_copy, "lh.all-vertices_fsaverage_space.npy", "challenge vertices")


def test_nan_rows(data_copy):
    path = _fmri(data_copy)
    data = np.load(path)
    data[[7, 9], 3] = np.nan
    np.save(path, data)
    _expect(data_copy, "lh_training_fmri.npy", "first: row 7")


def test_all_nan_vertices_are_reported_not_fatal(data_copy, caplog):
    path = _fmri(data_copy)
    data = np.load(path)
    data[:, [5, 11]] = np.nan
    np.save(path, data)
    with caplog.at_level(logging.WARNING):
        s = load_subject(data_copy, 1)
    assert s.nan_vertices["lh"].tolist() == [5, 11]
    assert "2 lh vertices are NaN" in caplog.text


def test_unreadable_image(data_copy):
    image = sorted((data_copy / "subj01" / "training_split" / "training_images").iterdir())[4]
    image.write_bytes(b"this is not a png")
    _expect(data_copy, image.name, "unreadable image")


def _npy_with_pickle(payload: bytes) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": ()})
    return buf.getvalue() + payload


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused_without_running(data_copy, tmp_path):
    target = tmp_path / "pwned"
    path = _masks(data_copy) / "mapping_floc-faces.npy"
    path.write_bytes(_npy_with_pickle(pickle.dumps({0: "Unknown", 1: _Evil(target)}, protocol=2)))
    message = _expect(data_copy, "mapping_floc-faces.npy", "refused to load")
    assert "system" in message
    assert not target.exists(), "the pickle's code must never run"


def test_mapping_of_wrong_types_is_refused(data_copy):
    path = _masks(data_copy) / "mapping_streams.npy"
    np.save(path, {"early": 1}, allow_pickle=True)
    _expect(data_copy, "mapping_streams.npy", "dict of int -> str")


def test_mapping_reader_accepts_numpy_written_dicts(tmp_path):
    path = tmp_path / "m.npy"
    np.save(path, {0: "Unknown", np.int64(1): "V1v"}, allow_pickle=True)
    assert read_mapping(path) == {0: "Unknown", 1: "V1v"}


def test_cli_prints_one_error_line_and_exits_nonzero(data_copy):
    (_masks(data_copy) / "lh.streams_fsaverage_space.npy").unlink()
    proc = subprocess.run([sys.executable, "-m", "analyses.cli", "features", "--data-dir", str(data_copy),
                           "--no-pretrained", "--cache-dir", str(data_copy / "cache")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "lh.streams_fsaverage_space.npy: missing file" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (data_copy / "cache").exists() or not any((data_copy / "cache").iterdir())
