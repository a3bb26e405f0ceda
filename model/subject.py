"""Read one subject in the Algonauts 2023 layout into a typed :class:`Subject`.

Every file is checked against every other (images against fMRI rows, ROI
label arrays against vertex counts, the all-vertices masks against both), and
every problem is raised as one :class:`~model.errors.InputError` line naming
the file. fMRI is memory-mapped, never copied: real subjects hold up to
9841 images x 39548 vertices.
"""
from __future__ import annotations

import importlib
import io
import logging
import pickle
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError, OptionError
from .files import file_fingerprint, image_list_fingerprint, load_npy, read_rows
from .rois import HEMIS, ROI_CLASSES, ROI_TO_CLASS, UNKNOWN

if TYPE_CHECKING:
    from .truth import GroundTruth

log = logging.getLogger(__name__)

IMAGE_NAME = re.compile(r"^(?P<split>train|test)-(?P<index>\d+)_nsd-(?P<nsd>\d+)\.png$")
SPLIT_DIRS = {"train": "training_split/training_images", "test": "test_split/test_images"}
FMRI_DIR = "training_split/training_fmri"
MASKS_DIR = "roi_masks"
#: largest |value| accepted in the training fMRI. Algonauts fMRI is z-scored per
#: vertex within each scan session; a z-score over n values cannot exceed
#: sqrt(n) in magnitude (27 for a 750-trial NSD session), so 1000 would need a
#: million trials: anything larger is not z-scored data (or is corrupt).
FMRI_MAX_ABS = 1000.0


def subject_dir(data_dir: str | Path, subj: int) -> Path:
    """``data_dir/subjXX``, or ``data_dir`` itself if it already is that folder."""
    data_dir = Path(data_dir)
    name = f"subj{subj:02d}"
    return data_dir if data_dir.name == name else data_dir / name


# --------------------------------------------------------------------------
# The mapping dicts: pickles, read without running pickle code
# --------------------------------------------------------------------------

def _numpy_multiarray():
    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        return importlib.import_module("numpy.core.multiarray")


class _MappingUnpickler(pickle.Unpickler):
    """Accepts only what ``np.save`` writes for a 0-d object array of a dict.

    Those are the numpy array reconstructors and ``dtype``; any other global
    (``os.system``, ``builtins.eval``, ...) is refused before it is looked up.
    """

    _ALLOWED = {"_reconstruct", "scalar", "ndarray", "dtype"}

    def find_class(self, module: str, name: str):
        if module in {"numpy.core.multiarray", "numpy._core.multiarray"} and name in {"_reconstruct", "scalar"}:
            return getattr(_numpy_multiarray(), name)
        if module == "numpy" and name in {"ndarray", "dtype"}:
            return getattr(np, name)
        raise pickle.UnpicklingError(f"refused to load '{module}.{name}'")


