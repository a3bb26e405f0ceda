"""Labels files written from a virtual subject's true masks, for the tests of the labels format and its commands."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from model.subject import load_subject
from model.vision import CATEGORIES

#: The categories of the rendered objects and layouts that a labels file of held-out scenes uses.
SCENE_CATEGORIES = ("face", "body", "word", "object", "place")


def subject_images(data: Path, n: int, split: str = "test") -> list[Path]:
    """The first ``n`` images of a split of subject 1 of ``data``."""
    return list(load_subject(data, 1, check_images=False).images(split))[:n]


def true_masks(data: Path, paths: Sequence[Path]) -> np.ndarray:
    """``(image, CATEGORIES, S, S)`` bool planted masks of subject 1's images ``paths``."""
    truth = load_subject(data, 1, check_images=False).truth
    out = []
    for path in paths:
        split = "train" if path.name.startswith("train") else "test"
        out.append(truth.masks(split, [path.name])[0])
    return np.stack(out)


def write_labels(folder: Path, paths: Sequence[Path], masks: np.ndarray, rows: str = "several",
                 with_masks: str = "all", categories: Sequence[str] = SCENE_CATEGORIES,
                 name: str = "labels.csv") -> Path:
    """A labels file of ``paths`` from their planted ``masks`` (``(image, CATEGORIES, S, S)`` bool).

    rows : ``several`` (one row per category an image shows, an empty category
        for an image that shows none) or ``one`` (the category covering the
        most of the image only: the natural single-label file)
    with_masks : ``all``, ``none`` or ``some`` (the first half of the images
        get masks on every row, the others none)
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    table = []
    for i, path in enumerate(paths):
        areas = {c: masks[i, CATEGORIES.index(c)].mean() for c in categories}
        shown = [c for c in categories if areas[c] > 0]
        if rows == "one" and shown:
            shown = [max(shown, key=areas.get)]
        masked = with_masks == "all" or (with_masks == "some" and i < len(paths) // 2)
        if not shown:
            table.append({"image": str(path), "category": "", "mask": ""})
        for c in shown:
            mask = ""
            if masked:
                mask = f"masks/{path.stem}_{c}.png"
                Image.fromarray(masks[i, CATEGORIES.index(c)].astype(np.uint8) * 255).save(folder / mask)
            table.append({"image": str(path), "category": c, "mask": mask})
    out = folder / name
    pd.DataFrame(table, columns=["image", "category", "mask"]).to_csv(out, index=False)
    return out
