"""Where the attention's pointing game misses, on a virtual subject's run.

For each planted face, body and word query and each test image that shows
its category, the peak of the query's head-averaged attention (the token
that the pointing game scores, one token of tolerance) either hits the
category's mask or falls elsewhere. This script says where: on another
category's mask (the token's largest coverage, at least ``--min-coverage``)
or on the background (``none``). The painted stimuli carry a known
confound (``model.virtual.stimuli.STIMULUS_CONFOUNDS``): the headless
bodies' arms and hands are painted in the faces' skin colours. So for a
face query whose peak falls on a body, it also gives the share of that
token's pixels in skin colours, next to the same share over every body
token of those images (is the peak on the hands and arms more often than
a body token is?). Hits are also split at the median mask area (small
against large objects).

    python benchmarks/bench_pointing.py --run RUN [--n-images 100]

``docs/attention.md`` ("Where the MLP key misses, and a key that sees the
neighbourhood") has its output on runs of ``bench_readouts.py``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from analyses.attention_selectivity import token_attention, token_coverage
from analyses.routing import split_images
from bench_readouts import OBJECT_CATEGORIES
from interpret.checks import pointing_hit
from model.runs import open_run
from model.virtual.stimuli import FACE_SKIN_GAIN, SKIN

#: a pixel is skin-coloured within this RGB distance of a skin tone (a face's tone times a gain in FACE_SKIN_GAIN)
SKIN_DISTANCE = 20.0
SKIN_TONES = np.concatenate([SKIN * f for f in np.linspace(*FACE_SKIN_GAIN, 4)])


def peaks(att: np.ndarray, coverage: np.ndarray, categories: list[str], planted: dict[int, str],
          grid: tuple[int, int], min_coverage: float) -> pd.DataFrame:
    """One row per (query, image showing the query's category): its peak token, hit, and where the peak fell.

    ``att`` ``(image, query, token)``; ``coverage`` ``(image, category, token)``;
    ``planted``: query index -> its category. A hit is a peak within one
    token of the mask (the pointing game's tolerance).
    """
    rows = []
    for q, category in planted.items():
        c = categories.index(category)
        for i in range(len(att)):
            mask = coverage[i, c].reshape(grid)
            if not (mask > 0).any():
                continue
            hit, peak, _ = pointing_hit(att[i, q].reshape(grid), mask)
            best = int(coverage[i, :, peak].argmax())
            elsewhere = categories[best] if coverage[i, best, peak] >= min_coverage else "none"
            rows.append({"query": q, "category": category, "image": i, "peak": peak, "hit": hit,
                         "at": category if hit else elsewhere, "area": int((mask > 0).sum())})
    return pd.DataFrame(rows)


def skin_share(path: Path, token: int, grid: tuple[int, int], patch: int, side: int) -> float:
    """Share of a token's pixels in a skin tone (the image resized to the backbone's side, padded at right and bottom)."""
    rgb = np.asarray(Image.open(path).convert("RGB").resize((side, side)), float)
    r, c = divmod(token, grid[1])
    pixels = rgb[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch].reshape(-1, 3)
    distance = np.sqrt(((pixels[:, None] - SKIN_TONES[None]) ** 2).sum(-1)).min(1)
    return float((distance < SKIN_DISTANCE).mean()) if len(pixels) else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a run on a virtual subject")
    parser.add_argument("--n-images", type=int, default=100, help="first test images (default 100)")
    parser.add_argument("--min-coverage", type=float, default=0.2,
                        help="a missed peak is on another category when it covers this share of the token (default 0.2)")
    parser.add_argument("--cache", type=Path, default=None, help="feature cache folder")
    args = parser.parse_args()
    run = open_run(args.run)
    if run.subject.truth is None:
        raise SystemExit(f"{args.run}: not a virtual subject's run (no masks to score the peaks against)")
    chosen = split_images(run, "test", args.n_images)
    features = np.asarray(run.features(chosen.paths, args.cache, rows=chosen.rows), np.float32)
    att, queries = token_attention(run, features)
    backbone = run.shared_backbone
    coverage, _ = token_coverage(chosen.masks, backbone)
    grid, categories = tuple(backbone.grid), list(chosen.categories)
    preference = run.subject.truth.preferences()
    planted = {q: preference[roi] for q, (_, roi) in enumerate(queries) if preference.get(roi) in OBJECT_CATEGORIES}
    table = peaks(att, coverage, categories, planted, grid, args.min_coverage)
    table["large"] = table["area"] > table.groupby("category")["area"].transform("median")

    print(f"{args.run}: {len(chosen.paths)} test images, {len(planted)} face, body and word queries")
    print("\nshare of (query, image) peaks on the mask, by category and mask area (large: above the category's median); "
          "pooled over queries, where bench_readouts averages each query's pointing game")
    split = table.pivot_table(index="category", columns="large", values="hit", aggfunc="mean")
    split.columns = ["small objects", "large objects"]
    split["all"], split["peaks"] = table.groupby("category")["hit"].mean(), table.groupby("category").size()
    print(split.to_string(float_format=lambda v: f"{v:.3f}"))
    misses = table[~table["hit"]]
    print("\nmissed peaks: where they fall (rows: the query's category; columns: the mask at the peak; 'place' is a "
          "room's layout, 'none' a textured background)")
    print(pd.crosstab(misses["category"], misses["at"]).to_string())
    on_body = misses[(misses["category"] == "face") & (misses["at"] == "body")]
    if len(on_body):
        side, patch = backbone.image_side, backbone.patch
        share = [skin_share(chosen.paths[i], t, grid, patch, side) for i, t in zip(on_body["image"], on_body["peak"])]
        body = categories.index("body")
        tokens = [(i, t) for i in on_body["image"].unique() for t in np.flatnonzero(coverage[i, body] > 0.5)]
        base = [skin_share(chosen.paths[i], t, grid, patch, side) for i, t in tokens]
        print(f"\nface queries' peaks on a body: {sum(s > 0.2 for s in share)} of {len(share)} on a token whose "
              f"pixels are more than 20% skin-coloured (arms, hands); of all body tokens of those images "
              f"(coverage > 0.5), {np.mean(np.array(base) > 0.2):.2f} are")


if __name__ == "__main__":
    main()
