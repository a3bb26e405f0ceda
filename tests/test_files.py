"""model.files.read_rows: rows of memory-mapped arrays read with plain file reads."""
from __future__ import annotations

import numpy as np
import pytest

from model.files import read_rows


@pytest.fixture
def mapped(tmp_path):
    data = np.random.default_rng(0).standard_normal((50, 7, 3)).astype(np.float16)
    data[4, 2, 1] = np.nan
    np.save(tmp_path / "a.npy", data)
    return data, np.load(tmp_path / "a.npy", mmap_mode="r")


@pytest.mark.parametrize("idx", [
    np.array([3, 4, 5, 9, 2, 3, 49]),  # runs, repeats, unsorted, the last row
    np.random.default_rng(1).permutation(50)[:20],
    slice(10, 30),
    slice(45, 80),  # clipped like numpy
    np.array([], int),
])
def test_read_rows_equals_indexing(mapped, idx):
    data, mm = mapped
    rows = read_rows(mm, idx)
    assert type(rows) is np.ndarray and rows.dtype == data.dtype
    np.testing.assert_array_equal(rows, data[idx])


def test_read_rows_of_views_and_plain_arrays(mapped):
    data, mm = mapped
    np.testing.assert_array_equal(read_rows(mm[10:], np.array([0, 5])), data[[10, 15]])  # a view: its own offset
    np.testing.assert_array_equal(read_rows(data, slice(2, 4)), data[2:4])


def test_read_rows_of_a_truncated_file_is_an_error(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((10, 100), np.float32))
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    with open(tmp_path / "a.npy", "r+b") as f:
        f.truncate(mm.offset + 5 * 400 + 10)
    with pytest.raises(OSError, match="ended early"):
        read_rows(mm, np.array([1, 8]))
