"""Training speed: cached features versus the backbone in the loop, and the readout's cost.

Prints, side by side in one run:

1. decoder training images/s when batches come from the feature cache versus
   when every batch first runs the (frozen) backbone, on the default virtual
   subject's geometry (ViT-S/14 at 224 px, 16 x 16 tokens);
2. forward + backward time of our grouped ``rois_all`` readout versus the
   seed's compute-every-query-then-mask readout, at 50 queries x 20000
   vertices, hidden 768, batch 16.

    python benchmarks/bench_training.py [--steps 10] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from model.architectures import build_encoder
from model.backbone import BackboneConfig, build_backbone
from model.encoder import DecoderConfig
from model.readout import LinearReadout, QuerySet, dense_linear_readout


def random_queries(n_vertices: int, n_queries: int, overlap: float = 0.1, seed: int = 0) -> QuerySet:
    """Queries over one hemisphere's worth of vertices, each vertex in one ROI and some in a second."""
    rng = np.random.default_rng(seed)
    member = np.zeros((n_vertices, n_queries), bool)
    member[np.arange(n_vertices), rng.integers(n_queries, size=n_vertices)] = True
    extra = rng.random(n_vertices) < overlap
    member[np.flatnonzero(extra), rng.integers(n_queries, size=extra.sum())] = True
    half = n_queries // 2
    return QuerySet(["lh"] * half + ["rh"] * (n_queries - half), [f"roi{i}" for i in range(n_queries)],
                    {"lh": n_vertices, "rh": 0}, member)


def time_steps(step, n: int) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def training_throughput(steps: int, batch: int = 16) -> None:
    backbone = build_backbone(BackboneConfig("vit_small_patch14_dinov2.lvd142m", "random", layer=6, feature="tokens"), 224)
    queries = random_queries(3900, 47)
    model = build_encoder("transformer", queries, backbone.dim, backbone.grid, DecoderConfig(hidden_dim=384))
    optimizer = torch.optim.AdamW(model.parameters(), 5e-4)
    images = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8)
    cached = torch.randn(batch, backbone.grid[0] * backbone.grid[1], backbone.dim).half()
    target = torch.randn(batch, queries.n_total)

    def decoder_step(features):
        loss = ((model(features.float())["pred"] - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def from_cache():
        decoder_step(cached)

    def with_backbone():
        with torch.no_grad():
            features = backbone(backbone.preprocess(images))
        decoder_step(features)

    fast, slow = time_steps(from_cache, steps), time_steps(with_backbone, max(2, steps // 3))
    print("decoder training (ViT-S/14 @ 224 px, block 7, hidden 384, 47 queries, 3900 vertices, batch 16)")
    print(f"  from the feature cache : {batch / fast:7.1f} images/s")
    print(f"  backbone in the loop   : {batch / slow:7.1f} images/s")
    print(f"  speed-up               : {slow / fast:7.1f}x")


def readout_cost(steps: int, batch: int = 16, hidden: int = 768) -> None:
    queries = random_queries(20000, 50)
    readout = LinearReadout(queries, hidden)
    member = torch.as_tensor(queries.memberships)
    tokens = torch.randn(batch, 50, hidden, requires_grad=True)

    def ours():
        readout(tokens).sum().backward()

    def dense():
        dense_linear_readout(tokens, readout.weight, readout.bias, member).sum().backward()

    assert torch.allclose(readout(tokens), dense_linear_readout(tokens, readout.weight, readout.bias, member), atol=1e-4)
    t_ours, t_dense = time_steps(ours, steps), time_steps(dense, max(2, steps // 3))
    print(f"\nreadout, 50 queries x 20000 vertices, hidden {hidden}, batch {batch} (forward + backward)")
    print(f"  grouped (ours)               : {1000 * t_ours:8.1f} ms")
    print(f"  every query, then mask (seed): {1000 * t_dense:8.1f} ms")
    print(f"  speed-up                     : {t_dense / t_ours:8.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU\n")
    training_throughput(args.steps)
    readout_cost(args.steps)


if __name__ == "__main__":
    main()
