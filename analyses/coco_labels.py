"""``tbe labels``: the labels file of a subject's NSD images, from COCO's instance masks.

For every image of the subject (training and test, in the Algonauts 2023
layout) the NSD id in its file name gives the stim-info row
(:mod:`model.nsd`): the COCO image and NSD's crop box. Each label's
annotations (a COCO category, or a supercategory: the union of its
categories) are decoded by pycocotools (:mod:`model.coco`), cropped and
resampled to the image's own size exactly as NSD cut its images
(:func:`model.nsd.crop_mask`), and written as a binary PNG when any pixel
remains. The labels file (:mod:`analyses.stimuli`'s format) lists one row
per image and label it shows, with that mask, and one row with an empty
category for an image that shows none; what an image's rows do not list, it
does not show (COCO annotates every instance of its 80 categories; crowds
are included). Paths are relative to the labels file's folder; the masks
go into ``<labels stem>_masks/`` beside it. Nothing is written unless every
image was found and decoded.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from model.coco import read_instances
from model.errors import InputError
from model.files import atomic_directory, atomic_path, usable_directory
from model.nsd import crop_mask, read_stim_info, shown_to
from model.progress import progress
from model.subject import IMAGE_NAME, load_subject

from .stimuli import canonical

log = logging.getLogger(__name__)


@dataclass
class LabelsWritten:
    """What :func:`write_coco_labels` wrote: the file, its masks folder and how many images show each label."""

    labels: Path
    masks: Path
    n_images: int
    counts: dict[str, int]


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size[1], img.size[0]


def write_coco_labels(coco: Sequence[str | Path], stim_info: str | Path, data_dir: str | Path, subj: int,
                      out: str | Path, categories: Sequence[str] | None = None,
                      supercategories: bool = False) -> LabelsWritten:
    """Write the labels file of subject ``subj``'s images with per-label masks cropped as NSD cropped them.

    Parameters
    ----------
    coco : paths
        COCO instances files (``instances_train2017.json``,
        ``instances_val2017.json``: NSD used both).
    stim_info : path
        NSD's ``nsd_stim_info_merged.csv``.
    data_dir, subj : path, int
        The Algonauts 2023 data and the subject whose images are labelled.
    out : path
        The labels file to write (``.csv``); masks go into ``<stem>_masks/``.
    categories : sequence of str, optional
        COCO categories or supercategories to label (default: every category).
    supercategories : bool
        Label by supercategory (every one, or those ``categories`` names).
    """
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise InputError(out, "the labels file is a CSV: use a .csv file name")
    usable_directory(out.parent, where=out)
    subject = load_subject(data_dir, subj, check_images=False)
    info = read_stim_info(stim_info)
    shown = shown_to(info, subj)
    instances = read_instances(coco)
    labels = instances.labels(categories, supercategories)
    names = {label: canonical(label) for label in labels}
    paths = [*subject.train_images, *subject.test_images]
    for path in paths:  # every image found before anything is written
        nsd = int(IMAGE_NAME.match(path.name)["nsd"])
        if nsd not in info.index:
            raise InputError(stim_info, f"has no row for nsdId {nsd} (image {path.name} of {subject.root})")
        row = info.loc[nsd]
        if shown is not None and not shown[nsd]:
            raise InputError(stim_info, f"line {row['line']}: nsdId {nsd} (image {path.name}) was not shown to "
                                        f"subject {subj}: is `subj` right?")
        if int(row["cocoId"]) not in instances.images:
            split = f" ({row['cocoSplit']})" if "cocoSplit" in row.index else ""
            raise InputError(instances.sources[0], f"has no image {row['cocoId']}{split}, the COCO image of nsdId "
                                                   f"{nsd} ({path.name}): pass every split's instances file to `coco`")

    masks_dir = out.parent / f"{out.stem}_masks"
    rows, counts = [], {names[label]: 0 for label in labels}
    with atomic_path(out) as table, atomic_directory(masks_dir, overwrite=True) as folder:  # masks first, then the file
        for path in progress(paths, desc="COCO masks", unit="img"):
            row = info.loc[int(IMAGE_NAME.match(path.name)["nsd"])]
            size = _image_size(path)
            image = os.path.relpath(Path(path).resolve(), out.parent.resolve())
            listed = False
            for label, full in instances.masks(int(row["cocoId"]), labels).items():
                mask = crop_mask(full, row["cropBox"], size)
                if not mask.any():
                    continue  # only outside NSD's crop: the image does not show it
                name = f"{path.stem}__{names[label]}.png"
                Image.fromarray(mask.astype(np.uint8) * 255).save(folder / name, optimize=True)
                rows.append({"image": image, "category": names[label], "mask": f"{masks_dir.name}/{name}"})
                counts[names[label]] += 1
                listed = True
            if not listed:
                rows.append({"image": image, "category": "", "mask": ""})
        if not any(counts.values()):
            raise InputError(instances.sources[0], f"no annotation of {', '.join(list(names.values())[:5])} lies "
                                                   f"inside NSD's crop of any image of {subject.root}")
        pd.DataFrame(rows, columns=["image", "category", "mask"]).to_csv(table, index=False)
    log.info("labels of %d images of %s: %s", len(paths), subject.root,
             ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    return LabelsWritten(out, masks_dir, len(paths), counts)


__all__ = ["LabelsWritten", "write_coco_labels"]
