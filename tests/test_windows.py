"""Cross-attention through learned windows (model/encoders/windows.py, ``--attention windows``)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from model.backbone import BackboneConfig
from model.encoders import DecoderConfig, QuerySet
from model.encoders.transformer import BrainEncoder, CustomTransformer
from model.encoders.registry import build_encoder
from model.encoders.configs import CONTENT_KEY_CHOICES
from model.encoders.windows import (CENTRE_SCALE, WINDOW_SOFTMAXES, QueryWindows, WindowedCrossAttention, content_key_for,
                                    grid_positions, initial_centres, neighbourhood_mean)
from model.runs import TrainConfig
from model.training.loop import make_optimiser
from model.errors import OptionError
from model.runs import RunConfig

QUERIES = QuerySet(["lh", "lh", "rh"], ["V1v", "FFA-1", "V1v"], {"lh": 6, "rh": 4},
                   np.eye(3, dtype=bool)[[0, 0, 0, 1, 1, 1, 2, 2, 2, 2]])


def test_grid_positions_are_token_centres_row_major():
    xy = grid_positions(2, 4)
    assert xy.shape == (8, 2)
    np.testing.assert_allclose(xy[0], [-0.75, -0.5])  # top-left token: x left, y up the page (down is +)
    np.testing.assert_allclose(xy[3], [0.75, -0.5])
    np.testing.assert_allclose(xy[4], [-0.75, 0.5])


def test_initial_windows_tile_the_image():
    c = initial_centres(16)
    assert c.shape == (16, 2) and len(torch.unique(c, dim=0)) == 16
    assert torch.allclose(c.mean(0), torch.zeros(2), atol=1e-6)
    windows = QueryWindows(3, 4)
    prior = windows.log_prior((8, 8))
    assert prior.shape == (3, 4, 64) and (prior <= 0).all()
    peak = grid_positions(8, 8)[prior[0].argmax(-1)]  # each head's most open token is the one nearest its centre
    assert torch.allclose(peak, initial_centres(4), atol=0.13)


def test_without_content_each_head_sees_its_normalised_window():
    attn = WindowedCrossAttention(8, 2, dropout=0.0, softmax="per_head")
    torch.nn.init.zeros_(attn.q_proj.weight), torch.nn.init.zeros_(attn.q_proj.bias)
    windows = QueryWindows(1, 2)
    with torch.no_grad():
        windows.centre[0] = torch.tensor([[-0.5, -0.5], [0.5, 0.5]]) / CENTRE_SCALE
    prior = windows.log_prior((6, 6))
    _, weights = attn(torch.randn(1, 1, 8), torch.randn(1, 36, 8), torch.randn(1, 36, 8), prior)
    expected = prior.softmax(-1).transpose(0, 1)[None]  # (1, heads, Q, T)
    torch.testing.assert_close(weights, expected)


def test_shared_softmax_gives_the_heads_with_content_the_attention():
    """Heads share one softmax: their average is the content score within the union of the windows,
    and a head whose window holds nothing the content score wants gets little of it."""
    attn = WindowedCrossAttention(8, 2, dropout=0.0, softmax="shared")
    windows = QueryWindows(1, 2)
    with torch.no_grad():
        windows.centre[0] = torch.tensor([[-0.6, 0.0], [0.6, 0.0]]) / CENTRE_SCALE
        windows.log_sigma.fill_(np.log(0.2))
    prior = windows.log_prior((6, 6))
    keys = torch.randn(1, 36, 8)
    query = torch.randn(1, 1, 8)
    _, weights = attn(query, keys, keys, prior)
    content = (attn.q_proj(query) @ attn.k_proj(keys).transpose(1, 2) / np.sqrt(8))[0, 0]
    union = content.exp() * prior[0].exp().sum(0)
    torch.testing.assert_close(weights[0, :, 0].mean(0), union / union.sum())
    torch.testing.assert_close(weights[0, :, 0].sum(-1).mean(), torch.tensor(1.0))
    left = grid_positions(6, 6)[:, 0] < 0
    with torch.no_grad():  # the content score now prefers the right half by far: the left head gets almost nothing
        attn.k_proj.bias.zero_()
        match = attn.k_proj.weight.T @ attn.q_proj(query)[0, 0]  # content score of ``match``: |W_k^T q|^2 / sqrt(8) > 0
        match *= 20 * np.sqrt(8) / match.square().sum()
        keys = torch.where(left[None, :, None], torch.zeros(1, 36, 8), match)
    _, weights = attn(query, keys, keys, prior)
    share = weights[0, :, 0].sum(-1) / 2
    assert share[1] > 0.99 and share[0] < 0.01
    _, per_head = WindowedCrossAttention(8, 2, dropout=0.0, softmax="per_head")(query, keys, keys, prior)
    torch.testing.assert_close(per_head[0, :, 0].sum(-1), torch.ones(2))  # each head keeps its share


def test_content_moves_every_head_alike():
    """A token the content score favours gains weight in every head, inside each head's window."""
    attn = WindowedCrossAttention(8, 4, dropout=0.0)
    keys = torch.randn(1, 36, 8)
    prior = QueryWindows(1, 4).log_prior((6, 6))
    query = torch.randn(1, 1, 8)
    _, base = attn(query, keys, keys, prior)
    content = attn.q_proj(query) @ attn.k_proj(keys).transpose(1, 2)
    best = int(content.argmax())
    keys2 = keys.clone()
    keys2[0, best] *= 3  # a stronger match of the favoured token
    _, more = attn(query, keys2, keys2, prior)
    assert (more[0, :, 0, best] > base[0, :, 0, best]).all()


