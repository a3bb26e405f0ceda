"""How well the demo's frozen backbone can see each category of the virtual subject.

A category ROI can only be predicted with its preference if the backbone's
tokens carry that category. This probe renders random training scenes,
takes the demo backbone's tokens (random ViT-S/14, block 7), expands them
with fixed random ReLU features and fits a ridge (himalaya) from them to each
category's coverage of the token's patch. It prints, per category, the
held-out correlation per token and per image (the coverage summed over the
image), side by side.

Run it after changing a painter in ``model/virtual/stimuli.py``: a category
that scores far below the others will leave its ROIs' preference out of the
trained encoder's predictions (docs/accuracy.md, "The virtual subject's bodies").
With 1000 scenes the ridge's design matrix is 192,000 x 2,048 floats: a
few GiB of memory.

    python benchmarks/bench_category_probe.py [--images 1000] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from himalaya.ridge import Ridge

from analyses.demo import DEMO_BACKBONE
from model.backbone import Backbone, build_backbone
from model.metrics import pearson_r
from model.virtual.stimuli import CATEGORIES, render_scene, sample_scene


def tokens_and_coverage(backbone: Backbone, n_images: int, size: int = 224,
                        seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone tokens (N, T, D) and each category's coverage of every token's patch (N, T, C)."""
    rng = np.random.default_rng(seed)
    scenes = [render_scene(sample_scene(rng), size) for _ in range(n_images)]
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2)
    masks = torch.from_numpy(np.stack([[s.masks[c] for c in CATEGORIES] for s in scenes])).float()
    with torch.inference_mode():
        tokens = torch.cat([backbone(backbone.preprocess(images[i:i + 50])) for i in range(0, n_images, 50)])
    side = int(round(tokens.shape[1] ** 0.5))
    coverage = F.adaptive_avg_pool2d(masks, side).flatten(2).transpose(1, 2)
    return tokens, coverage


def random_relu(tokens: torch.Tensor, n_train: int, n_features: int = 2048, seed: int = 0) -> np.ndarray:
    """Tokens standardised on the training scenes, through a fixed random projection and a ReLU."""
    train = tokens[:n_train]
    x = (tokens - train.mean((0, 1))) / (train.std((0, 1)) + 1e-6)
    projection = torch.randn(x.shape[-1], n_features, generator=torch.Generator().manual_seed(seed)) / x.shape[-1] ** 0.5
    return torch.relu_(x @ projection).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1000, help="scenes rendered; 3/4 train the probe")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    backbone = build_backbone(DEMO_BACKBONE, 224)
    tokens, coverage = tokens_and_coverage(backbone, args.images)
    n_train = 3 * args.images // 4
    features = random_relu(tokens, n_train)
    n, t = features.shape[:2]
    ridge = Ridge(alpha=10.0, fit_intercept=True).fit(features[:n_train].reshape(n_train * t, -1), coverage[:n_train].reshape(n_train * t, -1).numpy())
    predicted = ridge.predict(features[n_train:].reshape((n - n_train) * t, -1)).reshape(n - n_train, t, -1)
    truth = coverage[n_train:].numpy()
    per_token = pearson_r(predicted.reshape(-1, len(CATEGORIES)), truth.reshape(-1, len(CATEGORIES)))
    per_image = pearson_r(predicted.sum(1), truth.sum(1))
    print(f"{DEMO_BACKBONE.name} (random weights), block {backbone.block_index + 1} tokens, "
          f"{n_train} training / {n - n_train} held-out scenes, {time.perf_counter() - start:.0f} s")
    print(f"{'category':10s} {'r per token':>12s} {'r per image':>12s}")
    for name, a, b in zip(CATEGORIES, per_token, per_image):
        print(f"{name:10s} {a:12.2f} {b:12.2f}")


if __name__ == "__main__":
    main()
