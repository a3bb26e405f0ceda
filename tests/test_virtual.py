"""The virtual subject: deterministic, and its ground truth is what it claims."""
from __future__ import annotations

import json

import numpy as np
import pytest

from model.rois import HEMIS, ROI_CLASSES
from model.subject import load_subject
from model.virtual.stimuli import CATEGORIES, ObjectSpec, SceneSpec, render_scene
from model.truth import load_ground_truth
from model.synthetic import VirtualConfig, write_virtual_subject

SMALL = dict(n_train=24, n_test=6, image_size=64)


def _fingerprint(root):
    s = load_subject(root, 1)
    return (np.asarray(s.fmri["lh"]).tobytes(), s.train_images[3].read_bytes(), s.test_images[-1].name)


def test_deterministic_per_seed(tmp_path):
    a = write_virtual_subject(tmp_path / "a", VirtualConfig(seed=7, **SMALL)).parent
    b = write_virtual_subject(tmp_path / "b", VirtualConfig(seed=7, **SMALL)).parent
    c = write_virtual_subject(tmp_path / "c", VirtualConfig(seed=8, **SMALL)).parent
    assert _fingerprint(a) == _fingerprint(b)
    assert _fingerprint(a)[0] != _fingerprint(c)[0]


def test_refuses_to_overwrite_and_leaves_nothing_half_written(tmp_path):
    from model.errors import InputError

    write_virtual_subject(tmp_path, VirtualConfig(**SMALL))
    with pytest.raises(InputError, match="already exists"):
        write_virtual_subject(tmp_path, VirtualConfig(**SMALL))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subj01"]


def test_every_roi_name_and_class_present(tiny_data):
    s = load_subject(tiny_data, 1)
    for roi_class, names in ROI_CLASSES.items():
        present = set(s.roi_names(roi_class, "lh")) | set(s.roi_names(roi_class, "rh"))
        assert present == set(names), roi_class
    unknown = ~np.any([s.labels[c]["lh"] > 0 for c in ROI_CLASSES if c != "streams"], axis=0)
    assert unknown.sum() > 100, "there must be Unknown vertices between the ROIs"
    assert s.roi_mask("VWFA-1", "lh").sum() > s.roi_mask("VWFA-1", "rh").sum(), "words are left-lateralised"


def test_early_visual_pRFs_follow_the_retinotopic_layout(tiny_data):
    s, truth = load_subject(tiny_data, 1), load_ground_truth(tiny_data / "subj01")
    for hemi, side in (("lh", 1), ("rh", -1)):
        t = truth.tuning[hemi]
        for roi in ("V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4"):
            m = s.roi_mask(roi, hemi)
            assert np.mean(np.sign(t.prf_x[m]) == side) > 0.95, (hemi, roi, "contralateral field")
            upper = not roi.endswith("d")
            assert np.mean((t.prf_y[m] > 0) == upper) > 0.95, (hemi, roi, "ventral sees upper field")
        ecc = np.hypot(t.prf_x, t.prf_y)
        for early, late in (("V1v", "V2v"), ("V2v", "V3v"), ("V3v", "hV4")):
            a, b = s.roi_mask(early, hemi), s.roi_mask(late, hemi)
            assert np.median(t.prf_sigma[a] / ecc[a]) < np.median(t.prf_sigma[b] / ecc[b]), "sizes grow V1 < V2 < V3 < hV4"
        v1 = s.roi_mask("V1v", hemi)
        assert np.corrcoef(ecc[v1], t.prf_sigma[v1])[0, 1] > 0.8, "sizes grow with eccentricity"


def _patch_image(size, cx, cy, radius=0.1):
    """Grey image with a high-contrast checkerboard disc at (cx, cy) (fractions of the side)."""
    yy, xx = np.mgrid[:size, :size] / size
    checker = ((np.floor(xx * 40) + np.floor(yy * 40)) % 2) * 2 - 1
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2
    lum = 0.5 + 0.45 * checker * disc
    return (np.repeat(lum[..., None], 3, -1) * 255).astype(np.uint8)


def test_prf_vertex_prefers_contrast_inside_its_prf(tiny_data):
    truth = load_ground_truth(tiny_data / "subj01")
    size, fov = 112, truth.config["field_of_view_deg"]
    t = truth.tuning["lh"]
    ev = np.flatnonzero((t.kind == "prf") & (np.hypot(t.prf_x, t.prf_y) < 3.5))[::5]
    inside, outside = [], []
    for v in ev:
        cx, cy = 0.5 + t.prf_x[v] / fov, 0.5 - t.prf_y[v] / fov
        images = np.stack([_patch_image(size, cx, cy), _patch_image(size, 1 - cx, 1 - cy)])
        masks = np.zeros((2, len(CATEGORIES), size, size), bool)
        r = truth.responses("lh", images, masks)[:, v]
        inside.append(r[0])
        outside.append(r[1])
    assert np.mean(np.array(inside) > np.array(outside)) > 0.95


