"""Labelled stimulus sets: which image shows which categories, and where.

Three sources, one :class:`StimulusSet`:

* :func:`from_labels_csv`: any folder of images plus a labels CSV (the
  format is below, and in docs/real-data.md);
* :func:`subject_heldout`: a virtual subject's validation and test images
  (never trained on), labelled from its ground truth;
* :func:`localizer`: the fLoc-style set rendered by the virtual-subject
  generator (:mod:`model.synthetic`).

The labels file
---------------
One row per image and category it shows, with the columns ``image``
(absolute, or relative to ``--images``, default the file's folder),
``category`` and, optionally, ``mask`` (a binary image of the image's size
marking the category) and ``partial``. An image may have several rows; a
row with an empty ``category`` (and no mask) lists an image that shows none
of the categories. What an image's rows do not list, it does not show: its
mask is known to be empty. ``partial`` (``true``/``false``, the same on all
rows of an image; ``--partial-masks`` sets it for every image) says that
the image may show other categories than its rows list, unmasked: its
labels stay as listed, but the masks of its unlisted categories are
unknown (NaN), and mask-based measures leave the image out for them. A
listed category without a mask has an unknown mask. The old files, one
row per image with the mask of that image's category only, are read as
before for labels; their other categories' masks are now known empty
unless the file (or ``--partial-masks``) says partial.

Every problem with a labels file is one :class:`~model.errors.InputError`
naming the file and the line, raised before anything is computed or
written: an empty file, an unknown category, an image or mask that is
missing, unreadable, of another size or (a mask) empty, an image listed
twice with one category, a category shown by fewer than two images (or by
all but one), a single category shown by every image, and, with a run,
images of another subject (:func:`check_subject`).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from model.errors import InputError, OptionError
from model.runs import Run
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
#: Columns of a labels file: required, then optional.
REQUIRED_COLUMNS = ("image", "category")
OPTIONAL_COLUMNS = ("mask", "partial")
#: Values of the ``partial`` column.
BOOLEANS = {"": False, "0": False, "false": False, "no": False, "1": True, "true": True, "yes": True}
#: Each category needs this many images that show it and this many that do not (a variance in each group).
MIN_IMAGES = 2


@dataclass(frozen=True)
class StimulusOptions:
    """The stimulus options of every command that takes labels: ``--images``, ``--labels``, ``--categories``,
    ``--partial-masks`` (added to a command by :func:`analyses.cli.add_stimuli_args`).

    Attributes
    ----------
    images : Path or None
        Folder the labels' relative image and mask paths are relative to
        (default: the labels file's folder); without ``labels``, a folder of
        unlabelled images (for the commands that can use them).
    labels : Path or None
        The labels CSV (module docstring).
    categories : tuple of str or None
        The categories to analyse; rows of other categories are ignored (their
        images still count as showing none of these). Without it, the file may
        use :data:`DEFAULT_CATEGORIES` (plurals and fLoc names forgiven) and
        anything else is an error, so that a typo cannot make a category.
    partial_masks : bool
        Every image may show unlisted categories: their masks are unknown.
    """

    images: Path | None = None
    labels: Path | None = None
    categories: tuple[str, ...] | None = None
    partial_masks: bool = False

    @classmethod
    def of(cls, images: str | Path | None = None, labels: str | Path | None = None,
           categories: str | Sequence[str] | None = None, partial_masks: bool = False) -> "StimulusOptions":
        """Options from loose values (notebook parameters): '' is None, a comma-separated string a list."""
        if isinstance(categories, str):
            categories = [c for c in categories.split(",") if c.strip()]
        return cls(Path(images) if images else None, Path(labels) if labels else None,
                   tuple(categories) if categories else None, bool(partial_masks))

    def vocabulary(self) -> tuple[str, ...] | None:
        """The ``categories`` in their canonical spelling (:func:`canonical`, fLoc names as ours), or None."""
        if self.categories is None:
            return None
        names = tuple(dict.fromkeys(ALIASES.get(canonical(c), canonical(c)) for c in self.categories if canonical(c)))
        if not names:
            raise OptionError("categories", "names no category")
        return names


@dataclass
class StimulusSet:
    """Images, the categories each shows, and (where known) the categories' masks.

    Attributes
    ----------
    name : str
        Where the set came from, for tables and logs.
    paths : list of Path
        Image files, each once.
    categories : tuple of str
        The categories, in a fixed order (the vocabulary's).
    membership : ndarray
        (image, category) bool: the image shows the category.
    masks : ndarray or None
        (image, category, MASK_GRID, MASK_GRID) float32 fractions of each cell
        covered by the category; 0 where the image does not show it; NaN where
        that image's mask is unknown.
    fmri_rows : list
        Per image, ``(split, index)`` into the subject's images when the image
        is one of them (so measured responses exist), else ``None``.
    lines : list of int or None
        Per image, the labels file's line that first lists it (for error lines).
    source : Path or None
        The labels file.
    """

    name: str
    paths: list[Path]
    categories: tuple[str, ...]
    membership: np.ndarray
    masks: np.ndarray | None = None
    fmri_rows: list[tuple[str, int] | None] | None = None
    lines: list[int] | None = None
    source: Path | None = None

    @classmethod
    def single(cls, name: str, paths: list[Path], labels: Sequence[str], categories: Sequence[str],
               masks: np.ndarray | None = None, fmri_rows: list | None = None) -> "StimulusSet":
        """A set whose images show one category each."""
        categories = tuple(categories)
        membership = np.array([[label == c for c in categories] for label in labels], bool)
        return cls(name, list(paths), categories, membership.reshape(len(paths), len(categories)), masks, fmri_rows)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labels(self) -> list[str]:
        """Each image's categories joined by ``+`` ('' for none): its single category in a one-label set."""
        return ["+".join(c for c, shown in zip(self.categories, row) if shown) for row in self.membership]

    @property
    def single_label(self) -> bool:
        """Every image shows exactly one category."""
        return bool((self.membership.sum(1) == 1).all())

    @property
    def codes(self) -> np.ndarray:
        """Category index of each image (into :attr:`categories`); only for a one-label set."""
        if not self.single_label:
            raise ValueError(f"{self.name}: images show several categories (or none); there is no single code")
        return self.membership.argmax(1)

    @property
    def counts(self) -> dict[str, int]:
        return {c: int(n) for c, n in zip(self.categories, self.membership.sum(0))}

    def subset(self, keep: slice | np.ndarray) -> "StimulusSet":
        """The images ``keep`` selects (a slice or indices), in that order."""
        index = np.arange(len(self))[keep]
        pick = lambda values: None if values is None else [values[i] for i in index]  # noqa: E731
        return StimulusSet(self.name, pick(self.paths), self.categories, self.membership[index],
                           None if self.masks is None else self.masks[index], pick(self.fmri_rows), pick(self.lines),
                           self.source)


# --------------------------------------------------------------------------
# Checks shared by every source
# --------------------------------------------------------------------------

def canonical(name: str) -> str:
    """A category name as compared: lower case, inner white space as ``_`` ('Traffic light' -> 'traffic_light')."""
    return "_".join(str(name).strip().lower().split())


def normalise_category(name: str, vocabulary: Sequence[str]) -> str | None:
    """The vocabulary's spelling of ``name`` (case, plural and fLoc names forgiven), or None."""
    key = canonical(name)
    if key in vocabulary:
        return key
    alias = ALIASES.get(key)
    return alias if alias in vocabulary else None


def check_membership(where: str | Path, membership: np.ndarray, categories: Sequence[str]) -> None:
    """Every category shown by at least two images and not shown by at least two (one line naming the first that is not).

    The analyses compare the images that show a category with those that do
    not, and each group needs a variance.
    """
    n = len(membership)
    shown = membership.sum(0) if n else np.zeros(len(categories), int)
    if n == 0 or not len(categories) or not shown.any():
        raise InputError(where, "no labelled images" if n == 0 else "no image shows any category")
    if len(categories) == 1 and shown[0] == n:
        raise InputError(where, f"only one category ({categories[0]!r}), shown by every image: the analyses compare "
                                "images that show a category with images that do not, so at least two categories "
                                "(or rows with an empty category, for images that show none) are needed")
    for c, k in zip(categories, shown):
        if k < MIN_IMAGES:
            raise InputError(where, f"category {c!r} has {k} image(s); each category needs at least {MIN_IMAGES}")
    for c, k in zip(categories, shown):
        if n - k < MIN_IMAGES:
            raise InputError(where, f"category {c!r} is shown by {k} of {n} images; each category needs at least "
                                    f"{MIN_IMAGES} images without it to compare with (leave it out with `categories`)")


def check_categories(where: str | Path, labels: Sequence[str], min_per_category: int = MIN_IMAGES) -> None:
    """One category per image: at least two categories, each with enough images for a variance."""
    present = sorted(set(labels))
    if len(present) < 2:
        only = f"only one category ({present[0]!r})" if present else "no labelled images"
        raise InputError(where, f"{only}: selectivity compares categories, so at least two are needed")
    small = {c: labels.count(c) for c in present if labels.count(c) < min_per_category}
    if small:
        c, n = next(iter(small.items()))
        raise InputError(where, f"category {c!r} has {n} image(s); each category needs at least {min_per_category}")


def _read_mask(path: Path, where: str, size: tuple[int, int], category: str) -> np.ndarray:
    """A binary mask image (non-zero = category) as cell fractions on the mask grid."""
    try:
        with Image.open(path) as img:
            mask = np.asarray(img.convert("L")) > 0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(where, f"mask {path} is unreadable ({type(exc).__name__})") from None
    if mask.shape != size:
        raise InputError(where, f"mask {path.name} is {mask.shape[1]}x{mask.shape[0]} px, its image {size[1]}x{size[0]} px")
    if not mask.any():
        raise InputError(where, f"mask {path.name} of {category!r} marks no pixel: a row says the image shows the "
                                "category; leave the row out if it does not (a category too small to mask: no mask)")
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


#: The folder of one subject in the Algonauts layout.
SUBJECT_FOLDER = re.compile(r"subj(\d+)")


@lru_cache(maxsize=4096)
def _subject_folder(folder: Path) -> int | None:
    match = SUBJECT_FOLDER.fullmatch(folder.name)
    return int(match[1]) if match and (folder / "roi_masks").is_dir() else None


def subject_of(path: str | Path) -> tuple[int, Path] | None:
    """The subject number and folder of an image inside a subject folder of the Algonauts layout, else None."""
    for folder in Path(path).resolve().parents:
        number = _subject_folder(folder)
        if number is not None:
            return number, folder
    return None


def check_subject(run: Run, stimuli: StimulusSet) -> None:
    """Refuse images that lie in another subject's folder (a labels file made for another subject)."""
    own = run.subject.subj
    for i, path in enumerate(stimuli.paths):
        found = subject_of(path)
        if found is not None and found[0] != own:
            line = f"line {stimuli.lines[i]}: " if stimuli.lines else ""
            raise InputError(stimuli.source or stimuli.name,
                             f"{line}image {path.name} is subject {found[0]}'s ({found[1]}), but the run is of "
                             f"subject {own}: use labels of subject {own}'s images (tbe labels `subj` {own})")


# --------------------------------------------------------------------------
# Source 1: a labels file
# --------------------------------------------------------------------------

@dataclass
class _Image:
    """What the rows of one image say."""

    path: Path
    line: int
    shown: dict[int, tuple[Path | None, int]] = field(default_factory=dict)  # category -> (mask, line)
    none_line: int | None = None  # the line of a row with an empty category
    partial: tuple[bool, int] | None = None  # the value and the line that set it


def _read_table(labels: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(labels, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise InputError(labels, "is empty: a labels file has a header line (image,category[,mask][,partial]) and "
                                 "one row per image and category") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(labels, f"not a readable CSV ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(labels, f"missing column(s) {', '.join(missing)}; the columns are image, category and "
                                 "optionally mask and partial")
    if table.empty:
        raise InputError(labels, "has a header but no rows (one row per image and category it shows)")
    for column in OPTIONAL_COLUMNS:
        if column not in table.columns:
            table[column] = ""
    return table


def _resolve(root: Path, name: str) -> Path:
    return Path(name) if Path(name).is_absolute() else root / name


def from_labels_csv(labels: str | Path, images: str | Path | None = None, categories: Sequence[str] | None = None,
                    partial_masks: bool = False, exhaustive_masks: bool = False) -> StimulusSet:
    """Read a labels CSV (the module's format) and check every row.

    Parameters
    ----------
    labels : path
        The CSV file.
    images : path, optional
        Folder that relative ``image`` and ``mask`` paths are relative to
        (default: the CSV's folder).
    categories : sequence of str, optional
        The categories to analyse (:class:`StimulusOptions`); rows of others
        are ignored. Default: :data:`DEFAULT_CATEGORIES`, and a label outside
        them is an error.
    partial_masks : bool
        Every image may show unlisted categories (their masks are unknown),
        as the ``partial`` column says per image.
    exhaustive_masks : bool
        A listed category without a mask file has an empty mask (the
        rendered localizer's scrambled images).

    Raises
    ------
    InputError
        Naming the file and line (see the module).
    """
    labels = Path(labels)
    where = str(labels)
    if not labels.is_file():
        raise InputError(labels, "missing labels file")
    root = Path(images) if images is not None else labels.parent
    if images is not None and not root.is_dir():
        raise InputError(root, "not a folder of images")
    table = _read_table(labels)
    chosen = StimulusOptions(categories=tuple(categories)).vocabulary() if categories is not None else None
    vocabulary = chosen or DEFAULT_CATEGORIES

    entries: dict[Path, _Image] = {}
    ignored: dict[str, int] = {}
    for row, record in enumerate(table.itertuples(index=False), start=2):  # line 1 is the header
        image = str(record.image).strip()
        if not image:
            raise InputError(where, f"line {row}: empty image name")
        path = _resolve(root, image)
        if not path.is_file():
            raise InputError(where, f"line {row}: image {image!r} not found (looked for {path})")
        entry = entries.setdefault(path.resolve(), _Image(path, row))
        partial = BOOLEANS.get(str(record.partial).strip().lower())
        if partial is None:
            raise InputError(where, f"line {row}: partial is {str(record.partial).strip()!r}; say true or false")
        if str(record.partial).strip():
            if entry.partial is not None and entry.partial[0] != partial:
                raise InputError(where, f"line {row}: partial is {partial} for image {image!r}, but "
                                        f"{entry.partial[0]} on line {entry.partial[1]}")
            entry.partial = (partial, row)
        mask = str(record.mask).strip()
        mask_path = _resolve(root, mask) if mask else None
        if mask_path is not None and not mask_path.is_file():
            raise InputError(where, f"line {row}: mask {mask!r} not found (looked for {mask_path})")
        written = str(record.category).strip()
        if not written:
            if mask_path is not None:
                raise InputError(where, f"line {row}: a mask without a category (an empty category lists an image "
                                        "that shows none of the categories)")
            if entry.none_line is not None or entry.shown:
                first = entry.none_line or min(line for _, line in entry.shown.values())
                raise InputError(where, f"line {row}: image {image!r} is listed with no category here and on line "
                                        f"{first} with another row: an empty category says it shows none")
            entry.none_line = row
            continue
        category = normalise_category(written, vocabulary)
        if category is None:
            if chosen is not None:
                ignored[written] = ignored.get(written, 0) + 1
                continue
            raise InputError(where, f"line {row}: unknown category {written!r}; known: {', '.join(vocabulary)} "
                                    "(use `categories` to name others)")
        c = vocabulary.index(category)
        if entry.none_line is not None:
            raise InputError(where, f"line {row}: image {image!r} is listed with category {category!r} here and "
                                    f"with no category on line {entry.none_line}")
        if c in entry.shown:
            raise InputError(where, f"line {row}: image {image!r} is listed twice with category {category!r} "
                                    f"(first on line {entry.shown[c][1]})")
        entry.shown[c] = (mask_path, row)
    if ignored:
        log.warning("%s: rows of categories outside --categories ignored: %s", labels,
                    ", ".join(f"{name!r} ({n} rows)" for name, n in sorted(ignored.items())))

    used = sorted({c for e in entries.values() for c in e.shown})
    if chosen is not None:
        unused = [name for c, name in enumerate(chosen) if c not in used]
        if unused:
            raise InputError(where, f"`categories` names {unused[0]!r}, which no row of the file uses")
    present = tuple(vocabulary[c] for c in used)
    column = {c: k for k, c in enumerate(used)}
    listed = list(entries.values())
    membership = np.zeros((len(listed), len(present)), bool)
    for i, entry in enumerate(listed):
        membership[i, [column[c] for c in entry.shown]] = True
    check_membership(labels, membership, present)

    masks = None
    if any(m is not None for e in listed for m, _ in e.shown.values()):
        masks = np.full((len(listed), len(present), MASK_GRID, MASK_GRID), np.nan, np.float32)
        for i, entry in enumerate(listed):
            if not (partial_masks or (entry.partial is not None and entry.partial[0])):
                masks[i, ~membership[i]] = 0.0  # not listed: not shown
            size = None
            for c, (mask_path, row) in entry.shown.items():
                if mask_path is not None:
                    size = size or _image_size(entry.path, f"{where}: line {row}")
                    masks[i, column[c]] = _read_mask(mask_path, f"{where}: line {row}", size, vocabulary[c])
                elif exhaustive_masks:
                    masks[i, column[c]] = 0.0
    stimuli = StimulusSet(str(labels), [e.path for e in listed], present, membership, masks,
                          lines=[e.line for e in listed], source=labels)
    log.info("labels %s: %d images, %s%s", labels, len(stimuli),
             ", ".join(f"{c} {n}" for c, n in stimuli.counts.items()),
             f"; {int((~membership.any(1)).sum())} show none" if not membership.any(1).all() else "")
    return stimuli


def read_stimuli(options: StimulusOptions) -> StimulusSet:
    """The labels file of ``options``, read by :func:`from_labels_csv`."""
    return from_labels_csv(options.labels, options.images, options.categories, options.partial_masks)


def labelled_stimuli(run: Run, options: StimulusOptions) -> StimulusSet:
    """The labels file of ``options`` for ``run``: checked against its subject, with the subject's fMRI rows."""
    stimuli = read_stimuli(options)
    check_subject(run, stimuli)
    stimuli.fmri_rows = subject_rows(run, stimuli.paths)
    heldout = {("train", int(i)) for i in run.val_indices} | {("test", i) for i in range(run.subject.n_test)}
    trained = sum(r is not None and r not in heldout for r in stimuli.fmri_rows)
    if trained:
        log.warning("%d labelled images are training images of the run: their predictions are fits, not "
                    "predictions; prefer held-out images", trained)
    return stimuli


def choose_stimuli(run: Run, options: StimulusOptions | None = None, cache_dir: str | Path | None = None,
                   seed: int = 0) -> StimulusSet:
    """A labels file if given; else a virtual subject's held-out images; else the rendered localizer."""
    options = options or StimulusOptions()
    if options.labels is None:
        if options.images is not None:
            raise OptionError("images", "needs `labels` (a CSV with the columns image, category and optionally mask)")
        for parameter, value in (("categories", options.categories), ("partial_masks", options.partial_masks)):
            if value:
                raise OptionError(parameter, "applies to a labels file: give `labels` too")
        if run.subject.truth is not None:
            return subject_heldout(run)
        from model.features import default_cache_dir
        from model.images import native_size

        log.info("no labels given and %s is not a virtual subject: using the rendered localizer", run.subject.root)
        return localizer(cache_dir or default_cache_dir(), native_size(run.subject.train_images[0]), seed)
    return labelled_stimuli(run, options)


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
        raise InputError(root, "has no ground truth to label its images: pass `images` and `labels`")
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
    check_categories(truth.images_file, label_list)
    log.info("held-out images of %s: %d of %d show one category (%s)", root.name, len(keep), len(rows),
             ", ".join(f"{c} {label_list.count(c)}" for c in order))
    return StimulusSet.single(f"{root.name} held-out images", kept_paths, label_list, order, masks,
                              [rows[k] for k in keep])


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
