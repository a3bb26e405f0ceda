"""Backbone throughput and the speed-up of truncating at the layer used.

Prints, side by side in one run, images/s of the frozen backbone run up to
the chosen block versus through all blocks, for a few backbones and input
sizes, plus the time to generate a 1000-image virtual subject.

    python benchmarks/bench_backbone.py [--images 32] [--threads 2]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from model.backbone import BackboneConfig, build_backbone
from model.synthetic import VirtualConfig, write_virtual_subject

CASES = [
    # (backbone, native size, enc_output_layer)
    ("vit_small_patch14_dinov2.lvd142m", 224, 6),
    ("vit_small_patch14_dinov2.lvd142m", 112, 6),
    ("vit_base_patch14_dinov2.lvd142m", 224, 6),
    ("vit_base_patch14_dinov2.lvd142m", 224, 9),
]


def images_per_second(backbone, n_images: int, batch: int = 8) -> float:
    x = backbone.preprocess(torch.randint(0, 256, (batch, 3, backbone.input_size, backbone.input_size), dtype=torch.uint8))
    with torch.inference_mode():
        backbone(x)  # warm-up
        start = time.perf_counter()
        for _ in range(max(1, n_images // batch)):
            backbone(x)
    return max(1, n_images // batch) * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
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


if __name__ == "__main__":
    main()
