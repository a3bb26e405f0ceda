"""Interfaces instead of probes: what a backbone, an encoder and a subject's truth declare, and the code that reads them."""
from __future__ import annotations

import contextlib
import json
import shutil

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from analyses import selectivity_columns
from interpret import checks
from interpret.attention import backbone_attention
from interpret.maps import MapGrid
from model.encoders import DecoderConfig, Encoder, QuerySet, TokenBackbone, build_encoder
from model.encoders.interface import EncoderCore
from model.encoders.registry import NormalisedEncoder
from model.errors import InputError, OptionError
from model.runs.ensembles import EnsembleEncoder
from model.subject import load_subject
from model.truth import require_truth
from model.vision import CATEGORIES


# --------------------------------------------------------------------------
# A backbone is what it declares
# --------------------------------------------------------------------------

class ToyBackbone(nn.Module):
    """No timm: a patch embedding, a class token and one self-attention block, declared as a TokenBackbone."""

    grid, dim, patch, image_side, input_size, depth, block_index = (4, 4), 8, 8, 32, 32, 1, 0
    prefix_tokens, has_class_token, self_attention = 1, True, True

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, self.dim, self.patch, self.patch)
        self.cls = nn.Parameter(torch.randn(1, 1, self.dim))
        self.qk = nn.Linear(self.dim, 2 * self.dim)
        self.recorders: list = []

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return images.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), self.embed(x).flatten(2).transpose(1, 2)], dim=1)
        q, k = self.qk(tokens).chunk(2, dim=-1)
        attention = (q @ k.transpose(1, 2) / self.dim ** 0.5).softmax(-1)[:, None]  # (B, 1 head, N, N)
        for record in self.recorders:
            record(attention)
        return (attention[:, 0] @ tokens)[:, self.prefix_tokens:]

    def describe(self) -> str:
        return "a toy backbone"

    @contextlib.contextmanager
    def record_attention(self, record):
        self.recorders.append(record)
        try:
            yield
        finally:
            self.recorders.remove(record)


def test_a_toy_backbone_that_declares_the_interface_gets_its_attention_maps():
    toy = ToyBackbone()
    assert isinstance(toy, TokenBackbone)
    images = torch.rand(2, 3, 32, 32)
    grid = MapGrid.for_backbone(toy)
    assert (grid.size, grid.image_side, grid.token_grid) == (16, 32, (4, 4))
    ds = backbone_attention(toy, images, grid, ["a", "b"])
    seen = []
    with toy.record_attention(seen.append), torch.no_grad():
        toy(images)
    a = 0.5 * seen[0].mean(1) + 0.5 * torch.eye(17)  # the rollout of one block, by its definition
    a = a / a.sum(-1, keepdim=True)
    roll = a[:, 0, 1:] / a[:, 0, 1:].sum(-1, keepdim=True)
    assert np.allclose(ds["backbone_rollout"].values, grid.from_tokens(roll).numpy(), atol=1e-6)
    assert np.allclose(ds["backbone_cls_attention"].values, grid.from_tokens(seen[0][:, :, 0, 1:]).numpy(), atol=1e-6)
    assert not toy.recorders, "recording ends with the context"


def test_a_backbone_without_a_class_token_is_refused_by_name():
    toy = ToyBackbone()
    toy.has_class_token = False
    with pytest.raises(OptionError, match="^backbone.name: this backbone has no class token"):
        backbone_attention(toy, torch.rand(1, 3, 32, 32), MapGrid.for_backbone(toy), ["a"])


def test_timm_backbones_declare_the_interface():
    from model.backbone import BackboneConfig, build_backbone

    from .conftest import TINY_BACKBONE

    vit = build_backbone(TINY_BACKBONE, 112)
    cnn = build_backbone(BackboneConfig("resnet18", "random", feature="tokens", layer=1), 64)
    assert isinstance(vit, TokenBackbone) and isinstance(cnn, TokenBackbone)
    assert (vit.prefix_tokens, vit.has_class_token, vit.self_attention) == (1, True, True)
    assert (cnn.prefix_tokens, cnn.has_class_token, cnn.self_attention) == (0, False, False)
    seen, fused = [], [b.attn.fused_attn for b in vit.vit.blocks]
    with vit.record_attention(seen.append), torch.no_grad():
        vit(vit.preprocess(torch.rand(1, 3, 112, 112)))
    assert len(seen) == vit.block_index + 1 and seen[0].shape[-1] == 1 + 8 * 8
    assert [b.attn.fused_attn for b in vit.vit.blocks] == fused, "fused attention is as it was"
    with pytest.raises(TypeError, match="no self-attention"):
        cnn.record_attention(seen.append)


# --------------------------------------------------------------------------
# An encoder declares its randomisation order
# --------------------------------------------------------------------------

def _queries(n_queries: int = 3, n_vertices: int = 9) -> QuerySet:
    member = np.zeros((n_vertices, n_queries), bool)
    member[np.arange(n_vertices), np.arange(n_vertices) % n_queries] = True
    return QuerySet(["lh"] * n_queries, [f"q{i}" for i in range(n_queries)], {"lh": n_vertices, "rh": 0}, member)


def _transformer(**cfg) -> NormalisedEncoder:
    decoder = DecoderConfig(hidden_dim=16, nheads=2, dim_feedforward=32, dropout=0.0, **cfg)
    return build_encoder("transformer", _queries(), 8, (3, 4), decoder)


class ToyCore(EncoderCore):
    """A core that declares nothing but its parts: the default order is its trainable parts, last first."""

    def __init__(self):
        super().__init__()
        self.first, self.frozen, self.last = nn.Linear(8, 4), nn.Linear(4, 4).requires_grad_(False), nn.Linear(4, 9)

    def forward(self, x, return_attention=False):
        return {"pred": self.last(self.frozen(self.first(x.mean(1))))}


