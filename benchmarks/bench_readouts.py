"""Readouts and attentions side by side: accuracy, where the attention looks, and whether the prediction uses it.

Trains (or reuses) one run per row on a virtual subject with the demo's
backbone and training settings, then prints one table:

* accuracy on the test images: the challenge score (noisy responses), r
  against the clean responses over early visual and category ROIs, and
  within-ROI r over the early visual ROIs;
* where the head-averaged attention of the last decoder layer looks, on
  ``--n-images`` test images, against the planted truth: early visual ROIs
  whose image-averaged map has its centre in the planted quadrant (of 14),
  the correlation of that map with the true pRF coverage (mean over those
  ROIs), the pointing game and the attention mass on the category's masks
  over the masks' area share for the planted face, body and word ROIs
  (place masks cover most of each image: their ratio cannot exceed about
  1.1, so they are left out), and focus (1 minus normalised entropy);
* whether the prediction uses it (:mod:`model.scoring.faithfulness`): the smallest
  deletion ratio and specificity over the reliably predicted queries, and
  how many of those are faithful;
* ``tbe routing``'s labels on the same images: early visual queries labelled
  ``location``, planted category queries (face, body, word, place)
  labelled ``content``, null-ROI queries labelled ``location`` or
  ``content`` while reliable (should be 0);
* seconds per epoch: each row trained again for ``--time-epochs`` epochs
  (default 3) one after another in this process, on the same cached
  features, after every row is measured; the median epoch, wall clock
  (``--time-epochs 0``: the median over each finished run's own epochs,
  which may have been trained at other times on a busier machine).

Subjects (``--subject``): ``demo`` is the default virtual subject and the
demo's backbone (1000 training and 200 test images of 224 px, random ViT-S/14
block 7 tokens); ``second`` is another, written with ``tbe synth --subj 3
--seed 11 --n-train 600 --n-test 100 --image-size 434`` (31 x 31 tokens from
the last block); ``third`` has the layout of issue 22's subject (``tbe synth
--subj 2 --seed 23 --n-train 600 --n-test 100 --image-size 224``, 16 x 16
tokens from the last block). The rows (``--rows``, default all but ``windows + linear``):

    python benchmarks/bench_readouts.py --work bench-readouts --subject demo
    python benchmarks/bench_readouts.py --work bench-readouts --subject second

Finished runs in the work folder are reused when their settings are the
row's. ``--seed N`` trains the rows with another training seed, in folders
of their own (``runs-seedN``), to tell a difference between rows from
run-to-run spread. ``docs/attention.md`` has the tables and how long they took.
"""
from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from analyses.attention_selectivity import token_attention
from analyses.demo import DEMO_BACKBONE, demo_runs
from analyses.routing import analyse, split_images
from bench_accuracy import scored, trained_run
from interpret.attention_use import run_reliability
from interpret.checks import localization, masks_on_grid
from interpret.focus import focus
from interpret.maps import MapGrid, Targets, by_hemi_roi, map_array
from interpret.routing import RoutingSettings
from model.rois import EARLY_VISUAL, HEMIS
from model.runs import RunConfig, open_run
from model.scoring import deletion_changes, deletion_ratios, virtual_reference
from model.subject import load_subject, subject_dir
from model.synthetic import VirtualConfig, write_virtual_subject
from model.training import train


@dataclass(frozen=True)
class SubjectSpec:
    """A virtual subject of the benchmark and the backbone block its runs read (counted from the end)."""

    config: VirtualConfig
    layer: int


SUBJECTS = {
    "demo": SubjectSpec(VirtualConfig(), DEMO_BACKBONE.layer),
    "second": SubjectSpec(VirtualConfig(subj=3, n_train=600, n_test=100, image_size=434, seed=11), 1),
    "third": SubjectSpec(VirtualConfig(subj=2, n_train=600, n_test=100, image_size=224, seed=23), 1),
}

