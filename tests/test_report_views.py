"""What the reports show (issue 15): honest counts, intervals named after their statistic, readable tables.

Cheap tests on hand-made tables; the notebooks that use these views run in
tests/test_report.py.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analyses import report_views as rv
from analyses.selectivity import COLUMNS


def _tests(rows):
    """Expected-category tests: (roi, planted, significant, reliable)."""
    return pd.DataFrame([{"source": "predicted", "hemi": "lh", "roi": roi, "category": "face", "n": 24,
                          "mean": 0.3, "mean_ci_low": 0.2, "mean_ci_high": 0.4, "d_prime": 1.3, "p_fdr": 0.01,
                          "significant": sig, "expected": True, "preferred": True, "planted": planted,
                          "reliable": reliable, "supported": sig and bool(reliable)}
                         for roi, planted, sig, reliable in rows])


def test_every_interval_is_named_after_its_statistic_and_sits_next_to_it():
    for columns in (COLUMNS, rv.expected_preferences(_tests([("FFA-1", "face", True, True)])).columns.tolist()):
        intervals = [c for c in columns if c.endswith(("_ci_low", "_ci_high"))]
        assert intervals and not {"ci_low", "ci_high"} & set(columns)
        for c in intervals:
            stat = c.rsplit("_ci_", 1)[0]
            assert stat in columns and abs(columns.index(c) - columns.index(stat)) <= 2, (c, columns)


def test_null_rois_are_counted_apart_from_the_planted_ones():
    table = _tests([("FFA-1", "face", True, True), ("FFA-2", "face", False, True),
                    ("mTL-faces", "none", True, False), ("OFA", "none", False, False)])
    counts = rv.preference_counts(table).set_index("group")
    assert counts.loc["planted", ["n_significant", "n_rois"]].tolist() == [1, 2]
    assert counts.loc["null (pure noise)", ["n_significant", "n_rois"]].tolist() == [1, 2]
    text = rv.selectivity_summary(table)
    assert "planted ROIs 1 of 2" in text and "null (pure noise) ROIs 1 of 2" in text
    assert "2 of 4" not in text  # the null success is not counted as one


def test_real_data_splits_by_held_out_reliability():
    table = _tests([("FFA-1", "", True, True), ("PPA", "", True, False), ("EBA", "", False, False)])
    counts = rv.preference_counts(table).set_index("group")
    assert counts.loc["reliably predicted", "n_rois"] == 1 and counts.loc["not reliably predicted", "n_rois"] == 2


def test_a_table_formats_each_number_by_its_kind_and_has_no_index_column():
    table = pd.DataFrame({"roi": ["V1v", "FFA-1"], "p": [9.387e-02, 1e-5], "r": [0.847, 0.0004], "n": [3, 4],
                          "d_prime": [1.65, 1.2064], "mean": [1.2064, 0.5]}, index=[7, 8])
    html = rv.table_html(table)
    assert "0.094" in html and "1.00e-05" in html  # p: e-notation only below 0.001
    assert "0.847" in html and "0.000" in html and "4.00e-04" not in html  # r: 3 decimals, whatever its neighbours
    assert "1.650" in html and "1.206" in html and "e+00" not in html  # d' and the mean alike in one row
    assert ">7<" not in html and ">8<" not in html  # no index column


def test_formatter_per_kind():
    from analyses import formatting as fmt

    assert fmt.p_value(0.0004) == "4.00e-04" and fmt.p_value(0.012) == "0.012" and fmt.p_value(0.001) == "0.001"
    assert fmt.p_value(1.0) == "1.000" and fmt.p_value(np.nan) == "" and fmt.p_value(None) == ""
    assert fmt.effect(0.5693) == "0.569" and fmt.effect(-0.00001) == "0.000" and fmt.effect(1.65) == "1.650"
    assert fmt.count(19004.0) == "19004" and fmt.count(np.int64(24)) == "24" and fmt.count(2.5) == "2.5"
    assert fmt.percent(54.123) == "54.1"
    assert fmt.small(2.5e-5) == "2.50e-05" and fmt.small(0.3) == "0.300"
    kinds = {c: fmt.kind_of(c) for c in ("p", "p_fdr", "content_p_fdr", "p_fdr_vs_contrast", "location_p_shift",
                                         "n", "n_vertices", "n_significant", "challenge_score_ridge",
                                         "mean_abs_delta", "r", "d_prime", "planted", "top", "mean_ci_low")}
    assert kinds == {"p": "p", "p_fdr": "p", "content_p_fdr": "p", "p_fdr_vs_contrast": "p", "location_p_shift": "p",
                     "n": "count", "n_vertices": "count", "n_significant": "count", "challenge_score_ridge": "percent",
                     "mean_abs_delta": "small", "r": None, "d_prime": None, "planted": None, "top": None,
                     "mean_ci_low": None}


def test_a_long_table_formats_each_row_by_its_measure():
    """The encoding-accuracy scores: r, within-ROI r and the challenge score in one column, each read as itself."""
    from analyses.formatting import format_table

    index = pd.MultiIndex.from_tuples([("r", "all"), ("challenge_score", "all"), ("within_roi_r", "V1v")],
                                      names=["measure", "group"])
    columns = pd.MultiIndex.from_tuples([("transformer", "lh"), ("ridge", "lh")], names=["encoder", "hemi"])
    scores = pd.DataFrame([[0.5693, 0.3], [54.123, 38.2], [0.0004, 0.1]], index=index, columns=columns)
    shown = format_table(scores.reset_index())
    assert shown[("transformer", "lh")].tolist() == ["0.569", "54.1", "0.000"]
    html = rv.table_html(scores)
    assert "5.69e-01" not in html and "0.569" in html and "54.1" in html


def test_table_text_is_escaped_and_numbers_are_unchanged():
    table = pd.DataFrame({"claim": ["<script>x</script>"], "p": [0.0004], "significant": [True]})
    before = table.copy()
    html = rv.table_html(table)
    assert "<script>" not in html and "&lt;script&gt;" in html and "True" in html
    pd.testing.assert_frame_equal(table, before)  # presentation only


def test_a_table_keeps_a_labelled_index_as_a_column():
    agreement = pd.DataFrame({"saliency": [1.0, 0.4]}, index=["saliency", "token_ig"])
    html = rv.table_html(agreement)
    assert ">token_ig<" in html and "0.400" in html


# --------------------------------------------------------------------------
# The localizer: one number per question, every contrast with its verdict
# --------------------------------------------------------------------------

def _localizer_rows(contrast, dice, n_predicted, n_reference, ceiling=0.9):
    return [{"contrast": contrast, "category": contrast, "hemi": "lh", "reference": ref, "reference_rois": "",
             "n_vertices": 1000, "n_predicted": n_predicted, "n_reference": n_reference, "dice": dice, "auc": 0.9,
             "dice_ceiling": ceiling, "rho_true_t": 0.5} for ref in ("roi_masks", "planted")]


def test_every_localizer_contrast_gets_a_verdict_and_failures_a_reason():
    from analyses.localizer import verdicts

    table = pd.DataFrame(_localizer_rows("faces", 0.66, 120, 100) + _localizer_rows("words", 0.22, 764, 98)
                         + _localizer_rows("places", 0.1, 90, 100, ceiling=0.2))
    v = verdicts(table).set_index("contrast")
    assert v.loc["faces", "verdict"] == "ok" and v.loc["faces", "reason"] == ""
    assert v.loc["words", "verdict"] == "failed" and "over-predicted: 764 vertices against 98" in v.loc["words", "reason"]
    assert v.loc["places", "reason"].startswith("the stimuli")
    assert (v.reference == "planted").all()  # the planted truth is the reference where it is known
    text = rv.selectivity_summary(_tests([("FFA-1", "face", True, True)]), table, "48 images per category",
                                  verdicts(table))
    assert "(48 images per category)" in text and "words lh (Dice 0.22" in text


def test_a_report_reuses_the_runs_own_localizer_and_only_that_run_s(tmp_path):
    from analyses.localizer import SETTINGS_FILE, describe_settings, existing_localizer
    from model.files import write_csv, write_json

    run = tmp_path / "run"
    run.mkdir()
    write_csv(tmp_path / "localizer.csv", pd.DataFrame(_localizer_rows("faces", 0.66, 120, 100)))
    assert existing_localizer(tmp_path, run) is None  # no settings: not known to be this run's
    settings = {"run": str(run.resolve()), "n_per_category": 48, "seed": 0, "alpha": 0.05, "stimuli": "x"}
    write_json(tmp_path / SETTINGS_FILE, settings)
    table, used = existing_localizer(tmp_path, run)
    assert table.dice.tolist() == [0.66, 0.66] and describe_settings(used) == "48 images per category, seed 0, FDR q < 0.05"
    assert existing_localizer(tmp_path, tmp_path / "other_run") is None


# --------------------------------------------------------------------------
# Attention selectivity: a category winning everywhere is flagged, and a low-level control exists
# --------------------------------------------------------------------------

def _attention(winner_everywhere: bool):
    rows = []
    for roi, own in [("V1v", "word"), ("FFA-1", "face"), ("PPA", "place"), ("EBA", "body")]:
        for category in ("face", "place", "body", "word"):
            best = "word" if winner_everywhere else own
            rows.append({"hemi": "lh", "roi": roi, "category": category, "ratio": 2.0 if category == best else 1.0,
                         "significant_vs_contrast": False, "expected": category == own})
    return pd.DataFrame(rows)


def test_one_category_winning_in_every_roi_is_flagged_as_a_stimulus_confound():
    from analyses.attention_selectivity import confound_note, dominant_category

    found = dominant_category(_attention(True))
    assert found["category"] == "word" and (found["n_wins"], found["n_rois"]) == (4, 4)
    assert "stimulus-level confound" in confound_note(_attention(True)) and "0 of 4" in confound_note(_attention(True))
    assert dominant_category(_attention(False)) is None and confound_note(_attention(False)) == ""


def test_the_contrast_energy_control_tells_contrast_following_attention_from_selectivity():
    from analyses.attention_selectivity import contrast_control, contrast_energy

    rng = np.random.default_rng(0)
    n, g = 12, 8
    images, masks = [], np.zeros((n, g, g))
    for i in range(n):
        img = np.full((32, 32, 3), 128, np.uint8)
        img[:16, :16] = rng.integers(0, 255, (16, 16, 3))  # all the contrast in the top-left quarter
        images.append(img)
        masks[i, :4, :4] = 1  # the category sits there
    energy = contrast_energy(images, g)
    assert np.allclose(energy.sum((1, 2)), 1) and energy[:, :4, :4].sum((1, 2)).min() > 0.9
    follows_contrast = (energy * masks).sum((1, 2)) + rng.normal(0, 0.001, n)
    on_the_mask = np.ones(n)
    mass, p = contrast_control(np.stack([follows_contrast, on_the_mask], 1), masks, energy)
    assert mass[0] > 0.9 and p[0] > 0.05 and p[1] < 0.01


def test_the_demo_report_is_told_the_settings_its_saved_tables_were_made_with(tmp_path):
    """map_checks shows the demo's own check tables: its parameters cell must show their settings (6 images ...)."""
    from analyses.demo import DEMO_CHECKS, DEMO_SANITY_METHODS, DemoPaths, demo_report_params
    from analyses.report_notebooks import NOTEBOOKS, declared_parameters, notebook_path, split_parameters

    params = demo_report_params(DemoPaths(tmp_path))
    routed = split_parameters(params, {n: declared_parameters(notebook_path(n)) for n in NOTEBOOKS})
    checks = routed["map_checks"]
    assert checks["n_images"] == DEMO_CHECKS.n_images == 6 and checks["methods"] == list(DEMO_CHECKS.methods)
    assert checks["sanity_methods"] == list(DEMO_SANITY_METHODS) and "integrated_gradients" not in checks["methods"]
    assert checks["checks_dir"] == str(tmp_path / "interpret" / "checks")
    assert routed["roi_selectivity"]["localizer_dir"] == str(tmp_path / "localizer")


