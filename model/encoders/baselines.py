"""Baseline encoders with the same interface as the transformer: tokens (B, T, C) -> {'pred': (B, V)}.

* ``linear``: the seed's convolution + linear readout of all tokens.
* ``spatial_feature``: the seed's factorised readout; each ROI query pools
  the tokens with its own softmax spatial map, then the seed's vertex readout.
* ``ridge``: the field's standard, himalaya ``RidgeCV`` with one alpha per
  vertex, on pooled tokens, pooled *squared* tokens (contrast energy is
  quadratic in pixels, DESIGN.md section 6) or PCA-reduced tokens. Fit in
  closed form; stored as buffers so prediction, attribution and saving work
  exactly as for the trained encoders. Its options are a
  :class:`~model.encoders.configs.RidgeConfig`, not imported here: that module
  validates against this one's :data:`RIDGE_FEATURES`.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import OptionError
from .interface import Capabilities, EncoderCore, EncoderInputs
from .queries import QuerySet
from .readouts import LinearReadout, with_readout_subset

log = logging.getLogger(__name__)


class LinearEncoder(EncoderCore):
    """The seed's ``linear`` encoder: Conv2d(C -> 256, 3x3, strided), flattened, one linear layer.

    The seed added 0.02 x the (unsquared) norms of the readout weights and
    biases to the loss; :meth:`regularization` returns that term. On a single
    token (``_cls`` features: a class token or a global pool) it is the
    seed's ``Linear(C, V)`` on that token, without the penalty.
    """

    penalty = 0.02
    capabilities = Capabilities(regularisation=True)

    @classmethod
    def from_config(cls, inputs: EncoderInputs, config: None = None) -> "LinearEncoder":
        return cls(inputs.queries.n_total, inputs.feature_dim, inputs.grid)

    def __init__(self, n_vertices: int, feature_dim: int, grid: tuple[int, int], channels: int = 256):
        super().__init__()
        self.grid = tuple(grid)
        if self.grid == (1, 1):  # one token (a class token or global pool): the seed's Linear(C, V), no penalty
            self.conv, self.penalty, width = None, 0.0, feature_dim
        else:
            stride = max(1, math.ceil(max(grid) / 11))  # the seed: 31 x 31 tokens -> 11 x 11
            self.conv = nn.Conv2d(feature_dim, channels, kernel_size=3, stride=stride, padding=1)
            rows, cols = (math.floor((g + 2 - 3) / stride) + 1 for g in grid)
            width = channels * rows * cols
        self.fc = nn.Linear(width, n_vertices)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        b, t, c = features.shape
        if self.conv is None:
            return {"pred": self.fc(features[:, 0])}
        x = self.conv(features.transpose(1, 2).reshape(b, c, *self.grid))
        return {"pred": self.fc(x.flatten(1))}

    def regularization(self) -> torch.Tensor:
        return self.penalty * (self.fc.weight.norm() + self.fc.bias.norm())


class SpatialFeatureEncoder(EncoderCore):
    """The seed's ``spatial_feature`` encoder: per-query softmax spatial pooling, then the vertex readout."""

    capabilities = Capabilities(restrict_vertices=True)

    @classmethod
    def from_config(cls, inputs: EncoderInputs, config: None = None) -> "SpatialFeatureEncoder":
        return cls(inputs.queries, inputs.feature_dim, inputs.grid)

    def __init__(self, queries: QuerySet, feature_dim: int, grid: tuple[int, int]):
        super().__init__()
        self.spatial = nn.Embedding(queries.n_queries, grid[0] * grid[1])
        self.readout = LinearReadout(queries, feature_dim)

    def restricted(self, vertices: np.ndarray) -> "SpatialFeatureEncoder":
        """A copy predicting only ``vertices`` (its readout sliced; the spatial maps shared)."""
        return with_readout_subset(self, vertices)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        weights = self.spatial.weight.softmax(dim=-1)  # (Q, T)
        pooled = torch.einsum("qt,btc->bqc", weights, features)
        return {"pred": self.readout(pooled)}


# --------------------------------------------------------------------------
# Ridge
# --------------------------------------------------------------------------

def _pooled(features: torch.Tensor, grid: tuple[int, int], pool: int, square: bool) -> torch.Tensor:
    b, t, c = features.shape
    x = features.transpose(1, 2).reshape(b, c, *grid)
    if square:
        x = x * x
    return F.adaptive_avg_pool2d(x, pool).flatten(1)