@dataclass(frozen=True)
class Row:
    """One row: its run folder and the decoder settings it changes from ``tbe train``'s."""

    folder: str
    decoder: dict


#: windows with the linear content key (multi-head attention's), the default before the MLP key
LINEAR_KEY_WINDOWS = {"attention": "windows", "content_key": "linear"}
#: and whose heads each have their own softmax; with ``window_lr`` 1 as well, the default before the shared softmax
PER_HEAD_WINDOWS = {**LINEAR_KEY_WINDOWS, "window_softmax": "per_head"}
ROWS: dict[str, Row] = {
    "windows + heads (default)": Row("windows-auto-key-heads", {"readout": "heads", "attention": "windows"}),
    "windows, MLP key + heads": Row("windows-mlp-key-heads", {"readout": "heads", "attention": "windows",
                                                              "content_key": "mlp"}),
    "windows, wide key + heads": Row("windows-wide-key-heads", {"readout": "heads", "attention": "windows",
                                                                "content_key": "wide_mlp"}),
    "windows, context key + heads": Row("windows-context-key-heads", {"readout": "heads", "attention": "windows",
                                                                      "content_key": "context_mlp"}),
    "windows, linear key + heads": Row("windows-shared-heads", {"readout": "heads", **LINEAR_KEY_WINDOWS}),
    "windows per head + heads": Row("windows-per-head-heads", {"readout": "heads", **PER_HEAD_WINDOWS}),
    "windows per head, slow + heads": Row("windows-heads", {"readout": "heads", **PER_HEAD_WINDOWS, "window_lr": 1.0}),
    "retinotopic (standard attention)": Row("retinotopic", {"readout": "retinotopic", "attention": "standard"}),
    "linear (the original's)": Row("linear", {"readout": "linear", "attention": "standard"}),
    "heads (standard attention)": Row("heads", {"readout": "heads", "attention": "standard"}),
    "windows + linear": Row("windows-linear", {"readout": "linear", "attention": "windows"}),
}
#: the readouts of the table; windows + linear is measured on request
DEFAULT_ROWS = [name for name in ROWS if name != "windows + linear"]
#: planted categories whose masks are objects (place masks are the layout, most of the image)
OBJECT_CATEGORIES = ("face", "body", "word")


def row_config(base: RunConfig, changes: dict, layer: int) -> RunConfig:
    """``base`` with the row's decoder settings, reading ``layer``."""
    return replace(base, decoder=replace(base.decoder, **changes), backbone=replace(base.backbone, layer=layer))


def mean_attention_maps(run, att: np.ndarray, grid: MapGrid, names: list[str]) -> xr.Dataset:
    """``attention_mean`` (image, hemi, roi, y, x) on ``grid`` from :func:`token_attention`'s ``att``, one query at a time."""
    keep = [q for q, roi in enumerate(run.queries.rois) if roi != "unknown"]
    per_query = torch.stack([grid.from_tokens(torch.from_numpy(att[:, i]).float()) for i in range(att.shape[1])], 1)
    targets = Targets([run.queries.hemis[q] for q in keep], [run.queries.rois[q] for q in keep], torch.empty(0))
    arranged, rois = by_hemi_roi(per_query, targets)
    return xr.Dataset({"attention_mean": map_array(arranged, ("image", "hemi", "roi", "y", "x"),
                                                   {"image": names, "hemi": list(HEMIS), "roi": rois}, grid,
                                                   "attention_mean")})


