"""Cost of the interpretation methods on the virtual subject, and their memory against the number of images.

Prints, side by side in one run:

1. seconds per image per ROI for each method at default settings;
2. pixel-level versus token-level integrated gradients;
3. integrated gradients through the backbone truncated at the layer used
   versus through all of its blocks;
4. peak resident memory of integrated gradients as ``n_steps`` grows, with
   the default bounded ``internal_batch_size`` and with all steps in one batch;
5. peak resident memory of ``tbe interpret`` (and of ``tbe routing``) over the
   first 4 and the first 64 test images, each in a fresh process, their ratio
   (near 1 when memory does not grow with the images) and the seconds each
   added image costs; then the size of ``tbe interpret``'s maps file per
   image with the heads averaged (the default) and with every head's map
   (``--attention-heads each``).

    python benchmarks/bench_interpret.py [--run RUN] [--threads 2] [--only methods|memory] [--small]
        [--counts 4,64] [--methods attention,token_integrated_gradients] [--precision float32]

Without ``--run``, parts 1-4 write a small virtual subject and train an
encoder with the demo's settings for one epoch (timings do not depend on
training); part 5 writes a virtual subject at the original's 434 px
(``tbe synth --image-size 434``, as many test images as the larger of
``--counts``) and trains one epoch of a transformer on random-weights
ViT-B/14 ``q`` features of the last block (computed in ``--precision``), so
that the maps are made at NSD's size (31 x 31 tokens); ``--methods`` are
mapped for V1v. ``--small`` makes part 5 a quick check of the script
(ViT-S/14 at 112 px, 4 and 8 images), not the measurement. Part 5 alone
takes about 10 minutes on 2 cores at the default counts (most of it
extracting the features for training).
"""
from __future__ import annotations

import argparse
import dataclasses
import resource
import shutil
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
from model.runs import open_run

ROIS = ["V1v"]
#: The Captum methods (attention is read from the forward pass: nothing to time per ROI)
ATTRIBUTIONS = [name for name, spec in METHODS.items() if spec.explainer is not None]


def make_run(work: Path) -> Path:
    from analyses.demo import demo_runs
    from model.synthetic import VirtualConfig, write_virtual_subject
    from model.training import train

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


#: part 5: what is mapped by default (the issue's job: decoder attention and token IG) and the images compared
MEMORY_METHODS = "attention,token_integrated_gradients"
MEMORY_JOB = ["--rois", "V1v", "--n-steps", "8", "--overlays", "0"]
MEMORY_COUNTS = (4, 64)
#: part 5's subject and backbone: the original's size (434 px, ViT-B/14 q of the last block), or --small
MEMORY_SETUPS = {
    "full": dict(image_size=434, backbone="vit_base_patch14_dinov2.lvd142m", layer=1, counts=MEMORY_COUNTS),
    "small": dict(image_size=112, backbone="vit_small_patch14_dinov2.lvd142m", layer=6, counts=(4, 8)),
}
#: runs the tbe command line in a child process and reports its own peak RSS and wall time
PEAK_RSS = ("import resource, sys, time; from analyses.cli import main; t = time.perf_counter(); code = main(sys.argv[1:]); "
            "print('SECONDS', time.perf_counter() - t); "
            "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")


def tbe_child(args: list[str], threads: int) -> tuple[float, float]:
    """Peak RSS (GiB) and seconds of one ``tbe`` command in a fresh process (``threads`` torch threads)."""
    import os

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, "-q", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"tbe {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    lines = dict(line.split(maxsplit=1) for line in proc.stdout.splitlines() if line.startswith(("SECONDS", "PEAK_RSS")))
    return int(lines["PEAK_RSS_KIB"]) / 2**20, float(lines["SECONDS"])


def memory_run(work: Path, setup: dict, n_test: int, precision: str, threads: int) -> Path:
    """A virtual subject at ``setup``'s size and a one-epoch transformer on its backbone (cached in ``work``)."""
    data, run = work / "data", work / "run"
    if not (data / "subj01").is_dir():
        tbe_child(["synth", "--out", str(data), "--n-train", "20", "--n-test", str(n_test),
                   "--image-size", str(setup["image_size"])], threads)
    if not (run / "metrics.json").is_file():
        shutil.rmtree(run, ignore_errors=True)
        tbe_child(["train", "--data-dir", str(data), "--out", str(run), "--cache-dir", str(work / "cache"),
                   "--no-pretrained", "--backbone", setup["backbone"], "--enc-output-layer", str(setup["layer"]),
                   "--feature", "q", "--precision", precision, "--epochs", "1", "--device", "cpu"], threads)
    return run