def test_category_vertices_prefer_their_category(tiny_data):
    s, truth = load_subject(tiny_data, 1), load_ground_truth(tiny_data / "subj01")
    table = truth.images[truth.images.split == "train"]
    for roi, category in (("FFA-1", "face"), ("EBA", "body"), ("VWFA-1", "word"), ("PPA", "place")):
        has = (table[f"n_{category}"] > 0).to_numpy()
        for hemi in HEMIS:
            m = s.roi_mask(roi, hemi) & (truth.tuning[hemi].kind == "category")
            clean = truth.array("train_clean", hemi)[:, m].mean(1)
            measured = np.asarray(s.fmri[hemi])[:, m].mean(1)
            assert clean[has].mean() > clean[~has].mean() + 0.5, (roi, hemi)
            assert measured[has].mean() > measured[~has].mean(), (roi, hemi, "visible through the noise")
    rendered = [render_scene(SceneSpec("grey", 1, objs), 112) for objs in
                ((ObjectSpec("face", 0.5, 0.5, 0.45, 2),), (ObjectSpec("object", 0.5, 0.5, 0.45, 2),))]
    images = np.stack([r.image for r in rendered])
    masks = np.stack([np.stack([r.masks[c] for c in CATEGORIES]) for r in rendered])
    ffa = s.roi_mask("FFA-1", "lh") & (truth.tuning["lh"].kind == "category")
    face, obj = truth.responses("lh", images, masks)[:, ffa].mean(1)
    assert face > obj + 1.0


def test_null_vertices_are_pure_noise(tiny_data):
    s, truth = load_subject(tiny_data, 1), load_ground_truth(tiny_data / "subj01")
    for hemi in HEMIS:
        null = truth.tuning[hemi].null
        assert 50 < null.sum() < 0.6 * null.size
        assert np.all(truth.array("train_clean", hemi)[:, null] == 0)
        assert np.all(truth.array("noise_ceiling", hemi)[null] == 0)
        for roi in ("mTL-faces", "aTL-faces", "mTL-bodies"):
            assert null[s.roi_mask(roi, hemi)].all(), f"{roi} is a null ROI"
    rois = json.loads((tiny_data / "subj01" / "ground_truth" / "rois.json").read_text())
    assert rois["FFA-1"]["preference"] == "face" and rois["aTL-faces"]["preference"] is None
    assert rois["V1v"]["preference"] == "prf"


def test_roi_mean_explains_less_than_half_of_v1(tiny_data):
    """DESIGN.md section 6: plain r must not be flattered by ROI-wide co-fluctuation."""
    s, truth = load_subject(tiny_data, 1), load_ground_truth(tiny_data / "subj01")
    for hemi in HEMIS:
        for roi in ("V1v", "V1d"):
            x = truth.array("train_clean", hemi)[:, s.roi_mask(roi, hemi)]
            mean = x.mean(1)
            share = np.mean([np.corrcoef(x[:, i], mean)[0, 1] ** 2 for i in range(x.shape[1])])
            assert share < 0.5, (hemi, roi, share)


def test_noise_ceiling_matches_simulated_noise(tiny_data):
    """r(measured, clean)^2 estimates the noise ceiling ncsnr^2 / (ncsnr^2 + 1/3)."""
    s, truth = load_subject(tiny_data, 1), load_ground_truth(tiny_data / "subj01")
    t = truth.tuning["lh"]
    nc = truth.array("noise_ceiling", "lh")
    assert np.allclose(nc, t.ncsnr**2 / (t.ncsnr**2 + 1 / 3), atol=1e-6)
    active = ~t.null
    measured = np.concatenate([np.asarray(s.fmri["lh"]), truth.array("test_fmri", "lh")])[:, active]
    clean = np.concatenate([truth.array("train_clean", "lh"), truth.array("test_clean", "lh")])[:, active]
    mz = (measured - measured.mean(0)) / measured.std(0)
    cz = (clean - clean.mean(0)) / clean.std(0)
    r = (mz * cz).mean(0)
    assert abs(np.mean(r**2) - np.mean(nc[active])) < 0.05
    assert (t.ncsnr[t.kind == "prf"].mean() > t.ncsnr[t.kind == "contrast"].mean()), "EVC has the highest ncsnr"


def test_masks_saved_per_image(tiny_data):
    truth = load_ground_truth(tiny_data / "subj01")
    masks = truth.masks("train")
    table = truth.images[truth.images.split == "train"].reset_index(drop=True)
    assert masks.shape == (60, len(CATEGORIES), 112, 112)
    for c, name in enumerate(CATEGORIES):
        assert np.allclose(masks[:, c].mean((1, 2)), table[f"area_{name}"], atol=1e-4)
