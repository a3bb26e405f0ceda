"""Accuracy of ensembles of layers x seeds against their members, on the default virtual subject.

Trains (or reuses) a grid of ``tbe train`` runs over backbone layers x seeds
(default 4 layers x 3 seeds) with the demo's backbone (random ViT-S/14 at
224 px) and training settings, combines them with ``tbe ensemble``
(:mod:`model.runs.ensembles`: ``softmax`` at temperature 40, the original's;
``mean``; ``best``), and prints side by side:

* the ground truth (the clean responses themselves: the best any encoder can
  do against the noisy test responses);
* the original's model as ``main.py --run 1`` trains it (its readout, raw
  tokens, N(0, 1) queries, split and weights seeded by 1; ``bench_original.py``);
* ``tbe train``'s defaults (the grid's member of the demo's layer and seed);
* the grid's best and median member, ranked by the challenge score on the
  test images (the best member is chosen with hindsight, which favours it;
  the default ``tbe train`` run, layer 6 seed 0, is a member);
* the member with the highest validation r: the one a user without the test
  responses would pick (``best_member`` of the ensemble's ``metrics.json``);
* the three ensembles of the whole grid.

Columns (:func:`analyses.accuracy.summary_row`): the challenge score (the
Algonauts 2023 definition) and ours over vertices with a noise ceiling
(``score_nc_positive``), r per ROI class against the noisy and the clean test
responses, and the within-ROI r of early visual ROIs (clean). Below the
table: by how much the softmax ensemble beats its best member (and the
member validation picks) on the challenge score, and its cross-fitted
against its in-sample validation r.
(Each of the original's settings alone, other backbone families and the
``voxels`` readout have their own rows in ``bench_original.py`` and
``bench_accuracy.py``.)

    python benchmarks/bench_ensemble.py [--work DIR] [--layers 4,6,8,10] [--seeds 0-2] [--epochs 15]
                                        [--n-train 1000 --n-test 200 --image-size 224]
    python benchmarks/bench_ensemble.py --quick --work /tmp/bench-ensemble-quick   # a smoke test, minutes

``--work`` reuses a folder: the subject, the feature cache and every
complete run are kept (``--work demo`` reuses the demo's subject and cache).
``--quick`` uses a tiny subject, 2 layers x 2 seeds, a narrow decoder and 2
epochs: it checks that everything runs, its numbers mean nothing. From
nothing, at the demo's 15 epochs, the grid takes about an hour on 2 CPU
cores (12 members, features of 4 layers). docs/challenge.md's main table is

    python benchmarks/bench_ensemble.py --work demo

after ``make demo`` (its subject, feature cache and layer-6 features reused;
33 minutes on 2 quiet cores with today's default decoder); its small-subject tables are

    python benchmarks/bench_ensemble.py --work /tmp/bench-ensemble --n-train 300 --n-test 100 --image-size 112 --epochs 10

(8 x 8 tokens; 4 minutes on 2 quiet CPU cores) and the same with ``--epochs 25`` (9 minutes).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import pandas as pd

from analyses.accuracy import summary_row
from analyses.demo import DemoPaths, demo_runs
from bench_accuracy import scored, subject_image_size, trained_run
from bench_original import RUN_FOLDERS, original_run
from model.runs import METRICS, read_config, read_metrics
from model.scoring import score, virtual_reference
from model.subject import load_subject, subject_dir
from model.synthetic import VirtualConfig, write_virtual_subject
from model.training import grid_members, int_list, make_ensemble, train_grid

QUICK_SUBJECT = VirtualConfig(subj=1, n_train=120, n_test=24, image_size=112, seed=3)
WEIGHTINGS = {"softmax": "softmax, temperature 40", "mean": "mean", "best": "best"}


def defaults_run(base, members: list[Path], paths: DemoPaths) -> Path:
    """``tbe train``'s defaults: the grid's member of ``base``'s layer and seed, or that run trained on its own."""
    for run in members:
        config = read_config(run)
        if (config.backbone.layer, config.train.seed) == (base.backbone.layer, base.train.seed):
            return run
    return trained_run(base, paths.runs / RUN_FOLDERS["tbe train defaults"], paths.cache)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench-ensemble"), help="working folder, reused (default bench-ensemble)")
    parser.add_argument("--layers", type=int_list, default=None, help="backbone layers of the grid (default 4,6,8,10)")
    parser.add_argument("--seeds", type=int_list, default=None, help="seeds of the grid (default 0-2)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per member (default: the demo's, 15)")
    defaults = VirtualConfig()
    parser.add_argument("--n-train", type=int, default=defaults.n_train, help="virtual subject's training images")
    parser.add_argument("--n-test", type=int, default=defaults.n_test, help="virtual subject's test images")
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="virtual subject's image size")
    parser.add_argument("--quick", action="store_true", help="tiny subject, 2 layers x 2 seeds, 2 epochs: a smoke test")
    args = parser.parse_args(argv)
    paths = DemoPaths(args.work)
    base = demo_runs(paths.data)["transformer"]
    layers = args.layers or ([5, 6] if args.quick else [4, 6, 8, 10])
    seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
    if args.quick:
        base = dataclasses.replace(base, decoder=dataclasses.replace(base.decoder, hidden_dim=64, nheads=4, dim_feedforward=128),
                                   train=dataclasses.replace(base.train, epochs=2))
    if args.epochs:
        base = dataclasses.replace(base, train=dataclasses.replace(base.train, epochs=args.epochs))
    if not subject_dir(paths.data, 1).exists():
        write_virtual_subject(paths.data, QUICK_SUBJECT if args.quick else
                              VirtualConfig(n_train=args.n_train, n_test=args.n_test, image_size=args.image_size))
    subject = load_subject(paths.data, 1)
    reference = virtual_reference(subject)

    start = time.perf_counter()
    members = grid_members(paths.runs / "grid", [1], layers, seeds, per_member=True)
    runs = train_grid(base, members, paths.cache)
    grid_seconds = time.perf_counter() - start
    defaults = defaults_run(base, runs, paths)
    original = original_run(base, paths.runs, paths.cache)
    member_rows = {run: scored(run, subject, reference) for run in runs}
    by_score = sorted(runs, key=lambda r: member_rows[r]["challenge score"])
    best, median = by_score[-1], by_score[len(by_score) // 2]
    grid_name = f"{len(layers)} layers x {len(seeds)} seeds, {base.train.epochs} epochs"
    print(f"virtual subject: {subject.n_train} training, {subject.n_test} test images of "
          f"{subject_image_size(subject)} px; grid of {grid_name} (trained, or reused, in {grid_seconds:.0f} s)")
    rows = {"ground truth (clean responses)": summary_row(score(reference.clean, subject, reference)),
            "the original's model (main.py --run 1)": scored(original, subject, reference),
            f"tbe train defaults ({defaults.name})": scored(defaults, subject, reference),
            f"best member on the test images ({best.name})": member_rows[best],
            f"median member ({median.name})": member_rows[median]}
    for weighting, label in WEIGHTINGS.items():
        ens = paths.runs / f"ensemble_{weighting}"
        if not (ens / METRICS).is_file():
            make_ensemble(runs, ens, weighting, 40.0)
        rows[f"ensemble of the grid ({label})"] = scored(ens, subject, reference)
    m = read_metrics(paths.runs / "ensemble_softmax")
    picked_path = next(Path(x["path"]) for x in m["members"] if x["label"] == m["best_member"])
    picked = next(run for run in runs if Path(run).resolve() == picked_path.resolve())
    rows[f"member with the best validation r ({picked.name})"] = member_rows[picked]

    table = pd.DataFrame.from_dict(rows, orient="index")
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print()
        print(table.round(3).to_string(na_rep=""))
    soft = rows["ensemble of the grid (softmax, temperature 40)"]["challenge score"]
    best_score = member_rows[best]["challenge score"]
    picked_score = member_rows[picked]["challenge score"]
    print()
    print(f"softmax ensemble minus its best member (challenge score, test images): {soft - best_score:+.2f} points "
          f"({'beats' if soft > best_score else 'does NOT beat'} it; median member {member_rows[median]['challenge score']:.2f})")
    print(f"softmax ensemble minus the member with the best validation r ({picked.name}): {soft - picked_score:+.2f} points "
          f"({'beats' if soft > picked_score else 'does NOT beat'} it)")
    original_score = rows["the original's model (main.py --run 1)"]["challenge score"]
    print(f"softmax ensemble minus the original's model (main.py --run 1): {soft - original_score:+.2f} points")
    print(f"softmax ensemble validation r: cross-fitted {m['val_r']['mean']:.4f}, in-sample {m['val_r_in_sample']['mean']:.4f} "
          f"(best member {m['best_member']} {m['best_member_val_r']:.4f})")
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