def test_every_encoder_declares_its_randomisation_order():
    transformer = _transformer(dec_layers=2)
    assert isinstance(transformer, Encoder)
    assert transformer.core.randomisation_order() == ["readout", "norm", "layers.1", "layers.0", "query_embed",
                                                      "windows", "input_proj"]  # sine positions learn nothing
    learned = _transformer(position_embedding="learned", enc_layers=1, attention="standard").core.randomisation_order()
    assert learned == ["readout", "norm", "layers.0", "query_embed", "token_encoder", "pos", "input_proj"]
    assert checks.cascade(transformer) == transformer.core.randomisation_order()
    toy = NormalisedEncoder(ToyCore(), 8)
    assert checks.cascade(toy) == ["last", "first"]
    for name in ("ridge", "linear", "spatial_feature"):
        core = build_encoder(name, _queries(), 8, (3, 4), DecoderConfig()).core
        assert core.randomisation_order() == [n for n, m in reversed(list(core.named_children()))
                                              if any(p.requires_grad for p in m.parameters())]


def test_an_ensemble_randomises_each_part_in_every_member_and_refuses_mixed_architectures():
    a, b = _transformer(), _transformer()
    ensemble = EnsembleEncoder([a, b], np.full((2, 9), 0.5), [(0, 8), (8, 16)])
    steps = ensemble.randomisation_steps()
    assert [part for part, _ in steps] == checks.cascade(a)
    assert all(modules == [a.core.get_submodule(part), b.core.get_submodule(part)] for part, modules in steps)
    before = [p.clone() for p in ensemble.parameters()]
    part, model = next(checks.randomised(ensemble))
    assert part == "readout" and all(torch.equal(x, y) for x, y in zip(before, ensemble.parameters()))  # a copy
    assert not torch.equal(model.members[1].core.readout.weight, b.core.readout.weight)
    mixed = EnsembleEncoder([a, NormalisedEncoder(ToyCore(), 8)], np.full((2, 9), 0.5), [(0, 8), (8, 16)])
    with pytest.raises(OptionError, match="^run: the sanity cascade of an ensemble needs members of one architecture"):
        checks.cascade(mixed)


# --------------------------------------------------------------------------
# The truth answers questions
# --------------------------------------------------------------------------

def test_the_truths_answers_are_what_its_files_say(tiny_data):
    truth = load_subject(tiny_data, 1, check_images=False).truth
    raw = json.loads((truth.folder / "rois.json").read_text())
    assert truth.preferences() == {roi: info["preference"] for roi, info in raw.items()}
    assert truth.preferences()["FFA-1"] == "face" and truth.preferences()["V1v"] == "prf"
    assert truth.null_rois() == [(h, roi) for roi, info in raw.items() if info["preference"] is None
                                 for h in info["hemis"]]
    assert truth.null_rois(), "a virtual subject plants null ROIs"
    for hemi in ("lh", "rh"):
        with xr.open_dataset(truth.folder / f"{hemi}_tuning.nc") as ds:
            null = ds["kind"].values == "null"
            preference = ds["preference"].values
        for c, category in enumerate(CATEGORIES):
            assert np.array_equal(truth.planted_vertices(hemi, category), (preference[:, c] >= 1) & ~null)
    assert truth.planted_vertices("lh", "face").any()
    assert truth.images_file == truth.folder / "images.csv" and truth.images_file.is_file()


def test_a_real_subject_is_refused_by_the_truths_folder(data_copy):
    shutil.rmtree(data_copy / "subj01" / "ground_truth")
    subject = load_subject(data_copy, 1, check_images=False)
    with pytest.raises(InputError) as err:
        require_truth(subject, "only a virtual subject's maps can be localized")
    assert err.value.where == str(data_copy / "subj01" / "ground_truth")
    assert err.value.problem == "missing: only a virtual subject's maps can be localized"


# --------------------------------------------------------------------------
# One registry of selectivity columns
# --------------------------------------------------------------------------

def test_the_selectivity_table_its_dataset_and_the_reports_read_one_registry(monkeypatch):
    import analyses.report_views as rv
    from analyses import stats as S
    from analyses.selectivity import SelectivitySettings, selectivity_table

    column = selectivity_columns.Column("effect_squared", lambda c: S.d_prime(c.moments) ** 2, dataset=True, shown=True)
    registry = (*selectivity_columns.COLUMNS[:15], column, *selectivity_columns.COLUMNS[15:])
    monkeypatch.setattr(selectivity_columns, "COLUMNS", registry)
    rng = np.random.default_rng(0)
    responses = xr.DataArray(rng.standard_normal((40, 1, 2)), dims=("image", "hemi", "roi"),
                             coords={"hemi": ["lh"], "roi": ["FFA-1", "PPA"], "roi_class": ("roi", ["floc-faces", "floc-places"])})
    labels = rng.choice(["face", "place"], 40)
    table = selectivity_table(responses, labels, ["face", "place"], SelectivitySettings(n_permutations=50, n_bootstrap=20))
    assert np.allclose(table["effect_squared"], table["d_prime"] ** 2)
    assert list(table.columns).index("effect_squared") == list(table.columns).index("d_prime") + 1
    assert "effect_squared" in selectivity_columns.names(dataset=True)  # selectivity.nc (to_dataset) reads these
    table["expected"] = True
    for extra in ("planted", "r_heldout", "supported"):
        table[extra] = ""
    shown = rv.expected_preferences(table)
    assert "effect_squared" in shown and "t" not in shown
