"""An fLoc-style category localizer, rendered by the virtual-subject generator.

The functional localizer of Stigliani et al. (2015) shows single exemplars
of faces, bodies, places, characters (words) and objects, plus scrambled
images, in blocks; a contrast such as faces > all other categories then
defines the face-selective regions. This module renders the same design
with the drawing functions of :mod:`~model.virtual.stimuli`, so an
in-silico localizer runs with nothing downloaded:

* face, body, word, object: one large exemplar near the centre, on a
  textured background (fLoc puts its exemplars on phase-scrambled
  backgrounds; textures are the virtual subject's equivalent);
* place: an empty room;
* scrambled: block-scrambled renderings of the other five categories, which
  keep local contrast and destroy the objects (their masks are empty).

Every image comes with its category masks, so attention can be scored
against where the category is.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..files import atomic_directory, digest_json
from ..vision import CATEGORIES, LOCALIZER_CATEGORIES, OBJECT_CATEGORIES, SCRAMBLED
from .stimuli import ObjectSpec, SceneSpec, render_scene
#: The background of single-exemplar images; fLoc's are phase-scrambled, ours textured.
EXEMPLAR_BACKGROUND = "texture"
LABELS_FILE = "labels.csv"
LOCALIZER_VERSION = 1


@dataclass(frozen=True)
class LocalizerConfig:
    """Size and seed of a rendered localizer set.

    Parameters
    ----------
    n_per_category : int
        Images per category (fLoc shows 12 per block).
    image_size : int
        Side in pixels; use the subject's image size so the encoder sees the usual scale.
    seed : int
        Seed of every random choice: same seed, same images.
    """

    n_per_category: int = 48
    image_size: int = 224
    seed: int = 0

    def digest(self) -> str:
        """A short key that changes whenever the rendered images would."""
        return digest_json({"version": LOCALIZER_VERSION, **self.__dict__})[:16]


def _exemplar(category: str, rng: np.random.Generator) -> SceneSpec:
    """One large object near the centre, as fLoc's single exemplars."""
    size = float(rng.uniform(0.5, 0.72))
    cx, cy = 0.5 + rng.uniform(-0.06, 0.06, size=2)
    obj = ObjectSpec(category, float(cx), float(cy), size, int(rng.integers(2**31)))
    return SceneSpec(EXEMPLAR_BACKGROUND, int(rng.integers(2**31)), (obj,))


def _place(rng: np.random.Generator) -> SceneSpec:
    return SceneSpec("place", int(rng.integers(2**31)))


def _scrambled(rng: np.random.Generator, index: int) -> SceneSpec:
    """A block-scrambled rendering of an image of one of the other categories, in turn."""
    sources = [c for c in LOCALIZER_CATEGORIES if c != SCRAMBLED]
    source = sources[index % len(sources)]
    spec = _place(rng) if source == "place" else _exemplar(source, rng)
    return SceneSpec(spec.background, spec.seed, spec.objects, scramble=True)


def localizer_specs(config: LocalizerConfig = LocalizerConfig()) -> list[tuple[str, SceneSpec]]:
    """(category, scene specification) for every image, category by category."""
    rng = np.random.default_rng([config.seed, 1729])  # 1729: keeps localizer draws apart from the subject's
    out = []
    for category in LOCALIZER_CATEGORIES:
        for i in range(config.n_per_category):
            if category == SCRAMBLED:
                spec = _scrambled(rng, i)
            elif category == "place":
                spec = _place(rng)
            else:
                assert category in OBJECT_CATEGORIES
                spec = _exemplar(category, rng)
            out.append((category, spec))
    return out


@dataclass
class LocalizerSet:
    """Rendered localizer images with their labels and category masks."""

    images: np.ndarray  # (N, S, S, 3) uint8
    masks: np.ndarray  # (N, len(CATEGORIES), S, S) bool, in CATEGORIES order
    categories: list[str]  # per image, from LOCALIZER_CATEGORIES
    names: list[str]  # file names


def render_localizer(config: LocalizerConfig = LocalizerConfig()) -> LocalizerSet:
    """Render every localizer image in memory."""
    images, masks, categories, names = [], [], [], []
    counter = {c: 0 for c in LOCALIZER_CATEGORIES}
    for category, spec in localizer_specs(config):
        scene = render_scene(spec, config.image_size)
        counter[category] += 1
        images.append(scene.image)
        masks.append(np.stack([scene.masks[c] for c in CATEGORIES]))
        categories.append(category)
        names.append(f"{category}-{counter[category]:03d}.png")
    return LocalizerSet(np.stack(images), np.stack(masks), categories, names)


def write_localizer(folder: str | Path, config: LocalizerConfig = LocalizerConfig()) -> Path:
    """Write the localizer into ``folder`` (images, masks, ``labels.csv``); returns the labels file.

    The folder appears complete or not at all, and an existing complete
    folder is reused as it is (rendering is deterministic for a config).
    The labels file has the columns ``image``, ``category`` and ``mask``
    (the mask of the image's own category; empty for scrambled images).
    """
    folder = Path(folder)
    labels = folder / LABELS_FILE
    if labels.is_file():
        return labels
    rendered = render_localizer(config)
    try:
        with atomic_directory(folder) as tmp:
            (tmp / "images").mkdir()
            (tmp / "masks").mkdir()
            rows = []
            for image, mask, category, name in zip(rendered.images, rendered.masks, rendered.categories, rendered.names):
                Image.fromarray(image).save(tmp / "images" / name, compress_level=1)
                row = {"image": f"images/{name}", "category": category, "mask": ""}
                if category in CATEGORIES:
                    Image.fromarray(mask[CATEGORIES.index(category)].astype(np.uint8) * 255).save(tmp / "masks" / name)
                    row["mask"] = f"masks/{name}"
                rows.append(row)
            pd.DataFrame(rows).to_csv(tmp / LABELS_FILE, index=False)
    except FileExistsError:
        pass  # written meanwhile by another process: identical content
    return labels
