"""NSD's stimulus information: which COCO image each NSD image is, and how NSD cropped it.

``nsd_stim_info_merged.csv`` (NSD's ``nsddata/experiments/nsd/``) has one
row per NSD image (73,000; a first, unnamed column is the row number). The
columns read here:

``nsdId``
    The NSD image (0-based); the number in an Algonauts 2023 file name
    (``train-0001_nsd-00013.png`` is ``nsdId`` 13).
``cocoId``, ``cocoSplit``
    The COCO image (``train2017`` or ``val2017``) it was made from.
``cropBox``
    ``(top, bottom, left, right)``: the fractions of the COCO image's height
    (top, bottom) and width (left, right) that were cut away from each side,
    so that a square remained, which NSD resized to the 425 x 425 px it
    showed (NSD's data manual, Experiments page, "Column 4 (cropBox)", as
    the NSD-Flat converter cites and applies it; docs/real-data.md).
``subjectN``
    1 when subject N saw the image (``subjectN_repR``: the trials), else 0.

The crop convention, exactly (:func:`crop_region`, :func:`crop_mask`): in
continuous pixel coordinates, where pixel ``(i, j)`` of an image of width
``W`` and height ``H`` covers ``[j, j+1) x [i, i+1)``, the kept region is
``x`` from ``left * W`` to ``(1 - right) * W`` and ``y`` from ``top * H``
to ``(1 - bottom) * H``, with no rounding of the edges. The region is
resampled onto the ``S x S`` pixels of the NSD image by area (a box
filter: each NSD pixel averages the part of the region it covers), and a
mask keeps the NSD pixels at least half covered. Rounding the edges to
whole pixels first, or cutting one pixel more on a side, moves a mask by up
to half an NSD pixel and changes it along its edges
(``tests/test_coco_labels.py`` shows that such a crop loses Dice 1.0 on
the virtual subject's planted masks).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from .errors import InputError

#: Side of the images NSD showed, in pixels.
NSD_IMAGE_SIZE = 425
#: Columns of the stim-info file that :func:`read_stim_info` needs.
REQUIRED_COLUMNS = ("nsdId", "cocoId", "cropBox")
#: Every NSD subject (the subjectN columns).
SUBJECTS = tuple(range(1, 9))
#: A number as the file writes it (``0``, ``0.125``, ``1e-05``).
_NUMBER = r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
_CROP_BOX = re.compile(rf"^\s*[\(\[]?{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}[\)\]]?\s*$")

CropBox = tuple[float, float, float, float]


def parse_crop_box(text: str) -> CropBox:
    """``'(top, bottom, left, right)'`` as four floats; ValueError unless each is in [0, 1) and a region remains."""
    match = _CROP_BOX.match(str(text))
    if match is None:
        raise ValueError(f"cropBox {str(text)!r} is not four numbers (top, bottom, left, right)")
    crop = tuple(float(v) for v in match.groups())
    top, bottom, left, right = crop
    if not all(0 <= v < 1 for v in crop) or top + bottom >= 1 or left + right >= 1:
        raise ValueError(f"cropBox {str(text)!r}: each fraction must be in [0, 1) and leave part of the image")
    return crop


def format_crop_box(crop: CropBox) -> str:
    """The stim-info spelling of a crop box, ``(top, bottom, left, right)`` (full float precision)."""
    return "(" + ", ".join(repr(float(v)) for v in crop) + ")"


def crop_region(crop: CropBox, width: int, height: int) -> tuple[float, float, float, float]:
    """The kept region ``(x0, y0, x1, y1)`` of a ``width x height`` image, in continuous pixel coordinates."""
    top, bottom, left, right = crop
    return left * width, top * height, (1 - right) * width, (1 - bottom) * height


def crop_mask(mask: np.ndarray, crop: CropBox, size: tuple[int, int]) -> np.ndarray:
    """A full-size bool mask ``(H, W)`` as NSD showed it: cropped by ``crop``, resampled by area to ``size`` (h, w).

    A pixel of the result is in the mask when at least half of the region
    it covers is (the module's convention).
    """
    height, width = mask.shape
    layer = Image.fromarray(np.ascontiguousarray(mask, np.float32), mode="F")
    covered = layer.resize((size[1], size[0]), Image.Resampling.BOX, box=crop_region(crop, width, height))
    return np.asarray(covered) >= 0.5


def _subject_column(table: pd.DataFrame, subj: int) -> str | None:
    name = f"subject{subj}"
    return name if name in table.columns else None


def read_stim_info(path: str | Path) -> pd.DataFrame:
    """The stim-info file indexed by ``nsdId``, with ``cocoId`` (int) and ``cropBox`` (tuples); errors name the line.

    Raises
    ------
    InputError
        Missing file or column, a value that is not a number or crop box,
        an ``nsdId`` listed twice.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "missing stim-info file (NSD's nsd_stim_info_merged.csv)")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InputError(path, "is empty: expected NSD's nsd_stim_info_merged.csv") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a readable CSV ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}: expected NSD's nsd_stim_info_merged.csv "
                               f"(columns {', '.join(REQUIRED_COLUMNS)}, ...)")
    out = {"nsdId": [], "cocoId": [], "cropBox": []}
    for line, (nsd, coco, crop) in enumerate(zip(table["nsdId"], table["cocoId"], table["cropBox"]), start=2):
        try:
            out["nsdId"].append(int(nsd))
            out["cocoId"].append(int(coco))
            out["cropBox"].append(parse_crop_box(crop))
        except ValueError as exc:
            problem = str(exc) if "cropBox" in str(exc) else f"nsdId {nsd!r} and cocoId {coco!r} must be whole numbers"
            raise InputError(path, f"line {line}: {problem}") from None
    result = pd.DataFrame(out, index=pd.Index(out["nsdId"], name="nsd"))
    for column in table.columns:
        if column == "cocoSplit" or re.fullmatch(r"subject\d+", column):
            result[column] = table[column].to_numpy()
    result["line"] = np.arange(2, len(table) + 2)
    twice = result.index.duplicated()
    if twice.any():
        first = result.index[twice][0]
        lines = result.loc[first, "line"].tolist()
        raise InputError(path, f"lines {lines[0]} and {lines[1]}: nsdId {first} is listed twice")
    return result


