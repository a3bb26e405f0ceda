"""What every interpretation shares: the run's pieces, targets, images, and map geometry.

Maps are stored on a common square grid of ``map_size`` cells over the image
the model saw (after resizing, before padding), with ``y``/``x``
coordinates in that image's pixels (cell centres), so maps of any method
and resolution can be compared and overlaid.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

from model.encoders import TokenBackbone
from model.errors import OptionError
from model.files import read_rows
from model.images import image_batch
from model.rois import HEMIS
from model.runs import Run
from model.vision import CATEGORIES, FIELD_OF_VIEW_DEG

SPLITS = ("val", "test")


# --------------------------------------------------------------------------
# Targets: the scalar outputs that maps explain
# --------------------------------------------------------------------------

@dataclass
class Targets:
    """Scalar targets: the mean predicted response of an ROI's vertices (or of one vertex).

    ``weights`` (targets x vertices) averages predictions into targets.
    """

    hemis: list[str]
    rois: list[str]
    weights: torch.Tensor

    @property
    def names(self) -> list[str]:
        return [f"{h}:{r}" for h, r in zip(self.hemis, self.rois)]

    def __len__(self) -> int:
        return len(self.rois)


def roi_targets(run: Run, rois: list[str] | None = None) -> Targets:
    """Targets for ROI names (Algonauts names, ``unknown``, or ``vertex:<hemi>:<index>``).

    ``None`` means every query of the run. An ROI is included in each
    hemisphere where the run has a query for it.
    """
    queries = run.queries
    members = torch.as_tensor(queries.memberships, dtype=torch.float32)  # (V, Q)
    wanted = list(dict.fromkeys(queries.rois)) if rois is None else rois
    hemis, names, rows = [], [], []
    for roi in wanted:
        if roi.startswith("vertex:"):
            hemi, index = _parse_vertex(roi, queries.n_vertices)
            row = torch.zeros(queries.n_total)
            row[queries.vertex_slice(hemi).start + index] = 1.0
            hemis.append(hemi), names.append(roi), rows.append(row)
            continue
        found = False
        for hemi in HEMIS:
            if f"{hemi}:{roi}" in queries.names:
                column = members[:, queries.query_index(hemi, roi)]
                hemis.append(hemi), names.append(roi), rows.append(column / column.sum())
                found = True
        if not found:
            raise OptionError("rois", f"no query for ROI {roi!r} in this run; ROIs: {', '.join(dict.fromkeys(queries.rois))}")
    return Targets(hemis, names, torch.stack(rows))


def _parse_vertex(spec: str, n_vertices: dict[str, int]) -> tuple[str, int]:
    parts = spec.split(":")
    if len(parts) != 3 or parts[1] not in HEMIS or not parts[2].isdigit() or int(parts[2]) >= n_vertices[parts[1]]:
        raise OptionError("rois", f"bad vertex target {spec!r}: use vertex:<lh|rh>:<index below the vertex count>")
    return parts[1], int(parts[2])


# --------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------

def select_images(run: Run, split: str, n_images: int, containing: str | None = None) -> list[Path]:
    """The first ``n_images`` validation or test images of the run's subject.

    ``containing`` (virtual subjects only) keeps images whose ground truth
    shows that category (``face``, ``body``, ...), so that a category ROI's
    maps can be checked against something.
    """
    if split not in SPLITS:
        raise OptionError("split", f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if n_images < 1:
        raise OptionError("n_images", f"must be at least 1, got {n_images}")
    if split == "val":
        paths = [run.subject.train_images[i] for i in run.val_indices]
    else:
        paths = list(run.subject.test_images)
    if containing is not None:
        paths = _containing(run, split, paths, containing)
    return paths[:n_images]


def _containing(run: Run, split: str, paths: list[Path], category: str) -> list[Path]:
    if run.subject.truth is None:
        raise OptionError("containing", f"{run.subject.root} has no ground truth (only virtual subjects know what images show)")
    if category not in CATEGORIES:
        raise OptionError("containing", f"unknown category {category!r}; choose from {', '.join(CATEGORIES)}")
    c = CATEGORIES.index(category)
    shown = [m[:, c].reshape(len(m), -1).any(1) for m in
             run.subject.truth.mask_batches("train" if split == "val" else "test", [p.name for p in paths])]
    return [p for p, keep in zip(paths, np.concatenate(shown) if shown else []) if keep]


def load_images(backbone: TokenBackbone, paths: list[Path]) -> torch.Tensor:
    """Images as float (B, 3, S, S) in [0, 1] at the side the backbone brings them to."""
    x = image_batch(paths).float() / 255
    side = backbone.image_side
    if x.shape[-1] != side or x.shape[-2] != side:
        x = F.interpolate(x, size=(side, side), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    return x


# --------------------------------------------------------------------------
# Map geometry
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class MapGrid:
    """The common grid maps are stored on: ``size`` x ``size`` cells over an image of side ``image_side``."""

    size: int
    image_side: int
    input_size: int
    token_grid: tuple[int, int]

    @classmethod
    def for_backbone(cls, backbone: TokenBackbone, size: int | None = None) -> "MapGrid":
        side = backbone.image_side
        return cls(int(size or min(side, 4 * backbone.grid[0])), side, backbone.input_size, tuple(backbone.grid))

    @property
    def coords(self) -> np.ndarray:
        """Cell centres in image pixels."""
        return (np.arange(self.size) + 0.5) * self.image_side / self.size

    def from_pixels(self, maps: torch.Tensor) -> torch.Tensor:
        """(..., S, S) pixel maps -> (..., size, size) by area averaging."""
        lead = maps.shape[:-2]
        out = F.adaptive_avg_pool2d(maps.reshape(-1, 1, *maps.shape[-2:]).float(), self.size)
        return out.reshape(*lead, self.size, self.size)

    def from_tokens(self, maps: torch.Tensor) -> torch.Tensor:
        """(..., T) token maps -> (..., size, size): upsampled over the padded input, cropped to the image.

        Each cell is the mean, over its pixels of the image, of the token
        covering each pixel (nearest upsampling by the patch, then area
        averaging). That is separable, so it is computed as ``R_y M R_x^T``
        with the (size x token rows) weights of :meth:`token_weights`: the
        maps are never upsampled to pixels, which took 0.3 GB per image for
        the decoder's queries x heads at 434 px.
        """
        lead = maps.shape[:-1]
        grid = maps.reshape(*lead, *self.token_grid).double()
        rows, cols = (torch.from_numpy(self.token_weights(n)) for n in self.token_grid)
        out = rows @ grid @ cols.T
        return out.float().reshape(*lead, self.size, self.size)

    def token_weights(self, n_tokens: int) -> np.ndarray:
        """(size, n_tokens) weights: the share of each cell's pixel rows (or columns) that each token row covers.

        Pixel ``p`` of the padded input belongs to the token nearest
        upsampling gives it (:func:`nearest_source`: ``p // patch``); a cell's
        pixels are those of ``adaptive_avg_pool2d``'s bin over the
        ``image_side`` pixels of the image (the padding is cropped away first).
        """
        token_of = nearest_source(n_tokens, self.input_size)[:self.image_side]
        weights = np.zeros((self.size, n_tokens))
        for i in range(self.size):
            start, stop = i * self.image_side // self.size, -(-(i + 1) * self.image_side // self.size)
            np.add.at(weights[i], token_of[start:stop], 1.0 / (stop - start))
        return weights


def nearest_source(n_in: int, n_out: int) -> np.ndarray:
    """For each of ``n_out`` positions, the one of ``n_in`` that nearest upsampling (``F.interpolate``) copies.

    Read from torch itself, so that maps computed as weight matrices
    (:meth:`MapGrid.token_weights`, :func:`analyses.attention_selectivity.token_coverage`)
    are the ones an upsampled map would give.
    """
    ramp = torch.arange(n_in, dtype=torch.float32)[None, None, :, None]
    return F.interpolate(ramp, size=(n_out, 1), mode="nearest")[0, 0, :, 0].long().numpy()


@dataclass
class Inputs:
    """The images of one map job (or one batch of it), their backbone tokens and the grid their maps are stored on."""

    names: list[str]
    paths: list[Path]
    images: torch.Tensor  # (N, 3, S, S) in [0, 1]
    tokens: np.ndarray  # (N, tokens, channels): the decoder's input
    grid: MapGrid
    backbone: TokenBackbone

    def __len__(self) -> int:
        return len(self.names)

    def batch(self, start: int, stop: int) -> "Inputs":
        """Images ``start:stop`` (views of the tensors held)."""
        return Inputs(self.names[start:stop], self.paths[start:stop], self.images[start:stop], self.tokens[start:stop],
                      self.grid, self.backbone)


@dataclass
class MapSource:
    """The images of one map job, held as paths and their tokens' rows, and read batch by batch.

    ``tokens`` is anything whose rows :func:`model.files.read_rows` reads
    (a memory-mapped feature-cache entry, :class:`model.features.CachedRows`,
    an ensemble's stacked features): nothing of an image is in memory until
    its batch is read, so a job's memory does not grow with its images.
    """

    names: list[str]
    paths: list[Path]
    tokens: object  # (N, tokens, channels), read by rows
    grid: MapGrid
    backbone: TokenBackbone

    def __len__(self) -> int:
        return len(self.names)

    def batch(self, start: int, stop: int) -> Inputs:
        """Images ``start:stop`` read from their files, with their tokens: an :class:`Inputs`."""
        paths = self.paths[start:stop]
        return Inputs(self.names[start:stop], paths, load_images(self.backbone, paths),
                      read_rows(self.tokens, slice(start, stop)), self.grid, self.backbone)

    def load(self) -> Inputs:
        """Every image at once (small jobs: the notebooks)."""
        return self.batch(0, len(self))


def batches(images: Inputs | MapSource, size: int) -> Iterator[tuple[int, Inputs]]:
    """``(first image's position, Inputs)`` of consecutive batches of at most ``size`` images."""
    if size < 1:
        raise OptionError("batch_size", f"must be at least 1, got {size}")
    for start in range(0, len(images), size):
        yield start, images.batch(start, min(start + size, len(images)))


def centre_of_mass_deg(m: np.ndarray, grid: MapGrid) -> tuple[float, float]:
    """Centre of mass of a map's positive part, in degrees of visual angle (x right, y up)."""
    w = np.clip(np.nan_to_num(m), 0, None)
    if w.sum() <= 0:
        return np.nan, np.nan
    c = grid.coords / grid.image_side  # cell centres as fractions of the image
    cy, cx = (w.sum(1) @ c) / w.sum(), (w.sum(0) @ c) / w.sum()
    return float((cx - 0.5) * FIELD_OF_VIEW_DEG), float((0.5 - cy) * FIELD_OF_VIEW_DEG)


def map_array(values: np.ndarray | torch.Tensor, dims: tuple[str, ...], coords: dict, grid: MapGrid,
              name: str, attrs: dict | None = None) -> xr.DataArray:
    """A labelled map array; ``y``/``x`` get the grid's pixel coordinates."""
    values = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    coords = {**coords, "y": grid.coords, "x": grid.coords}
    return xr.DataArray(values.astype(np.float32), dims=dims, coords={k: v for k, v in coords.items() if k in dims},
                        name=name, attrs=attrs or {})


def per_roi_variables(ds: xr.Dataset) -> list[str]:
    """The per-ROI map variables ``(..., hemi, roi, ..., y, x)`` of a maps dataset, in its order.

    A per-head variable is represented by its head average ``<name>_mean``
    where the dataset has one (decoder attention: ``attention_mean``).
    """
    return [n for n, v in ds.data_vars.items() if {"hemi", "roi", "y", "x"} <= set(v.dims)
            and not ("head" in v.dims and f"{n}_mean" in ds.data_vars)]


def by_hemi_roi(values: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, list[str]]:
    """(N, targets, ...) -> (N, hemi, roi, ...) with NaN where an ROI is absent in a hemisphere."""
    rois = list(dict.fromkeys(targets.rois))
    out = torch.full((values.shape[0], len(HEMIS), len(rois), *values.shape[2:]), float("nan"))
    for t, (hemi, roi) in enumerate(zip(targets.hemis, targets.rois)):
        out[:, HEMIS.index(hemi), rois.index(roi)] = values[:, t].float()
    return out, rois
