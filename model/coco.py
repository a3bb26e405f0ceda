"""COCO instance annotations: read them, decode an image's masks per category, and write them.

An instances file (``instances_train2017.json``) holds ``images`` (``id``,
``width``, ``height``), ``categories`` (``id``, ``name``,
``supercategory``) and ``annotations`` (``image_id``, ``category_id``,
``segmentation``, ``iscrowd``). A segmentation is polygons (a list of
``[x0, y0, x1, y1, ...]`` in pixel-edge coordinates), an uncompressed RLE
(``{"size": [h, w], "counts": [runs...]}``, crowds) or a compressed one
(``counts`` a string); pycocotools decodes all three. A *label* is a set
of categories: one category, or a supercategory (the union of its
categories' masks).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from pycocotools import mask as coco_mask

from .errors import InputError, OptionError


@dataclass
class Instances:
    """One or more instances files, merged and indexed by image."""

    sources: list[Path]
    images: dict[int, dict]  # image id -> {"width", "height", "source"}
    categories: dict[int, dict]  # category id -> {"name", "supercategory"}
    annotations: dict[int, list[dict]] = field(default_factory=dict)  # image id -> its annotations

    def labels(self, names: Sequence[str] | None = None, supercategories: bool = False) -> dict[str, set[int]]:
        """Label name -> the category ids it joins.

        Without ``names``: every category (or, with ``supercategories``,
        every supercategory). A name is a category's, or a supercategory's
        (all its categories); with ``supercategories`` it must be a
        supercategory. Unknown names are one error line.
        """
        by_name = {c["name"]: {i} for i, c in self.categories.items()}
        by_super: dict[str, set[int]] = {}
        for i, c in self.categories.items():
            by_super.setdefault(c["supercategory"], set()).add(i)
        if names is None:
            return dict(sorted(by_super.items())) if supercategories else {n: by_name[n] for n in sorted(by_name)}
        out = {}
        for name in names:
            found = by_super.get(name) if supercategories else by_name.get(name, by_super.get(name))
            if found is None:
                known = sorted(by_super) if supercategories else sorted(set(by_name) | set(by_super))
                kind = "supercategory" if supercategories else "category or supercategory"
                raise OptionError("categories", f"{name!r} is no COCO {kind} of {self.sources[0]}; known: "
                                                 f"{', '.join(known[:12])}{', ...' if len(known) > 12 else ''}")
            out[name] = found
        return out

    def masks(self, image_id: int, labels: dict[str, set[int]]) -> dict[str, np.ndarray]:
        """``(height, width)`` bool mask of each label in one image: the union of its categories' annotations."""
        info = self.images[image_id]
        height, width = info["height"], info["width"]
        out = {}
        for annotation in self.annotations.get(image_id, []):
            for name, ids in labels.items():
                if annotation["category_id"] in ids:
                    decoded = decode(annotation, height, width, info["source"])
                    out[name] = out[name] | decoded if name in out else decoded
        return out


def decode(annotation: dict, height: int, width: int, where: str | Path = "annotation") -> np.ndarray:
    """One annotation's segmentation as a ``(height, width)`` bool mask (polygons, or either kind of RLE)."""
    seg = annotation.get("segmentation")
    here = f"annotation {annotation.get('id', '?')} of image {annotation.get('image_id', '?')}"
    try:
        if isinstance(seg, list):
            polygons = [list(map(float, p)) for p in seg]
            if not polygons or any(len(p) < 6 or len(p) % 2 for p in polygons):
                raise ValueError("a polygon needs at least three x, y pairs")
            rle = coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))
        elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
            if [int(v) for v in seg["size"]] != [height, width]:
                raise ValueError(f"its RLE is {seg['size'][1]}x{seg['size'][0]} px, the image {width}x{height} px")
            if isinstance(seg["counts"], list):
                rle = coco_mask.frPyObjects(seg, height, width)
            else:
                rle = {"size": [height, width], "counts": str(seg["counts"]).encode()}
        else:
            raise ValueError("segmentation is neither polygons nor an RLE")
        with warnings.catch_warnings():  # pycocotools' RLE objects predate numpy 2's __array__(copy=): noise, not a fault
            warnings.simplefilter("ignore", DeprecationWarning)
            return coco_mask.decode(rle).astype(bool)
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(where, f"{here}: {exc}") from None


