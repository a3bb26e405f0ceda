"""Backbone throughput: the speed-up of truncating at the layer used, and of bf16 features.

Prints, side by side in one run:

1. images/s of the frozen backbone run up to the chosen block versus through
   all blocks, for a few backbones and input sizes, plus the time to generate
   a 1000-image virtual subject;
2. at the original's 434 px (31 x 31 tokens), images/s of ViT-B/14 and
   ViT-S/14 ``q`` features in float32 and in bf16 (``--precision bf16``:
   autocast), and how well the two agree: Pearson r of the features, and r
   per vertex, over test images, of a trained run's predictions from float32
   features and from bf16 features (the same decoder, trained on float32).

    python benchmarks/bench_backbone.py [--images 32] [--threads 2] [--only truncation|precision] [--small]

Part 2 writes a virtual subject at 434 px (40 training, 24 test images) and
trains a transformer for 3 epochs on random-weights ViT-B/14 ``q`` features
of the last block (about 5 minutes on 2 cores); ``--small`` runs it at 112 px
with ViT-S/14 (a quick check of the script, not the measurement).
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model.backbone import BackboneConfig, build_backbone
from model.device import feature_precision, native_bf16
from model.synthetic import VirtualConfig, write_virtual_subject

CASES = [
    # (backbone, native size, enc_output_layer)
    ("vit_small_patch14_dinov2.lvd142m", 224, 6),
    ("vit_small_patch14_dinov2.lvd142m", 112, 6),
    ("vit_base_patch14_dinov2.lvd142m", 224, 6),
    ("vit_base_patch14_dinov2.lvd142m", 224, 9),
]


def images_per_second(backbone, n_images: int, batch: int = 8, images: torch.Tensor | None = None) -> float:
    """Images/s of ``backbone`` at its configured precision (random images unless ``images`` are given)."""
    if images is None:
        images = torch.randint(0, 256, (batch, 3, backbone.input_size, backbone.input_size), dtype=torch.uint8)
    x = backbone.preprocess(images[:batch])
    with torch.inference_mode(), feature_precision(torch.device("cpu"), backbone.config.precision):
        backbone(x)  # warm-up
        start = time.perf_counter()
        for _ in range(max(1, n_images // batch)):
            backbone(x)
    return max(1, n_images // batch) * len(x) / (time.perf_counter() - start)


def truncation(args: argparse.Namespace) -> None:
    """Part 1: truncated against full backbones, and writing a virtual subject."""
    print(f"{'backbone':36s} {'px':>4s} {'block':>7s} {'img/s trunc':>12s} {'img/s full':>11s} {'speed-up':>9s}")
    for name, size, layer in CASES:
        truncated = build_backbone(BackboneConfig(name, "random", layer=layer, feature="q"), size)
        full = build_backbone(BackboneConfig(name, "random", layer=1, feature="q"), size)
        fast, slow = images_per_second(truncated, args.images), images_per_second(full, args.images)
        print(f"{name:36s} {size:4d} {truncated.block_index + 1:3d}/{truncated.depth:<3d} {fast:12.1f} {slow:11.1f} {fast / slow:8.2f}x")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_virtual_subject(tmp, VirtualConfig(n_train=1000, n_test=200, image_size=224))
        print(f"\nvirtual subject, 1000 training + 200 test images at 224 px: {time.perf_counter() - start:.1f} s")


#: part 2: the original's input size and the two DINOv2 sizes, q of the last block (the seed's dinov2_q)
PRECISION_SETUPS = {
    "full": dict(side=434, backbones=("vit_base_patch14_dinov2.lvd142m", "vit_small_patch14_dinov2.lvd142m"),
                 n_train=40, n_test=24, epochs=3),
    "small": dict(side=112, backbones=("vit_small_patch14_dinov2.lvd142m",), n_train=20, n_test=8, epochs=1),
}


def _r(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())[0, 1])


def per_column_r(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each column (vertex) of ``a`` with the same column of ``b``, over rows (images)."""
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


