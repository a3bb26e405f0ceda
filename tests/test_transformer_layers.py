"""The original's other transformer parts: encoder layers, post-norm and custom decoder layers, learned positions.

Each is checked against an independent definition (PyTorch's own transformer
layers where they coincide, an einsum of the original's equations otherwise),
and each trains a small virtual subject offline through ``tbe train``.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from model.encoders import DecoderConfig
from model.encoders.layers import CustomDecoderLayer, EncoderLayer, PositionEmbeddingLearned
from model.encoders.transformer import BrainEncoder, CustomTransformer
from model.errors import OptionError

from .conftest import QUICK_TRAIN, tbe
from .test_encoder import _random_queries

#: the original's standard attention: the parts tested here are the original's
CFG = DecoderConfig(hidden_dim=32, nheads=4, dim_feedforward=48, dropout=0.0, attention="standard")


@pytest.mark.parametrize("pre_norm", [True, False])
def test_encoder_layer_is_torchs_transformer_encoder_layer_without_positions(pre_norm):
    """With zero positions, the DETR encoder layer is nn.TransformerEncoderLayer (norm_first = pre-norm)."""
    torch.manual_seed(0)
    ours = EncoderLayer(DecoderConfig(**{**CFG.to_dict(), "pre_norm": pre_norm})).eval()
    ref = nn.TransformerEncoderLayer(32, 4, 48, dropout=0.0, batch_first=True, norm_first=pre_norm).eval()
    ref.self_attn.load_state_dict(ours.self_attn.state_dict())
    ref.linear1.load_state_dict(ours.ffn[0].state_dict())
    ref.linear2.load_state_dict(ours.ffn[3].state_dict())
    ref.norm1.load_state_dict(ours.norm1.state_dict())
    ref.norm2.load_state_dict(ours.norm2.state_dict())
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x, torch.zeros(1, 9, 32)), ref(x), atol=1e-5)
        assert not torch.allclose(ours(x, torch.randn(1, 9, 32)), ref(x), atol=1e-3), "positions enter q and k"


def test_custom_layer_replaces_the_query_with_attention_over_unprojected_tokens():
    """softmax(q_proj(tgt + query_pos) . k_proj(memory + pos) / sqrt(d_head)) @ memory per head, c_proj, then a pre-norm FFN."""
    torch.manual_seed(0)
    layer = CustomDecoderLayer(CFG).eval()
    tgt, query_pos = torch.randn(2, 3, 32), torch.randn(1, 3, 32)
    memory, pos = torch.randn(2, 7, 32), torch.randn(1, 7, 32)
    a = layer.cross_attn
    q = a.q_proj(tgt + query_pos).view(2, 3, 4, 8)
    k = a.k_proj(memory + pos).view(2, 7, 4, 8)
    w = torch.einsum("bqhd,bthd->bhqt", q, k).div(8 ** 0.5).softmax(-1)
    y = a.c_proj(torch.einsum("bhqt,bthd->bqhd", w, memory.view(2, 7, 4, 8)).flatten(2))
    expected = y + layer.ffn(layer.norm_ffn(y))
    with torch.no_grad():
        out, weights = layer(tgt, memory, pos, query_pos, need_weights=True)
    assert torch.allclose(out, expected, atol=1e-5) and torch.allclose(weights, w, atol=1e-6)


def test_post_norm_layer_normalises_the_incoming_query_first():
    """The original's forward_post: its output is unchanged when the incoming query token is rescaled (norm first)."""
    torch.manual_seed(0)
    model = BrainEncoder(_random_queries(30, 3), 32, (3, 3), DecoderConfig(**{**CFG.to_dict(), "pre_norm": False})).eval()
    layer = model.layers[0]
    tgt, memory, pos, query_pos = torch.randn(2, 3, 32), torch.randn(2, 9, 32), torch.randn(1, 9, 32), torch.randn(1, 3, 32)
    with torch.no_grad():
        a, _ = layer(tgt, memory, pos, query_pos)
        b, _ = layer(5 * tgt + 2, memory, pos, query_pos)
    assert torch.allclose(a, b, atol=1e-4)


def test_learned_positions_are_column_then_row_tables():
    torch.manual_seed(0)
    pos = PositionEmbeddingLearned(32)
    table = pos(3, 4)
    assert table.shape == (12, 32)
    assert torch.equal(table[1 * 4 + 2], torch.cat((pos.col_embed.weight[2], pos.row_embed.weight[1])))
    assert 0 <= float(pos.row_embed.weight.detach().min()) and float(pos.row_embed.weight.detach().max()) < 1  # uniform [0, 1)
    with pytest.raises(OptionError, match="50"):
        BrainEncoder(_random_queries(30, 3), 32, (51, 2), DecoderConfig(**{**CFG.to_dict(), "position_embedding": "learned"}))


