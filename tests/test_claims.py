"""Claims (analyses/claims.py): the grammar, its errors, the calibration of the tests, and claims on a trained run."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analyses import claims as C
from model.errors import InputError

from .conftest import tbe


@pytest.mark.parametrize("text, hemis, roi, kind, target, other", [
    ("FFA-1 prefers face", ("lh", "rh"), "FFA-1", "prefers", "face", None),
    ("ffa-1 prefers faces over bodies", ("lh", "rh"), "FFA-1", "prefers", "face", "body"),
    ("lh V1v attends upper-right", ("lh",), "V1v", "attends_direction", "upper-right", None),
    ("PPA attends place.", ("lh", "rh"), "PPA", "attends_category", "place", None),
    ("EBA routes by content", ("lh", "rh"), "EBA", "routes", "content", None),
    ("rh V2d routes by location", ("rh",), "V2d", "routes", "location", None),
])
def test_grammar(text, hemis, roi, kind, target, other):
    claim = C.parse_claim(text)
    assert (claim.hemis, claim.roi, claim.kind, claim.target, claim.other) == (hemis, roi, kind, target, other)


@pytest.mark.parametrize("text, problem", [
    ("FFA-9 prefers face", "unknown ROI 'FFA-9'"),
    ("FFA-1 prefers cars", "unknown category 'cars'"),
    ("V1v attends sideways", "unknown category or direction 'sideways'"),
    ("EBA routes by colour", "routes by 'colour'"),
    ("EBA likes bodies", "unknown verb 'likes'"),
    ("FFA-1 prefers face to body", "does not parse"),
    ("FFA-1", "does not parse"),
    ("FFA-1 prefers face over faces", "compares face with itself"),
])
def test_parse_errors_name_the_claim_and_the_problem(text, problem):
    with pytest.raises(InputError) as info:
        C.parse_claim(text)
    line = str(info.value)
    assert line.startswith(f"claim {text!r}: ") and problem in line and "\n" not in line


def test_claims_file_errors_name_the_file_and_line(tmp_path):
    f = tmp_path / "claims.txt"
    f.write_text("# mine\nFFA-1 prefers face\n\nPPA prefers scenery\n")
    with pytest.raises(InputError, match=r"claims.txt, line 4: claim 'PPA prefers scenery': unknown category"):
        C.read_claims(f)
    f.write_text("# nothing\n")
    with pytest.raises(InputError, match="holds no claims"):
        C.read_claims(f)


def test_preference_test_is_calibrated_and_finds_a_planted_preference():
    """Null responses: p < alpha at the nominal rate; a planted preference: p small, its reverse contradicted."""
    settings = C.ClaimSettings(n_permutations=199, n_bootstrap=100)
    rng = np.random.default_rng(0)
    labels = np.array(["face"] * 20 + ["body"] * 20)
    hits = sum(C.preference_test(rng.standard_normal(40), labels == "face", labels != "face", settings, rng)["p"] < 0.05
               for _ in range(200))
    assert hits <= stats.binom.ppf(0.975, 200, 0.05)
    x = rng.standard_normal(40) + 1.5 * (labels == "face")
    true = C.preference_test(x, labels == "face", labels == "body", settings, rng)
    assert true["p"] < 0.01 and true["ci_low"] > 0 and true["p_opposite"] > 0.5
    table = C.verdicts(pd.DataFrame([{**true, "reliable": True},
                                     {**C.preference_test(x, labels == "body", labels == "face", settings, rng),
                                      "reliable": True}]), 0.05)
    assert list(table["verdict"]) == ["supported", "contradicted"]


def test_attention_claims_need_the_minimum_excess():
    """A tiny but consistent excess (0.005 of the attention's mass) is significant against 0, not against the minimum."""
    settings = C.ClaimSettings(n_bootstrap=100)
    rng = np.random.default_rng(1)
    tiny = 0.005 + 0.002 * rng.standard_normal(60)
    assert C.mean_excess_test(tiny, "mass_minus_area", settings, rng)["p"] < 1e-6
    row = C.mean_excess_test(tiny, "mass_minus_area", settings, rng, minimum=settings.min_attention_excess)
    assert row["p"] > 0.5 and row["p_opposite"] > 0.5 and abs(row["effect"] - tiny.mean()) < 1e-12
    large = 0.12 + 0.05 * rng.standard_normal(60)
    assert C.mean_excess_test(large, "mass_minus_area", settings, rng, minimum=settings.min_attention_excess)["p"] < 1e-6
    below = -large
    assert C.mean_excess_test(below, "mass_minus_area", settings, rng,
                              minimum=settings.min_attention_excess)["p_opposite"] < 1e-6


def test_an_unreliable_roi_is_neither_supported_nor_contradicted():
    table = C.verdicts(pd.DataFrame([{"p": 0.001, "p_opposite": 0.99, "reliable": False},
                                     {"p": 0.99, "p_opposite": 0.001, "reliable": False},
                                     {"p": 0.99, "p_opposite": 0.001, "reliable": pd.NA}]), 0.05)
    assert list(table["verdict"]) == ["not supported", "not supported", "contradicted"]


# --------------------------------------------------------------------------
# On the small trained virtual subject
# --------------------------------------------------------------------------

CLAIMS = ["PPA prefers place", "PPA prefers face over place", "mTL-faces prefers face", "aTL-faces prefers face",
          "mTL-bodies prefers body", "lh V1v attends upper-right", "FFA-1 attends face", "FFA-1 routes by content"]


@pytest.fixture(scope="module")
def claims_table(trained_run, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("claims")
    (out / "claims.txt").write_text("\n".join(CLAIMS) + "\n")
    assert tbe("-q", "claims", "--run", trained_run, "--cache-dir", cache_dir, "--claims", out / "claims.txt",
               "--out", out / "result", "--n-permutations", "499", "--n-bootstrap", "200") == 0
    return pd.read_csv(out / "result" / "claims.csv")


def test_claims_on_the_virtual_subject(claims_table):
    t = claims_table
    for column in ["claim", "hemi", "statistic", "effect", "ci_low", "ci_high", "p", "p_fdr", "verdict", "reliable"]:
        assert column in t.columns
    verdict = t.groupby("claim")["verdict"].apply(set)
    assert verdict["PPA prefers place"] == {"supported"}, t.to_string()
    assert verdict["PPA prefers face over place"] == {"contradicted"}, t.to_string()
    assert verdict["FFA-1 attends face"] == {"supported"}, t.to_string()
    assert verdict["lh V1v attends upper-right"] == {"supported"}, t.to_string()
    assert list(t.loc[t.claim == "lh V1v attends upper-right", "hemi"]) == ["lh"]
    null = t[t["roi"].isin(["mTL-faces", "aTL-faces", "mTL-bodies"])]
    assert len(null) >= 3 and (null["verdict"] == "supported").sum() <= stats.binom.ppf(0.975, len(null), 0.05)


def test_claims_command_stops_on_a_bad_claim_before_computing(trained_run, tmp_path, capsys):
    (tmp_path / "c.txt").write_text("FFA-1 prefers face\nFFA-1 prefers teapots\n")
    assert tbe("claims", "--run", trained_run, "--claims", tmp_path / "c.txt", "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "line 2: claim 'FFA-1 prefers teapots': unknown category 'teapots'" in err
    assert not (tmp_path / "o").exists()


def test_claims_settings_are_flags_of_the_command():
    from analyses.cli import build_parser, settings_from_args

    args = ["claims", "--run", "r", "--claims", "c.txt", "--out", "o"]
    assert settings_from_args(C.ClaimSettings, build_parser().parse_args(args)) == C.ClaimSettings()
    parsed = build_parser().parse_args([*args, "--n-permutations", "9", "--alpha", "0.1"])
    assert settings_from_args(C.ClaimSettings, parsed) == C.ClaimSettings(n_permutations=9, alpha=0.1)