def memory_against_images(run: Path, cache: Path | None, counts: tuple[int, ...], methods: str, threads: int,
                          out: Path) -> None:
    """Part 5: peak RSS and time of ``tbe interpret`` and ``tbe routing`` at each number of images, side by side."""
    common = ["--run", str(run), "--split", "test", "--device", "cpu"] + (["--cache-dir", str(cache)] if cache else [])

    def interpret(n: int, maps: Path) -> list[str]:
        return ["interpret", *common, "--n-images", str(n), "--methods", methods, *MEMORY_JOB, "--out", str(maps)]

    commands = {
        "interpret": lambda n: interpret(n, out / f"maps{n}.nc"),
        "routing": lambda n: ["routing", *common, "--n-images", str(n), "--n-permutations", "200", "--n-bootstrap", "200",
                              "--out", str(out / f"routing{n}")],
    }
    low, high = counts
    print(f"\npeak RSS against the number of images (each in a fresh process, {threads} threads, CPU)")
    print(f"  {'command':10s} {f'{low} images GiB':>14s} {f'{high} images GiB':>15s} {'ratio':>6s} "
          f"{f'{low} images s':>12s} {f'{high} images s':>13s} {'s per added image':>18s}")
    for name, command in commands.items():
        (rss_low, s_low), (rss_high, s_high) = tbe_child(command(low), threads), tbe_child(command(high), threads)
        print(f"  {name:10s} {rss_low:14.2f} {rss_high:15.2f} {rss_high / rss_low:6.2f} {s_low:12.1f} {s_high:13.1f} "
              f"{(s_high - s_low) / (high - low):18.2f}")
    print(f"  interpret: --methods {methods} {' '.join(MEMORY_JOB)}, --batch-size default; "
          "routing: 200 permutations and resamples")
    if "attention" in methods.split(","):
        each_file = out / f"maps{low}-each-head.nc"
        tbe_child([*interpret(low, each_file), "--attention-heads", "each"], threads)
        maps_on_disk(out / f"maps{low}.nc", each_file, low)


def maps_on_disk(default_file: Path, each_file: Path, n_images: int) -> None:
    """Size of ``tbe interpret``'s NetCDF per image: the default (heads averaged) against every head's map kept."""
    mean_mb, each_mb = (f.stat().st_size / 2**20 / n_images for f in (default_file, each_file))
    print(f"\nmaps on disk, MB per image ({n_images} images, the same command): heads averaged (default) "
          f"{mean_mb:.2f}, --attention-heads each {each_mb:.2f}, ratio {each_mb / mean_mb:.1f}")


def methods_part(args: argparse.Namespace, work: Path) -> None:
    """Parts 1-4: the methods' costs."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="a run to measure (part 5: one with test images)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("methods", "memory"), default=None, help="parts 1-4, or part 5 only")
    parser.add_argument("--small", action="store_true", help="part 5 on a small subject and backbone (a quick check)")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one); part 5 "
                                                                  "reuses the subject and run it finds there")
    parser.add_argument("--counts", default=None, help="part 5: the two numbers of test images compared (default 4,64)")
    parser.add_argument("--methods", default=MEMORY_METHODS, help=f"part 5: methods mapped (default {MEMORY_METHODS})")
    parser.add_argument("--precision", default="float32", help="part 5: precision of the run's features (default float32)")
    parser.add_argument("--ig-memory-child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.ig_memory_child:
        run_dir, n_steps, batch = args.ig_memory_child
        ig_memory_child(run_dir, int(n_steps), int(batch))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="tbe-bench-interpret-"))
    if args.only != "memory":
        methods_part(args, work)
    if args.only != "methods":
        setup = MEMORY_SETUPS["small" if args.small else "full"]
        counts = tuple(int(c) for c in args.counts.split(",")) if args.counts else setup["counts"]
        memory = work / f"memory-{'small' if args.small else 'full'}-{max(counts)}-{args.precision}"
        memory.mkdir(parents=True, exist_ok=True)
        run = args.run or memory_run(memory, setup, max(counts), args.precision, args.threads)
        print(f"\n{setup['backbone']} (random weights), q of block {setup['layer']} from the end, {setup['image_size']} px,"
              f" features in {args.precision}" if args.run is None else f"\nrun {run}")
        memory_against_images(run, None if args.run else memory / "cache", counts, args.methods, args.threads, memory)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