def test_check_settings_are_saved_next_to_the_tables_and_read_back(tmp_path):
    from types import SimpleNamespace

    from interpret.pipeline import MapJob, check_settings, read_check_settings, save_check_tables

    job = MapJob(n_images=6, methods=("attention", "saliency"), rois=("V1v", "FFA-1"))
    settings = check_settings(job, SimpleNamespace(names=[f"img{i}.png" for i in range(6)]), ("attention",),
                              ("FFA-1",), 3)
    save_check_tables({}, tmp_path, settings)
    used = read_check_settings(tmp_path)
    assert used["n_images"] == 6 and used["sanity_methods"] == ["attention"] and used["faithfulness_images"] == 3
    table = rv.settings_table(used).set_index("setting")["value"]
    assert table["methods"] == "attention, saliency" and table["rois"] == "V1v, FFA-1"
    assert read_check_settings(tmp_path / "nowhere") is None


def test_deletion_aucs_outside_the_unit_interval_are_named_for_every_method():
    faith = pd.DataFrame({"method": ["saliency", "token_integrated_gradients", "random"], "hemi": ["rh", "lh", "rh"],
                          "roi": ["V1v", "FFA-1", "V1v"], "deletion_auc": [-0.06, -0.13, 0.38],
                          "insertion_auc": [0.8, 1.07, 0.6]})
    text = rv.outside_unit_note(faith)
    assert "saliency (rh V1v: deletion -0.06" in text and "token_integrated_gradients" in text
    assert "not only token IG" in text and "random" not in text.split(":")[0]
    assert rv.outside_unit_note(faith.iloc[2:]) == "Every deletion and insertion AUC lies in [0, 1]."


def test_the_class_figure_shows_every_encoder_s_mean_r_per_class_and_hemisphere():
    from analyses.accuracy import compare_scores

    def table(shift: float) -> pd.DataFrame:
        return pd.DataFrame([{"hemi": h, "measure": "r", "group": g, "value": v + shift + (0.01 if h == "rh" else 0)}
                             for h in ("lh", "rh") for g, v in (("early", 0.5), ("faces", 0.3), ("all", 0.2))])

    scores = compare_scores({"transformer": table(0.1), "ridge": table(0.0)})
    fig = rv.class_accuracy_figure(scores)
    axes = fig.axes
    assert [a.get_title() for a in axes] == ["lh", "rh"]
    heights = [[round(p.get_height(), 6) for p in a.patches] for a in axes]
    assert heights[0] == [0.6, 0.4, 0.3, 0.5, 0.3, 0.2]  # transformer's three classes, then ridge's
    assert heights[1] == [0.61, 0.41, 0.31, 0.51, 0.31, 0.21]
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["early", "faces", "all"]
