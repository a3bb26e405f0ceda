"""``tbe demo``: the whole suite on a virtual subject, from nothing.

Each step is skipped when its output already exists, so a second run (or a
run after an interruption) only does what is missing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from model.architectures import RidgeConfig
from model.backbone import BackboneConfig
from model.encoder import DecoderConfig
from model.rois import HEMIS
from model.run import METRICS, RunConfig, TrainConfig
from model.scoring import score, score_table, virtual_reference
from model.subject import load_subject, subject_dir
from model.train import train
from model.virtual.writer import VirtualConfig, write_virtual_subject

from .surface import plot_surface, save_gifti

log = logging.getLogger(__name__)

#: The backbone of the demo: small, randomly initialised (no download possible here).
DEMO_BACKBONE = BackboneConfig(name="vit_small_patch14_dinov2.lvd142m", weights="random", seed=0,
                               layer=6, feature="tokens", image_size=None)
#: The decoder of the demo: the seed's, at the backbone's width.
DEMO_DECODER = DecoderConfig(hidden_dim=384)
DEMO_TRAIN = TrainConfig(epochs=20)


@dataclass
class DemoPaths:
    root: Path
    data: Path = field(init=False)
    cache: Path = field(init=False)
    runs: Path = field(init=False)
    maps: Path = field(init=False)

    def __post_init__(self):
        self.data, self.cache = self.root / "data", self.root / "cache"
        self.runs, self.maps = self.root / "runs", self.root / "maps"


def demo_runs(data_dir: Path, subj: int = 1) -> dict[str, RunConfig]:
    """The encoders the demo trains: the transformer and the stronger ridge baseline."""
    base = RunConfig(str(data_dir), subj, "rois_all", "transformer", DEMO_BACKBONE, DEMO_DECODER, DEMO_TRAIN)
    return {
        "transformer": base,
        "ridge": replace(base, encoder_arch="ridge", ridge=RidgeConfig(features="pooled_squared")),
    }


def run_demo(out: str | Path, n_train: int = 1000, n_test: int = 200, seed: int = 0, device: str = "auto") -> Path:
    """Virtual subject -> features -> trained encoders -> scores -> surface maps. Returns ``out``."""
    paths = DemoPaths(Path(out))
    config = VirtualConfig(subj=1, n_train=n_train, n_test=n_test, seed=seed)
    if not subject_dir(paths.data, config.subj).exists():
        log.info("step 1/4: writing the virtual subject to %s", paths.data)
        write_virtual_subject(paths.data, config)
    else:
        log.info("step 1/4: virtual subject already in %s", paths.data)

    runs = {}
    for name, run_config in demo_runs(paths.data, config.subj).items():
        run_dir = paths.runs / name
        runs[name] = run_dir
        if (run_dir / METRICS).is_file():
            log.info("step 2/4: %s already trained in %s", name, run_dir)
            continue
        log.info("step 2/4: training %s into %s", name, run_dir)
        train(run_config, run_dir, paths.cache, resume=(run_dir / "checkpoint.safetensors").is_file(), device=device)

    log.info("step 3/4: scoring test predictions against the ground truth")
    subject = load_subject(paths.data, config.subj)
    reference = virtual_reference(subject)
    for name, run_dir in runs.items():
        scores = score({h: np.load(run_dir / f"{h}_pred_test.npy") for h in HEMIS}, subject, reference)
        table = score_table(scores)
        table.to_csv(run_dir / "test_scores.csv", index=False)
        log.info("  %-12s challenge score %.1f", name, scores["challenge_score"])

    log.info("step 4/4: surface maps of validation r in %s", paths.maps)
    paths.maps.mkdir(parents=True, exist_ok=True)
    for name, run_dir in runs.items():
        values = {h: np.load(run_dir / f"{h}_val_corr.npy") for h in HEMIS}
        plot_surface(values, subject, paths.maps / f"{name}_val_r.png", title=f"{name}: validation r")
        save_gifti(values, subject, paths.maps / f"{name}_val_r", name="validation r")
    return paths.root