def precision(args: argparse.Namespace, work: Path) -> None:
    """Part 2: float32 against bf16 features, speed and agreement, side by side."""
    from model.features import extract_features
    from model.images import image_batch
    from analyses.demo import demo_runs
    from model.runs import open_run, predict
    from model.training import train

    setup = PRECISION_SETUPS["small" if args.small else "full"]
    side = setup["side"]
    data = work / "data"
    if not (data / "subj01").is_dir():
        write_virtual_subject(data, VirtualConfig(n_train=setup["n_train"], n_test=setup["n_test"], image_size=side))
    images = image_batch(sorted((data / "subj01" / "training_split" / "training_images").iterdir())[:8])
    print(f"\nfloat32 against bf16 features at {side} px (q of the last block, random weights; "
          f"this CPU computes bf16 natively: {'yes' if native_bf16('cpu') else 'no'})")
    print(f"{'backbone':36s} {'img/s float32':>14s} {'img/s bf16':>11s} {'speed-up':>9s} {'r features':>11s}")
    for name in setup["backbones"]:
        fp32 = build_backbone(BackboneConfig(name, "random", layer=1, feature="q"), side)
        bf16 = build_backbone(BackboneConfig(name, "random", layer=1, feature="q", precision="bf16"), side)
        slow, fast = images_per_second(fp32, args.images, images=images), images_per_second(bf16, args.images, images=images)
        with torch.inference_mode():
            a = fp32(fp32.preprocess(images))
            with feature_precision(torch.device("cpu"), "bf16"):
                b = bf16(bf16.preprocess(images))
        print(f"{name:36s} {slow:14.2f} {fast:11.2f} {fast / slow:8.2f}x {_r(a, b.float()):11.5f}")

    name = setup["backbones"][0]
    run_dir = work / "run"
    if not (run_dir / "metrics.json").is_file():
        shutil.rmtree(run_dir, ignore_errors=True)
        config = demo_runs(data)["transformer"]
        config = dataclasses.replace(config, backbone=BackboneConfig(name, "random", layer=1, feature="q"),
                                     decoder=dataclasses.replace(config.decoder, hidden_dim=256),
                                     train=dataclasses.replace(config.train, epochs=setup["epochs"]))
        train(config, run_dir, work / "cache", device="cpu")
    run = open_run(run_dir)
    paths = list(run.subject.test_images)
    as_trained = run.features(paths, work / "cache", device="cpu", rows=[("test", i) for i in range(len(paths))])
    bf16 = build_backbone(dataclasses.replace(run.config.backbone, precision="bf16"), side)
    in_bf16 = extract_features(bf16, paths, work / "cache", device="cpu", desc="bf16 test features").features
    pred32, pred16 = predict(run.model, as_trained), predict(run.model, in_bf16)
    r = per_column_r(pred32, pred16)
    print(f"\na run on {name} float32 features ({setup['epochs']} epochs, validation r {run.metrics['val_r']['mean']:.3f}),"
          f" its {len(paths)} test images predicted from float32 and from bf16 features:")
    print(f"  r of the features {_r(np.asarray(as_trained), np.asarray(in_bf16)):.5f}; r per vertex of the predictions: "
          f"median {np.nanmedian(r):.5f}, 5th percentile {np.nanpercentile(r, 5):.5f}, min {np.nanmin(r):.5f} "
          f"({r.size} vertices)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("truncation", "precision"), default=None, help="part 1 or part 2 only")
    parser.add_argument("--small", action="store_true", help="part 2 at 112 px with ViT-S/14 (a quick check)")
    parser.add_argument("--work", type=Path, default=None, help="working folder for part 2 (default: a temporary "
                                                                  "one); its subject and run are reused")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    if args.only != "precision":
        truncation(args)
    if args.only != "truncation":
        work = args.work or Path(tempfile.mkdtemp(prefix="tbe-bench-backbone-"))
        precision(args, work)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
