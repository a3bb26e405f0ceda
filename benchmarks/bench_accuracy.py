"""Accuracy on the default virtual subject: the transformer against the baselines and the ceiling.

Trains (or reuses, when the run folder already has ``metrics.json``) every
encoder on the demo's virtual subject with the demo's backbone, then prints
side by side, per encoder:

* the challenge score against the noisy test responses (the challenge's
  definition), and ours over vertices with a noise ceiling (``score_nc_positive``);
* mean r per ROI class against the noisy and against the clean test responses;
* mean within-ROI r over the early visual ROIs (V1v ... hV4), against the
  clean responses: does the model keep the retinotopy *inside* an ROI?
* for encoders with decoder attention, what ``tbe train``'s check of it
  recorded: how many reliably predicted queries have a faithful attention.

The ``ground truth`` row predicts the clean responses themselves: the best
any encoder can do against the noisy responses (against the clean responses
it scores 1 by construction).

Besides the demo's backbone it trains the other families of the original's
``--backbone_arch`` and its ``voxels`` readout, each changing one thing from
the ``transformer`` row (random weights throughout, offline):

* ``resnet18``: timm's ResNet-18, the last stage's map projected per token
  (the original's ``resnet18``);
* ``clip``: timm's CLIP ViT-B/16 (:data:`CLIP_BACKBONE`), the last block's patch
  tokens through ``ln_post`` and CLIP's projection (the original's ``clip``
  took CLIP ViT-L/14; B/16 is the same family at about a fifth of the cost);
* ``voxels``: one query per vertex, each vertex reading its own query token
  (``--readout-res voxels --readout linear``, the original's ``voxels``).

    python benchmarks/bench_accuracy.py [--work DIR] [--encoders transformer,ridge_squared,...]
                                        [--n-train 1000 --n-test 200 --image-size 224] [--epochs 15]

Reuse the demo's folder (``--work demo``) to skip the virtual subject, the
feature cache and, at the demo's epochs, the two runs the demo already
trained; with ``--epochs N`` each run goes to ``<encoder>-N-epochs``. About
25 minutes on 2 cores from nothing for the first five encoders. A finished
run in ``--work`` is reused only if its settings and epochs are the ones
asked for; otherwise the script stops with an error naming the run (its
subject is the folder's: give each subject size its own folder). The
``voxels`` row on the default subject takes about 11 minutes per epoch on 2
cores, so docs/accuracy.md's is 5 epochs, next to the transformer at 5 epochs
(54 minutes)::

    python benchmarks/bench_accuracy.py --work demo --epochs 5 --encoders transformer,voxels

and docs/accuracy.md's small-subject table of the other families and ``voxels``
(about 35 minutes on 2 busy cores, 30 of them ``voxels``)::

    python benchmarks/bench_accuracy.py --work /tmp/bench-small --n-train 300 --n-test 100 --image-size 112 \
        --epochs 10 --encoders transformer,resnet18,clip,voxels
"""
from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from analyses.accuracy import summary_row
from analyses.demo import DemoPaths, demo_runs
from model.encoders import RidgeConfig
from model.rois import HEMIS
from model.runs import METRICS, PRED_TEST, RunConfig, read_config, read_metrics
from model.scoring import score, virtual_reference
from model.subject import load_subject, subject_dir
from model.synthetic import VirtualConfig, write_virtual_subject
from model.training import train
from model.training.claiming import settings_differences
from model.training.loop import resolve_config


#: the CLIP row's backbone (random weights): the original's ``clip`` family at ViT-B/16
CLIP_BACKBONE = "vit_base_patch16_clip_224.openai"


def encoders(data: Path, epochs: int | None = None) -> dict[str, RunConfig]:
    """Every encoder of the comparison, on the demo's backbone and training settings (``epochs``: the demo's if None)."""
    demo = demo_runs(data)
    base = demo["transformer"]
    if epochs is not None:
        base = replace(base, train=replace(base.train, epochs=epochs))
    return {
        "transformer": base,
        "ridge_tokens": replace(base, encoder_arch="ridge", ridge=RidgeConfig(features="pooled")),
        "ridge_squared": replace(demo["ridge"], train=base.train),
        "linear": replace(base, encoder_arch="linear"),
        "spatial_feature": replace(base, encoder_arch="spatial_feature"),
        "resnet18": replace(base, backbone=replace(base.backbone, name="resnet18.tv_in1k", layer=1, feature="tokens")),
        "clip": replace(base, backbone=replace(base.backbone, name=CLIP_BACKBONE, layer=1, feature="tokens_proj")),
        "voxels": replace(base, readout_res="voxels", decoder=replace(base.decoder, readout="linear")),
    }


def subject_image_size(subject) -> int:
    """Side of the subject's first training image, in pixels."""
    from PIL import Image

    with Image.open(subject.train_images[0]) as image:
        return image.size[0]


