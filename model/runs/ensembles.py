"""Ensembles of runs: per-vertex weighted sums of trained runs' predictions, readable as a run.

``tbe ensemble --runs RUN... --out ENS`` combines complete runs of one
subject that share one validation split (and were trained on the same
data). The original project's published numbers came from such ensembles:
runs over backbone layers (``--enc-output-layer 1,3,5,7``) and seeds,
combined per vertex by their validation r. Making one:
:func:`model.training.ensembling.make_ensemble`.

Weights and the cross-fitted validation r: :mod:`model.runs.ensemble_weights`.

The ensemble directory
----------------------
```
ENS/ensemble.json                members (absolute paths), weighting, temperature, subject, data fingerprint
ENS/weights.npy                  (members, vertices) per-vertex member weights, lh vertices then rh
ENS/val_indices.npy              the members' shared validation split
ENS/{lh,rh}_val_corr.npy         cross-fitted validation r per vertex
ENS/{lh,rh}_val_corr_in_sample.npy
ENS/{lh,rh}_pred_test.npy        the weighted sum of the members' test predictions (float32)
ENS/{lh,rh}_best_member.npy      per vertex, the member (index in ensemble.json) with the highest validation r
ENS/{lh,rh}_best_layer.npy       its --enc-output-layer, when members differ in it: the preferred backbone layer
ENS/metrics.json                 written last, as for a run; manifest.json
```
Everything that reads a run reads it (:func:`model.runs.configs.read_config`,
:func:`model.runs.opening.open_run`).

Features: every member from its own backbone
---------------------------------------------
Members with one backbone configuration form a *feature group*; the
ensemble's encoder input is the groups' tokens side by side along the
channels ``(B, T, sum C_g)`` and each member reads its group's slice
(:class:`EnsembleEncoder`). A seed ensemble therefore reads one feature
cache entry, a layer ensemble one per layer, and every member still sees
exactly the features it was trained on. Many images are read lazily, batch
by batch (:class:`StackedFeatures`). Maps (attention, attributions) run the
images through every group's backbone (:class:`StackedBackbone`), which needs
their tokens on one grid (the same patch grid of the same image size, as in
a layer ensemble of one ViT); otherwise they are refused, naming the member.

Maps of an ensemble
-------------------
Decoder attention: per member, the last decoder layer's cross-attention
averaged over heads (members' heads do not correspond); the ensemble's map
of the ROI query ``q`` is ``sum_m W_m[q] A_m[q]``, where ``W_m[q]`` is the
mean of member ``m``'s per-vertex weights over ``q``'s vertices (these sum to
1 over members). It is stored as one layer and one head, and needs members
with decoder attention and the same ROI queries. Attributions explain the
ensemble's prediction itself (the weighted sum, through every member);
token-level ones attribute to the stacked tokens, summed over all channels.
The sanity cascade randomises the same part in every member at each step.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..encoders import Capabilities
from ..errors import InputError, OptionError
from ..files import load_npy, read_rows
from ..subject import Subject, load_subject
from .configs import RunConfig, read_config
from .layout import CONFIG, VAL_INDICES, is_ensemble, read_metrics
from .run import Run, check_trained_on


# --------------------------------------------------------------------------
# Members
# --------------------------------------------------------------------------

@dataclass
class Member:
    """A complete run listed in ``--runs``."""

    path: Path
    config: RunConfig
    label: str


def _labels(paths: list[Path]) -> list[str]:
    """Short names: the folder name, with its parent where names repeat."""
    names = [p.name for p in paths]
    return [n if names.count(n) == 1 else f"{p.parent.name}/{n}" for n, p in zip(names, paths)]


def check_members(runs: Sequence[str | Path], data_dir: str | Path | None = None
                  ) -> tuple[Subject, list[Member], np.ndarray]:
    """Complete runs of one subject, trained on the same data with one validation split; else one error naming the run.

    Returns the subject (from ``data_dir``, default the first run's), the
    members and their shared validation indices.
    """
    if not runs:
        raise OptionError("runs", "list at least one run directory")
    paths = [Path(r).expanduser().resolve() for r in runs]
    seen: set[Path] = set()
    for path in paths:
        if path in seen:
            raise InputError(path, "listed twice")
        seen.add(path)
        if is_ensemble(path):
            raise InputError(path, "is an ensemble; list its member runs instead (ensembles are not nested)")
        if not path.is_dir():
            raise InputError(path, "no such run directory")
    members = []
    for path, label in zip(paths, _labels(paths)):
        config = read_config(path)
        read_metrics(path)
        members.append(Member(path, config, label))
    first = members[0]
    for m in members[1:]:
        if m.config.subj != first.config.subj:
            raise InputError(m.path, f"is a run of subject {m.config.subj}, {first.path} one of subject {first.config.subj}; "
                                     "members of an ensemble must be runs of one subject")
        if dict(m.config.n_vertices) != dict(first.config.n_vertices):
            raise InputError(m.path / CONFIG, f"was trained on {m.config.n_vertices} vertices, {first.path} on "
                                              f"{first.config.n_vertices}; members must predict the same vertices")
        a, b = m.config.data_fingerprint, first.config.data_fingerprint
        if a and b and a != b:
            part = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))[0]
            raise InputError(m.path / CONFIG, f"was trained on other data than {first.path} ({part} differs); "
                                              "members must share the training data")
    subject = load_subject(data_dir if data_dir is not None else first.config.data_dir, first.config.subj)
    val_idx = None
    for m in members:
        check_trained_on(m.path, m.config, subject)
        idx = load_npy(m.path / VAL_INDICES, ndim=1, kinds="iu", what="validation indices")
        if val_idx is None:
            val_idx = idx
        elif idx.shape != val_idx.shape or not np.array_equal(idx, val_idx):
            raise InputError(m.path / VAL_INDICES, f"holds other validation images than {first.path}'s (another split: "
                                                   "`train.split_seed` or `train.val_fraction`); members must share one validation split")
    return subject, members, np.asarray(val_idx)


# --------------------------------------------------------------------------
# The ensemble as an encoder
# --------------------------------------------------------------------------

class EnsembleEncoder(nn.Module):
    """Member encoders, each reading its slice of the stacked tokens, combined per vertex.

    ``forward(features (B, T, C)) -> {'pred': sum_m weights[m] * pred_m}``;
    with ``return_attention`` also ``'attention'`` (B, 1 layer, 1 head, Q, T):
    the members' head-averaged last-layer cross-attention, weighted per ROI
    query by the mean of its vertices' member weights (see the module
    docstring). ``channels[m]`` is member ``m``'s (start, stop) among the
    stacked token channels; ``memberships`` (vertices x queries) are the
    members' shared ROI queries, or None when they differ (no attention then).
    """

    def __init__(self, members: Sequence[nn.Module], weights: np.ndarray | torch.Tensor,
                 channels: Sequence[tuple[int, int]], memberships: np.ndarray | None = None):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.channels = [tuple(int(c) for c in ch) for ch in channels]
        w = torch.as_tensor(np.asarray(weights, np.float32) if not torch.is_tensor(weights) else weights, dtype=torch.float32)
        if w.shape[0] != len(self.members):
            raise ValueError(f"{w.shape[0]} rows of weights for {len(self.members)} members")
        self.register_buffer("weights", w)
        width = max(hi for _, hi in self.channels)
        mean = torch.zeros(width)
        for member, (lo, hi) in zip(self.members, self.channels):
            mean[lo:hi] = member.feature_mean.detach().float().cpu()
        self.register_buffer("feature_mean", mean)  # zero after each member's standardisation: the token baseline
        attention = memberships is not None and all(m.capabilities.decoder_attention for m in self.members)
        self._capabilities = Capabilities(decoder_attention=attention,
                                          restrict_vertices=all(m.capabilities.restrict_vertices for m in self.members))
        if memberships is not None:
            member_of = torch.as_tensor(np.asarray(memberships, np.float32))  # (V, Q)
            counts = member_of.sum(0)
            per_query = (w @ member_of) / counts.clamp_min(1)
            per_query[:, counts == 0] = 1.0 / len(self.members)
            self.register_buffer("query_weights", per_query)  # (members, queries)

    @property
    def capabilities(self) -> Capabilities:
        """Decoder attention when every member has it on shared queries; restriction when every member can."""
        return self._capabilities

    def forward(self, features: torch.Tensor, return_attention: bool = False) -> dict[str, torch.Tensor]:
        if return_attention and not self.capabilities.decoder_attention:
            raise TypeError("this ensemble has no decoder attention (members without it, or with other ROI queries)")
        pred, attention = None, None
        for m, (member, (lo, hi)) in enumerate(zip(self.members, self.channels)):
            x = features[..., lo:hi]
            out = member(x, return_attention=True) if return_attention else member(x)
            part = out["pred"].float() * self.weights[m]
            pred = part if pred is None else pred + part
            if return_attention:
                a = out["attention"][:, -1].float().mean(1) * self.query_weights[m][None, :, None]  # (B, Q, T)
                attention = a if attention is None else attention + a
        result = {"pred": pred}
        if return_attention:
            result["attention"] = attention[:, None, None]
        return result

    def randomisation_steps(self) -> list[tuple[str, list[nn.Module]]]:
        """Each step randomises the same part in every member: members of one architecture (the same parts)."""
        steps = [m.randomisation_steps() for m in self.members]
        names = [part for part, _ in steps[0]]
        if any([part for part, _ in s] != names for s in steps):
            raise OptionError("run", "the sanity cascade of an ensemble needs members of one architecture "
                                     "(the same decoder parts in each)")
        return [(part, [module for s in steps for module in s[i][1]]) for i, part in enumerate(names)]

    def restricted(self, vertices: np.ndarray) -> "EnsembleEncoder":
        """A copy predicting only ``vertices``, with identical values (``capabilities.restrict_vertices``)."""
        if not self.capabilities.restrict_vertices:
            raise TypeError("a member of this ensemble cannot be restricted to vertices")
        return EnsembleEncoder([m.restricted(vertices) for m in self.members], self.weights[:, torch.as_tensor(vertices)],
                               self.channels)


class StackedFeatures:
    """Token features of several feature groups side by side along the channels, read by rows on demand.

    Indexing by rows (a slice or an integer array) reads those rows of every
    part (:func:`~model.files.read_rows`) and concatenates them, so a large
    set is never held whole; ``np.asarray`` gives all of it.
    """

    def __init__(self, parts: Sequence[np.ndarray]):
        self.parts = list(parts)
        n, tokens = self.parts[0].shape[:2]
        for p in self.parts[1:]:
            if p.shape[:2] != (n, tokens):
                raise ValueError(f"feature groups disagree: {p.shape[:2]} and {(n, tokens)} (images, tokens)")
        self.shape = (n, tokens, sum(int(p.shape[2]) for p in self.parts))
        self.dtype = np.result_type(*[p.dtype for p in self.parts])
        self.ndim = 3

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, (int, np.integer)):
            return self[np.array([idx])][0]
        return np.concatenate([read_rows(p, idx).astype(self.dtype, copy=False) for p in self.parts], axis=-1)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[slice(None)]
        return out if dtype is None else out.astype(dtype, copy=False)


class StackedBackbone(nn.Module):
    """Several backbones whose tokens share one grid: images -> their tokens side by side (B, T, sum C).

    Each backbone normalises and pads the [0, 1] image itself, so
    :meth:`preprocess` passes images through. Grid, sizes, patch and the
    mean colour are the first backbone's; its prefix tokens and
    self-attention (the backbone's own attention maps) the deepest one's.
    """

    def __init__(self, backbones: Sequence[nn.Module], owners: Sequence[str | Path]):
        super().__init__()
        first = backbones[0]
        for b, owner in zip(backbones[1:], owners[1:]):
            if (b.image_side, b.input_size, tuple(b.grid), b.patch) != (first.image_side, first.input_size,
                                                                            tuple(first.grid), first.patch):
                raise InputError(owner, f"its backbone gives {b.grid[0]}x{b.grid[1]} tokens of {b.input_size} px inputs, "
                                        f"{owners[0]}'s {first.grid[0]}x{first.grid[1]} of {first.input_size} px: maps of an "
                                        "ensemble need members whose tokens lie on one grid (its predictions, scores "
                                        "and submissions do not)")
        self.backbones = nn.ModuleList(backbones)
        self._deepest = int(np.argmax([b.block_index for b in backbones]))
        deepest = backbones[self._deepest]
        self.config, self.depth, self.block_index = first.config, deepest.depth, deepest.block_index
        self.image_side, self.input_size, self.patch, self.grid = first.image_side, first.input_size, first.patch, first.grid
        self.dim = sum(b.dim for b in backbones)
        self.prefix_tokens, self.has_class_token = deepest.prefix_tokens, deepest.has_class_token
        self.self_attention = deepest.self_attention
        self.register_buffer("mean", first.mean.clone(), persistent=False)
        self.register_buffer("std", first.std.clone(), persistent=False)

    def record_attention(self, record):
        """The deepest backbone's self-attention (:meth:`~model.encoders.interface.TokenBackbone.record_attention`)."""
        return self.backbones[self._deepest].record_attention(record)

    def train(self, mode: bool = True) -> "StackedBackbone":
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(b.preprocess(images)) for b in self.backbones], dim=-1)

    def describe(self) -> str:
        return f"{len(self.backbones)} feature sets side by side: " + "; ".join(b.describe() for b in self.backbones)