def _load(path: Path) -> dict:
    if not path.is_file():
        raise InputError(path, "missing COCO instances file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a readable JSON file ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise InputError(path, "not a COCO instances file: expected lists 'images', 'annotations' and 'categories'")
    return data


def read_instances(paths: Iterable[str | Path]) -> Instances:
    """Read and merge instances files (e.g. train2017 and val2017); one error line for a bad or conflicting file."""
    paths = [Path(p) for p in paths]
    merged = Instances(paths, {}, {})
    for path in paths:
        data = _load(path)
        try:
            for c in data["categories"]:
                entry = {"name": str(c["name"]), "supercategory": str(c.get("supercategory", c["name"]))}
                if merged.categories.setdefault(int(c["id"]), entry) != entry:
                    raise InputError(path, f"category {c['id']} is {entry['name']!r} here but "
                                           f"{merged.categories[int(c['id'])]['name']!r} in {paths[0]}")
            for image in data["images"]:
                entry = {"width": int(image["width"]), "height": int(image["height"]), "source": path}
                if int(image["id"]) in merged.images:
                    raise InputError(path, f"image {image['id']} is also in {merged.images[int(image['id'])]['source']}")
                merged.images[int(image["id"])] = entry
            for annotation in data["annotations"]:
                if int(annotation["category_id"]) not in merged.categories:
                    raise InputError(path, f"annotation {annotation.get('id', '?')} has unknown category "
                                           f"{annotation['category_id']}")
                merged.annotations.setdefault(int(annotation["image_id"]), []).append(annotation)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(path, f"not a COCO instances file: an entry lacks or misspells {exc}") from None
    return merged


# --------------------------------------------------------------------------
# Writing (the virtual subject's annotations)
# --------------------------------------------------------------------------

def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed RLE of a bool mask: run lengths in column-major order, starting with a run of zeros."""
    flat = np.asarray(mask, bool).ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.r_[0, edges, flat.size]).tolist()
    return [0, *runs] if flat.size and flat[0] else runs


def rectangles(mask: np.ndarray) -> list[list[float]]:
    """Polygons (axis-aligned rectangles along pixel edges) whose union is exactly ``mask``.

    Runs of each row are merged with identical runs of the rows below, so a
    blob costs about one rectangle per change of its outline.
    """
    open_runs: dict[tuple[int, int], int] = {}  # (x0, x1) -> first row
    out = []
    padded = np.zeros((mask.shape[0] + 1, mask.shape[1] + 2), bool)
    padded[:-1, 1:-1] = mask
    for y, row in enumerate(padded):
        change = np.flatnonzero(row[1:] != row[:-1])
        runs = set(zip(change[::2].tolist(), change[1::2].tolist()))
        for run in [r for r in open_runs if r not in runs]:
            y0 = open_runs.pop(run)
            out.append([run[0], y0, run[1], y0, run[1], y, run[0], y])
        for run in runs - open_runs.keys():
            open_runs[run] = y
    return [[float(v) for v in polygon] for polygon in out]


def encode(mask: np.ndarray, how: str) -> dict:
    """A segmentation of ``mask``: ``polygons`` (:func:`rectangles`), ``rle`` (uncompressed) or ``compressed``."""
    height, width = mask.shape
    if how == "polygons":
        return {"segmentation": rectangles(mask), "iscrowd": 0}
    if how == "rle":
        return {"segmentation": {"size": [height, width], "counts": rle_counts(mask)}, "iscrowd": 1}
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")}, "iscrowd": 0}


def annotation(annotation_id: int, image_id: int, category_id: int, mask: np.ndarray, how: str) -> dict:
    """One COCO annotation of ``mask`` (with its area and bounding box)."""
    ys, xs = np.nonzero(mask)
    bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    return {"id": annotation_id, "image_id": image_id, "category_id": category_id, "area": float(mask.sum()),
            "bbox": bbox, **encode(mask, how)}


__all__ = ["Instances", "annotation", "decode", "encode", "read_instances", "rectangles", "rle_counts"]
