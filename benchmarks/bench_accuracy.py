"""Accuracy on the default virtual subject: the transformer against the baselines and the ceiling.

Trains (or reuses, when the run folder already has ``metrics.json``) every
encoder on the demo's virtual subject with the demo's backbone, then prints
side by side, per encoder:

* the challenge score against the noisy test responses (the challenge's
  definition), and ours over vertices with a noise ceiling (``score_nc_positive``);
* mean r per ROI class against the noisy and against the clean test responses;
* mean within-ROI r over the early visual ROIs (V1v ... hV4), against the
  clean responses: does the model keep the retinotopy *inside* an ROI?

The ``ground truth`` row predicts the clean responses themselves: the best
any encoder can do against the noisy responses (against the clean responses
it scores 1 by construction).

    python benchmarks/bench_accuracy.py [--work DIR] [--encoders transformer,ridge_squared,...]

Reuse the demo's folder (``--work demo``) to skip the virtual subject, the
feature cache and the two runs the demo already trained. About 25 minutes on
2 cores from nothing.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from analyses.accuracy import summary_row
from analyses.demo import DemoPaths, demo_runs
from model.architectures import RidgeConfig
from model.rois import HEMIS
from model.run import METRICS, RunConfig
from model.scoring import score, virtual_reference
from model.subject import load_subject, subject_dir
from model.train import train
from model.synthetic import VirtualConfig, write_virtual_subject


def encoders(data: Path) -> dict[str, RunConfig]:
    """Every encoder of the comparison, on the demo's backbone and training settings."""
    demo = demo_runs(data)
    base = demo["transformer"]
    return {
        "transformer": base,
        "ridge_tokens": replace(base, encoder_arch="ridge", ridge=RidgeConfig(features="pooled")),
        "ridge_squared": demo["ridge"],
        "linear": replace(base, encoder_arch="linear"),
        "spatial_feature": replace(base, encoder_arch="spatial_feature"),
    }


#: demo run folders that the comparison can reuse as they are
DEMO_RUN_NAMES = {"transformer": "transformer", "ridge_squared": "ridge"}


def summary(name: str, scores: dict) -> dict:
    """One row: the challenge score and ours, r per ROI class (noisy / clean), early-visual within-ROI r."""
    return {"encoder": name, **summary_row(scores)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench-accuracy"), help="working folder (default bench-accuracy)")
    parser.add_argument("--encoders", default=None, help="comma-separated subset (default: all)")
    args = parser.parse_args()
    paths = DemoPaths(args.work)
    if not subject_dir(paths.data, 1).exists():
        write_virtual_subject(paths.data, VirtualConfig())
    subject = load_subject(paths.data, 1)
    reference = virtual_reference(subject)
    chosen = encoders(paths.data)
    if args.encoders:
        chosen = {k: chosen[k] for k in args.encoders.split(",")}

    rows = [summary("ground truth", score(reference.clean, subject, reference))]
    for name, config in chosen.items():
        run_dir = paths.runs / DEMO_RUN_NAMES.get(name, name)
        start = time.perf_counter()
        if not (run_dir / METRICS).is_file():
            train(config, run_dir, paths.cache)
        pred = {h: np.load(run_dir / f"{h}_pred_test.npy") for h in HEMIS}
        rows.append({**summary(name, score(pred, subject, reference)), "seconds": time.perf_counter() - start})
        print(f"{name}: done in {rows[-1]['seconds']:.0f} s", flush=True)

    table = pd.DataFrame(rows).set_index("encoder")
    best_ridge = table.loc[[n for n in table.index if n.startswith("ridge")]]
    print()
    print(table.round(3).to_string())
    if "transformer" in table.index and len(best_ridge):
        t = table.loc["transformer"]
        print()
        print(f"transformer minus the stronger ridge on category ROIs (clean r): "
              f"{t['r_clean category'] - best_ridge['r_clean category'].max():+.3f} (target +0.10)")
        print(f"transformer minus the stronger ridge, within-ROI r in early visual ROIs: "
              f"{t['within-ROI r EV'] - best_ridge['within-ROI r EV'].max():+.3f} (target >= 0)")
        print(f"transformer clean r: early visual {t['r_clean EV']:.3f} (target 0.90), "
              f"category ROIs {t['r_clean category']:.3f} (target 0.85)")


if __name__ == "__main__":
    main()
