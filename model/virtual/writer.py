"""Write a virtual subject in the Algonauts 2023 layout, plus its ground truth.

``write_virtual_subject`` renders the stimuli, draws each vertex's tuning
from the ROI layout, computes clean responses and three noisy repeats, and
writes ``OUT/subjXX/`` exactly as the challenge data are laid out (the
reader needs no special case), with ``ground_truth/`` next to it. The whole
directory appears at once, or not at all. ``ground_truth/coco/`` holds the
images' objects as NSD users have them for real images: a COCO instances
file and a stim-info file with crop boxes (:mod:`model.virtual.coco`).
"""
from __future__ import annotations

import csv
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import atomic_directory, save_npy, write_json
from ..options import setting
from ..progress import progress
from ..rois import HEMIS, ROI_CLASSES, class_mapping
from ..subject import SPLIT_DIRS
from ..vision import CATEGORIES, FIELD_OF_VIEW_DEG
from . import responses as R
from .coco import CocoFiles
from .stimuli import render_scene, sample_scene
from .surface import CATEGORY_PATCHES, EARLY_VISUAL_SECTORS, SURFACES, build_layout

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
N_NSD_IMAGES = 73000


@dataclass(frozen=True)
class VirtualConfig:
    """Sizes and seed of a virtual subject. The defaults train in minutes on 2 CPU cores."""

    subj: int = setting(1, "subject number: writes subjXX")
    n_train: int = setting(1000, "training images (with fMRI)")
    n_test: int = setting(200, "test images (fMRI withheld, as in the challenge)")
    image_size: int = setting(224, "side of the painted images in pixels")
    seed: int = setting(0, "seed of the images, ROIs, tuning and noise")
    n_repeats: int = 3
    surface: str = setting("fsaverage5", "surface density; fsaverage6 (subdivided fsaverage5) allows real-size "
                                         "subjects, for benchmarks", choices=SURFACES)
    n_vertices: tuple[int, int] | None = setting(None, "exact numbers of challenge vertices (e.g. 19004 20544 as NSD "
                                                       "subject 1, with `surface` fsaverage6)", kind=int)

    def check(self) -> None:
        from ..errors import OptionError

        if self.surface not in SURFACES:
            raise OptionError("surface", f"unknown surface {self.surface!r}; choose from {', '.join(SURFACES)}")

        for name, low in (("subj", 1), ("n_train", 20), ("n_test", 1), ("image_size", 32), ("n_repeats", 1)):
            if getattr(self, name) < low:
                raise OptionError(name, f"must be at least {low}, got {getattr(self, name)}")


