"""Labels from COCO masks: what the virtual subject's COCO files cost, and how fast ``tbe labels`` and the reader are.

Prints, in one run, on a virtual subject of ``--n-images`` images at
``--image-size`` px (default 434, the original's size):

1. the seconds of ``tbe synth`` with and without writing the COCO files
   (:mod:`model.virtual.coco`), side by side, and their ratio;
2. ``tbe labels`` (every category, then ``--supercategories``): seconds per
   image, and the Dice of its masks against the planted ones (min over every
   image and category shown; 1.0 is exact);
3. reading that labels file (:func:`analyses.stimuli.from_labels_csv`):
   seconds per image and the bytes of its mask grids per image and category.

    python benchmarks/bench_labels.py [--n-images 200] [--image-size 434] [--work DIR]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
from PIL import Image

from analyses.coco_labels import write_coco_labels
from analyses.stats import dice
from analyses.stimuli import from_labels_csv
from bench_routing import timed
from model.subject import load_subject
from model.synthetic import VirtualConfig, write_virtual_subject
from model.vision import CATEGORIES, OBJECT_CATEGORIES


class _NoCoco:
    """Stands in for :class:`model.virtual.coco.CocoFiles`: writes nothing."""

    def __init__(self, *args):
        pass

    def add(self, *args):
        pass

    def write(self, *args):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=200, help="images of the virtual subject (train + test)")
    parser.add_argument("--image-size", type=int, default=434)
    parser.add_argument("--work", type=Path, default=None, help="folder to work in (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        n_test = max(1, args.n_images // 5)
        config = VirtualConfig(n_train=args.n_images - n_test, n_test=n_test, image_size=args.image_size, seed=1)
        with mock.patch("model.virtual.writer.CocoFiles", _NoCoco):
            _, without = timed(write_virtual_subject, work / "plain", config)
        _, with_coco = timed(write_virtual_subject, work / "data", config)
        print(f"1. tbe synth, {args.n_images} images at {args.image_size} px: {with_coco:.1f} s with the COCO files, "
              f"{without:.1f} s without (ratio {with_coco / without:.2f})")

        subject = load_subject(work / "data", 1)
        truth = subject.truth
        planted = np.concatenate([truth.masks("train"), truth.masks("test")])
        names = [p.name for p in (*subject.train_images, *subject.test_images)]
        for label, extra in (("every category", {}), ("supercategories", {"supercategories": True})):
            out = work / "labels" / f"{'super' if extra else 'all'}.csv"
            written, seconds = timed(write_coco_labels, [truth.coco_instances], truth.nsd_stim_info, work / "data", 1,
                                     out, **extra)
            scores = []
            if not extra:
                for row in __import__("pandas").read_csv(out, keep_default_na=False).itertuples():
                    if row.category:
                        got = np.asarray(Image.open(out.parent / row.mask)) > 0
                        i = names.index(row.image.rsplit("/", 1)[-1])
                        scores.append(dice(got, planted[i, CATEGORIES.index(row.category)]))
            shown = ", ".join(f"{k} {v}" for k, v in written.counts.items())
            dice_text = f"; Dice min {min(scores):.4f} over {len(scores)} masks" if scores else ""
            print(f"2. tbe labels ({label}): {seconds / written.n_images * 1000:.1f} ms per image ({shown}){dice_text}")
        stimuli, seconds = timed(from_labels_csv, work / "labels" / "all.csv", categories=OBJECT_CATEGORIES)
        per_mask = stimuli.masks.nbytes / stimuli.masks.shape[0] / stimuli.masks.shape[1]
        print(f"3. reading it: {seconds / len(stimuli) * 1000:.1f} ms per image; mask grids {per_mask / 1024:.0f} KiB "
              f"per image and category ({stimuli.masks.nbytes / 2**20:.1f} MiB for {len(stimuli)} images x "
              f"{len(stimuli.categories)} categories)")


if __name__ == "__main__":
    main()