@pytest.mark.parametrize("readout", ["linear", "heads", "retinotopic"])
def test_windows_train_with_every_readout_and_chunking_is_exact(readout):
    cfg = DecoderConfig(hidden_dim=32, nheads=4, dim_feedforward=64, attention="windows", readout=readout, query_chunk=0)
    cfg.validate()
    torch.manual_seed(0)
    enc = BrainEncoder(QUERIES, 16, (4, 4), cfg)
    out = enc(torch.randn(2, 16, 16), return_attention=True)
    assert out["pred"].shape == (2, 10) and out["attention"].shape == (2, 1, 4, 3, 16)
    torch.testing.assert_close(out["attention"].sum(-1).mean(2), torch.ones(2, 1, 3))  # the heads' average sums to 1
    out["pred"].square().sum().backward()
    assert enc.windows.centre.grad.abs().sum() > 0 and enc.windows.log_sigma.grad.abs().sum() > 0
    if readout == "linear":  # chunks of queries decode exactly as all at once
        enc.eval()
        x = torch.randn(2, 16, 16)
        whole = enc(x)["pred"]
        enc.cfg = DecoderConfig(**{**cfg.to_dict(), "query_chunk": 1})
        torch.testing.assert_close(enc(x)["pred"], whole)


def test_windows_refused_where_they_cannot_apply():
    with pytest.raises(OptionError, match="decoder.attention: windows need pre-norm"):
        DecoderConfig(attention="windows", pre_norm=False).validate()
    with pytest.raises(OptionError, match="decoder.attention: must be one of standard, windows"):
        DecoderConfig(attention="gaussian").validate()
    with pytest.raises(OptionError, match="custom_transformer has the original's attention only"):
        CustomTransformer(QUERIES, 16, (4, 4), DecoderConfig(hidden_dim=32, nheads=4, attention="windows"))


def test_a_config_written_before_windows_existed_reads_as_standard_attention():
    config = RunConfig("d", 1, "rois_all", "transformer", BackboneConfig(), DecoderConfig(attention="windows")).to_dict()
    del config["decoder"]["attention"]
    assert RunConfig.from_dict(config).decoder.attention == "standard"


def test_a_windows_config_written_before_the_shared_softmax_reads_as_it_was_trained():
    config = RunConfig("d", 1, "rois_all", "transformer", BackboneConfig(), DecoderConfig()).to_dict()
    assert (config["decoder"]["window_softmax"], config["decoder"]["window_lr"]) == ("shared", 10.0)
    assert config["decoder"]["content_key"] == "auto"
    for key in ("window_softmax", "window_lr", "content_key"):
        del config["decoder"][key]
    decoder = RunConfig.from_dict(config).decoder
    assert (decoder.attention, decoder.window_softmax, decoder.window_lr, decoder.content_key) == \
        ("windows", "per_head", 1.0, "linear")
    with pytest.raises(OptionError, match="decoder.window_softmax: must be one of shared, per_head"):
        DecoderConfig(window_softmax="joint").validate()
    with pytest.raises(OptionError, match="decoder.window_lr: must be a positive number"):
        DecoderConfig(window_lr=0).validate()
    with pytest.raises(OptionError, match="decoder.content_key: must be one of auto, mlp, wide_mlp, context_mlp, linear"):
        DecoderConfig(content_key="quadratic").validate()


