"""The token-deletion test of the attention (model/scoring/faithfulness.py), on planted encoders and a trained run."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from model.encoders import Capabilities
from model.errors import OptionError
from model.scoring import (MIN_RATIO, deletion_changes, deletion_ratios, describe_faithfulness, faithfulness_summary,
                           query_reliability)
from model.scoring.faithfulness import MAX_QUERIES, not_measured

T, C = 64, 8


class Planted(torch.nn.Module):
    """Two queries of 5 vertices each; query q attends to ``attended[q]`` and its vertices read ``read[q]``."""

    capabilities = Capabilities(decoder_attention=True)

    def __init__(self, attended: list[np.ndarray], read: list[np.ndarray], uniform: bool = False):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(C))
        att = torch.zeros(len(attended), T)
        for q, tokens in enumerate(attended):
            att[q, tokens] = 1.0 / len(tokens)
        self.att = torch.full_like(att, 1.0 / T) if uniform else att
        self.read = [torch.as_tensor(r) for r in read]
        self.weights = torch.randn(len(read), 5, C, generator=torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor, return_attention: bool = False) -> dict:
        pred = torch.cat([torch.einsum("btc,vc->bv", x[:, r], w) for r, w in zip(self.read, self.weights)], dim=1)
        out = {"pred": pred}
        if return_attention:
            out["attention"] = self.att.expand(len(x), 1, 2, -1, -1)  # (B, layers, heads, Q, T)
        return out


MEMBERS = np.kron(np.eye(2, dtype=bool), np.ones((5, 1), bool))  # 10 vertices x 2 queries


def _ratios(model: torch.nn.Module) -> pd.DataFrame:
    x = np.random.default_rng(1).standard_normal((24, T, C)).astype(np.float32)
    return deletion_ratios(deletion_changes(model, x, MEMBERS, batch_size=7), ["lh:A", "lh:B"], n_bootstrap=200)


def test_an_attention_that_selects_what_is_read_is_faithful():
    """All that is read lies in the top-attended fifth: the ratio is about 1 / fraction = 64 / 13."""
    window = [np.arange(0, 10), np.arange(30, 40)]
    table = _ratios(Planted(window, window))
    assert ((table["deletion_ratio"] > 4) & (table["deletion_ratio"] < 6.5)).all(), table
    assert (table["specificity"] > 10).all(), table  # the other query's tokens are not read at all
    assert (table["deletion_ratio"] > MIN_RATIO).all() and table["faithful"].all()
    for name in ("deletion_ratio", "specificity"):
        assert (table[f"{name}_ci_low"] <= table[name]).all() and (table[name] <= table[f"{name}_ci_high"]).all()


def test_an_attention_every_query_shares_is_used_but_not_specific():
    """Both queries attend to the same (salient) tokens, which both ROIs read: deletion ratio high, specificity 1."""
    salient = [np.arange(0, 10), np.arange(0, 10)]
    table = _ratios(Planted(salient, salient))
    assert (table["deletion_ratio"] > MIN_RATIO).all(), table
    assert ((table["specificity"] > 0.9) & (table["specificity"] < 1.1)).all(), table
    assert not table["faithful"].any()


def test_an_attention_the_prediction_ignores_is_not_faithful():
    """Attention on one window, vertices reading another: replacing the attended tokens changes nothing."""
    table = _ratios(Planted([np.arange(0, 10), np.arange(30, 40)], [np.arange(50, 60), np.arange(10, 20)]))
    assert (table["deletion_ratio"] < 0.05).all() and not table["faithful"].any(), table


def test_a_uniform_attention_gives_a_ratio_near_one():
    """Ties broken anyhow: the top 'attended' tokens are as good as random ones for a prediction that reads everything."""
    everything = [np.arange(T), np.arange(T)]
    table = _ratios(Planted(everything, everything, uniform=True))
    assert ((table["deletion_ratio"] > 0.7) & (table["deletion_ratio"] < 1.4)).all(), table


def test_batches_do_not_change_the_changes():
    model = Planted([np.arange(0, 10), np.arange(30, 40)], [np.arange(0, 20), np.arange(25, 45)])
    x = np.random.default_rng(2).standard_normal((10, T, C)).astype(np.float32)
    a, b = deletion_changes(model, x, MEMBERS, batch_size=10), deletion_changes(model, x, MEMBERS, batch_size=3)
    np.testing.assert_allclose(a.top, b.top, rtol=1e-6)
    assert a.random.shape == b.random.shape == (10, 2)


def test_reliability_and_the_summary_count_only_reliable_queries():
    rng = np.random.default_rng(3)
    measured = rng.standard_normal((40, 10))
    pred = measured.copy()
    pred[:, 5:] = rng.standard_normal((40, 5))  # query B's vertices are not predicted
    reliable = query_reliability(pred, measured, MEMBERS)
    assert list(reliable["reliable"]) == [True, False]
    table = pd.concat([pd.DataFrame({"query": ["lh:A", "lh:B"], "deletion_ratio": [4.0, 1.1], "specificity": [1.2, 1.0],
                                     "faithful": [True, False], "n_images": [40, 40]}), reliable], axis=1)
    summary = faithfulness_summary(table)
    assert (summary["n_reliable"], summary["n_faithful_reliable"], summary["faithful"]) == (1, 1, True)
    table.loc[0, "faithful"] = False
    assert faithfulness_summary(table)["unfaithful"] == {"lh:A": {"deletion_ratio": 4.0, "specificity": 1.2}}
    assert "NOT FAITHFUL: lh:A (ratio 4.0, specificity 1.20)" in describe_faithfulness(faithfulness_summary(table))


def test_the_summary_line_gives_the_intervals_and_says_when_more_images_could_tell():
    """An unfaithful query whose intervals reach both minimums is named as one that more images can settle."""
    rows = {"query": ["lh:A", "lh:B", "lh:C"], "deletion_ratio": [5.5, 1.4, 6.0], "specificity": [1.17, 1.5, 2.0],
            "deletion_ratio_ci_low": [3.1, 1.1, 5.0], "deletion_ratio_ci_high": [7.6, 1.8, 7.0],
            "specificity_ci_low": [0.85, 1.2, 1.8], "specificity_ci_high": [1.96, 1.9, 2.3],
            "faithful": [False, False, True], "n_images": 64, "reliable": True}
    summary = faithfulness_summary(pd.DataFrame(rows))
    assert summary["unfaithful"]["lh:A"] == {"deletion_ratio": 5.5, "deletion_ratio_ci": [3.1, 7.6],
                                             "specificity": 1.17, "specificity_ci": [0.85, 1.96]}
    line = describe_faithfulness(summary)
    assert "(95% bootstrap intervals over the images in brackets)" in line
    assert "lh:A (ratio 5.5 [3.1, 7.6], specificity 1.17 [0.85, 1.96])" in line
    assert "lh:B (ratio 1.4 [1.1, 1.8]" in line and "lh:C" not in line
    assert line.endswith("the intervals of lh:A reach both minimums: `tbe check-maps` on more images (--n-images) can "
                         "tell")


@pytest.mark.slow
def test_training_records_the_attention_faithfulness(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    summary = metrics["attention_faithfulness"]
    assert summary["n_queries"] == len(summary["queries"]) > 0
    assert 0 < summary["n_reliable"] <= summary["n_queries"]
    assert summary["faithful"] == (summary["n_faithful_reliable"] == summary["n_reliable"])
    assert all(np.isfinite(q["deletion_ratio"]) for q in summary["queries"])


def test_too_many_queries_are_refused_by_the_test_and_reported_as_not_measured():
    """One query per vertex would cost a pass per query and image: the test refuses, the summary says why."""
    many = np.eye(MAX_QUERIES + 1, dtype=bool)
    x = np.zeros((2, T, C), np.float32)
    with pytest.raises(OptionError) as err:
        deletion_changes(Planted([np.arange(10)] * 2, [np.arange(5)] * 2), x, many)
    assert err.value.parameter == "readout_res" and str(MAX_QUERIES) in err.value.problem
    line = describe_faithfulness(not_measured(MAX_QUERIES + 1))
    assert line.startswith("attention faithfulness: not measured") and str(MAX_QUERIES + 1) in line
