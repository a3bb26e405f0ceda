"""COCO / NSD labels: ``tbe labels`` gives back the virtual subject's planted masks through its COCO files.

The virtual subject writes, for its own images, a COCO instances file (each
object's visible pixels in an invented larger "photograph") and an NSD
stim-info file whose crop boxes cut the photograph's margins away
(model/virtual/coco.py). The importer must find the planted masks again with
Dice 1.0, and a crop one photograph pixel off must not.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analyses.stimuli import from_labels_csv, masks_to_grid
from analyses.stats import dice
from model.coco import decode, encode, read_instances, rle_counts
from model.nsd import crop_mask, crop_region, format_crop_box, parse_crop_box, read_stim_info
from model.subject import load_subject
from model.vision import CATEGORIES, OBJECT_CATEGORIES

from .conftest import tbe


@pytest.fixture(scope="module")
def subject(tiny_data):
    return load_subject(tiny_data, 1)


def import_labels(tiny_data, subject, out, *extra, stim_info=None):
    truth = subject.truth
    assert tbe("-q", "labels", "--coco", truth.coco_instances, "--stim-info", stim_info or truth.nsd_stim_info,
               "--data-dir", tiny_data, "--subj", "1", "--out", out, *extra) == 0
    return pd.read_csv(out, keep_default_na=False)


def imported_masks(table, folder, subject, categories) -> tuple[np.ndarray, np.ndarray]:
    """The importer's masks ``(image, category, S, S)`` (empty where not listed) and the planted ones, all images."""
    paths = [*subject.train_images, *subject.test_images]
    planted = np.concatenate([subject.truth.masks("train"), subject.truth.masks("test")])
    side = planted.shape[-1]
    got = np.zeros((len(paths), len(categories), side, side), bool)
    index = {p.name: i for i, p in enumerate(paths)}
    for row in table.itertuples():
        if row.category:
            got[index[row.image.rsplit("/", 1)[-1]], categories.index(row.category)] = (
                np.asarray(Image.open(folder / row.mask)) > 0)
    return got, planted


def test_the_virtual_subject_writes_nsd_style_coco_files(subject):
    data = json.loads(subject.truth.coco_instances.read_text())
    segs = [a["segmentation"] for a in data["annotations"]]
    assert any(isinstance(s, list) for s in segs), "polygons"
    assert any(isinstance(s, dict) and isinstance(s["counts"], str) for s in segs), "compressed RLE"
    assert any(isinstance(s, dict) and isinstance(s["counts"], list) for s in segs), "uncompressed RLE (crowds)"
    info = read_stim_info(subject.truth.nsd_stim_info)
    assert {"cocoId", "cocoSplit", "cropBox", "nsdId", "shared1000", "subject1", "subject1_rep0"} <= set(
        pd.read_csv(subject.truth.nsd_stim_info, nrows=1).columns)
    assert set(info.index) == set(subject.nsd_ids("train")) | set(subject.nsd_ids("test"))
    crops = np.array(info["cropBox"].tolist())
    assert ((crops == 0).sum(1) == 2).all() and (crops.sum(1) > 0).all(), "NSD cut the longer side only, never nothing"
    photos = {i["id"]: (i["width"], i["height"]) for i in data["images"]}
    for nsd, row in info.iterrows():
        x0, y0, x1, y1 = crop_region(row["cropBox"], *photos[row["cocoId"]])
        assert np.isclose(x1 - x0, y1 - y0), "the kept region is square"


def test_labels_give_back_the_planted_masks(tiny_data, subject, tmp_path):
    table = import_labels(tiny_data, subject, tmp_path / "labels.csv")
    got, planted = imported_masks(table, tmp_path, subject, list(OBJECT_CATEGORIES))
    planted = planted[:, [CATEGORIES.index(c) for c in OBJECT_CATEGORIES]]
    assert (got.any((2, 3)) == planted.any((2, 3))).all(), "listed exactly the categories each image shows"
    shown = planted.any((2, 3))
    scores = [dice(got[i, c], planted[i, c]) for i, c in zip(*np.nonzero(shown))]
    assert len(scores) > 50 and min(scores) == 1.0
    assert (table["category"] == "").sum() == (~shown.any(1)).sum(), "an image showing none gets an empty row"
    # objects that lie only in the cut-away margins are in the COCO file but not in the labels
    instances = read_instances([subject.truth.coco_instances])
    info = read_stim_info(subject.truth.nsd_stim_info)
    nsd = np.concatenate([subject.nsd_ids("train"), subject.nsd_ids("test")])
    annotated = np.array([[any(instances.categories[a["category_id"]]["name"] == c
                               for a in instances.annotations.get(int(info.loc[n, "cocoId"]), []))
                           for c in OBJECT_CATEGORIES] for n in nsd])
    assert (annotated & ~shown).sum() >= 3
    # and what the importer wrote is what the labels reader reads
    stimuli = from_labels_csv(tmp_path / "labels.csv", categories=OBJECT_CATEGORIES)
    order = [list(OBJECT_CATEGORIES).index(c) for c in stimuli.categories]
    assert (stimuli.membership == shown[:, order]).all()
    assert np.allclose(stimuli.masks, masks_to_grid(planted[:, order]))