@pytest.mark.parametrize("content_key, width", [("mlp", 8), ("wide_mlp", 16)])
def test_the_mlp_content_keys_are_the_linear_key_plus_a_network_of_the_token(content_key, width):
    """k(m) = W m + W_2 gelu(W_1 m) with a hidden layer as wide as the token (mlp) or twice (wide_mlp); the other
    layers start as they would with a linear key (made last), and a run written with the linear key keeps its
    state-dict names."""
    torch.manual_seed(0)
    linear = WindowedCrossAttention(8, 2, dropout=0.0, content_key="linear")
    torch.manual_seed(0)
    mlp = WindowedCrossAttention(8, 2, dropout=0.0, content_key=content_key)
    assert mlp.k_proj.hidden.weight.shape == (width, 8) and mlp.k_proj.correction.weight.shape == (8, width)
    for name in ("q_proj", "v_proj", "out_proj"):
        torch.testing.assert_close(getattr(mlp, name).weight, getattr(linear, name).weight)
    torch.testing.assert_close(mlp.k_proj.linear.weight, linear.k_proj.weight)
    tokens = torch.randn(3, 8)
    key = mlp.k_proj
    expected = key.linear(tokens) + key.correction(torch.nn.functional.gelu(key.hidden(tokens)))
    torch.testing.assert_close(key(tokens), expected)
    torch.testing.assert_close(key(tokens, (1, 3)), expected)  # the token alone: the grid is not read
    assert not torch.allclose(key(tokens), linear.k_proj(tokens))  # the network adds to the linear key
    with torch.no_grad():
        key.correction.weight.zero_(), key.correction.bias.zero_()
    torch.testing.assert_close(key(tokens), linear.k_proj(tokens))
    assert {"k_proj.weight", "k_proj.bias"} <= set(linear.state_dict())
    assert {"k_proj.linear.weight", "k_proj.hidden.weight", "k_proj.correction.weight"} <= set(mlp.state_dict())


def test_the_context_key_reads_each_token_and_the_mean_of_its_neighbourhood():
    """k(m) = W m + W_2 gelu(W_1 [m; mean of m's 3 x 3 neighbourhood]) on a non-square grid, edges averaging the
    neighbours that exist; the other layers start as with a linear key."""
    torch.manual_seed(0)
    linear = WindowedCrossAttention(8, 2, dropout=0.0, content_key="linear")
    torch.manual_seed(0)
    attn = WindowedCrossAttention(8, 2, dropout=0.0, content_key="context_mlp")
    key = attn.k_proj
    assert key.hidden.weight.shape == (8, 16) and key.correction.weight.shape == (8, 8)
    for name in ("q_proj", "v_proj", "out_proj"):
        torch.testing.assert_close(getattr(attn, name).weight, getattr(linear, name).weight)
    grid = (3, 4)
    tokens = torch.randn(2, 12, 8)
    planes = tokens.reshape(2, *grid, 8)
    mean = torch.empty_like(planes)
    for r in range(3):
        for c in range(4):
            mean[:, r, c] = planes[:, max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].mean((1, 2))
    mean = mean.reshape(2, 12, 8)
    torch.testing.assert_close(neighbourhood_mean(tokens, grid), mean)
    expected = key.linear(tokens) + key.correction(torch.nn.functional.gelu(key.hidden(torch.cat([tokens, mean], -1))))
    torch.testing.assert_close(key(tokens, grid), expected)
    with pytest.raises(ValueError, match="needs their grid"):
        key(tokens)
    with pytest.raises(ValueError, match="12 tokens do not make a 4x4 grid"):
        key(tokens, (4, 4))


def test_the_context_key_sees_where_the_tokens_lie():
    """The same tokens in another arrangement get other keys (the neighbourhood changes), unlike with the token-alone
    key; through the whole decoder on a non-square grid."""
    torch.manual_seed(0)
    cfg = DecoderConfig(hidden_dim=32, nheads=4, dim_feedforward=64, content_key="context_mlp")
    model = build_encoder("transformer", QUERIES, 16, (3, 5), cfg).eval()
    features = torch.randn(2, 15, 16)
    with torch.no_grad():
        out = model(features, return_attention=True)
    assert out["attention"].shape[-1] == 15 and torch.isfinite(out["pred"]).all()
    key = next(m for m in model.modules() if isinstance(m, WindowedCrossAttention)).k_proj
    tokens = torch.randn(1, 15, 32)
    order = torch.randperm(15)
    assert not torch.allclose(key(tokens, (3, 5))[:, order], key(tokens[:, order], (3, 5)))
    token_alone = WindowedCrossAttention(32, 4, dropout=0.0, content_key="mlp").k_proj
    torch.testing.assert_close(token_alone(tokens)[:, order], token_alone(tokens[:, order]))


@pytest.mark.parametrize("grid, key", [((16, 16), "mlp"), ((8, 30), "mlp"), ((24, 31), "context_mlp"),
                                       ((31, 31), "context_mlp")])