def read_mapping(path: str | Path) -> dict[int, str]:
    """Read an Algonauts ``mapping_<class>.npy`` file: a pickled dict of int -> str.

    The pickle is read with a restricted unpickler that refuses any code it
    would otherwise import, and the result must be a dict of int -> str.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "missing file")
    raw = path.read_bytes()
    try:
        f = io.BytesIO(raw)
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}[version]
        shape, _, dtype = read_header(f)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same user error
        raise InputError(path, f"not a .npy mapping file ({exc})") from None
    if not dtype.hasobject:
        raise InputError(path, f"expected a pickled dict of int -> str, found a {dtype} array of shape {shape}")
    try:
        obj = _MappingUnpickler(f).load()
    except Exception as exc:  # noqa: BLE001
        raise InputError(path, f"unsafe or corrupt pickle, not read: {exc}; only a dict of int -> str is accepted") from None
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise InputError(path, f"expected a dict of int -> str, found {type(obj).__name__}")
    out: dict[int, str] = {}
    for key, value in obj.items():
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)) or not isinstance(value, str):
            raise InputError(path, f"expected a dict of int -> str, found entry {key!r}: {value!r}")
        out[int(key)] = value
    return out


# --------------------------------------------------------------------------
# The subject
# --------------------------------------------------------------------------

@dataclass
class Subject:
    """One subject of the Algonauts 2023 challenge data.

    Attributes
    ----------
    root : Path
        The ``subjXX`` directory.
    subj : int
        Subject number.
    train_images, test_images : tuple of Path
        Image files in the order of the fMRI rows (sorted by name).
    fmri : dict
        ``'lh'``/``'rh'`` -> memory-mapped float32 array (training images, vertices).
    labels : dict
        ROI class -> hemi -> int label per challenge vertex.
    fsaverage_labels : dict
        ROI class -> hemi -> int label per fsaverage vertex.
    fsaverage_masks : dict
        hemi -> bool per fsaverage vertex: which are challenge vertices.
    mappings : dict
        ROI class -> {label: ROI name}.
    nan_vertices : dict
        hemi -> indices of vertices that are NaN for every image (excluded
        from fitting and metrics).
    """

    root: Path
    subj: int
    train_images: tuple[Path, ...]
    test_images: tuple[Path, ...]
    fmri: dict[str, np.ndarray]
    labels: dict[str, dict[str, np.ndarray]]
    fsaverage_labels: dict[str, dict[str, np.ndarray]]
    fsaverage_masks: dict[str, np.ndarray]
    mappings: dict[str, dict[int, str]]
    nan_vertices: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return len(self.train_images)

    @property
    def n_test(self) -> int:
        return len(self.test_images)

    def n_vertices(self, hemi: str) -> int:
        return int(self.fmri[hemi].shape[1])

    def images(self, split: str) -> tuple[Path, ...]:
        """Image files of ``'train'`` or ``'test'``."""
        return {"train": self.train_images, "test": self.test_images}[split]

    def roi_names(self, roi_class: str, hemi: str) -> list[str]:
        """ROI names of a class that have at least one vertex in ``hemi``."""
        present = set(np.unique(self.labels[roi_class][hemi]).tolist())
        return [name for label, name in sorted(self.mappings[roi_class].items())
                if label in present and name != UNKNOWN]

    def roi_mask(self, roi: str, hemi: str) -> np.ndarray:
        """Boolean mask over the challenge vertices of ``hemi`` for one ROI name."""
        roi_class = ROI_TO_CLASS.get(roi)
        if roi_class is None:
            raise OptionError("rois", f"unknown ROI name {roi!r}; known: {', '.join(ROI_TO_CLASS)}")
        label = {name: lab for lab, name in self.mappings[roi_class].items()}.get(roi)
        if label is None:
            return np.zeros(self.n_vertices(hemi), bool)
        return self.labels[roi_class][hemi] == label

    def roi_labels(self, roi_class: str, hemi: str) -> np.ndarray:
        """The ROI name of each challenge vertex of ``hemi`` in one class ('' where it has none)."""
        names = {lab: ("" if name == UNKNOWN else name) for lab, name in self.mappings[roi_class].items()}
        labels = np.asarray(self.labels[roi_class][hemi])
        return np.array([names.get(int(lab), "") for lab in labels], dtype=str) if labels.size else np.array([], str)

    def nsd_ids(self, split: str) -> np.ndarray:
        """The NSD image ids encoded in the file names."""
        return np.array([int(IMAGE_NAME.match(p.name)["nsd"]) for p in self.images(split)])

    @cached_property
    def truth(self) -> GroundTruth | None:
        """What a virtual subject planted (:class:`model.truth.GroundTruth`), read once; None for real data."""
        from .truth import GroundTruth, has_ground_truth

        return GroundTruth(self.root) if has_ground_truth(self.root) else None

    def fmri_path(self, hemi: str) -> Path:
        return self.root / FMRI_DIR / f"{hemi}_training_fmri.npy"

    def fingerprint(self) -> dict[str, str]:
        """What identifies this subject's data, cheaply enough to check whenever a run is opened.

        One digest per part, so a mismatch can name its file: each training
        fMRI file and each ROI mask and mapping file
        (:func:`~model.files.file_fingerprint`: small files hashed whole, the
        fMRI by its size and 16 evenly spaced blocks of 1 MiB, since reading
        all of a real subject's 1.5 GB on every open would cost seconds), and
        each image folder (:func:`~model.files.image_list_fingerprint`: file
        names and sizes; names carry the NSD ids). These are the digests the
        run's ``manifest.json`` records too.
        """
        out = {}
        for path in [self.fmri_path(h) for h in HEMIS] + sorted((self.root / MASKS_DIR).glob("*.npy")):
            out[str(path.relative_to(self.root))] = file_fingerprint(path)["blake2b"]
        for folder in SPLIT_DIRS.values():
            out[folder] = image_list_fingerprint(self.root / folder)["blake2b"]
        return out


def load_subject(data_dir: str | Path, subj: int = 1, check_images: bool = True) -> Subject:
    """Read and check one subject of the Algonauts 2023 layout.

    Parameters
    ----------
    data_dir : path
        The folder holding ``subjXX`` (or that folder itself).
    subj : int
        Subject number (1-8 for NSD).
    check_images : bool
        Open every image header so an unreadable image is reported now.

    Raises
    ------
    InputError
        Naming the file and the problem, for any missing or inconsistent file.
    """
    root = subject_dir(data_dir, subj)
    if not root.is_dir():
        raise InputError(root, "missing subject directory (expected the Algonauts 2023 layout: subjXX/training_split, test_split, roi_masks)")
    train_images = _list_images(root / SPLIT_DIRS["train"], "train", check_images)
    test_images = _list_images(root / SPLIT_DIRS["test"], "test", check_images)

    fmri, nan_vertices = {}, {}
    for hemi in HEMIS:
        path = root / FMRI_DIR / f"{hemi}_training_fmri.npy"
        fmri[hemi] = _load_array(path, ndim=2, kind="f", mmap=True)
        if fmri[hemi].shape[0] != len(train_images):
            raise InputError(path, f"{fmri[hemi].shape[0]} rows but {len(train_images)} training images in {root / SPLIT_DIRS['train']}")
        nan_vertices[hemi] = _check_values(path, fmri[hemi])
    if fmri["lh"].shape[0] != fmri["rh"].shape[0]:
        raise InputError(root / FMRI_DIR, "lh and rh fMRI have different numbers of rows")

    masks_dir = root / MASKS_DIR
    fsaverage_masks = {}
    for hemi in HEMIS:
        path = masks_dir / f"{hemi}.all-vertices_fsaverage_space.npy"
        mask = _load_array(path, ndim=1, kind="iubf")
        if not np.isin(mask, (0, 1)).all():
            raise InputError(path, "expected 0/1 values")
        fsaverage_masks[hemi] = mask.astype(bool)
        n = fmri[hemi].shape[1]
        if fsaverage_masks[hemi].sum() != n:
            raise InputError(path, f"marks {int(fsaverage_masks[hemi].sum())} challenge vertices but {hemi} fMRI has {n}")

    labels: dict[str, dict[str, np.ndarray]] = {}
    fsaverage_labels: dict[str, dict[str, np.ndarray]] = {}
    mappings: dict[str, dict[int, str]] = {}
    for roi_class in ROI_CLASSES:
        mappings[roi_class] = read_mapping(masks_dir / f"mapping_{roi_class}.npy")
        labels[roi_class], fsaverage_labels[roi_class] = {}, {}
        for hemi in HEMIS:
            for space, expected, store in (
                ("challenge", fmri[hemi].shape[1], labels),
                ("fsaverage", fsaverage_masks[hemi].size, fsaverage_labels),
            ):
                path = masks_dir / f"{hemi}.{roi_class}_{space}_space.npy"
                arr = _load_array(path, ndim=1, kind="iuf")
                if arr.size != expected:
                    what = f"{hemi} fMRI vertices" if space == "challenge" else f"entries in {hemi}.all-vertices_fsaverage_space.npy"
                    raise InputError(path, f"has {arr.size} entries but there are {expected} {what}")
                unknown = np.setdiff1d(np.unique(arr), list(mappings[roi_class]))
                if unknown.size:
                    raise InputError(path, f"labels {unknown.tolist()} are not in mapping_{roi_class}.npy")
                store[roi_class][hemi] = arr.astype(np.int32)

    subject = Subject(root, subj, train_images, test_images, fmri, labels, fsaverage_labels,
                      fsaverage_masks, mappings, nan_vertices)
    for hemi in HEMIS:
        if nan_vertices[hemi].size:
            log.warning("%s: %d %s vertices are NaN for every image; they are left out of fitting and metrics",
                        root, nan_vertices[hemi].size, hemi)
    return subject


def _list_images(folder: Path, split: str, check: bool) -> tuple[Path, ...]:
    if not folder.is_dir():
        raise InputError(folder, "missing image folder")
    paths = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        match = IMAGE_NAME.match(path.name)
        if match is None or match["split"] != split:
            raise InputError(path, f"unexpected file name (expected {split}-NNNN_nsd-NNNNN.png)")
        if check:
            check_image(path)
        paths.append(path)
    if not paths:
        raise InputError(folder, "no images")
    return tuple(paths)


def check_image(path: Path) -> None:
    """Raise :class:`InputError` if ``path`` is not a readable image."""
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018 - touching the header is the check
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(path, f"unreadable image ({exc.__class__.__name__})") from None


def _load_array(path: Path, ndim: int, kind: str, mmap: bool = False) -> np.ndarray:
    return load_npy(path, ndim=ndim, kinds=kind, mmap=mmap)


def _check_values(path: Path, data: np.ndarray, chunk_rows: int = 512) -> np.ndarray:
    """Indices of all-NaN vertices; an error naming the first row for any other NaN, an Inf or an absurd value.

    Reads ``chunk_rows`` rows at a time with :func:`~model.files.read_rows`,
    so scanning a memory-mapped fMRI leaves none of it resident. Values
    beyond +-:data:`FMRI_MAX_ABS` are refused: they are not z-scored data,
    and their squares overflow float32 losses into Inf and NaN.
    """
    n_rows, n_cols = data.shape
    any_nan_col = np.zeros(n_cols, bool)
    all_nan_col = np.ones(n_cols, bool)
    for start in range(0, n_rows, chunk_rows):
        rows = read_rows(data, slice(start, start + chunk_rows))
        isnan = np.isnan(rows)
        any_nan_col |= isnan.any(0)
        all_nan_col &= isnan.all(0)
        with np.errstate(invalid="ignore"):
            absurd = np.abs(rows) > FMRI_MAX_ABS  # Inf included, NaN not
        if absurd.any():
            row, col = np.argwhere(absurd)[0]
            value = rows[row, col]
            what = "infinite values" if np.isinf(value) else f"values of absurd magnitude (e.g. {value:.3g})"
            raise InputError(path, f"{what} at {int(absurd.sum())} entries in rows {start}-{start + len(rows) - 1} "
                                   f"(first: row {start + row}, vertex {col}); fMRI must be finite z-scores, "
                                   f"|value| <= {FMRI_MAX_ABS:g}")
    partial = any_nan_col & ~all_nan_col
    if partial.any():
        rows = np.flatnonzero(np.isnan(data[:, np.flatnonzero(partial)]).any(1))
        raise InputError(path, f"NaN values in {rows.size} image rows (first: row {rows[0]}) "
                               f"at {int(partial.sum())} vertices that are not NaN everywhere")
    return np.flatnonzero(all_nan_col)


#: fewest validation images (a correlation needs two) and training images a split may leave
MIN_VAL_IMAGES, MIN_TRAIN_IMAGES = 2, 1


def split_sizes(n_images: int, val_fraction: float) -> tuple[int, int]:
    """(training, validation) image counts of :func:`train_val_split`, checked.

    Raises :class:`~model.errors.OptionError` for ``val_fraction`` outside
    (0, 1) or one that leaves fewer than :data:`MIN_TRAIN_IMAGES` training or
    :data:`MIN_VAL_IMAGES` validation images.
    """
    if not 0 < val_fraction < 1:
        raise OptionError("train.val_fraction", f"must be between 0 and 1, got {val_fraction}")
    n_val = max(1, int(round(n_images * val_fraction)))
    n_train = n_images - n_val
    if n_train < MIN_TRAIN_IMAGES or n_val < MIN_VAL_IMAGES:
        raise OptionError("train.val_fraction", f"{val_fraction} of {n_images} training images leaves {n_train} for training "
                                                f"and {n_val} for validation; need at least {MIN_TRAIN_IMAGES} and {MIN_VAL_IMAGES}")
    return n_train, n_val


def train_val_split(n_images: int, val_fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of training rows into (train, validation) indices.

    Both index arrays are sorted, so memory-mapped reads stay sequential.
    """
    _, n_val = split_sizes(n_images, val_fraction)
    order = np.random.default_rng(seed).permutation(n_images)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