def shown_to(info: pd.DataFrame, subj: int) -> pd.Series | None:
    """Per nsdId: did subject ``subj`` see it (the ``subjectN`` column; None where the file has none)."""
    column = _subject_column(info, subj)
    if column is None:
        return None
    return info[column].astype(str).str.strip().isin(["1", "1.0", "True", "true"])


def write_stim_info(path: str | Path, rows: Sequence[dict], subj: int) -> None:
    """Write a stim-info file with NSD's columns for the images of one subject (the virtual subject's).

    Each row gives ``nsdId``, ``cocoId``, ``cocoSplit`` and ``cropBox``; the
    other columns are filled as NSD fills them for an image that subject
    ``subj`` saw three times and no other subject saw.
    """
    records = []
    for k, row in enumerate(rows):
        record = {"cocoId": row["cocoId"], "cocoSplit": row["cocoSplit"], "cropBox": format_crop_box(row["cropBox"]),
                  "loss": 0.0, "nsdId": row["nsdId"], "flagged": False, "BOLD5000": False, "shared1000": False}
        record.update({f"subject{s}": int(s == subj) for s in SUBJECTS})
        record.update({f"subject{s}_rep{r}": (3 * k + r + 1 if s == subj else 0) for s in SUBJECTS for r in range(3)})
        records.append(record)
    pd.DataFrame(records).to_csv(path)  # the unnamed first column: the row number, as in NSD's file


__all__ = ["NSD_IMAGE_SIZE", "crop_mask", "crop_region", "format_crop_box", "parse_crop_box", "read_stim_info",
           "shown_to", "write_stim_info"]
