"""Labelled stimulus sets: which image shows which category, and where.

Three sources, one :class:`StimulusSet`:

* :func:`from_labels_csv`: any folder of images plus a CSV with the columns
  ``image`` (absolute, or relative to the images folder) and ``category``,
  and optionally ``mask`` (a binary image marking the category in that
  image);
* :func:`subject_heldout`: a virtual subject's validation and test images
  (never trained on), labelled from its ground truth;
* :func:`localizer`: the fLoc-style set rendered by the virtual-subject
  generator (:mod:`model.synthetic`).

Every problem with a labels file is one :class:`~model.errors.InputError`
naming the file and the line, raised before anything is computed or written.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from model.errors import InputError
from model.run import Run
from model.synthetic import LocalizerConfig, write_localizer
from model.vision import CATEGORIES, LOCALIZER_CATEGORIES, OBJECT_CATEGORIES

log = logging.getLogger(__name__)

#: Categories a labels file may use unless told otherwise, in fLoc order.
DEFAULT_CATEGORIES: tuple[str, ...] = LOCALIZER_CATEGORIES
#: Other spellings of those categories (fLoc's own names among them).
ALIASES: dict[str, str] = {
    "faces": "face", "bodies": "body", "limbs": "body", "places": "place", "scenes": "place", "scene": "place",
    "words": "word", "characters": "word", "character": "word", "objects": "object", "scramble": "scrambled",
}
#: Side of the grid masks are kept on (fractions of each cell covered).
MASK_GRID = 64
#: Which ROI class is expected to prefer which category (the fLoc localizers that define them).
CLASS_CATEGORY: dict[str, str] = {
    "floc-faces": "face", "floc-bodies": "body", "floc-places": "place", "floc-words": "word",
}


@dataclass
class StimulusSet:
    """Images with one category label each, and (where known) category masks.

    Attributes
    ----------
    name : str
        Where the set came from, for tables and logs.
    paths : list of Path
        Image files.
    labels : list of str
        Category of each image.
    categories : tuple of str
        The categories present, in a fixed order (the vocabulary's).
    masks : ndarray or None
        (image, category, MASK_GRID, MASK_GRID) float32 fractions of each cell
        covered by the category; NaN where that image's mask is unknown.
    fmri_rows : list
        Per image, ``(split, index)`` into the subject's images when the image
        is one of them (so measured responses exist), else ``None``.
    """

    name: str
    paths: list[Path]
    labels: list[str]
    categories: tuple[str, ...]
    masks: np.ndarray | None = None
    fmri_rows: list[tuple[str, int] | None] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def codes(self) -> np.ndarray:
        """Category index of each image (into :attr:`categories`)."""
        index = {c: i for i, c in enumerate(self.categories)}
        return np.array([index[c] for c in self.labels])

    @property
    def counts(self) -> dict[str, int]:
        return {c: self.labels.count(c) for c in self.categories}


# --------------------------------------------------------------------------
# Checks shared by every source
# --------------------------------------------------------------------------

def normalise_category(name: str, vocabulary: Sequence[str]) -> str | None:
    """The vocabulary's spelling of ``name`` (case, plural and fLoc names forgiven), or None."""
    key = str(name).strip().lower()
    if key in vocabulary:
        return key
    alias = ALIASES.get(key)
    return alias if alias in vocabulary else None


def check_categories(where: str | Path, labels: Sequence[str], min_per_category: int = 2) -> None:
    """At least two categories, each with enough images for a variance."""
    present = sorted(set(labels))
    if len(present) < 2:
        only = f"only one category ({present[0]!r})" if present else "no labelled images"
        raise InputError(where, f"{only}: selectivity compares categories, so at least two are needed")
    small = {c: labels.count(c) for c in present if labels.count(c) < min_per_category}
    if small:
        c, n = next(iter(small.items()))
        raise InputError(where, f"category {c!r} has {n} image(s); each category needs at least {min_per_category}")


def _read_mask(path: Path, where: str, size: tuple[int, int]) -> np.ndarray:
    """A binary mask image (non-zero = category) as cell fractions on the mask grid."""
    try:
        with Image.open(path) as img:
            mask = np.asarray(img.convert("L")) > 0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(where, f"mask {path} is unreadable ({type(exc).__name__})") from None
    if mask.shape != size:
        raise InputError(where, f"mask {path.name} is {mask.shape[1]}x{mask.shape[0]} px, its image {size[1]}x{size[0]} px")
    return masks_to_grid(mask[None, None])[0, 0]


def masks_to_grid(masks: np.ndarray, size: int = MASK_GRID) -> np.ndarray:
    """(..., H, W) bool masks -> (..., size, size) float32 covered fractions."""
    t = torch.from_numpy(np.ascontiguousarray(masks)).float()
    lead = t.shape[:-2]
    out = F.adaptive_avg_pool2d(t.reshape(-1, 1, *t.shape[-2:]), size)
    return out.reshape(*lead, size, size).numpy()


def _image_size(path: Path, where: str) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            w, h = img.size
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(where, f"image {path} is unreadable ({type(exc).__name__})") from None
    return h, w


def subject_rows(run: Run, paths: Sequence[Path]) -> list[tuple[str, int] | None]:
    """Which of ``paths`` are the subject's own images (and so have fMRI): (split, index) or None."""
    index = {p.resolve(): (split, i) for split in ("train", "test")
             for i, p in enumerate(run.subject.images(split))}
    return [index.get(Path(p).resolve()) for p in paths]


# --------------------------------------------------------------------------
# Source 1: a labels file
# --------------------------------------------------------------------------

def from_labels_csv(labels: str | Path, images: str | Path | None = None,
                    categories: Sequence[str] | None = None, exhaustive_masks: bool = False) -> StimulusSet:
    """Read a labels CSV (``image``, ``category``, optional ``mask``) and check every row.

    Parameters
    ----------
    labels : path
        The CSV file.
    images : path, optional
        Folder that relative ``image`` and ``mask`` paths are relative to
        (default: the CSV's folder).
    categories : sequence of str, optional
        The categories the file may use (default :data:`DEFAULT_CATEGORIES`,
        with plural and fLoc spellings accepted). A label outside them is an
        error, so that a typo cannot make a category of its own.
    exhaustive_masks : bool
        Each image contains no category but its own (true of the rendered
        localizer), so its other categories' masks are known to be empty.

    Raises
    ------
    InputError
        Naming the file and line: unreadable CSV, missing column, missing or
        unreadable image or mask, unknown category, duplicate image, fewer
        than two categories or fewer than two images in a category.
    """
    labels = Path(labels)
    where = str(labels)
    if not labels.is_file():
        raise InputError(labels, "missing labels file")
    root = Path(images) if images is not None else labels.parent
    if images is not None and not root.is_dir():
        raise InputError(root, "not a folder of images")
    try:
        table = pd.read_csv(labels, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(labels, f"not a readable CSV ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    table.columns = [c.strip().lower() for c in table.columns]
    missing = [c for c in ("image", "category") if c not in table.columns]
    if missing:
        raise InputError(labels, f"missing column(s) {', '.join(missing)}; the columns must be image, category and optionally mask")
    if table.empty:
        raise InputError(labels, "has no rows")
    vocabulary = tuple(c.strip().lower() for c in categories) if categories else DEFAULT_CATEGORIES

    paths, names, mask_files = [], [], []
    seen: dict[Path, int] = {}
    for row, record in enumerate(table.itertuples(index=False), start=2):  # line 1 is the header
        here = f"{where}: line {row}"
        image = str(record.image).strip()
        if not image:
            raise InputError(where, f"line {row}: empty image name")
        path = Path(image) if Path(image).is_absolute() else root / image
        if not path.is_file():
            raise InputError(where, f"line {row}: image {image!r} not found (looked for {path})")
        category = normalise_category(record.category, vocabulary)
        if category is None:
            raise InputError(where, f"line {row}: unknown category {str(record.category).strip()!r}; known: "
                                    f"{', '.join(vocabulary)} (use --categories to name others)")
        resolved = path.resolve()
        if resolved in seen:
            raise InputError(where, f"line {row}: image {image!r} is listed twice (first on line {seen[resolved]})")
        seen[resolved] = row
        mask = str(getattr(record, "mask", "")).strip() if "mask" in table.columns else ""
        mask_path = (Path(mask) if Path(mask).is_absolute() else root / mask) if mask else None
        if mask_path is not None and not mask_path.is_file():
            raise InputError(where, f"line {row}: mask {mask!r} not found (looked for {mask_path})")
        paths.append(path), names.append(category), mask_files.append((mask_path, here))
    present = tuple(c for c in vocabulary if c in set(names))
    check_categories(labels, names)

    masks = None
    if any(m is not None for m, _ in mask_files):
        masks = np.full((len(paths), len(present), MASK_GRID, MASK_GRID), np.nan, np.float32)
        for i, ((mask_path, here), category) in enumerate(zip(mask_files, names)):
            if exhaustive_masks:
                masks[i] = 0.0
            if mask_path is not None:
                masks[i, present.index(category)] = _read_mask(mask_path, here, _image_size(paths[i], here))
    log.info("labels %s: %d images, %s", labels, len(paths), ", ".join(f"{c} {names.count(c)}" for c in present))
    return StimulusSet(str(labels), paths, names, present, masks)


# --------------------------------------------------------------------------
# Source 2: a virtual subject's held-out images
# --------------------------------------------------------------------------

#: Labelling held-out scenes: an object category must cover this fraction of the image ...
MIN_AREA = 0.04
#: ... and this many times the area of any other object category
DOMINANCE = 2.0


def scene_labels(table: pd.DataFrame, min_area: float = MIN_AREA, dominance: float = DOMINANCE) -> np.ndarray:
    """One category per scene of a ground-truth ``images.csv`` table, or '' when none dominates.

    A scene is labelled with an object category when that category covers
    at least ``min_area`` of the image and ``dominance`` times any other
    object category; an empty room (no object reaching ``min_area``) is a
    place. Other scenes (mixtures, bare textures) are left out, as a
    localizer leaves out images that show no single category.
    """
    areas = table[[f"area_{c}" for c in OBJECT_CATEGORIES]].to_numpy(float)
    order = np.sort(areas, axis=1)
    top, second = order[:, -1], order[:, -2]
    label = np.where((top >= min_area) & (top >= dominance * second),
                     np.asarray(OBJECT_CATEGORIES)[areas.argmax(1)], "")
    empty_room = (table["background"].to_numpy() == "place") & (top < min_area)
    return np.where(empty_room, "place", label)


def heldout_images(run: Run) -> list[tuple[str, int]]:
    """(split, index) of the images the run never trained on: its validation rows, then the test set."""
    return [("train", int(i)) for i in run.val_indices] + [("test", i) for i in range(run.subject.n_test)]


def subject_heldout(run: Run) -> StimulusSet:
    """The virtual subject's held-out images that show one category, with their true masks."""
    root, truth = run.subject.root, run.subject.truth
    if truth is None:
        raise InputError(root, "has no ground truth to label its images: pass --images and --labels")
    table = truth.images.set_index("image")
    rows = heldout_images(run)
    paths = [run.subject.images(split)[i] for split, i in rows]
    labels = scene_labels(table.loc[[p.name for p in paths]].reset_index())
    keep = np.flatnonzero(labels != "")
    order = tuple(c for c in DEFAULT_CATEGORIES if c in set(labels[keep]))
    kept_paths = [paths[k] for k in keep]
    masks = np.empty((len(keep), len(order), MASK_GRID, MASK_GRID), np.float32)
    for folder in ("train", "test"):
        picked = [j for j, k in enumerate(keep) if rows[k][0] == folder]
        if picked:
            columns = [CATEGORIES.index(c) for c in order]
            names = [kept_paths[j].name for j in picked]  # full: (n, CATEGORIES, S, S) of a batch of them
            masks[picked] = np.concatenate([masks_to_grid(full[:, columns]) for full in truth.mask_batches(folder, names)])
    label_list = [str(labels[k]) for k in keep]
    check_categories(root / "ground_truth" / "images.csv", label_list)
    log.info("held-out images of %s: %d of %d show one category (%s)", root.name, len(keep), len(rows),
             ", ".join(f"{c} {label_list.count(c)}" for c in order))
    return StimulusSet(f"{root.name} held-out images", kept_paths, label_list, order, masks, [rows[k] for k in keep])


# --------------------------------------------------------------------------
# Source 3: the rendered localizer
# --------------------------------------------------------------------------

def localizer(cache_dir: str | Path, image_size: int, seed: int = 0, n_per_category: int = 48) -> StimulusSet:
    """The fLoc-style localizer at ``image_size`` px, rendered once into ``cache_dir/localizer``."""
    config = LocalizerConfig(n_per_category=n_per_category, image_size=image_size, seed=seed)
    labels = write_localizer(Path(cache_dir) / "localizer" / config.digest(), config)
    stimuli = from_labels_csv(labels, exhaustive_masks=True)
    stimuli.name = f"fLoc-style localizer ({n_per_category} images per category, seed {seed})"
    return stimuli
