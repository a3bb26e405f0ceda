"""The decoder, its ROI queries and readouts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.encoders import READOUT_RES, DecoderConfig, QuerySet, build_queries
from model.encoders.layers import PositionEmbeddingSine
from model.encoders.readouts import (LinearReadout, MembershipPlan, RetinotopicReadout, dense_linear_readout,
                                     membership_linear)
from model.encoders.transformer import BrainEncoder
from model.errors import InputError
from model.rois import NON_STREAM_CLASSES
from model.subject import load_subject


def _random_queries(n_vertices=300, n_queries=9, seed=0) -> QuerySet:
    rng = np.random.default_rng(seed)
    member = rng.random((n_vertices, n_queries)) < 0.25
    member[np.arange(n_vertices), rng.integers(n_queries, size=n_vertices)] = True  # at least one each
    return QuerySet(["lh"] * n_queries, [f"q{i}" for i in range(n_queries)], {"lh": n_vertices, "rh": 0}, member)


@pytest.mark.parametrize("source", ["random", "subject"])
def test_linear_readout_equals_compute_every_query_then_mask(source, tiny_data):
    queries = _random_queries() if source == "random" else build_queries(load_subject(tiny_data, 1), "rois_all")
    assert (queries.memberships.sum(1) > 1).any(), "overlapping ROIs must be part of the test"
    torch.manual_seed(0)
    readout = LinearReadout(queries, hidden=32)
    tokens = torch.randn(5, queries.n_queries, 32, requires_grad=True)
    ours = readout(tokens)
    dense = dense_linear_readout(tokens, readout.weight, readout.bias, torch.as_tensor(queries.memberships))
    assert torch.allclose(ours, dense, atol=1e-5)
    # the hand-written backward agrees with autograd through the dense definition
    g = torch.randn_like(ours)
    grads = torch.autograd.grad(ours, (tokens, readout.weight, readout.bias), g)
    dense_grads = torch.autograd.grad(dense, (tokens, readout.weight, readout.bias), g)
    for a, b in zip(grads, dense_grads):
        assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("chunk", [None, 1, 3, 64])
def test_membership_linear_backward_matches_numerical_gradients(chunk):
    """Several chunks per query, padded last chunks and vertices in up to all queries."""
    queries = _random_queries(40, 4)
    member = queries.memberships.copy()
    member[:3] = True
    plan = MembershipPlan.from_memberships(member, chunk)
    assert plan.extra_slot.numel() > 0
    inputs = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(40, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda i, w: membership_linear(i, w, plan), (inputs, weight))
    expected = torch.einsum("vq,bqd,vd->bv", torch.as_tensor(member, dtype=torch.float64), inputs, weight)
    assert torch.allclose(membership_linear(inputs, weight, plan), expected, atol=1e-12)


def test_membership_plan_needs_a_query_for_every_vertex():
    member = np.zeros((5, 2), bool)
    member[:4, 0] = True
    with pytest.raises(InputError, match="at least one query"):
        MembershipPlan.from_memberships(member)


def test_retinotopic_readout_equals_its_dense_definition():
    """Vertex v: sum over its queries q of  w_v.h_q + b_v + sum_k c_vk sum_t s_vt m_qkt."""
    queries = _random_queries(120, 5)
    torch.manual_seed(1)
    readout = RetinotopicReadout(queries, hidden=16, n_tokens=12, n_maps=3, map_dim=8)
    with torch.no_grad():
        readout.spatial.normal_()
    tokens, memory = torch.randn(2, 5, 16), torch.randn(2, 12, 16)
    heads = torch.rand(2, 3, 5, 12).softmax(-1)
    attention = heads.mean(1)
    member = torch.as_tensor(queries.memberships, dtype=torch.float32)  # (V, Q)
    tokens.requires_grad_(True)
    maps = readout.maps(tokens, memory, attention)  # (B, Q, K, T)
    linear = dense_linear_readout(tokens, readout.weight, readout.bias, member)
    spatial = torch.einsum("vq,bqkt,vt,vk->bv", member, maps, readout.spatial, readout.channel)
    ours = readout(tokens, memory, heads)
    assert torch.allclose(ours, linear + spatial, atol=1e-4)
    _assert_same_gradients(ours, linear + spatial, [tokens, readout.weight, readout.spatial, readout.channel])
    # the query's attention gates its maps: nothing passes where it does not look
    blind = attention.clone()
    blind[:, :, :6] = 0
    assert torch.all(readout.maps(tokens, memory, blind)[..., :6] == 0)


def _assert_same_gradients(ours: torch.Tensor, dense: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    g = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, tensors, g, retain_graph=True), torch.autograd.grad(dense, tensors, g)):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_rois_all_has_a_query_per_roi_plus_unassigned(tiny_data):
    subject = load_subject(tiny_data, 1)
    queries = build_queries(subject, "rois_all")
    for hemi in ("lh", "rh"):
        rois = [r for h, r in zip(queries.hemis, queries.rois) if h == hemi]
        expected = [roi for c in NON_STREAM_CLASSES for roi in subject.roi_names(c, hemi)] + ["unknown"]
        assert rois == expected
    assert queries.n_queries == 25 + 22, "words ROIs missing from the right hemisphere of the virtual subject"
    assert queries.memberships.any(1).all(), "every vertex is read out"
    hemis = build_queries(subject, "hemis")
    assert hemis.names == ["lh:unknown", "rh:unknown"]
    for name in READOUT_RES:
        assert build_queries(subject, name).memberships.any(1).all()
    with pytest.raises(InputError, match="unknown readout"):
        build_queries(subject, "voxel_soup")


def test_position_encoding_is_distinct_and_bounded():
    pe = PositionEmbeddingSine(64)(4, 5)
    assert pe.shape == (20, 64)
    assert pe.abs().max() <= 1
    assert torch.unique(pe, dim=0).shape[0] == 20


def test_attention_weights_come_from_the_predicting_pass():
    queries = _random_queries(80, 6)
    torch.manual_seed(0)
    model = BrainEncoder(queries, feature_dim=24, grid=(3, 4), cfg=DecoderConfig(hidden_dim=32, nheads=4, dec_layers=2,
                                                                                 dropout=0.0, readout="linear")).eval()
    x = torch.randn(3, 12, 24)
    with torch.no_grad():
        plain = model(x)["pred"]
        out = model(x, return_attention=True)
    assert torch.allclose(plain, out["pred"], atol=1e-6)
    attn = out["attention"]
    assert attn.shape == (3, 2, 4, 6, 12)
    assert torch.allclose(attn.sum(-1).mean(2), torch.ones(3, 2, 6), atol=1e-5)  # the heads' average sums to 1


def test_head_readout_equals_its_dense_definition():
    """Vertex v: sum over its queries q of  w_v.h_q + b_v + sum_{h,d} u_v[h,d] sum_t a_hqt psi(x_t)_d."""
    from model.encoders.readouts import HeadReadout

    queries = _random_queries(90, 4)
    torch.manual_seed(2)
    readout = HeadReadout(queries, hidden=16, nheads=3, map_dim=5)
    tokens, memory = torch.randn(2, 4, 16), torch.randn(2, 10, 16)
    heads = torch.rand(2, 3, 4, 10).softmax(-1)
    member = torch.as_tensor(queries.memberships, dtype=torch.float32)
    psi = readout.token_mlp(memory)  # (B, T, D)
    u = readout.head_weight.view(90, 3, 5)
    head_part = torch.einsum("vq,bhqt,btd,vhd->bv", member, heads, psi, u)
    linear = dense_linear_readout(tokens, readout.weight, readout.bias, member)
    ours = readout(tokens, memory, heads)
    assert torch.allclose(ours, linear + head_part, atol=1e-4)
    _assert_same_gradients(ours, linear + head_part, [readout.weight, readout.head_weight, readout.token_mlp[1].weight])


@pytest.mark.parametrize("name", ["linear", "retinotopic", "heads"])
def test_readout_subset_predicts_the_same_values(name):
    """Interpretation restricts the readout to a target's vertices: same predictions, fewer vertices."""
    from model.encoders.readouts import READOUTS

    queries = _random_queries(90, 4)
    torch.manual_seed(3)
    cfg = DecoderConfig(hidden_dim=16, nheads=3, readout=name, readout_maps=2, readout_map_dim=8)
    readout = READOUTS[name].from_config(queries, cfg, n_tokens=10)
    tokens, memory, heads = torch.randn(2, 4, 16), torch.randn(2, 10, 16), torch.rand(2, 3, 4, 10).softmax(-1)
    vertices = np.array([5, 80, 6, 41, 0])
    part = readout.subset(vertices)
    assert part.n_vertices == 5 and readout.n_vertices == 90
    with torch.no_grad():
        assert torch.allclose(part(tokens, memory, heads), readout(tokens, memory, heads)[:, vertices], atol=1e-5)


