"""``tbe demo``: the whole suite on a virtual subject, from nothing."""
from __future__ import annotations

import logging
from pathlib import Path

from model.backbone import BackboneConfig
from model.features import subject_features
from model.subject import subject_dir
from model.virtual.writer import VirtualConfig, write_virtual_subject

log = logging.getLogger(__name__)

#: The backbone of the demo: small, randomly initialised (no download possible here).
DEMO_BACKBONE = BackboneConfig(name="vit_small_patch14_dinov2.lvd142m", weights="random", seed=0,
                               layer=6, feature="tokens", image_size=None)


def run_demo(out: str | Path, n_train: int = 1000, n_test: int = 200, seed: int = 0, device: str = "auto") -> Path:
    """Virtual subject -> features (-> later: training, interpretation, reports). Returns ``out``."""
    out = Path(out)
    data_dir = out / "data"
    config = VirtualConfig(subj=1, n_train=n_train, n_test=n_test, seed=seed)
    if not subject_dir(data_dir, config.subj).exists():
        log.info("step 1: writing the virtual subject to %s", data_dir)
        write_virtual_subject(data_dir, config)
    else:
        log.info("step 1: virtual subject already in %s", data_dir)
    log.info("step 2: backbone features (cached in %s)", out / "cache")
    subject_features(data_dir, config.subj, DEMO_BACKBONE, out / "cache", device=device)
    return out
