"""Routing measures (interpret/routing.py), calibrated on planted attention maps.

Planted maps are softmaxes over an 8x8 token grid of: a fixed window
(location), the image's own face mask (content), both, or nothing (noise),
each plus independent token noise. Masks are 3x3 blocks at uniformly random
positions on the torus, so a content map has no fixed window at all.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from interpret import routing as R

from .conftest import tbe

GRID = (8, 8)
FAST = R.RoutingSettings(n_permutations=199, n_bootstrap=200)


def block(rng: np.random.Generator, n: int, size: int = 3) -> np.ndarray:
    """``(n, token)`` 0/1 masks of a size x size block at a random place on the torus."""
    out = np.zeros((n, *GRID))
    for i in range(n):
        y, x = rng.integers(0, GRID[0]), rng.integers(0, GRID[1])
        out[i][np.ix_((y + np.arange(size)) % GRID[0], (x + np.arange(size)) % GRID[1])] = 1
    return out.reshape(n, -1)


def planted(kinds: list[str], n: int, rng: np.random.Generator, gain: float = 2.5, noise: float = 0.6):
    """Attention ``(image, query, token)`` of queries of the planted ``kinds`` and the masks ``(image, 2, token)``."""
    masks = np.stack([block(rng, n), block(rng, n)], 1)  # face, word
    window = np.zeros(GRID)
    window[1:4, 5:8] = 1  # the fixed window, upper right
    logits = []
    for kind in kinds:
        part = noise * rng.standard_normal((n, GRID[0] * GRID[1]))
        if kind in ("location", "both"):
            part = part + gain * window.ravel()
        if kind in ("content", "both"):
            part = part + gain * masks[:, 0]
        logits.append(part)
    logits = np.stack(logits, 1)
    att = np.exp(logits - logits.max(-1, keepdims=True))
    return att / att.sum(-1, keepdims=True), masks


def test_location_index_is_one_for_a_fixed_map_and_zero_mean_for_independent_maps():
    rng = np.random.default_rng(0)
    fixed = np.broadcast_to(rng.random(64), (30, 1, 64))
    assert R.location_index(fixed) == pytest.approx([1.0])
    noise = np.exp(rng.standard_normal((400, 1, 64)))
    assert abs(R.location_index(noise)[0]) < 0.02


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_maps_get_their_labels(seed):
    rng = np.random.default_rng(seed)
    kinds = ["location", "content", "both", "neither"]
    att, masks = planted(kinds, 60, rng)
    table = R.routing_table(att, GRID, R.token_positions_deg(GRID, 14, 112), masks, ("face", "word"), FAST, seed)
    assert list(table["routing"]) == kinds
    assert list(table["content_category"][1:3]) == ["face", "face"]
    loc = table.set_index(table["routing"])
    assert loc.location_index["location"] > 0.5 > loc.location_index["content"]
    assert loc.location_ci_low["location"] > loc.location_ci_high["content"]
    assert loc.content_index["content"] > loc.content_index["location"]
    # the fixed window is in the upper right of the field
    assert loc.x_deg["location"] > 0 and loc.y_deg["location"] > 0


def test_bootstrap_interval_covers_the_index():
    att, _ = planted(["both", "location"], 50, np.random.default_rng(4))
    low, high = R.location_interval(att, 300, np.random.default_rng(0))
    index = R.location_index(att)
    assert np.all(low < index) and np.all(index < high) and np.all(high - low < 0.5)


@pytest.mark.parametrize("control", [False, True])
def test_noise_is_labelled_neither_at_no_more_than_the_nominal_rate(control):
    """Noise queries among planted ones, 40 seeds: the share not called ``neither`` is at most alpha (binomial bound),
    with significance alone (no minimum index) and, with the minimums, under a random control map partialled out."""
    settings = R.RoutingSettings(n_permutations=99, n_bootstrap=99, alpha=0.1,
                                 **({} if control else {"min_location": 0.0, "min_content": 0.0}))
    kinds = ["location", "content"] + ["neither"] * 4
    wrong = total = recovered = 0
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        att, masks = planted(kinds, 30, rng)
        contrast = rng.random((30, 64)) + 0.5 * masks[:, 1] if control else None
        table = R.routing_table(att, GRID, R.token_positions_deg(GRID, 14, 112), masks, ("face", "word"), settings, seed,
                                contrast)
        wrong += int((table["routing"][2:] != "neither").sum())
        total += 4
        recovered += list(table["routing"][:2]) == kinds[:2]
    assert wrong <= stats.binom.ppf(0.975, total, settings.alpha)
    assert recovered >= 36  # the tests keep their power (40 of 40 measured, either way)


def test_a_faint_fixed_bias_is_significant_but_not_location_routed():
    """Cause of every query being `both`: with many images the shift test finds a window of 1-2 % of the pattern."""
    rng = np.random.default_rng(6)
    window = np.zeros(GRID)
    window[1:4, 5:8] = 1
    logits = 0.6 * rng.standard_normal((400, 2, 64)) + np.array([0.2, 0.6])[:, None] * window.ravel()
    att = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    positions = R.token_positions_deg(GRID, 14, 112)
    table = R.routing_table(att, GRID, positions, None, (), FAST, 0)
    assert (table["location_p_shift"] < 0.01).all()
    assert table["location_index"][0] < FAST.min_location < table["location_index"][1]
    assert list(table["routing"]) == ["neither", "location"]
    significance_alone = R.RoutingSettings(n_permutations=199, n_bootstrap=200, min_location=0)
    assert list(R.routing_table(att, GRID, positions, None, (), significance_alone, 0)["routing"]) == ["location"] * 2


def contrast_confound(n: int, rng: np.random.Generator):
    """Masks (face, word), a contrast share that is high on the words, and attention of a query that follows it
    (attention proportional to contrast, times noise) and of one that follows the face mask."""
    masks = np.stack([block(rng, n), block(rng, n)], 1)
    contrast = masks[:, 1] + 0.5 * rng.random((n, 64))
    contrast /= contrast.sum(1, keepdims=True)
    logits = np.stack([np.log(contrast) + 0.3 * rng.standard_normal((n, 64)),
                       2.5 * masks[:, 0] + 0.6 * rng.standard_normal((n, 64))], 1)
    att = np.exp(logits - logits.max(-1, keepdims=True))
    return att / att.sum(-1, keepdims=True), masks, contrast


def test_the_contrast_control_keeps_a_contrast_following_query_from_looking_word_routed():
    att, masks, contrast = contrast_confound(60, np.random.default_rng(7))
    positions = R.token_positions_deg(GRID, 14, 112)
    plain = R.routing_table(att, GRID, positions, masks, ("face", "word"), FAST, 0)
    assert list(plain["routing"]) == ["content", "content"] and plain["content_category"][0] == "word"
    controlled = R.routing_table(att, GRID, positions, masks, ("face", "word"), FAST, 0, control=contrast)
    assert list(controlled["routing"]) == ["neither", "content"]
    assert controlled["content_category"][1] == "face" and controlled["content_index"][1] > 0.3


def test_content_index_is_the_squared_partial_correlation_times_the_varying_share_and_its_interval_covers_it():
    att, masks, contrast = contrast_confound(40, np.random.default_rng(8))
    index, best, _ = R.content_test(att, masks, 19, np.random.default_rng(0), contrast)

    def residual(y):  # pooled regression on the centred contrast map
        y, e = y - y.mean(0), contrast - contrast.mean(0)
        return y - (y * e).sum() / (e * e).sum() * e

    for q in range(2):
        a = att[:, q] / att[:, q].sum(-1, keepdims=True)
        r = [np.corrcoef(residual(a).ravel(), residual(masks[:, c]).ravel())[0, 1] for c in range(2)]
        # the pooled correlation is about zero-mean residuals, as corrcoef's are
        share = (residual(a) ** 2).sum() / ((a - 1 / a.shape[-1]) ** 2).sum()
        assert 0 < share <= 1
        assert index[q] == pytest.approx(max(0.0, max(r)) ** 2 * share, rel=1e-6) and best[q] == int(np.argmax(r))
    values = R.content_bootstrap(att, masks, 300, np.random.default_rng(1), contrast)
    low, high = R.percentile_interval(values, 0.95)
    assert low[1] < index[1] < high[1]


def test_a_faint_content_part_under_a_fixed_window_is_not_content_routed():
    """The content index is a share of the whole map: shrinking the part that follows the mask shrinks it.

    ``r^2`` alone (the share of the variation explained) stays high however
    faint the moving part; such a map is a fixed window, as its label says.
    """
    rng = np.random.default_rng(4)
    masks = np.stack([block(rng, 60), block(rng, 60)], 1)  # face, word
    window = np.full(GRID, 0.05)
    window[1:4, 5:8] = 1  # the fixed window, upper right
    window = window.ravel() / window.sum()
    moving = masks[:, 0] / masks[:, 0].sum(-1, keepdims=True)  # the image's face
    noise = 0.02 * rng.random((60, 64)) / 64
    indices, labels = {}, {}
    for weight in (0.5, 0.02):
        maps = (1 - weight) * window + weight * moving + noise
        table = R.routing_table(maps[:, None], GRID, R.token_positions_deg(GRID, 14, 112), masks, ("face", "word"),
                                FAST, 0)
        indices[weight], labels[weight] = table["content_index"][0], table["routing"][0]
    assert labels == {0.5: "both", 0.02: "location"}
    assert indices[0.02] < 0.01 < 0.2 < indices[0.5]


def test_without_masks_only_location_is_tested():
    att, _ = planted(["location", "neither"], 40, np.random.default_rng(5))
    table = R.routing_table(att, GRID, R.token_positions_deg(GRID, 14, 112), None, (), FAST, 0)
    assert list(table["routing"]) == ["location", "neither"]
    assert table["content_p"].isna().all() and (table["content_category"] == "").all()


def test_location_test_rejects_a_wrong_grid():
    with pytest.raises(ValueError, match="8x7"):
        R.location_test(np.ones((3, 1, 64)), (8, 7), 9, np.random.default_rng(0))


# --------------------------------------------------------------------------
# tbe routing on the small trained virtual subject
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def routed(trained_run, small_data, cache_dir, tmp_path_factory):


    out = tmp_path_factory.mktemp("routing")
    # the floors this small subject was calibrated with: its 24 validation images give intervals too wide for
    # the defaults, which were set on 100 test images of two larger subjects (docs/attention.md)
    assert tbe("-q", "routing", "--run", trained_run, "--cache-dir", cache_dir, "--out", out,
               "--n-permutations", "999", "--n-bootstrap", "1000", "--min-location", "0.03", "--min-content", "0.005") == 0


    return pd.read_csv(out / "routing.csv", keep_default_na=False), out


def test_routing_command_writes_its_table_and_figure(routed):
    table, out = routed
    for column in ["hemi", "roi", "n_images", "location_index", "location_ci_low", "location_ci_high", "content_index",
                   "content_ci_low", "content_ci_high", "content_p", "content_p_fdr", "routing", "x_deg", "y_deg",
                   "entropy", "planted", "reliable", "r_heldout"]:
        assert column in table.columns
    assert (out / "routing.png").stat().st_size > 0
    assert set(table["routing"]) <= set(R.LABELS.values())
    assert (table["location_ci_low"] <= table["location_index"]).all()


def test_early_visual_routes_by_location_and_faces_and_words_by_content(routed):
    from model.rois import EARLY_VISUAL

    table, _ = routed
    early = table[table["roi"].isin(EARLY_VISUAL)]
    category = table[table["planted"] == "content"]
    assert early["location_index"].median() > category["location_index"].median()
    for roi in ("FFA-1", "VWFA-1"):
        labels = table.loc[(table["roi"] == roi), "routing"]
        assert labels.isin(R.CONTENT_ROUTED).any(), table.loc[table["roi"] == roi].to_string()
    # measured on this subject (24 validation images, 8 x 8 tokens): 14 of 14 early visual queries location or
    # both; the 7 null-ROI queries location or both, none of them reliable: the null ROIs are the ones the run
    # does not predict on held-out fMRI, and a label of an unreliable query describes the network only
    assert early["routing"].isin(["location", "both"]).mean() >= 0.5, early.to_string()
    null = table[table["planted"] == "none"]
    labelled = null["routing"].isin(["location", "content", "both"])
    assert len(null) >= 5 and not (labelled & null["reliable"].astype(str).eq("True")).any(), null.to_string()
    # reliability is BH-FDR over every ROI: a null ROI may pass now and then (expected false discoveries here < 0.5)
    assert null["reliable"].astype(str).eq("True").sum() <= 2 and early["reliable"].astype(str).eq("True").all()


def test_routing_refuses_split_with_images(trained_run, tmp_path, capsys):


    assert tbe("routing", "--run", trained_run, "--split", "val", "--images", tmp_path, "--out", tmp_path / "o") == 2
    assert "--split" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_top_images_of_a_face_roi_mostly_show_faces(trained_run, cache_dir, tmp_path):
    from analyses import routing as rt
    from analyses.top_images import ATTRIBUTION_COLUMNS, COLUMNS, plot_top_images, top_attributions, top_images
    from interpret import checks
    from interpret.maps import MapGrid
    from model.errors import InputError
    from model.runs import open_run
    from model.vision import CATEGORIES

    run = open_run(trained_run)
    chosen = rt.choose_images(run, None, "test", None)
    table, attention = top_images(run, chosen, ["FFA-1"], 5, cache_dir)
    assert len(table) == 2 * 2 * 5 and set(table["direction"]) == {"top", "bottom"}
    assert table["measured"].notna().all()  # a virtual subject's test images have fMRI
    faces = run.subject.truth.images.set_index("image")["n_face"] > 0
    top = faces[table.loc[table["direction"] == "top", "image"]].mean()
    assert top >= 0.6 and top > faces[[p.name for p in chosen.paths]].mean(), table.to_string()
    plain = plot_top_images(table, chosen, attention, MapGrid.for_backbone(run.shared_backbone), "lh",
                            tmp_path / "attention_only.png")
    explained, maps, grid = top_attributions(run, chosen, table, attention, cache_dir=cache_dir)
    assert list(explained.columns) == [*COLUMNS, *ATTRIBUTION_COLUMNS]
    assert (explained["attribution"] == "token_integrated_gradients").all()
    assert explained["attribution_attention_r"].between(-1, 1).all()
    assert set(maps) == {(h, r, i) for h, r, i in zip(table.hemi, table.roi, table.image)}, "only the shown images"
    assert all(m.shape == (grid.size, grid.size) and np.abs(m).max() > 0 for m in maps.values())
    # the face ROI's response is driven by the faces the virtual subject planted: its attribution is higher on them
    truth = run.subject.truth
    top = explained[(explained["direction"] == "top") & explained["image"].isin(faces[faces].index)]
    masks = checks.masks_on_grid(truth.masks("test", list(top["image"])), grid)
    inside, outside = [], []
    for row, mask in zip(top.itertuples(), masks[:, CATEGORIES.index("face")]):
        m = maps[(row.hemi, row.roi, row.image)]
        inside.append(m[mask > 0].mean()), outside.append(m[mask == 0].mean())
    assert len(inside) >= 3 and np.mean(np.array(inside) > np.array(outside)) >= 0.8, (inside, outside)
    cheap, pixel_maps, _ = top_attributions(run, chosen, table.head(2), attention, "saliency", cache_dir=cache_dir)
    assert set(cheap["attribution"]) == {"saliency"} and all((m >= 0).all() for m in pixel_maps.values())
    png = plot_top_images(explained, chosen, attention, grid, "lh", tmp_path / "top.png", maps)
    assert png.stat().st_size > plain.stat().st_size > 10_000  # a second row of maps, with its colour bar
    with pytest.raises(InputError, match="^attribution: attention is the attention already shown"):
        top_attributions(run, chosen, table, attention, attribution="attention")


def test_interpret_takes_any_folder_of_images(trained_run, small_data, cache_dir, tmp_path, capsys):
    import shutil

    import xarray as xr

    folder = tmp_path / "mine"
    folder.mkdir()
    for src in sorted((small_data / "subj01" / "test_split" / "test_images").iterdir())[:3]:
        shutil.copy(src, folder / f"my_{src.name}")
    out = tmp_path / "maps.nc"
    assert tbe("-q", "interpret", "--run", trained_run, "--cache-dir", cache_dir, "--images", folder, "--n-images", "2",
               "--methods", "attention", "--rois", "FFA-1", "--overlays", "0", "--out", out) == 0
    with xr.open_dataset(out) as ds:
        assert [str(v) for v in ds.image.values] == sorted(p.name for p in folder.iterdir())[:2]
    assert tbe("interpret", "--run", trained_run, "--images", tmp_path / "none", "--out", tmp_path / "x.nc") == 2
    assert f"{tmp_path / 'none'}: not a folder of images" in capsys.readouterr().err