def attention_row(run, n_images: int, cache: Path, routing_csv: Path) -> dict:
    """Where the attention looks (against the truth), whether it is used, and the routing labels (also to ``routing_csv``)."""
    chosen = split_images(run, "test", n_images)
    features = np.asarray(run.features(chosen.paths, cache, rows=chosen.rows), np.float32)
    grid = MapGrid.for_backbone(run.shared_backbone)
    attention = token_attention(run, features)  # leaves out the unassigned query; routing reads the same
    ds = mean_attention_maps(run, attention[0], grid, [p.name for p in chosen.paths])
    truth = run.subject.truth
    masks = masks_on_grid(truth.masks("test", [p.name for p in chosen.paths]), grid)
    roi_masks = {(h, r): run.subject.roi_mask(r, h) for h in HEMIS for r in ds.roi.values}
    loc = localization(ds, truth, roi_masks, masks, grid).pivot_table(index=["hemi", "roi"], columns="measure",
                                                                       values=["value", "chance"])
    preference = truth.preferences()
    ev = [k for k in loc.index if k[1] in EARLY_VISUAL]
    objects = [k for k in loc.index if preference.get(k[1]) in OBJECT_CATEGORIES]
    att = ds["attention_mean"]
    focus_of = {k: float(np.mean(focus(att.sel(hemi=k[0], roi=k[1]).values))) for k in loc.index}

    changes = deletion_changes(run.model, features, run.queries.memberships)
    faith = deletion_ratios(changes, run.queries.names).merge(run_reliability(run)[["query", "reliable"]], on="query")
    reliable = faith[faith["reliable"]]
    routing = analyse(run, chosen, RoutingSettings(), seed=0, cache_dir=cache, attention=attention)
    routing.to_csv(routing_csv, index=False)
    category = routing["planted"] == "content"
    null = routing["planted"] == "none"
    return {
        "EV quadrant hits": f"{int(loc.loc[ev, ('value', 'mean_map_quadrant')].sum())}/{len(ev)}",
        "EV coverage r": loc.loc[ev, ("value", "coverage_correlation")].mean(),
        "pointing game": loc.loc[objects, ("value", "pointing_game")].mean(),
        "mass / area": (loc.loc[objects, ("value", "relevance_mass")] / loc.loc[objects, ("chance", "relevance_mass")]).mean(),
        "focus EV": np.mean([focus_of[k] for k in ev]), "focus category": np.mean([focus_of[k] for k in objects]),
        "min deletion ratio": reliable["deletion_ratio"].min(), "min specificity": reliable["specificity"].min(),
        "faithful": f"{int(reliable['faithful'].sum())}/{len(reliable)}",
        "routing EV location": f"{int((routing.loc[routing.roi.isin(EARLY_VISUAL), 'routing'] == 'location').sum())}/"
                               f"{int(routing.roi.isin(EARLY_VISUAL).sum())}",
        "routing category content": f"{int((routing.loc[category, 'routing'] == 'content').sum())}/{int(category.sum())}",
        "routing category content or both": f"{int(routing.loc[category, 'routing'].isin(['content', 'both']).sum())}/"
                                            f"{int(category.sum())}",
        "routing null reliable location/content": int((routing.loc[null, "routing"].isin(["location", "content", "both"])
                                                       & (routing.loc[null, "reliable"] == True)).sum()),  # noqa: E712
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench-readouts"), help="working folder (default bench-readouts)")
    parser.add_argument("--subject", choices=list(SUBJECTS), default="demo")
    parser.add_argument("--rows", default=None, help=f"semicolon-separated rows (default all but windows + linear): "
                                                     f"{'; '.join(ROWS)}")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0,
                        help="training seed (initialisation, data order, dropout); runs of another seed than 0 go to "
                             "their own folders, runs-seed<N> and routing-seed<N>-*.csv")
    parser.add_argument("--n-images", type=int, default=100, help="test images of the attention measures")
    parser.add_argument("--time-epochs", type=int, default=3,
                        help="epochs each row is trained again for, one row after another, to time an epoch side by side "
                             "(0: read the finished runs' own epochs)")
    args = parser.parse_args()
    spec = SUBJECTS[args.subject]
    work = args.work / args.subject
    suffix = f"-seed{args.seed}" if args.seed else ""
    data, cache, runs = work / "data", work / "cache", work / f"runs{suffix}"
    if not subject_dir(data, spec.config.subj).exists():
        write_virtual_subject(data, spec.config)
    subject = load_subject(data, spec.config.subj)
    reference = virtual_reference(subject)
    base = demo_runs(data, spec.config.subj)["transformer"]
    base = replace(base, train=replace(base.train, epochs=args.epochs, seed=args.seed))
    rows = {k: ROWS[k] for k in (args.rows.split(";") if args.rows else DEFAULT_ROWS)}
    configs = {name: row_config(base, row.decoder, spec.layer) for name, row in rows.items()}
    routing_csvs = {name: work / f"routing{suffix}-{row.folder}.csv" for name, row in rows.items()}
    table = []
    for name, row in rows.items():
        run_dir = trained_run(configs[name], runs / row.folder, cache)
        run = open_run(run_dir)
        start = time.perf_counter()
        table.append({"encoder": name, **scored(run_dir, subject, reference),
                      **attention_row(run, args.n_images, cache, routing_csvs[name]),
                      "s / epoch": median_epoch_seconds(run.metrics)})
        print(f"{name}: measured in {time.perf_counter() - start:.0f} s", flush=True)
    out = pd.DataFrame(table).set_index("encoder")
    if args.time_epochs > 0:
        out["s / epoch"] = pd.Series(epoch_seconds(configs, work / "timing", cache, args.time_epochs))
    columns = ["challenge score", "r_clean EV", "r_clean category", "within-ROI r EV", "EV quadrant hits", "EV coverage r",
               "pointing game", "mass / area", "focus EV", "focus category", "min deletion ratio", "min specificity",
               "faithful", "routing EV location", "routing category content", "routing category content or both", "routing null reliable location/content",
               "s / epoch"]
    timing = (f"s / epoch: median of {args.time_epochs} epochs, the rows trained one after another in this run"
              if args.time_epochs > 0 else "s / epoch: median of each run's own epochs, trained at other times")
    print(f"\nsubject {args.subject}: {subject.n_train} training, {subject.n_test} test images of "
          f"{spec.config.image_size} px; random ViT-S/14, block {12 - spec.layer + 1} tokens; hidden 384; "
          f"{args.epochs} epochs, seed {args.seed}; attention on {args.n_images} test images; {timing}")
    print(out[columns].T.to_string(float_format=lambda v: f"{v:.3f}"))
    for name, routing_csv in routing_csvs.items():
        print(f"\n{name}: routing labels, planted (rows) against measured (columns), hemi x ROI queries")
        print(confusion(pd.read_csv(routing_csv)).to_string())