#: demo run folders that the comparison can reuse as they are (at the demo's epochs)
DEMO_RUN_NAMES = {"transformer": "transformer", "ridge_squared": "ridge"}


def run_name(encoder: str, epochs: int | None) -> str:
    """The run folder of one row: the demo's own at the demo's epochs, else one named by the epochs."""
    if epochs is None:
        return DEMO_RUN_NAMES.get(encoder, encoder)
    return f"{encoder}-{epochs}-epochs"


def trained_run(config: RunConfig, run_dir: Path, cache: Path) -> Path:
    """``run_dir`` trained with ``config``: a finished run there is reused if its settings are these, else trained.

    A finished run with other settings (another ``--epochs``, another
    readout...) stops the benchmark with an error naming it, rather than be
    scored under the wrong row.
    """
    if not (run_dir / METRICS).is_file():
        train(config, run_dir, cache)
        return run_dir
    found = read_config(run_dir)
    wanted = copy.deepcopy(config)
    resolve_config(wanted)
    differ = settings_differences(wanted, found)
    if config.train.epochs != found.train.epochs:
        differ.append(f"epochs {found.train.epochs}, not {config.train.epochs}")
    if differ:
        raise SystemExit(f"error: {run_dir}: a finished run with other settings ({', '.join(differ)}); "
                         f"move it away or use another --work")
    return run_dir


def recorded_faithfulness(run_dir: Path) -> str:
    """What ``tbe train``'s check of the attention recorded: faithful of the reliably predicted queries ('' without)."""
    found = read_metrics(run_dir).get("attention_faithfulness") or {}
    if "n_reliable" not in found:
        return ""
    return f"{found['n_faithful_reliable']}/{found['n_reliable']} ({found['n_images']} val images)"


def summary(name: str, scores: dict) -> dict:
    """One row: the challenge score and ours, r per ROI class (noisy / clean), early-visual within-ROI r."""
    return {"encoder": name, **summary_row(scores)}


def scored(run: Path, subject, reference) -> dict:
    """The summary row of a run's (or an ensemble's) test predictions."""
    pred = {h: np.load(run / PRED_TEST.format(hemi=h)) for h in HEMIS}
    return summary_row(score(pred, subject, reference))


def run_row(name: str, run_dir: Path, subject, reference, seconds: float) -> dict:
    """One trained run's row: :func:`scored`, its ``seconds`` and what its attention check recorded."""
    return {"encoder": name, **scored(run_dir, subject, reference), "seconds": seconds,
            "faithful": recorded_faithfulness(run_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench-accuracy"), help="working folder (default bench-accuracy)")
    parser.add_argument("--encoders", default=None, help="comma-separated subset (default: all)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the demo's, 15)")
    defaults = VirtualConfig()
    parser.add_argument("--n-train", type=int, default=defaults.n_train, help="virtual subject's training images")
    parser.add_argument("--n-test", type=int, default=defaults.n_test, help="virtual subject's test images")
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="virtual subject's image size")
    args = parser.parse_args()
    paths = DemoPaths(args.work)
    if not subject_dir(paths.data, 1).exists():
        write_virtual_subject(paths.data, VirtualConfig(n_train=args.n_train, n_test=args.n_test, image_size=args.image_size))
    subject = load_subject(paths.data, 1)
    reference = virtual_reference(subject)
    chosen = encoders(paths.data, args.epochs)
    if args.encoders:
        chosen = {k: chosen[k] for k in args.encoders.split(",")}

    rows = [summary("ground truth", score(reference.clean, subject, reference))]
    for name, config in chosen.items():
        start = time.perf_counter()
        run_dir = trained_run(config, paths.runs / run_name(name, args.epochs), paths.cache)
        rows.append(run_row(name, run_dir, subject, reference, time.perf_counter() - start))
        print(f"{name}: done in {rows[-1]['seconds']:.0f} s", flush=True)

    table = pd.DataFrame(rows).set_index("encoder")
    print()
    print(f"virtual subject: {subject.n_train} training, {subject.n_test} test images of {subject_image_size(subject)} px; "
          f"{chosen[next(iter(chosen))].train.epochs} epochs; random backbones")
    best_ridge = table.loc[[n for n in table.index if n.startswith("ridge")]]
    print()
    print(table.round(3).to_string())
    if "transformer" in table.index and len(best_ridge):
        t = table.loc["transformer"]
        print()
        print(f"transformer minus the stronger ridge on category ROIs (clean r): "
              f"{t['r_clean category'] - best_ridge['r_clean category'].max():+.3f} (target +0.10)")
        print(f"transformer minus the stronger ridge, within-ROI r in early visual ROIs: "
              f"{t['within-ROI r EV'] - best_ridge['within-ROI r EV'].max():+.3f} (target >= 0)")
        print(f"transformer clean r: early visual {t['r_clean EV']:.3f} (target 0.90), "
              f"category ROIs {t['r_clean category']:.3f} (target 0.85)")


if __name__ == "__main__":
    main()
