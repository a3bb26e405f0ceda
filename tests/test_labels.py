"""The labels format for real stimuli (analyses/stimuli.py) and the commands that take it.

An image may have several rows, one per category it shows, each with its
optional mask; what its rows do not list it does not show, unless the file
(or --partial-masks) says its masks are partial. Files are written from the
virtual subject's planted masks, so what the reader gives back is checked
against the truth. The commands' bad inputs are in tests/test_reliability.py.
"""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats

from analyses import stats as S
from analyses.selectivity import SelectivitySettings, selectivity_table, comparable
from analyses.stimuli import StimulusOptions, from_labels_csv, masks_to_grid
from model.errors import InputError
from model.vision import CATEGORIES

from .conftest import tbe
from .labelfiles import SCENE_CATEGORIES, subject_images, true_masks, write_labels

FAST = ["--n-permutations", "99", "--n-bootstrap", "50"]


@pytest.fixture(scope="module")
def tiny_truth(tiny_data):
    paths = subject_images(tiny_data, 12)
    return paths, true_masks(tiny_data, paths)


def _columns(categories):
    return [CATEGORIES.index(c) for c in categories]


# --------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------

def test_several_rows_per_image_give_every_category_and_its_mask(tiny_truth, tmp_path):
    paths, masks = tiny_truth
    stimuli = from_labels_csv(write_labels(tmp_path, paths, masks))
    assert [p.name for p in stimuli.paths] == [p.name for p in paths]  # each image once, in file order
    planted = masks[:, _columns(stimuli.categories)]
    assert (stimuli.membership == planted.any((2, 3))).all()
    assert stimuli.membership.sum(1).max() >= 2, "the tiny subject has images with several categories"
    assert np.isfinite(stimuli.masks).all(), "unlisted categories are known absent: their masks are empty, not unknown"
    assert np.allclose(stimuli.masks, masks_to_grid(planted))
    assert "+" in "".join(stimuli.labels)


def test_partial_masks_leave_unlisted_categories_unknown(tiny_truth, tmp_path):
    paths, masks = tiny_truth
    labels = write_labels(tmp_path, paths, masks)
    everywhere = from_labels_csv(labels, partial_masks=True)
    assert np.isnan(everywhere.masks[~everywhere.membership]).all()
    assert np.isfinite(everywhere.masks[everywhere.membership]).all()
    assert (everywhere.membership == from_labels_csv(labels).membership).all(), "partial changes masks, not labels"
    table = pd.read_csv(labels, keep_default_na=False)
    first = table["image"] == table["image"].iloc[0]
    table["partial"] = np.where(first, "true", "")
    table.to_csv(labels, index=False)
    per_image = from_labels_csv(labels)
    assert np.isnan(per_image.masks[0][~per_image.membership[0]]).all()
    assert np.isfinite(per_image.masks[1:]).all()
    table.loc[table.index[first][0], "partial"] = "false"
    table.to_csv(labels, index=False)
    with pytest.raises(InputError, match="partial is"):
        from_labels_csv(labels)


def test_a_listed_category_without_a_mask_is_unknown(tiny_truth, tmp_path):
    paths, masks = tiny_truth
    stimuli = from_labels_csv(write_labels(tmp_path, paths, masks, with_masks="some"))
    half = len(paths) // 2
    assert np.isfinite(stimuli.masks[:half]).all()
    assert np.isnan(stimuli.masks[half:][stimuli.membership[half:]]).all()
    assert (stimuli.masks[half:][~stimuli.membership[half:]] == 0).all()


def test_old_one_row_files_read_as_before(tiny_truth, tmp_path):
    """One row per image, the mask of its category only: labels as before; other categories' masks now empty."""
    paths, masks = tiny_truth
    stimuli = from_labels_csv(write_labels(tmp_path, paths, masks, rows="one"))
    assert stimuli.single_label and (stimuli.membership.sum(1) == 1).all()
    assert stimuli.labels == [stimuli.categories[c] for c in stimuli.codes]
    assert np.isfinite(stimuli.masks).all() and (stimuli.masks[~stimuli.membership] == 0).all()


def test_categories_option_chooses_categories_and_catches_typos(tiny_truth, tmp_path, caplog):
    paths, masks = tiny_truth
    labels = write_labels(tmp_path, paths, masks)
    with caplog.at_level(logging.WARNING):
        chosen = from_labels_csv(labels, categories=["Faces", "place"])
    assert chosen.categories == ("face", "place") and len(chosen) == len(paths)
    assert (chosen.membership == masks[:, _columns(["face", "place"])].any((2, 3))).all()
    assert "rows of categories outside --categories ignored" in caplog.text
    with pytest.raises(InputError, match="`categories` names 'fcae', which no row of the file uses"):
        from_labels_csv(labels, categories=["face", "fcae"])
    table = pd.read_csv(labels, keep_default_na=False)
    table.loc[0, "category"] = "animal"
    table.to_csv(labels, index=False)
    with pytest.raises(InputError, match="line 2: unknown category 'animal'.*`categories`"):
        from_labels_csv(labels)


