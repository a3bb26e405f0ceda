"""The virtual subject's images as NSD made its own: cut from larger "COCO" photographs.

For each image the writer invents the COCO photograph it came from: the
image enlarged :data:`SCALE` times and widened (or heightened) by a margin
of random width on each side, into which the objects that touch the
image's edge continue. It writes what NSD users have for real images: a
COCO instances file (each object's visible pixels in the photograph, as
compressed RLE, uncompressed RLE or polygons, in turn) and a stim-info
file whose ``cropBox`` cuts the margins away (:mod:`model.nsd`). A few
photographs also hold an object entirely in a margin, of a category the
image does not show: it is cut away with the margin, so an importer that
crops right lists no such category. Cropping and resampling by
:func:`model.nsd.crop_mask` gives back the planted masks exactly; a crop
one photograph pixel off does not.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..coco import annotation, rectangles
from ..nsd import write_stim_info
from ..vision import OBJECT_CATEGORIES

#: Photograph pixels per image pixel (an integer, so that area resampling gives back the planted masks).
SCALE = 2
#: COCO ids of the virtual photographs: this plus the NSD id.
COCO_ID_OFFSET = 900_000
#: The painted categories as COCO categories (id, name, supercategory).
COCO_CATEGORIES = ({"id": 1, "name": "face", "supercategory": "person"},
                   {"id": 2, "name": "body", "supercategory": "person"},
                   {"id": 3, "name": "word", "supercategory": "text"},
                   {"id": 4, "name": "object", "supercategory": "object"})
#: How successive objects' segmentations are written, in turn (:func:`model.coco.encode`).
ENCODINGS = ("compressed", "rle", "polygons")
INSTANCES_FILE = "instances.json"
STIM_INFO_FILE = "nsd_stim_info.csv"


@dataclass(frozen=True)
class Photograph:
    """Where an image of side ``size`` lies in its photograph: margins before and after it, and on which axis."""

    size: int
    before: int
    after: int
    wide: bool  # margins left and right (else above and below)

    @property
    def width(self) -> int:
        return SCALE * self.size + (self.before + self.after if self.wide else 0)

    @property
    def height(self) -> int:
        return SCALE * self.size + (0 if self.wide else self.before + self.after)

    @property
    def crop_box(self) -> tuple[float, float, float, float]:
        """NSD's ``(top, bottom, left, right)`` fractions that cut the margins away."""
        if self.wide:
            return 0.0, 0.0, self.before / self.width, self.after / self.width
        return self.before / self.height, self.after / self.height, 0.0, 0.0

    def enlarge(self, mask: np.ndarray) -> np.ndarray:
        """An image mask in the photograph: enlarged, and continued into the margins from the image's edge."""
        big = np.repeat(np.repeat(mask, SCALE, 0), SCALE, 1)
        pad = ((0, 0), (self.before, self.after)) if self.wide else ((self.before, self.after), (0, 0))
        return np.pad(big, pad, mode="edge")

    def polygons(self, mask: np.ndarray) -> list[list[float]]:
        """:func:`model.coco.rectangles` of :meth:`enlarge`, computed on the small mask (the same union)."""
        side = SCALE * self.size
        out = []
        for x0, y0, x1, _, _, y1, _, _ in rectangles(mask):
            x0, y0, x1, y1 = SCALE * x0, SCALE * y0, SCALE * x1, SCALE * y1
            if self.wide:
                x0, x1 = (0 if x0 == 0 else x0 + self.before), (self.width if x1 == side else x1 + self.before)
            else:
                y0, y1 = (0 if y0 == 0 else y0 + self.before), (self.height if y1 == side else y1 + self.before)
            out.append([x0, y0, x1, y0, x1, y1, x0, y1])
        return out


class CocoFiles:
    """Collects the annotations of a virtual subject's images, then writes the instances and stim-info files."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng = size, rng
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.stim_info: list[dict] = []

    def add(self, nsd_id: int, instances: list[tuple[str, np.ndarray]]) -> None:
        """One image: its objects' visible masks ``(category, (S, S) bool)``."""
        margin = max(1, self.size // 2)
        before, after = (int(v) for v in self.rng.integers(1, margin + 1, size=2))
        photo = Photograph(self.size, before, after, bool(self.rng.random() < 0.5))
        image_id = COCO_ID_OFFSET + int(nsd_id)
        self.images.append({"id": image_id, "width": photo.width, "height": photo.height,
                            "file_name": f"{image_id:012d}.jpg"})
        ids = {c["name"]: c["id"] for c in COCO_CATEGORIES}
        for category, mask in instances:
            how = ENCODINGS[len(self.annotations) % len(ENCODINGS)]
            entry = annotation(len(self.annotations) + 1, image_id, ids[category], photo.enlarge(mask),
                               "compressed" if how == "polygons" else how)
            if how == "polygons":
                entry.update(segmentation=photo.polygons(mask), iscrowd=0)
            self.annotations.append(entry)
        self._add_decoy(photo, image_id, {c for c, _ in instances}, ids)
        self.stim_info.append({"nsdId": int(nsd_id), "cocoId": image_id, "cocoSplit": "train2017",
                               "cropBox": photo.crop_box})

    def _add_decoy(self, photo: Photograph, image_id: int, shown: set[str], ids: dict[str, int]) -> None:
        """An object of a category the image does not show, entirely inside the wider margin (if it is wide enough)."""
        absent = [c for c in OBJECT_CATEGORIES if c not in shown]
        margin = max(photo.before, photo.after)
        if not absent or margin < 6:
            return
        category = absent[int(self.rng.integers(len(absent)))]
        start = 0 if photo.before == margin else photo.width - margin if photo.wide else photo.height - margin
        along = photo.height if photo.wide else photo.width
        a0 = int(self.rng.integers(0, along // 2))
        b0, b1 = start + 1, start + margin - 1
        if photo.wide:
            x0, x1, y0, y1 = b0, b1, a0, a0 + along // 4
        else:
            x0, x1, y0, y1 = a0, a0 + along // 4, b0, b1
        self.annotations.append({"id": len(self.annotations) + 1, "image_id": image_id, "category_id": ids[category],
                                 "area": float((x1 - x0) * (y1 - y0)), "bbox": [x0, y0, x1 - x0, y1 - y0],
                                 "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]], "iscrowd": 0})

    def write(self, folder: Path, subj: int) -> None:
        """``folder/instances.json`` and ``folder/nsd_stim_info.csv``."""
        folder.mkdir(parents=True, exist_ok=True)
        instances = {"info": {"description": "virtual subject: its images' objects as COCO annotations"},
                     "images": self.images, "annotations": self.annotations, "categories": list(COCO_CATEGORIES)}
        (folder / INSTANCES_FILE).write_text(json.dumps(instances))
        write_stim_info(folder / STIM_INFO_FILE, self.stim_info, subj)


__all__ = ["COCO_CATEGORIES", "CocoFiles", "INSTANCES_FILE", "Photograph", "SCALE", "STIM_INFO_FILE"]
