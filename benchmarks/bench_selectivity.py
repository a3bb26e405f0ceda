"""Cost and calibration of the selectivity tests.

Prints, in one run:

1. the runtime of 10,000 label permutations for 50 ROIs x 6 categories
   (every category-vs-rest Welch t), at localizer and held-out-set sizes,
   and of the attention-mass permutation test;
2. false-positive rates at alpha = 0.05 on synthetic null data over
   repeated seeds (per test, and per seed after BH-FDR), with exact
   intervals, and the power for a planted effect of d' = 1;
3. the calibration of a trained run on a virtual subject
   (:func:`analyses.calibration.run_calibration`): shuffled labels, null ROIs
   with fresh noise, null ROIs from predictions with and without the
   reliability check, and recovery of the planted preferences.

    python benchmarks/bench_selectivity.py [--run RUN --data-dir DIR --cache-dir DIR] [--seeds 200]
                                           [--synthetic-seeds 100]

Without ``--run`` a small virtual subject is written and a small transformer
is trained on it for 12 epochs (about a minute on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from analyses import stats as S
from analyses.attention_selectivity import mass_test


def timed(fn, repeats: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def bench_runtime(rng: np.random.Generator) -> None:
    print("1. runtime, 10,000 permutations, 50 ROIs x 6 categories (Welch t of every category vs rest)")
    for n_images in (144, 300, 1000):
        x = rng.normal(size=(n_images, 50))
        codes = np.arange(n_images) % 6
        seconds = timed(lambda: S.permutation_test(x, codes, 6, 10_000, rng))
        print(f"   {n_images:5d} images: {seconds:6.2f} s  ({10_000 * 50 * 6 / seconds / 1e6:.1f} M statistics/s)")
    att = rng.dirichlet(np.ones(256), size=(100, 50))
    masks = (rng.random((100, 256)) < 0.1).astype(float)
    seconds = timed(lambda: mass_test(att, masks, np.ones(256), 10_000, rng))
    print(f"   attention mass, 100 images x 50 queries x 256 tokens, one category: {seconds:.2f} s\n")


def bench_synthetic(rng: np.random.Generator, n_seeds: int, alpha: float = 0.05) -> None:
    print(f"2. synthetic data, 150 images (6 categories x 25), 50 ROIs, {n_seeds} seeds, 10,000 permutations")
    codes = np.repeat(np.arange(6), 25)
    hits, family, power = [], [], []
    for _ in range(n_seeds):
        x = rng.normal(size=(150, 50))  # the null: no ROI prefers any category
        _, p = S.permutation_test(x, codes, 6, 10_000, rng)
        hits.append(p < alpha)
        family.append((S.fdr_bh(p.ravel()) < alpha).any())
        if len(power) < max(10, n_seeds // 5):
            x[codes == 0, :10] += 1.0  # d' = 1 for category 0 in 10 ROIs
            _, p = S.permutation_test(x, codes, 6, 10_000, rng)
            power.append(S.fdr_bh(p.ravel()).reshape(p.shape)[0, :10] < alpha)
    for name, h in (("per test, p < 0.05", np.array(hits)), ("per seed, any FDR-significant", np.array(family)[:, None]),
                    ("power, d' = 1, FDR", np.array(power))):
        r = S.clustered_rate(h)
        print(f"   {name:32s} {r['rate']:.4f}  95% CI [{r['rate_ci_low']:.4f}, {r['rate_ci_high']:.4f}]  ({h.sum()}/{h.size})")
    print()


def make_run(work: Path) -> tuple[Path, Path, Path]:
    from model.backbone import BackboneConfig
    from model.encoders import DecoderConfig
    from model.runs import RunConfig, TrainConfig
    from model.synthetic import VirtualConfig, write_virtual_subject
    from model.training import train

    data, cache = work / "data", work / "cache"
    write_virtual_subject(data, VirtualConfig(n_train=240, n_test=40, image_size=112, seed=5))
    backbone = BackboneConfig("vit_small_patch14_dinov2.lvd142m", "random", 0, 6, "tokens", None)
    config = RunConfig(str(data), 1, "rois_all", "transformer", backbone,
                       DecoderConfig(hidden_dim=128, nheads=4, dim_feedforward=256),
                       TrainConfig(epochs=12, batch_size=16, lr=1e-3))
    return train(config, work / "run", cache, device="cpu"), data, cache


def bench_run(run: Path, data: Path | None, cache: Path | None, n_seeds: int, out: Path) -> None:
    import pandas as pd

    from analyses.calibration import run_calibration

    print(f"3. calibration of {run} ({n_seeds} seeds, alpha = 0.05)")
    start = time.perf_counter()
    table = run_calibration(run, data, out, n_seeds=n_seeds, cache_dir=cache)
    seconds = time.perf_counter() - start
    with pd.option_context("display.width", 200, "display.max_colwidth", 70):
        shown = table[["test", "source", "n_significant", "n_tests", "rate", "rate_ci_low", "rate_ci_high", "design_effect"]]
        print(shown.round(4).to_string(index=False))
    missed = table.loc[table["kind"] == "planted_recovery", ["source", "missed"]].fillna("")
    for source, text in missed.itertuples(index=False):
        print(f"   missed ({source}): {text or 'none'}")
    print(f"   runtime {seconds:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--seeds", type=int, default=200, help="seeds of the run's calibration (default 200)")
    parser.add_argument("--synthetic-seeds", type=int, default=100, help="seeds of the synthetic data (default 100)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"CPU, {torch.get_num_threads()} torch thread(s)\n")
    bench_runtime(rng)
    bench_synthetic(rng, args.synthetic_seeds)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run, data, cache = (args.run, args.data_dir, args.cache_dir) if args.run else make_run(work)
        bench_run(run, data, cache, args.seeds, work / "calibration")


if __name__ == "__main__":
    main()