@pytest.mark.parametrize("arch", ["transformer", "spatial_feature", "linear", "ridge"])
def test_architectures_do_what_their_capabilities_declare(arch):
    """Declared, not probed: each declaration is checked against what the encoder really does."""
    from model.encoders import ARCHITECTURES, RidgeConfig, build_encoder

    queries = _random_queries(50, 4)
    torch.manual_seed(4)
    model = build_encoder(arch, queries, 8, (3, 4), DecoderConfig(hidden_dim=16, nheads=2, dim_feedforward=32, dropout=0.0),
                          RidgeConfig(pool=2)).eval()
    can = model.capabilities
    assert can == ARCHITECTURES[arch].capabilities
    x = torch.randn(2, 12, 8)
    with torch.no_grad():
        pred = model(x)["pred"]
        assert pred.shape == (2, 50)
        if can.decoder_attention:
            assert model(x, return_attention=True)["attention"].shape == (2, 1, 2, 4, 12)
            assert len(model.core.layers) == 1
        if can.restrict_vertices:
            vertices = np.array([7, 3, 41])
            assert torch.allclose(model.restricted(vertices)(x)["pred"], pred[:, vertices], atol=1e-6)
        else:
            with pytest.raises(TypeError, match="cannot be restricted"):
                model.restricted(np.array([0]))
    if can.regularisation:
        term = model.core.regularization()
        assert term.ndim == 0 and term.requires_grad and term > 0
    assert can.closed_form == hasattr(model.core, "fit")