@pytest.mark.parametrize("shift", [1, -1])
def test_a_crop_one_pixel_off_loses_the_planted_masks(tiny_data, subject, tmp_path, shift):
    """The crop box moved by one photograph pixel (right or down; left or up) breaks every mask: the test can fail."""
    instances = read_instances([subject.truth.coco_instances])
    raw = pd.read_csv(subject.truth.nsd_stim_info, index_col=0)
    boxes = []
    for coco_id, box in zip(raw["cocoId"], raw["cropBox"]):
        top, bottom, left, right = parse_crop_box(box)
        w, h = instances.images[int(coco_id)]["width"], instances.images[int(coco_id)]["height"]
        if left + right > 0:  # a wide photograph, cut left and right
            boxes.append((top, bottom, left + shift / w, right - shift / w))
        else:
            boxes.append((top + shift / h, bottom - shift / h, left, right))
    raw["cropBox"] = [format_crop_box(b) for b in boxes]
    moved = tmp_path / "moved.csv"
    raw.to_csv(moved)
    table = import_labels(tiny_data, subject, tmp_path / "labels.csv", stim_info=moved)
    got, planted = imported_masks(table, tmp_path, subject, list(OBJECT_CATEGORIES))
    planted = planted[:, [CATEGORIES.index(c) for c in OBJECT_CATEGORIES]]
    scores = np.array([dice(got[i, c], planted[i, c]) for i, c in zip(*np.nonzero(planted.any((2, 3))))])
    assert (scores < 1).all() and scores.mean() < 0.99, scores


def test_supercategories_and_named_labels(tiny_data, subject, tmp_path):
    table = import_labels(tiny_data, subject, tmp_path / "super.csv", "--supercategories")
    assert set(table["category"]) - {""} == {"person", "text", "object"}
    got, planted = imported_masks(table, tmp_path, subject, ["person", "text", "object"])
    person = planted[:, CATEGORIES.index("face")] | planted[:, CATEGORIES.index("body")]
    assert (got[:, 0] == person).all() and (got[:, 1] == planted[:, CATEGORIES.index("word")]).all()
    table = import_labels(tiny_data, subject, tmp_path / "named.csv", "--categories", "face,text")
    got, _ = imported_masks(table, tmp_path, subject, ["face", "text"])
    assert (got[:, 0] == planted[:, CATEGORIES.index("face")]).all() and (got[:, 1] == planted[:, 2]).all()


# --------------------------------------------------------------------------
# The conventions, on known answers
# --------------------------------------------------------------------------

def test_crop_box_convention_on_an_nsd_sized_photograph():
    """640 x 480 cropped to its central 480 x 480 (cropBox (0, 0, 0.125, 0.125)) and resampled to 425 px."""
    crop = parse_crop_box("(0, 0, 0.125, 0.125)")
    assert crop_region(crop, 640, 480) == (80.0, 0.0, 560.0, 480.0)
    mask = np.zeros((480, 640), bool)
    mask[:, :320] = True  # the left half of the kept square: 240 of its 480 columns
    out = crop_mask(mask, crop, (425, 425))
    # NSD column j covers x in [80 + 480 j / 425, 80 + 480 (j + 1) / 425): column 212 is 56 % inside, 213 not at all
    assert out[:, :213].all() and not out[:, 213:].any()
    assert crop_mask(mask[:, 80:560], (0.0, 0.0, 0.0, 0.0), (480, 480)).sum() == 240 * 480  # no crop, no resize: same


@pytest.mark.parametrize("text, ok", [("(0, 0, 0.125, 0.125)", True), ("[0.1,0.2,0,0]", True), ("0 0 0 0", False),
                                      ("(0.6, 0.5, 0, 0)", False), ("(0, 0, 1, 0)", False), ("(a, b, c, d)", False)])
def test_crop_box_parsing(text, ok):
    if ok:
        assert parse_crop_box(format_crop_box(parse_crop_box(text))) == parse_crop_box(text)
    else:
        with pytest.raises(ValueError, match="cropBox"):
            parse_crop_box(text)


def test_every_segmentation_kind_decodes_exactly():
    rng = np.random.default_rng(4)
    for _ in range(20):
        h, w = rng.integers(2, 40, size=2)
        mask = rng.random((h, w)) < rng.random()
        mask[0, 0] = True
        for how in ("polygons", "rle", "compressed"):
            assert (decode({"id": 1, "image_id": 1, **encode(mask, how)}, h, w) == mask).all(), how
    assert rle_counts(np.array([[1, 0], [1, 1]], bool)) == [0, 2, 1, 1]  # column-major, starting with zeros
