"""``tbe demo``: the whole suite on a virtual subject, from nothing.

Each step is skipped when its output already exists, so a second run (or a
run after an interruption) only does what is missing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from interpret.attribution import Settings
from interpret.overlay import overlay
from interpret.pipeline import MapJob, check_maps, check_settings, compute_maps, prepare, save_check_tables, save_maps
from model.backbone import BackboneConfig
from model.encoders import DecoderConfig, RidgeConfig
from model.files import write_csv
from model.progress import progress
from model.rois import HEMIS
from model.runs import CHECKPOINT, METRICS, PRED_TEST, VAL_CORR, RunConfig, TrainConfig, load_run_array, open_run
from model.scoring import score, score_table, virtual_reference
from model.subject import load_subject, subject_dir
from model.synthetic import VirtualConfig, write_virtual_subject
from model.training import train

from .calibration import run_calibration
from .localizer import run_localizer
from .report import make_report
from .selectivity import run_selectivity
from .surface import plot_surface, save_gifti

log = logging.getLogger(__name__)

#: The backbone of the demo: small, randomly initialised (no download possible here).
DEMO_BACKBONE = BackboneConfig(name="vit_small_patch14_dinov2.lvd142m", weights="random", seed=0,
                               layer=6, feature="tokens", image_size=None)
#: The decoder of the demo: the seed's, at the backbone's width.
DEMO_DECODER = DecoderConfig(hidden_dim=384)
DEMO_TRAIN = TrainConfig(epochs=15)


@dataclass
class DemoPaths:
    root: Path
    data: Path = field(init=False)
    cache: Path = field(init=False)
    runs: Path = field(init=False)
    maps: Path = field(init=False)
    interpret: Path = field(init=False)

    def __post_init__(self):
        self.data, self.cache = self.root / "data", self.root / "cache"
        self.runs, self.maps = self.root / "runs", self.root / "maps"
        self.interpret = self.root / "interpret"


def demo_runs(data_dir: Path, subj: int = 1) -> dict[str, RunConfig]:
    """The encoders the demo trains: the transformer and the stronger ridge baseline."""
    base = RunConfig(str(data_dir), subj, "rois_all", "transformer", DEMO_BACKBONE, DEMO_DECODER, DEMO_TRAIN)
    return {
        "transformer": base,
        "ridge": replace(base, encoder_arch="ridge", ridge=RidgeConfig(features="pooled_squared")),
    }


def run_demo(out: str | Path, n_train: int = 1000, n_test: int = 200, seed: int = 0, device: str = "auto") -> Path:
    """Virtual subject -> features -> trained encoders -> scores -> surface maps -> attention and
    attribution maps and their checks -> selectivity, localizer, calibration -> HTML reports.
    Returns ``out``."""
    paths = DemoPaths(Path(out))
    config = VirtualConfig(subj=1, n_train=n_train, n_test=n_test, seed=seed)
    if not subject_dir(paths.data, config.subj).exists():
        log.info("step 1/8: writing the virtual subject to %s", paths.data)
        write_virtual_subject(paths.data, config)
    else:
        log.info("step 1/8: virtual subject already in %s", paths.data)

    runs = {}
    for name, run_config in demo_runs(paths.data, config.subj).items():
        run_dir = paths.runs / name
        runs[name] = run_dir
        if (run_dir / METRICS).is_file():
            log.info("step 2/8: %s already trained in %s", name, run_dir)
            continue
        log.info("step 2/8: training %s into %s", name, run_dir)
        train(run_config, run_dir, paths.cache, resume=(run_dir / CHECKPOINT).is_file(), device=device)

    log.info("step 3/8: scoring test predictions against the ground truth")
    subject = load_subject(paths.data, config.subj)
    reference = virtual_reference(subject)
    for name, run_dir in runs.items():
        scores = score({h: load_run_array(run_dir, PRED_TEST, h) for h in HEMIS}, subject, reference)
        table = score_table(scores)
        write_csv(run_dir / "test_scores.csv", table)
        log.info("  %-12s challenge score %.1f (Algonauts 2023 definition); score_nc_positive %.1f (ours, vertices "
                 "with a noise ceiling only)", name, scores["challenge_score"], scores["score_nc_positive"])

    log.info("step 4/8: surface maps of validation r in %s", paths.maps)
    paths.maps.mkdir(parents=True, exist_ok=True)
    for name, run_dir in progress(list(runs.items()), desc="surface maps", unit="run"):
        values = {h: load_run_array(run_dir, VAL_CORR, h) for h in HEMIS}
        plot_surface(values, subject, paths.maps / f"{name}_val_r.png", title=f"{name}: validation r", signed=True)
        save_gifti(values, subject, paths.maps / f"{name}_val_r", name="validation r")

    interpret_demo(runs["transformer"], paths, device)
    selectivity_demo(runs["transformer"], paths, device)

    log.info("step 8/8: HTML reports into %s", paths.root / "reports")
    report = make_report(runs["transformer"], paths.data, paths.root / "reports",
                         params={**demo_report_params(paths), "attributions.n_steps": 16,
                                 "hypotheses.n_permutations": 2000},
                         ridge_run=runs["ridge"], cache_dir=paths.cache, device=device)
    if report.failed:
        log.warning("report notebooks failed: %s (see %s)", ", ".join(report.failed), report.index)
    print(f"open {report.index}")
    return paths.root


#: ROIs shown in the demo's overlays: early visual cortex and one planted ROI per category
OVERLAY_ROIS = ("V1v", "V1d", "hV4", "FFA-1", "EBA", "PPA")
#: The maps the demo saves and overlays: every default method, pixel-level IG included, on two images
DEMO_MAPS = MapJob(split="val", n_images=2, rois=OVERLAY_ROIS, settings=Settings(n_steps=16), backbone_attention=True)
#: The maps the demo checks: more images and ROIs, with the cheap methods, so the checks have power
#: and the whole demo stays within minutes on a CPU (pixel IG is checked in tests/test_interpret.py)
DEMO_CHECKS = MapJob(split="val", n_images=6, methods=("attention", "saliency", "token_integrated_gradients"),
                     settings=Settings(n_steps=16), backbone_attention=False)
DEMO_SANITY_METHODS = ("attention", "token_integrated_gradients")
DEMO_FAITHFULNESS_ROIS = ("V1v", "FFA-1")
DEMO_FAITHFULNESS_IMAGES = 3


def demo_report_params(paths: DemoPaths) -> dict:
    """Report parameters that make the reports show (and say) the demo's own outputs and their settings:
    the check tables of step 6 with the parameters they were made with, the localizer of step 7."""
    return {"map_checks.checks_dir": str(paths.interpret / "checks"),
            "map_checks.n_images": DEMO_CHECKS.n_images, "map_checks.methods": list(DEMO_CHECKS.methods),
            "map_checks.rois": list(DEMO_CHECKS.rois), "map_checks.n_steps": DEMO_CHECKS.settings.n_steps,
            "map_checks.sanity_methods": list(DEMO_SANITY_METHODS),
            "map_checks.faithfulness_rois": list(DEMO_FAITHFULNESS_ROIS),
            "roi_selectivity.localizer_dir": str(paths.root / "localizer")}


def interpret_demo(run_dir: Path, paths: DemoPaths, device: str = "cpu") -> None:
    """Maps of the transformer (NetCDF + overlays) and the three checks (tables + figures), computed on ``device``."""
    run = open_run(run_dir, device=device)
    maps_file = paths.interpret / "maps.nc"
    checks_dir = paths.interpret / "checks"
    if maps_file.is_file() and (checks_dir / "faithfulness.csv").is_file():
        log.info("step 5-6/8: maps and checks already in %s", paths.interpret)
        return
    log.info("step 5/8: attention and attribution maps into %s", maps_file)
    inputs = prepare(run, DEMO_MAPS, paths.cache)
    ds = compute_maps(run, DEMO_MAPS, inputs)
    save_maps(ds, maps_file)
    for i in range(DEMO_MAPS.n_images):
        for hemi in HEMIS:
            overlay(ds, inputs.images[i], i, hemi, list(OVERLAY_ROIS), paths.interpret / f"overlay_{i}_{hemi}.png")
    log.info("step 6/8: sanity, localization and faithfulness checks into %s", checks_dir)
    inputs = prepare(run, DEMO_CHECKS, paths.cache)
    tables = check_maps(run, DEMO_CHECKS, inputs, DEMO_SANITY_METHODS, faithfulness_rois=DEMO_FAITHFULNESS_ROIS,
                        faithfulness_images=DEMO_FAITHFULNESS_IMAGES)
    save_check_tables(tables, checks_dir, check_settings(DEMO_CHECKS, inputs, DEMO_SANITY_METHODS,
                                                         DEMO_FAITHFULNESS_ROIS, DEMO_FAITHFULNESS_IMAGES))


def selectivity_demo(run_dir: Path, paths: DemoPaths, device: str = "cpu") -> None:
    """Selectivity tables, the in-silico localizer on the surface, and the calibration numbers (on ``device``)."""
    steps = {
        "selectivity": lambda out: run_selectivity(run_dir, paths.data, out, cache_dir=paths.cache, device=device),
        "localizer": lambda out: run_localizer(run_dir, paths.data, out, cache_dir=paths.cache, device=device),
        "calibration": lambda out: run_calibration(run_dir, paths.data, out, n_seeds=200, cache_dir=paths.cache,
                                                   device=device),
    }
    for name, step in steps.items():
        out = paths.root / name
        if (out / f"{name}.csv").is_file():
            log.info("step 7/8: %s already in %s", name, out)
            continue
        log.info("step 7/8: %s into %s", name, out)
        step(out)