def test_the_default_key_reads_the_neighbourhood_on_fine_grids_only(grid, key):
    """``auto`` builds exactly the model its grid's key builds (same parameters, same initial weights, same
    predictions) and records itself, not what it became; the choice goes by the grid's shorter side."""
    assert content_key_for("auto", grid) == key and content_key_for("wide_mlp", grid) == "wide_mlp"
    small = dict(hidden_dim=32, nheads=4, dim_feedforward=64)
    models = {}
    for name in ("auto", key):
        torch.manual_seed(0)
        models[name] = build_encoder("transformer", QUERIES, 16, grid, DecoderConfig(**small, content_key=name)).eval()
    auto, chosen = models["auto"], models[key]
    assert auto.core.content_key == key and auto.core.cfg.content_key == "auto"
    assert auto.state_dict().keys() == chosen.state_dict().keys()
    for name, weight in auto.state_dict().items():
        torch.testing.assert_close(weight, chosen.state_dict()[name], msg=name)
    features = torch.randn(2, grid[0] * grid[1], 16)
    with torch.no_grad():
        torch.testing.assert_close(auto(features)["pred"], chosen(features)["pred"])


def test_training_says_what_the_default_key_became(caplog):
    from model.training.loop import _log_grid_choices

    small = dict(hidden_dim=32, nheads=4, dim_feedforward=64)
    for key, grid, said in (("auto", (31, 31), "content key context_mlp: `auto` on 31 x 31 tokens"),
                            ("auto", (16, 16), "content key mlp: `auto` on 16 x 16 tokens"), ("mlp", (31, 31), None)):
        caplog.clear()
        decoder = DecoderConfig(**small, content_key=key)
        config = dataclasses.replace(RunConfig("d", 1, "rois_all", "transformer", BackboneConfig(), decoder), grid=grid)
        with caplog.at_level("INFO", logger="model.training.loop"):
            _log_grid_choices(config, build_encoder("transformer", QUERIES, 16, grid, decoder))
        assert [r.getMessage() for r in caplog.records] == ([said] if said else [])


@pytest.mark.parametrize("scale", [10.0, 1.0])
def test_windows_learn_at_their_own_rate(scale):
    """The windows get a group at ``window_lr`` x lr; at 1 no group is added (older runs resume with their optimiser state)."""
    cfg = DecoderConfig(hidden_dim=32, nheads=4, dim_feedforward=64, window_lr=scale)
    model = build_encoder("transformer", QUERIES, 16, (4, 4), cfg)
    optimizer, _ = make_optimiser(model, TrainConfig(lr=1e-3))
    windows = {id(p) for p in model.core.windows.parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    groups = [(g["lr"], {id(p) for p in g["params"]}) for g in optimizer.param_groups]
    expected = [(1e-3, trainable)] if scale == 1 else [(1e-3, trainable - windows), (1e-3 * scale, windows)]
    assert groups == expected


def test_window_settings_matter_only_to_windows_runs():
    """A standard-attention run written before the window settings existed resumes (and is reused) under
    today's defaults; a windows run trained per head does not pass for one with the shared softmax."""
    standard = RunConfig("d", 1, "rois_all", "transformer", BackboneConfig(), DecoderConfig(attention="standard"))
    old = standard.to_dict()
    for key in ("window_softmax", "window_lr", "content_key"):
        del old["decoder"][key]
    assert RunConfig.from_dict(old).decoder.window_softmax == "per_head"
    assert RunConfig.from_dict(old).comparable() == standard.comparable()
    windows = RunConfig("d", 1, "rois_all", "transformer", BackboneConfig(), DecoderConfig())
    per_head = RunConfig("d", 1, "rois_all", "transformer", BackboneConfig(), DecoderConfig(window_softmax="per_head"))
    assert windows.comparable()["decoder"] != per_head.comparable()["decoder"]
    linear_key = RunConfig("d", 1, "rois_all", "transformer", BackboneConfig(), DecoderConfig(content_key="linear"))
    assert windows.comparable()["decoder"] != linear_key.comparable()["decoder"]


def test_the_help_of_the_window_options_is_built_from_their_registries():
    """A key or softmax added to the registry appears in ``--help`` with its own description."""
    from model.options import option_help

    for field, registry in (("content_key", CONTENT_KEY_CHOICES), ("window_softmax", WINDOW_SOFTMAXES)):
        text = option_help(next(f for f in dataclasses.fields(DecoderConfig) if f.name == field).metadata)
        for name, choice in registry.items():
            assert f"{name}: {choice.description}" in text and choice.description