def test_an_image_that_shows_none_of_the_categories(tiny_truth, tmp_path):
    paths, masks = tiny_truth
    labels = write_labels(tmp_path, paths, masks, categories=["face", "word"])
    table = pd.read_csv(labels, keep_default_na=False)
    assert (table["category"] == "").any(), "some tiny images show neither"
    stimuli = from_labels_csv(labels)
    none = ~stimuli.membership.any(1)
    assert none.sum() == (table["category"] == "").sum() and (stimuli.masks[none] == 0).all()
    clash = pd.concat([table, table[table["category"] != ""].head(1).assign(category="", mask="")])
    clash.to_csv(labels, index=False)
    with pytest.raises(InputError, match="listed with no category"):
        from_labels_csv(labels)
    table.loc[table["category"] == "", "mask"] = table.loc[table["category"] != "", "mask"].iloc[0]
    table.to_csv(labels, index=False)
    with pytest.raises(InputError, match="a mask without a category"):
        from_labels_csv(labels)


def test_stimulus_options_of_loose_values():
    options = StimulusOptions.of("", "labels.csv", "face, Bodies,,", False)
    assert options.images is None and str(options.labels) == "labels.csv"
    assert options.vocabulary() == ("face", "body")
    assert StimulusOptions.of(categories="Traffic light").vocabulary() == ("traffic_light",)


# --------------------------------------------------------------------------
# Statistics over images that show several categories
# --------------------------------------------------------------------------

def test_membership_contrasts_are_category_against_every_image_without_it():
    rng = np.random.default_rng(3)
    member = rng.random((60, 3)) < 0.4
    x = rng.normal(size=(60, 4)) + 1.5 * member[:, [0]]
    moments = S.category_moments(x, member, 3)
    t, _ = S.welch_t(moments)
    for c in range(3):
        ref = stats.ttest_ind(x[member[:, c]], x[~member[:, c]], equal_var=False)
        assert np.allclose(t[c], ref.statistic)
    perms = S.random_permutations(60, 50, rng)
    null = S.permutation_statistics(x, member, 3, perms)
    assert np.allclose(null[0], S.welch_t(S.category_moments(x, member[perms[0]], 3))[0])
    codes = rng.integers(0, 3, 60)  # one category per image: the same as its one-hot membership
    assert np.allclose(S.permutation_statistics(x, codes, 3, perms),
                       S.permutation_statistics(x, codes[:, None] == np.arange(3), 3, perms))


def test_testable_drops_categories_without_two_images_on_each_side():
    member = np.zeros((8, 3), bool)
    member[:4, 0] = True  # 4 of 8
    member[4:7, 1] = True  # 3 of 8
    member[7, 2] = True  # one image: dropped, and its image with it (it showed nothing else)
    images, categories = comparable(member)
    assert list(categories) == [True, True, False] and not images[7] and images[:7].all()
    only = np.zeros((5, 1), bool)
    only[:3] = True
    assert comparable(only)[1].all(), "one category against images that show none"
    assert not comparable(np.ones((5, 1), bool))[1].any(), "shown by every image: nothing to compare"


def _responses(x: np.ndarray) -> xr.DataArray:
    rois = [f"r{k}" for k in range(x.shape[1])]
    return xr.DataArray(x[:, None, :], dims=("image", "hemi", "roi"),
                        coords={"hemi": ["lh"], "roi": rois, "roi_class": ("roi", ["floc-faces"] * len(rois))})


def test_selectivity_table_leaves_out_images_without_responses():
    """The held-out images of a real subject have no fMRI: they are left out, not every ROI (was KeyError 'p')."""
    rng = np.random.default_rng(0)
    member = np.zeros((40, 2), bool)
    member[::2, 0] = member[1::2, 1] = True
    member[:10, 1] = True  # some images show both
    x = rng.normal(size=(40, 3)) + member[:, [0]]
    x[30:] = np.nan  # no measurement
    table = selectivity_table(_responses(x), member, ["face", "body"], SelectivitySettings(n_permutations=99,
                                                                                           n_bootstrap=50))
    assert len(table) == 6 and (table["n"] + table["n_rest"] == 30).all()
    assert table.loc[table["category"] == "face", "n"].iloc[0] == member[:30, 0].sum()
    x[:] = np.nan
    with pytest.raises(InputError, match="no category has two images"):
        selectivity_table(_responses(x), member, ["face", "body"], SelectivitySettings(n_permutations=9, n_bootstrap=9))


