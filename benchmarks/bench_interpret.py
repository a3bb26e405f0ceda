"""Cost of the interpretation methods on the virtual subject.

Prints, side by side in one run:

1. seconds per image per ROI for each method at default settings;
2. pixel-level versus token-level integrated gradients;
3. integrated gradients through the backbone truncated at the layer used
   versus through all of its blocks;
4. peak resident memory of integrated gradients as ``n_steps`` grows, with
   the default bounded ``internal_batch_size`` and with all steps in one batch.

    python benchmarks/bench_interpret.py [--run RUN] [--threads 2]

Without ``--run`` a small virtual subject is written and an encoder with the
demo's settings is trained for one epoch (timings do not depend on training).
"""
from __future__ import annotations

import argparse
import dataclasses
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from interpret.attribution import METHODS, Settings, attribute
from interpret.maps import roi_targets
from interpret.pipeline import MapJob, prepare
from model.backbone import build_backbone
from model.run import open_run

ROIS = ["V1v"]
#: The Captum methods (attention is read from the forward pass: nothing to time per ROI)
ATTRIBUTIONS = [name for name, spec in METHODS.items() if spec.explainer is not None]


def make_run(work: Path) -> Path:
    from analyses.demo import demo_runs
    from model.train import train
    from model.synthetic import VirtualConfig, write_virtual_subject

    write_virtual_subject(work / "data", VirtualConfig(n_train=40, n_test=8))
    config = demo_runs(work / "data")["transformer"]
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=1))
    return train(config, work / "run", work / "cache")


def seconds_per_map(run, inputs, methods, settings, backbone=None, repeats: int = 1) -> float:
    targets = roi_targets(run, ROIS)
    backbone = backbone or inputs.backbone
    start = time.perf_counter()
    for _ in range(repeats):
        attribute(run, backbone, inputs.images, inputs.tokens, targets, methods, inputs.grid, inputs.names, settings)
    return (time.perf_counter() - start) / repeats / len(inputs.names) / len(targets)


def ig_memory_child(run_dir: str, n_steps: int, batch: int) -> None:
    """Runs in a fresh process: integrated gradients once, then print the peak RSS."""
    run = open_run(run_dir)
    inputs = prepare(run, MapJob("val", 1, ("integrated_gradients",)))
    attribute(run, inputs.backbone, inputs.images, inputs.tokens, roi_targets(run, ROIS), ["integrated_gradients"],
              inputs.grid, inputs.names, Settings(n_steps=n_steps, internal_batch_size=batch))
    print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def peak_rss(run_dir: Path, n_steps: int, batch: int) -> float:
    proc = subprocess.run([sys.executable, __file__, "--ig-memory-child", str(run_dir), str(n_steps), str(batch)],
                          capture_output=True, text=True, check=True)
    kib = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_KIB")))
    return kib / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ig-memory-child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.ig_memory_child:
        run_dir, n_steps, batch = args.ig_memory_child
        ig_memory_child(run_dir, int(n_steps), int(batch))
        return
    work = Path(tempfile.mkdtemp(prefix="tbe-bench-interpret-"))
    run_dir = args.run or make_run(work)
    run = open_run(run_dir)
    inputs = prepare(run, MapJob("val", 2, tuple(ATTRIBUTIONS)), work / "cache")
    settings = Settings()
    print(f"{run.config.backbone.name}, block {inputs.backbone.block_index + 1}/{inputs.backbone.depth}, "
          f"{inputs.grid.image_side} px; {torch.get_num_threads()} threads, CPU\n")
    print("seconds per image per ROI at default settings")
    timings = {}
    for name in ATTRIBUTIONS:
        timings[name] = seconds_per_map(run, inputs, [name], settings)
        print(f"  {name:28s} {timings[name]:8.3f}")
    print(f"\npixel-level vs token-level IG: {timings['integrated_gradients']:.3f} s vs "
          f"{timings['token_integrated_gradients']:.3f} s ({timings['integrated_gradients'] / timings['token_integrated_gradients']:.0f}x)")
    full = build_backbone(dataclasses.replace(run.config.backbone, layer=1), inputs.backbone.image_side)
    untruncated = seconds_per_map(run, inputs, ["integrated_gradients"], settings, backbone=full)
    print(f"IG through {inputs.backbone.block_index + 1} blocks (truncated) vs all {full.depth}: "
          f"{timings['integrated_gradients']:.3f} s vs {untruncated:.3f} s ({untruncated / timings['integrated_gradients']:.2f}x)")
    print("\npeak RSS of integrated gradients (1 image, 1 ROI), GiB")
    print(f"  {'n_steps':>8s} {'internal batch 16':>18s} {'all steps at once':>18s}")
    for n_steps in (16, 64, 256):
        bounded, unbounded = peak_rss(Path(run_dir), n_steps, 16), peak_rss(Path(run_dir), n_steps, n_steps)
        print(f"  {n_steps:8d} {bounded:18.2f} {unbounded:18.2f}")


if __name__ == "__main__":
    main()