def write_virtual_subject(out_dir: str | Path, config: VirtualConfig = VirtualConfig(),
                          overwrite: bool = False, chunk: int = 256) -> Path:
    """Generate a virtual subject under ``out_dir/subjXX`` and return that path."""
    config.check()
    target = Path(out_dir) / f"subj{config.subj:02d}"
    if target.exists() and not overwrite:
        from ..errors import InputError

        raise InputError(target, "already exists (pass `overwrite` to replace it)")
    seeds = np.random.SeedSequence([config.seed, config.subj]).spawn(5)
    scene_rng, nsd_rng, tuning_rng, noise_rng, coco_rng = (np.random.default_rng(s) for s in seeds)
    n_total = config.n_train + config.n_test
    split_of = np.array(["train"] * config.n_train + ["test"] * config.n_test)
    nsd_ids = np.concatenate([np.sort(ids) for ids in np.split(
        nsd_rng.choice(N_NSD_IMAGES, n_total, replace=False), [config.n_train])])
    index_in_split = np.concatenate([np.arange(config.n_train), np.arange(config.n_test)]) + 1
    names = [f"{s}-{i:04d}_nsd-{n:05d}.png" for s, i, n in zip(split_of, index_in_split, nsd_ids)]

    try:
        layout = build_layout(config.surface, dict(zip(HEMIS, config.n_vertices)) if config.n_vertices else None)
    except ValueError as exc:
        from ..errors import OptionError

        raise OptionError("n_vertices", str(exc)) from None
    tuning = {hemi: R.make_tuning(layout[hemi], tuning_rng) for hemi in HEMIS}

    with atomic_directory(target, overwrite=overwrite) as tmp:
        image_dirs = {s: tmp / SPLIT_DIRS[s] for s in ("train", "test")}
        mask_dirs = {s: tmp / "ground_truth" / "masks" / s for s in ("train", "test")}
        for d in (*image_dirs.values(), *mask_dirs.values()):
            d.mkdir(parents=True)
        energy = np.empty((n_total, R.GRID, R.GRID), np.float16)
        coverage = np.empty((n_total, len(CATEGORIES), R.GRID, R.GRID), np.float16)
        rows = []
        coco = CocoFiles(config.image_size, coco_rng)
        bar = progress(total=n_total, desc="rendering stimuli", unit="img")
        for start in range(0, n_total, chunk):
            stop = min(n_total, start + chunk)
            images, masks = [], []
            for k in range(start, stop):
                scene = render_scene(sample_scene(scene_rng), config.image_size)
                Image.fromarray(scene.image).save(image_dirs[split_of[k]] / names[k], compress_level=1)
                Image.fromarray(scene.mask_bits()).save(mask_dirs[split_of[k]] / names[k])
                images.append(scene.image)
                masks.append(np.stack([scene.masks[c] for c in CATEGORIES]))
                rows.append(_image_row(split_of[k], names[k], scene))
                coco.add(nsd_ids[k], scene.instances)
                bar.update()
            energy[start:stop] = R.contrast_energy(np.stack(images))
            coverage[start:stop] = R.category_coverage(np.stack(masks))
        bar.close()

        truth = tmp / "ground_truth"
        fmri_dir = tmp / "training_split" / "training_fmri"
        train = slice(0, config.n_train)
        test = slice(config.n_train, n_total)
        for hemi in HEMIS:
            t = tuning[hemi]
            contrast, category = R.raw_drives(t, energy.astype(np.float32), coverage.astype(np.float32))
            R.fit_normalisation(t, contrast, category)
            clean = R._combine(t, contrast, category)
            del contrast, category
            noisy = R.noisy_average(clean, t.ncsnr, noise_rng, config.n_repeats)
            save_npy(fmri_dir / f"{hemi}_training_fmri.npy", noisy[train])
            save_npy(truth / f"{hemi}_train_clean.npy", clean[train])
            save_npy(truth / f"{hemi}_test_clean.npy", clean[test])
            save_npy(truth / f"{hemi}_test_fmri.npy", noisy[test])
            save_npy(truth / f"{hemi}_noise_ceiling.npy", R.noise_ceiling(t.ncsnr, config.n_repeats).astype(np.float32))
            t.to_dataset().to_netcdf(truth / f"{hemi}_tuning.nc")
        coco.write(truth / "coco", config.subj)
        _write_roi_masks(tmp / "roi_masks", layout)
        _write_images_table(truth / "images.csv", rows)
        write_json(truth / "rois.json", _roi_truth(layout, tuning))
        write_json(truth / "config.json", {
            "generator": "transformer-brain-encoder virtual subject",
            "generator_version": GENERATOR_VERSION,
            **asdict(config),
            "field_of_view_deg": FIELD_OF_VIEW_DEG,
            "surface": config.surface if config.surface == "fsaverage5" else f"{config.surface} (subdivided fsaverage5; vertex order ours)",
            "prf_grid": R.GRID,
            "c50": R.C50,
            "categories": list(CATEGORIES),
            "mask_bits": {c: 1 << i for i, c in enumerate(CATEGORIES)},
        })
    log.info("wrote virtual subject %s (%d training, %d test images, %d + %d vertices)", target,
             config.n_train, config.n_test, tuning["lh"].kind.size, tuning["rh"].kind.size)
    return target


def _image_row(split: str, name: str, scene) -> dict:
    row = {"split": split, "image": name, "background": scene.spec.background}
    for c in CATEGORIES:
        row[f"n_{c}"] = sum(o.category == c for o in scene.spec.objects) if c != "place" else int(scene.spec.background == "place")
        row[f"area_{c}"] = round(float(scene.masks[c].mean()), 5)
    return row


def _write_images_table(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _write_roi_masks(folder: Path, layout) -> None:
    folder.mkdir(parents=True)
    for roi_class in ROI_CLASSES:
        # np.save pickles a dict, exactly as the Algonauts mapping files were written
        np.save(folder / f"mapping_{roi_class}.npy", class_mapping(roi_class), allow_pickle=True)
        for hemi in HEMIS:
            labels = layout[hemi].labels[roi_class]
            save_npy(folder / f"{hemi}.{roi_class}_fsaverage_space.npy", labels.astype(np.int32))
            save_npy(folder / f"{hemi}.{roi_class}_challenge_space.npy", labels[layout[hemi].challenge].astype(np.int32))
    for hemi in HEMIS:
        save_npy(folder / f"{hemi}.all-vertices_fsaverage_space.npy", layout[hemi].challenge.astype(np.int32))


def _roi_truth(layout, tuning) -> dict:
    """What each ROI was planted to do, and where its vertices see, per hemisphere."""
    preference = {s.roi: "prf" for s in EARLY_VISUAL_SECTORS}
    preference.update({p.roi: p.preference for p in CATEGORY_PATCHES})
    out = {}
    for roi_class, names in ROI_CLASSES.items():
        if roi_class == "streams":
            continue
        label_of = {n: lab for lab, n in class_mapping(roi_class).items()}
        for roi in names:
            entry = {"class": roi_class, "preference": preference.get(roi), "hemis": {}}
            for hemi in HEMIS:
                members = layout[hemi].labels[roi_class][layout[hemi].challenge] == label_of[roi]
                if not members.any():
                    continue
                t = tuning[hemi]
                active = members & ~t.null
                entry["hemis"][hemi] = {
                    "n_vertices": int(members.sum()),
                    "n_null": int((members & t.null).sum()),
                    "prf_centre_deg": [float(np.mean(t.prf_x[active])), float(np.mean(t.prf_y[active]))] if active.any() else None,
                }
            out[roi] = entry
    return out