def test_custom_transformer_refuses_what_the_original_did_not_define():
    with pytest.raises(OptionError, match="decoder.pre_norm"):
        CustomTransformer(_random_queries(30, 3), 32, (3, 3), DecoderConfig(**{**CFG.to_dict(), "pre_norm": False}))
    with pytest.raises(OptionError, match="query_self_attention"):
        DecoderConfig(pre_norm=False, query_self_attention=True, attention="standard").validate()


@pytest.mark.parametrize("extra", [["--enc-layers", "2"], ["--no-pre-norm", "--enc-layers", "1", "--attention", "standard"],
                                   ["--position-embedding", "learned"], ["--encoder-arch", "custom_transformer", "--attention", "standard"]],
                         ids=["enc-layers", "post-norm", "learned-positions", "custom_transformer"])
def test_each_option_trains_offline(extra, small_data, cache_dir, tmp_path):
    """Each of the original's options trains a small virtual subject with random backbone weights and learns something."""
    out = tmp_path / "run"
    assert tbe("-q", "train", "--data-dir", small_data, "--cache-dir", cache_dir, "--out", out, "--epochs", "3",
               *QUICK_TRAIN, *extra) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_r"]["mean"] > 0.05, metrics["val_r"]
    config = json.loads((out / "config.json").read_text())
    if "--enc-layers" in extra:
        assert config["decoder"]["enc_layers"] == int(extra[extra.index("--enc-layers") + 1])
    assert config["decoder"]["pre_norm"] == ("--no-pre-norm" not in extra)


def test_voxel_queries_decoded_in_chunks_equal_all_at_once():
    """--readout-res voxels: one query per vertex; chunked decoding gives the same predictions and gradients, and
    no attention call ever sees more than one chunk of queries (no batch x heads x vertices x tokens tensor)."""
    from model.encoders.queries import vertex_queries

    queries = vertex_queries({"lh": 23, "rh": 18})
    assert queries.n_queries == 41 and (queries.memberships == torch.eye(41).numpy().astype(bool)).all()
    cfg = DecoderConfig(**{**CFG.to_dict(), "readout": "linear", "dec_layers": 2, "query_chunk": 0})
    torch.manual_seed(0)
    whole = BrainEncoder(queries, 24, (3, 3), cfg)
    chunked = BrainEncoder(queries, 24, (3, 3), DecoderConfig(**{**cfg.to_dict(), "query_chunk": 8}))
    chunked.load_state_dict(whole.state_dict())
    seen = []
    for layer in chunked.layers:
        layer.cross_attn.register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[0].shape[1]), with_kwargs=True)
    x = torch.randn(3, 9, 24)
    a, b = whole(x)["pred"], chunked(x)["pred"]
    assert torch.allclose(a, b, atol=1e-5)
    ga = torch.autograd.grad(a.square().sum(), list(whole.parameters()))
    gb = torch.autograd.grad(b.square().sum(), list(chunked.parameters()))
    assert all(torch.allclose(u, v, atol=1e-4) for u, v in zip(ga, gb))
    assert seen and max(seen) <= 8
    # the prediction is each vertex's own token read out: w_v . token_v + b_v
    out = chunked(x)
    expected = torch.einsum("bvd,vd->bv", out["tokens"], chunked.readout.weight) + chunked.readout.bias
    assert torch.allclose(out["pred"], expected, atol=1e-5)
    with torch.no_grad():
        att = chunked(x, return_attention=True)["attention"]
    assert att.shape == (3, 2, 4, 41, 9)


def test_voxels_trains_offline_and_needs_the_linear_readout(small_data, cache_dir, tmp_path):
    out = tmp_path / "voxels"
    assert tbe("-q", "train", "--data-dir", small_data, "--cache-dir", cache_dir, "--out", out, "--epochs", "2",
               *QUICK_TRAIN, "--readout-res", "voxels", "--readout", "linear", "--query-chunk", "512") == 0
    config = json.loads((out / "config.json").read_text())
    assert config["readout_res"] == "voxels" and len(config["queries"]) == sum(config["n_vertices"].values())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_r"]["mean"] > 0.02
    # one query per vertex: the attention's deletion test (a pass per query and image) is not run, and says so
    assert metrics["attention_faithfulness"]["measured"] is False
    assert tbe("-q", "train", "--data-dir", small_data, "--cache-dir", cache_dir, "--out", tmp_path / "bad",
               *QUICK_TRAIN, "--readout-res", "voxels") == 2
    assert not (tmp_path / "bad").exists()
