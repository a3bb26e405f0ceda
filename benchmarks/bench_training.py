"""Training speed: cached features versus the backbone in the loop, and the readout's cost.

Prints, side by side in one run:

1. decoder training images/s when batches come from the feature cache versus
   when every batch first runs the (frozen) backbone, on the default virtual
   subject's geometry (ViT-S/14 at 224 px, 16 x 16 tokens);
2. forward + backward time and peak memory of our vectorised ``rois_all``
   readout, of the per-group Python loop it replaced (kept here only for
   this comparison) and of the seed's compute-every-query-then-mask
   readout, at 50 queries x 20000 vertices, hidden 768, batch 16;
3. with ``--faithfulness-run RUN``: the end-of-training check of the
   attention (:func:`model.scoring.faithfulness.run_summary`) on that run's
   first 32 and first 64 validation images (all, where it has fewer), timed side by side, next to the
   run's own training time (``fit_seconds``). ``--cache`` names the folder
   holding the run's feature cache.

    python benchmarks/bench_training.py [--steps 10] [--threads 2] [--readout-only]
    python benchmarks/bench_training.py --faithfulness-run RUN --cache CACHE   # part 3 alone
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from model.backbone import BackboneConfig, build_backbone
from model.encoders import DecoderConfig, QuerySet, build_encoder
from model.encoders.readouts import LinearReadout, dense_linear_readout


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


def interleaved_times(steps: dict, rounds: int, sync=lambda: None) -> dict[str, float]:
    """Fastest of ``rounds`` timings of each step, the steps taking turns.

    On a machine shared with other jobs the load changes from second to
    second; taking turns exposes every variant to the same load, and the
    fastest round is the one least disturbed. ``sync`` waits for a GPU.
    """
    times = {name: [] for name in steps}
    for step in steps.values():
        step()  # warm-up
    for _ in range(rounds):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


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


class _LoopGroupedLinear(torch.autograd.Function):
    """The readout before it was vectorised, kept here for comparison only: one Python step per group.

    out[:, v] = inputs[:, g(v)] @ weight[v] for each vertex v of each group g.
    """

    @staticmethod
    def forward(ctx, inputs, weight, groups):
        out = inputs.new_empty(inputs.shape[0], weight.shape[0])
        for g, idx in enumerate(groups):
            out[:, idx] = inputs[:, g] @ weight[idx].T
        ctx.save_for_backward(inputs, weight)
        ctx.groups = groups
        return out

    @staticmethod
    def backward(ctx, grad_out):
        inputs, weight = ctx.saved_tensors
        grad_inputs, grad_weight = torch.zeros_like(inputs), torch.zeros_like(weight)
        for g, idx in enumerate(ctx.groups):
            go = grad_out[:, idx]
            grad_inputs[:, g] = go @ weight[idx]
            grad_weight[idx] = go.T @ inputs[:, g]
        return grad_inputs, grad_weight, None


def loop_readout(queries: QuerySet, device: torch.device | str = "cpu"):
    """The per-group loop readout (vertices grouped by their set of queries) as a function of (tokens, weight, bias)."""
    groups = queries.groups()
    mixing = torch.zeros(len(groups), queries.n_queries)
    for g, (q, _) in enumerate(groups):
        mixing[g, torch.as_tensor(q)] = 1.0
    mixing = mixing.to(device)
    vertices = [torch.as_tensor(v, device=device) for _, v in groups]
    counts = torch.as_tensor(queries.memberships.sum(1), dtype=torch.float32, device=device)

    def readout(tokens, weight, bias):
        summed = torch.einsum("gq,bqd->bgd", mixing, tokens)
        return _LoopGroupedLinear.apply(summed, weight, vertices) + counts * bias

    return readout, len(groups)


def peak_rss_above(step) -> float:
    """MiB of resident memory that ``step`` adds at its peak (Linux; NaN elsewhere)."""
    try:
        base = _rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    except OSError:
        return float("nan")
    step()
    return (_rss_kib("VmHWM") - base) / 1024


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(field)


SEED, LOOP, OURS = "every query, then mask (seed)", "per-group loop (before)", "vectorised (ours)"


def readout_steps(queries: QuerySet, hidden: int, batch: int, device: torch.device | str = "cpu") -> dict:
    """Forward + backward steps of the three readouts with the same weights and tokens; checked equal first."""
    readout = LinearReadout(queries, hidden).to(device)
    member = torch.as_tensor(queries.memberships, device=device)
    tokens = torch.randn(batch, queries.n_queries, hidden, device=device, requires_grad=True)
    loop, _ = loop_readout(queries, device)
    variants = {
        OURS: lambda: readout(tokens),
        LOOP: lambda: loop(tokens, readout.weight, readout.bias),
        SEED: lambda: dense_linear_readout(tokens, readout.weight, readout.bias, member),
    }
    dense = variants[SEED]()
    for name, fn in variants.items():
        assert torch.allclose(fn(), dense, atol=1e-4), f"{name} differs from the seed's definition"

    def step(fn):
        def run():
            for p in (tokens, readout.weight, readout.bias):
                p.grad = None  # as training does (zero_grad(set_to_none=True))
            fn().sum().backward()
        return run

    return {name: step(fn) for name, fn in variants.items()}


def readout_cost(steps: int, batch: int = 16, hidden: int = 768, n_vertices: int = 20000, n_queries: int = 50) -> dict:
    """Forward + backward of the three readouts, side by side."""
    queries = random_queries(n_vertices, n_queries)
    variants = readout_steps(queries, hidden, batch)
    peaks = {name: peak_rss_above(step) for name, step in variants.items()}
    seconds = interleaved_times(variants, rounds=max(3, steps // 2))
    print(f"\nreadout, {n_queries} queries x {n_vertices} vertices ({len(queries.groups())} groups of queries), "
          f"hidden {hidden}, batch {batch} (forward + backward)")
    print(f"  {'':30s} {'ms':>9s} {'peak MiB':>9s} {'vs seed':>8s} {'vs loop':>8s}")
    for name in variants:
        print(f"  {name:30s} {1000 * seconds[name]:9.1f} {peaks[name]:9.0f} {seconds[SEED] / seconds[name]:7.1f}x "
              f"{seconds[LOOP] / seconds[name]:7.1f}x")
    return {"seconds": seconds, "peak_mib": peaks}


def faithfulness_check_cost(run_dir: Path, cache: Path | None, counts: tuple[int, ...] = (32, 64)) -> dict[int, float]:
    """Seconds of the end-of-training attention check on the first ``counts`` validation images of a run."""
    from interpret.attention_use import run_reliability
    from model.runs import open_run
    from model.scoring import run_summary

    run = open_run(run_dir)
    idx = np.sort(run.val_indices)[:max(counts)]
    paths = [run.subject.train_images[i] for i in idx]
    tokens = np.asarray(run.features(paths, cache, rows=[("train", int(i)) for i in idx]), np.float32)
    reliability = run_reliability(run).drop(columns=["n_heldout", "query"])
    steps = {n: (lambda n=n: run_summary(run.model, lambda: tokens[:n], run.queries.memberships, run.queries.names,
                                         reliability)) for n in sorted({min(c, len(tokens)) for c in counts})}
    seconds = interleaved_times(steps, rounds=2)
    fit = run.metrics.get("fit_seconds", float("nan"))
    print(f"\nattention check at the end of training, {run_dir} ({run.queries.n_queries} queries, "
          f"{'x'.join(map(str, run.shared_backbone.grid))} tokens; its training took {fit:.0f} s)")
    for n, sec in seconds.items():
        print(f"  {n:3d} validation images: {sec:6.1f} s ({sec / seconds[min(seconds)]:.2f}x the first row, "
              f"{100 * sec / fit:.1f}% of the training)")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--readout-only", action="store_true", help="skip the training-throughput comparison")
    parser.add_argument("--faithfulness-run", type=Path, help="part 3 alone, on this run")
    parser.add_argument("--cache", type=Path, help="feature cache folder of --faithfulness-run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU\n")
    if args.faithfulness_run:
        faithfulness_check_cost(args.faithfulness_run, args.cache)
        return
    if not args.readout_only:
        training_throughput(args.steps)
    readout_cost(args.steps)


if __name__ == "__main__":
    main()