# --------------------------------------------------------------------------
# An opened ensemble
# --------------------------------------------------------------------------

@dataclass
class EnsembleRun(Run):
    """An opened ensemble: a :class:`~model.runs.run.Run` whose model is an :class:`EnsembleEncoder`.

    ``members`` are the opened member runs; ``groups[g]`` the index of the
    first member of feature group ``g`` (whose backbone and features the
    group shares). ``config`` is the :class:`~model.runs.configs.EnsembleConfig`.
    """

    members: list[Run] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)

    @cached_property
    def val_indices(self) -> np.ndarray:
        """The members' shared validation split (checked when opened; an ensemble held in memory has no directory)."""
        return self.members[0].val_indices

    def backbone(self, device: str = "cpu"):
        """The members' backbones, one per feature group (stacked when several; see :class:`StackedBackbone`)."""
        reps = [self.members[g] for g in self.groups]
        if len(reps) == 1:
            return reps[0].shared_backbone
        return StackedBackbone([r.shared_backbone for r in reps], [str(r.path) for r in reps])

    def features(self, paths, cache_dir=None, device: str = "auto", rows=None, desc: str = "features"):
        """Every feature group's tokens of these images, side by side (lazily, :class:`StackedFeatures`)."""
        parts = [self.members[g].features(paths, cache_dir, device, rows, f"{desc} ({self.members[g].path.name})")
                 for g in self.groups]
        return parts[0] if len(parts) == 1 else StackedFeatures(parts)


def feature_groups(configs: Sequence[RunConfig]) -> tuple[list[int], list[tuple[int, int]]]:
    """The first member of each distinct backbone configuration, and each member's channels among the stacked tokens."""
    keys, firsts, starts, channels = [], [], [], []
    width = 0
    for i, c in enumerate(configs):
        key = json.dumps({"backbone": c.backbone.to_dict(), "key": c.feature_key}, sort_keys=True)
        if key not in keys:
            keys.append(key), firsts.append(i), starts.append(width)
            width += int(c.feature_dim)
        g = keys.index(key)
        channels.append((starts[g], starts[g] + int(c.feature_dim)))
    return firsts, channels


