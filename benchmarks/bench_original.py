"""The original's model (``main.py``) against ``tbe train``'s defaults, one difference at a time.

Trains on the default virtual subject with the demo's backbone and training
settings (random ViT-S/14, block 7 tokens, hidden 384, 15 epochs):

* ``tbe train`` defaults (windows attention, heads readout, standardised tokens, xavier queries);
* each setting where the original differs, changed alone: ``--readout linear``,
  ``--attention standard``, ``--no-standardise-tokens``, ``--query-init normal``;
* the original as ``main.py --run 1`` trains it: all four, split and weights seeded by 1.

and prints, side by side, the challenge score against the noisy test
responses, r against the clean responses (early visual, category ROIs),
within-ROI r in early visual ROIs, each row's change of the challenge
score from the defaults, and what ``tbe train``'s check of the attention
recorded (faithful of the reliably predicted queries). Finished runs in the work folder are reused when
their settings are these (else the script stops and names the run).

    python benchmarks/bench_original.py [--work DIR] [--epochs 15] [--n-train 1000 --n-test 200 --image-size 224]

docs/original.md's settings table is ``--work demo`` after ``make demo`` (the
demo's subject and feature cache; runs in ``demo/runs/defaults`` ...):
14 minutes on 2 quiet cores with today's default decoder, about 2.5 minutes per row.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from analyses.demo import DemoPaths, demo_runs
from bench_accuracy import run_row, trained_run
from model.runs import RunConfig
from model.scoring import virtual_reference
from model.subject import load_subject, subject_dir
from model.synthetic import VirtualConfig, write_virtual_subject


#: the row of the original's model
ORIGINAL = "original (main.py --run 1)"


def variants(base: RunConfig) -> dict[str, RunConfig]:
    """Row label -> run configuration: ``base`` (``tbe train``'s defaults), each of the original's settings alone, and the original."""
    linear = replace(base, decoder=replace(base.decoder, readout="linear"))
    standard = replace(base, decoder=replace(base.decoder, attention="standard"))
    raw = replace(base, train=replace(base.train, standardise_tokens=False))
    normal = replace(base, decoder=replace(base.decoder, query_init="normal"))
    original = replace(base, decoder=replace(base.decoder, readout="linear", attention="standard", query_init="normal"),
                       train=replace(base.train, standardise_tokens=False, seed=1, split_seed=1))
    return {"tbe train defaults": base, "--readout linear": linear, "--attention standard": standard,
            "--no-standardise-tokens": raw,
            "--query-init normal": normal, ORIGINAL: original}


#: row label -> its run folder under the work folder's runs/
RUN_FOLDERS = {"tbe train defaults": "defaults", "--readout linear": "readout-linear",
               "--attention standard": "attention-standard",
               "--no-standardise-tokens": "raw-tokens", "--query-init normal": "query-init-normal",
               ORIGINAL: "original"}


def original_run(base: RunConfig, runs: Path, cache: Path) -> Path:
    """The original's model (``main.py --run 1``) on ``base``'s subject, backbone and epochs, trained or reused."""
    return trained_run(variants(base)[ORIGINAL], runs / RUN_FOLDERS[ORIGINAL], cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench-original"), help="working folder (default bench-original)")
    parser.add_argument("--epochs", type=int, default=15)
    defaults = VirtualConfig()
    parser.add_argument("--n-train", type=int, default=defaults.n_train, help="virtual subject's training images")
    parser.add_argument("--n-test", type=int, default=defaults.n_test)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    args = parser.parse_args()
    paths = DemoPaths(args.work)
    if not subject_dir(paths.data, 1).exists():
        write_virtual_subject(paths.data, VirtualConfig(n_train=args.n_train, n_test=args.n_test, image_size=args.image_size))
    subject = load_subject(paths.data, 1)
    reference = virtual_reference(subject)
    rows = []
    base = demo_runs(paths.data)["transformer"]
    base = replace(base, train=replace(base.train, epochs=args.epochs))
    for name, config in variants(base).items():
        start = time.perf_counter()
        run_dir = trained_run(config, paths.runs / RUN_FOLDERS[name], paths.cache)
        rows.append(run_row(name, run_dir, subject, reference, time.perf_counter() - start))
        row = rows[-1]
        print(f"{name}: challenge score {row['challenge score']:.1f}, r clean EV {row['r_clean EV']:.3f}, category "
              f"{row['r_clean category']:.3f}, within-ROI r EV {row['within-ROI r EV']:.3f} ({row['seconds']:.0f} s)", flush=True)
    table = pd.DataFrame(rows).set_index("encoder")
    table.insert(1, "change", table["challenge score"] - table.loc["tbe train defaults", "challenge score"])
    columns = ["challenge score", "change", "r_clean EV", "r_clean category", "within-ROI r EV", "seconds", "faithful"]
    print()
    print(f"virtual subject: {subject.n_train} training, {subject.n_test} test images of {args.image_size} px; {args.epochs} epochs, "
          f"random ViT-S/14 block 7 tokens, hidden 384")
    print(table[columns].round(3).to_string())


if __name__ == "__main__":
    main()