def median_epoch_seconds(metrics: dict) -> float:
    """Median wall-clock seconds of a run's training epochs (from its metrics.json history)."""
    return float(np.median([h["seconds"] for h in metrics["history"]]))


def epoch_seconds(configs: dict[str, RunConfig], scratch: Path, cache: Path, epochs: int) -> dict[str, float]:
    """Each row's median epoch, trained for ``epochs`` epochs one row after another (runs written to ``scratch``, then removed)."""
    seconds = {}
    for name, config in configs.items():
        folder = scratch / "run"
        shutil.rmtree(folder, ignore_errors=True)
        train(replace(config, train=replace(config.train, epochs=epochs)), folder, cache)
        seconds[name] = median_epoch_seconds(open_run(folder).metrics)
        print(f"{name}: {seconds[name]:.2f} s per epoch", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return seconds


def confusion(routing: pd.DataFrame) -> pd.DataFrame:
    """Planted kind (early visual location, category content, null none) x measured label, with reliability for nulls."""
    planted = routing["planted"].map({"location": "early visual (location)", "content": "category (content)",
                                      "none": "null ROI (none)"})
    planted = planted.where(routing["planted"] != "none",
                            planted + np.where(routing["reliable"].astype(str) == "True", ", reliable", ", unreliable"))
    table = pd.crosstab(planted.rename("planted"), routing["routing"].rename("measured"))
    return table.reindex(columns=["location", "content", "both", "neither"], fill_value=0)


if __name__ == "__main__":
    main()