# --------------------------------------------------------------------------
# The commands on a trained run
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_truth(small_data):
    paths = subject_images(small_data, 24)
    return paths, true_masks(small_data, paths)


def test_routing_with_one_category_per_image_tests_content(trained_run, small_truth, cache_dir, tmp_path):
    """The natural file: each image's category and its mask only (was: internal error, cannot reshape size 0)."""
    paths, masks = small_truth
    labels = write_labels(tmp_path / "in", paths, masks, rows="one")
    assert tbe("-q", "routing", "--run", trained_run, "--labels", labels, "--cache-dir", cache_dir,
               "--out", tmp_path / "out", *FAST) == 0
    table = pd.read_csv(tmp_path / "out" / "routing.csv")
    assert table["content_p"].notna().all() and (table["n_images"] == len(paths)).all()


def test_selectivity_and_claims_on_training_and_heldout_images_of_a_real_subject(trained_run, small_data, cache_dir,
                                                                                 tmp_path):
    """Labelled images with fMRI (training split) and without (test split); no ground truth (was: KeyError 'p')."""
    from model.runs import open_run

    val = [open_run(trained_run).subject.train_images[i] for i in open_run(trained_run).val_indices[:16]]
    tests = subject_images(small_data, 16)
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    masks = true_masks(small_data, [*val, *tests])
    shutil.rmtree(data / "subj01" / "ground_truth")
    moved = [data / p.relative_to(small_data) for p in [*val, *tests]]
    labels = write_labels(tmp_path / "in", moved, masks)
    assert tbe("-q", "selectivity", "--run", trained_run, "--data-dir", data, "--labels", labels,
               "--cache-dir", cache_dir, "--out", tmp_path / "sel", *FAST) == 0
    table = pd.read_csv(tmp_path / "sel" / "selectivity.csv")
    measured = table[table["source"] == "measured"]
    assert set(table["source"]) == {"predicted", "measured"}
    assert (measured["n"] + measured["n_rest"] <= len(val)).all(), "only the images with fMRI are measured"
    (tmp_path / "claims.txt").write_text("FFA-1 routes by content\nPPA prefers place\n")
    assert tbe("-q", "claims", "--run", trained_run, "--data-dir", data, "--labels", labels, "--cache-dir", cache_dir,
               "--claims", tmp_path / "claims.txt", "--out", tmp_path / "claims", *FAST) == 0
    claims = pd.read_csv(tmp_path / "claims" / "claims.csv")
    assert set(claims["kind"]) == {"routes", "prefers"} and claims["p"].notna().all()


#: What each command does with each kind of labels file: 0 (computes) or the words of its one error line.
COMBINATIONS = {
    ("none", "one"): {"selectivity": 0, "routing": 0, "claims": "needs category masks"},
    ("none", "several"): {"selectivity": 0, "routing": 0, "claims": "needs category masks"},
    ("some", "one"): {"selectivity": 0, "routing": 0, "claims": "show face with a known mask"},
    ("some", "several"): {"selectivity": 0, "routing": 0, "claims": 0},
    ("all", "one"): {"selectivity": 0, "routing": 0, "claims": 0},
    ("all", "several"): {"selectivity": 0, "routing": 0, "claims": 0},
}


@pytest.mark.parametrize("with_masks, rows", list(COMBINATIONS))
def test_every_combination_computes_or_is_one_line(trained_run, small_truth, cache_dir, tmp_path, capsys, with_masks,
                                                   rows):
    paths, masks = small_truth
    labels = write_labels(tmp_path / "in", paths, masks, rows=rows, with_masks=with_masks)
    (tmp_path / "claims.txt").write_text("FFA-1 prefers face\nFFA-1 attends face\nPPA routes by content\n")
    extra = {"claims": ["--claims", tmp_path / "claims.txt"]}
    for command, expected in COMBINATIONS[(with_masks, rows)].items():
        out = tmp_path / command
        capsys.readouterr()
        code = tbe("-q", command, "--run", trained_run, "--labels", labels, "--cache-dir", cache_dir, "--out", out,
                   *extra.get(command, []), *FAST)
        err = capsys.readouterr().err
        assert "internal error" not in err and "Traceback" not in err, err
        if expected == 0:
            assert code == 0, err
            assert any(out.iterdir())
        else:
            lines = [line for line in err.splitlines() if line.startswith("error:")]
            assert code == 2 and len(lines) == 1 and expected in lines[0], err
            assert not out.exists()
    if COMBINATIONS[(with_masks, rows)]["claims"] == 0:
        table = pd.read_csv(tmp_path / "claims" / "claims.csv")
        routes = table[table["kind"] == "routes"]
        assert routes["p"].notna().all()
        assert (routes["n_images"] == len(paths)).all()
