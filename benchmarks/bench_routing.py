"""Routing and claims: time at scale, and the routing labels of the demo's queries against what was planted.

Prints, in one run:

1. the time of the routing analysis (:func:`interpret.routing.routing_table`,
   default settings: 1000 shifts, 1000 mask shuffles, 1000 bootstrap
   resamples of each index, the minimum index sizes) for 50 queries x 500
   images on the demo's 16x16 token grid (planted maps: a fixed window, the
   face mask, both, noise), split into
   its parts, with the planted labels' recovery;
2. the time to test 20 preference claims with 10,000 permutations each
   (:func:`analyses.claims.preference_test` on 500 images);
3. with ``--work DIR`` holding a finished ``tbe demo`` (its transformer run
   under ``runs/transformer``): ``tbe routing`` on the demo's validation
   images and the confusion table of planted (location / content / none)
   against measured (location / content / both / neither) labels;
4. with ``--work``: the labels of maps built from the virtual subject's
   truth instead of a model, on the same images: each planted category
   ROI's true pRF coverage times its category's mask (plus ``eps`` of the
   coverage alone, so that an image without the category has a map), the
   attention a model would have if it looked exactly where the planted
   responses come from. It says which labels the planted truth itself
   earns: a place ROI's layout fills the image, so its truth-built map is
   its pRF window with holes where objects are. Early visual ROIs get the
   map of their planted drive: the true pRF coverage times the virtual
   subject's own local contrast energy (normalised as the responses are),
   so an early visual query whose map moves with a category beyond that
   (text has the most contrast) does more than its truth.

    python benchmarks/bench_routing.py [--work demo] [--n-images 500]
    python benchmarks/bench_routing.py --run RUN   # part 4 alone, on any virtual subject's run
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from analyses.claims import ClaimSettings, preference_test
from interpret import routing as R

GRID = (16, 16)
KINDS = ("location", "content", "both", "neither")


def planted(n_queries: int, n_images: int, rng: np.random.Generator):
    """Planted maps ``(image, query, token)`` cycling through :data:`KINDS`, and face/word masks."""
    t = GRID[0] * GRID[1]

    def blocks() -> np.ndarray:
        out = np.zeros((n_images, *GRID))
        for i in range(n_images):
            y, x = rng.integers(0, GRID[0]), rng.integers(0, GRID[1])
            out[i][np.ix_((y + np.arange(5)) % GRID[0], (x + np.arange(5)) % GRID[1])] = 1
        return out.reshape(n_images, t)

    masks = np.stack([blocks(), blocks()], 1)
    kinds = [KINDS[q % len(KINDS)] for q in range(n_queries)]
    logits = np.empty((n_images, n_queries, t))
    for q, kind in enumerate(kinds):
        window = np.zeros(GRID)
        window[rng.integers(0, 11):][:5, rng.integers(0, 11):][:, :5] = 1
        logits[:, q] = 0.6 * rng.standard_normal((n_images, t))
        if kind in ("location", "both"):
            logits[:, q] += 2.0 * window.ravel()
        if kind in ("content", "both"):
            logits[:, q] += 2.0 * masks[:, 0]
    att = np.exp(logits - logits.max(-1, keepdims=True))
    return att / att.sum(-1, keepdims=True), masks, kinds


def timed(f, *args, **kwargs):
    start = time.perf_counter()
    out = f(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="a finished tbe demo folder (for the confusion table)")
    parser.add_argument("--n-images", type=int, default=500)
    parser.add_argument("--n-queries", type=int, default=50)
    parser.add_argument("--run", type=Path, default=None,
                        help="a finished run on a virtual subject: print part 4 (truth-built maps) for it alone")
    args = parser.parse_args()
    if args.run is not None:
        truth_built_labels(args.run, R.RoutingSettings())
        return
    rng = np.random.default_rng(0)
    settings = R.RoutingSettings()

    att, masks, kinds = planted(args.n_queries, args.n_images, rng)
    print(f"1. routing of {args.n_queries} queries x {args.n_images} images, {GRID[0]}x{GRID[1]} tokens, "
          f"{settings.n_permutations} shifts / shuffles, {settings.n_bootstrap} resamples")
    parts = {
        "location index + bootstrap": lambda: R.location_interval(att, settings.n_bootstrap, rng),
        "location test (shifts)": lambda: R.location_test(att, GRID, settings.n_permutations, rng),
        "content test (shuffles)": lambda: R.content_test(att, masks, settings.n_permutations, rng),
        "content index bootstrap": lambda: R.content_bootstrap(att, masks, settings.n_bootstrap, rng),
    }
    for name, f in parts.items():
        print(f"   {name:<28} {timed(f)[1]:7.2f} s")
    positions = R.token_positions_deg(GRID, 14, 224)
    table, seconds = timed(R.routing_table, att, GRID, positions, masks, ("face", "word"), settings, 0)
    print(f"   {'whole routing_table':<28} {seconds:7.2f} s; planted labels recovered: "
          f"{np.mean(table['routing'].to_numpy() == np.array(kinds)):.0%}")

    claim_settings = ClaimSettings()
    labels = np.array(["face", "body", "place", "word", "object"])[rng.integers(0, 5, args.n_images)]
    x = rng.standard_normal((20, args.n_images))
    _, seconds = timed(lambda: [preference_test(row, labels == "face", labels != "face", claim_settings, rng)
                                for row in x])
    print(f"2. 20 preference claims x {claim_settings.n_permutations} permutations on {args.n_images} images: "
          f"{seconds:.2f} s")

    if args.work is not None:
        from analyses.routing import confusion, run_routing

        run = args.work / "runs" / "transformer"
        table, seconds = timed(run_routing, run, None, args.work / "routing", settings, split="val",
                               cache_dir=args.work / "cache")
        print(f"3. tbe routing on the demo's validation images ({int(table['n_images'].iloc[0])} images, "
              f"{len(table)} queries): {seconds:.1f} s")
        print(confusion(table).to_string())
        truth_built_labels(run, settings)


#: weights of the pRF coverage alone in the truth-built maps (their value in images without the category)
TRUTH_EPS = (0.01, 0.1)


def truth_built_labels(run_dir: Path, settings: "R.RoutingSettings") -> None:
    """Part 4: routing labels of maps built from the planted truth, on the run's validation images.

    A planted category ROI's map is ``pRF coverage x (category mask + eps)``;
    an early visual ROI's is ``pRF coverage x local contrast energy`` (its
    planted drive, :func:`model.virtual.responses.contrast_energy`).
    """
    import pandas as pd

    from analyses.attention_selectivity import token_contrast, token_coverage
    from analyses.routing import split_images
    from model.images import read_image
    from model.rois import EARLY_VISUAL
    from model.runs import open_run
    from model.virtual.responses import contrast_energy

    run = open_run(run_dir)
    chosen = split_images(run, "val", len(run.val_indices))
    backbone, truth = run.shared_backbone, run.subject.truth
    coverage, _ = token_coverage(chosen.masks, backbone)
    control = token_contrast(chosen.paths, chosen.masks.shape[-1], backbone)
    drive = token_coverage(np.stack([contrast_energy(np.array(read_image(p))[None])[0] for p in chosen.paths])[:, None]
                           .astype(np.float64), backbone)[0][:, 0]
    preferences = truth.preferences()
    families: dict[str, tuple[list, list]] = {"category": ([], []), "early visual": ([], [])}
    for hemi, roi in zip(run.queries.hemis, run.queries.rois):
        category = preferences.get(roi)
        if category not in chosen.categories and roi not in EARLY_VISUAL:
            continue
        prf = truth.prf_coverage(run.subject.roi_mask(roi, hemi), hemi, grid=chosen.masks.shape[-1])
        window = token_coverage(prf[None, None].astype(np.float64), backbone)[0][0, 0]
        keys, maps = families["early visual" if roi in EARLY_VISUAL else "category"]
        planted = ([("early visual: contrast", np.nan, drive)] if roi in EARLY_VISUAL else
                   [(category, eps, coverage[:, chosen.categories.index(category)] + eps) for eps in TRUTH_EPS])
        for name, eps, where in planted:  # the pRF window times where in each image the ROI is driven
            m = window[None] * where
            maps.append(m / m.sum(1, keepdims=True))
            keys.append((name, eps))
    positions = R.token_positions_deg(tuple(backbone.grid), backbone.patch, backbone.image_side)
    tables = []
    for keys, maps in families.values():  # each its own FDR family, so neither changes the labels of the other
        table = R.routing_table(np.stack(maps, 1), tuple(backbone.grid), positions, coverage, chosen.categories,
                                settings, 0, control)
        tables.append(table.assign(**{"planted map": [k[0] for k in keys], "eps": [k[1] for k in keys]}))
    table = pd.concat(tables, ignore_index=True)
    print(f"4. truth-built maps (pRF coverage x (category mask + eps); early visual: x contrast energy) of the planted "
          f"ROIs, both hemispheres, {len(chosen.paths)} validation images: labels, and the location / content "
          f"index ranges")
    groups = [table["eps"].fillna(-1), table["planted map"]]
    counts = pd.crosstab(groups, table["routing"]).reindex(columns=list(KINDS), fill_value=0)
    ranges = table.groupby(groups).agg(L_min=("location_index", "min"), L_max=("location_index", "max"),
                                       C_min=("content_index", "min"), C_max=("content_index", "max"))
    print(counts.join(ranges.round(3)).rename_axis(["eps (-1: none)", "planted map"]).to_string())


if __name__ == "__main__":
    main()