def test_each_architecture_is_built_from_its_own_section():
    from model.encoders import RidgeConfig, build_encoder

    queries = _random_queries(30, 3)
    ridge = build_encoder("ridge", queries, 8, (4, 4), DecoderConfig(hidden_dim=12), RidgeConfig("pooled_squared", pool=2))
    assert (ridge.core.kind, ridge.core.pool) == ("pooled_squared", 2)
    decoder = DecoderConfig(hidden_dim=16, nheads=2, dec_layers=2, readout="heads", readout_map_dim=3)
    transformer = build_encoder("transformer", queries, 8, (4, 4), decoder, RidgeConfig(pool=3))
    assert transformer.core.cfg is decoder and len(transformer.core.layers) == 2
    assert transformer.core.readout.head_weight.shape == (30, 2 * 3)


def test_query_init_is_the_originals_normal_or_xavier():
    """``--query-init normal`` leaves the query embeddings N(0, 1) as the original did; xavier is far narrower."""
    queries = _random_queries(200, 50)
    stds = {}
    for init in ("normal", "xavier"):
        torch.manual_seed(0)
        model = BrainEncoder(queries, 256, (4, 4), DecoderConfig(hidden_dim=256, nheads=4, readout="linear", query_init=init))
        stds[init] = float(model.query_embed.weight.detach().std())
    assert abs(stds["normal"] - 1) < 0.05
    assert abs(stds["xavier"] - (2 / (50 + 256)) ** 0.5) < 0.01
    with pytest.raises(Exception, match="decoder.query_init"):
        DecoderConfig(query_init="zeros").validate()