RIDGE_FEATURES: dict[str, str] = {
    "pooled": "tokens average-pooled to a pool x pool grid",
    "pooled_squared": "squared tokens average-pooled to a pool x pool grid",
    "pca": "tokens average-pooled to 8 x 8, reduced by PCA",
}
RIDGE_ALPHAS = np.logspace(-1, 7, 17)
PCA_POOL = 8


class RidgeEncoder(EncoderCore):
    """Closed-form ridge on token features; ``fit`` with himalaya, predict with torch."""

    capabilities = Capabilities(closed_form=True)

    @classmethod
    def from_config(cls, inputs: EncoderInputs, config: "RidgeConfig") -> "RidgeEncoder":
        return cls(inputs.queries.n_total, inputs.feature_dim, inputs.grid, config.features, config.pool,
                   config.n_components)

    def __init__(self, n_vertices: int, feature_dim: int, grid: tuple[int, int], kind: str = "pooled",
                 pool: int = 4, n_components: int = 512):
        super().__init__()
        if kind not in RIDGE_FEATURES:
            raise OptionError("ridge.features", f"unknown {kind!r}; choose from {', '.join(RIDGE_FEATURES)}")
        self.kind, self.grid = kind, tuple(grid)
        self.pool = min(PCA_POOL, *grid) if kind == "pca" else pool
        pooled_dim = self.pool * self.pool * feature_dim
        n_features = n_components if kind == "pca" else pooled_dim
        pca_shape = (n_components, pooled_dim) if kind == "pca" else (0, 0)
        self.register_buffer("pca_mean", torch.zeros(pca_shape[1]))
        self.register_buffer("pca_components", torch.zeros(pca_shape))
        self.register_buffer("x_mean", torch.zeros(n_features))
        self.register_buffer("x_scale", torch.ones(n_features))
        self.register_buffer("coef", torch.zeros(n_features, n_vertices))
        self.register_buffer("intercept", torch.zeros(n_vertices))
        self.register_buffer("alphas", torch.zeros(n_vertices))

    def _raw(self, features: torch.Tensor) -> torch.Tensor:
        x = _pooled(features, self.grid, self.pool, square=self.kind == "pooled_squared")
        if self.kind == "pca":
            x = (x - self.pca_mean) @ self.pca_components.T
        return x

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """Token features (B, T, C) -> standardised regressors (B, F)."""
        return (self._raw(features) - self.x_mean) / self.x_scale

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pred": self.transform(features) @ self.coef + self.intercept}

    @torch.no_grad()
    def fit(self, batches: Callable[[], Iterator[torch.Tensor]], targets: np.ndarray, cv: int = 5) -> None:
        """Fit on training features (a factory of iterators over (B, T, C) batches) and targets (N, V)."""
        from himalaya.ridge import RidgeCV

        if self.kind == "pca":
            self._fit_pca(batches)
        x = torch.cat([self._raw(b.float()) for b in batches()]).double()
        self.x_mean.copy_(x.mean(0))
        self.x_scale.copy_(x.std(0).clamp_min(1e-6))
        x = ((x - self.x_mean.double()) / self.x_scale.double()).numpy()
        y = np.asarray(targets, np.float64)
        y_mean = y.mean(0)
        model = RidgeCV(alphas=RIDGE_ALPHAS, cv=cv, solver_params={"n_targets_batch": 2048, "warn": False})
        model.fit(x, y - y_mean)
        self.coef.copy_(torch.as_tensor(np.asarray(model.coef_), dtype=torch.float32))
        self.intercept.copy_(torch.as_tensor(y_mean, dtype=torch.float32))
        self.alphas.copy_(torch.as_tensor(np.asarray(model.best_alphas_), dtype=torch.float32))
        log.info("ridge (%s): %d regressors, median alpha %.3g", self.kind, x.shape[1], float(self.alphas.median()))

    def _fit_pca(self, batches) -> None:
        flat = torch.cat([_pooled(b.float(), self.grid, self.pool, square=False) for b in batches()])
        k = min(self.pca_components.shape[0], flat.shape[0] - 1, flat.shape[1])
        mean = flat.mean(0)
        _, _, v = torch.svd_lowrank(flat - mean, q=k, niter=4)
        self.pca_mean.copy_(mean)
        self.pca_components.zero_()
        self.pca_components[:k] = v.T
