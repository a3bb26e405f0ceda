"""The original project's command line, kept working: a thin shim over ``tbe train``.

    python main.py --run 1 --subj 1 --enc_output_layer 1 --readout_res 'rois_all'

The seed's flags (underscored) are translated to ``tbe train`` options; any
``tbe train`` option (``--no-pretrained``, ``--backbone``, ``--cache-dir``,
...) may be added. The run directory follows the seed's layout:
``{output_path}nsd_test/{backbone_arch}_{encoder_arch}/subj_XX/{readout_res}/enc_{layer}/run_{run}/``.
Flags of the seed that have no effect here (wandb, worker counts, ...) are
accepted and ignored with a note; settings the seed offered but this suite
does not (e.g. a trainable backbone) are refused with a clear error.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from analyses import cli
from model.errors import InputError

log = logging.getLogger("tbe")

#: the seed's backbone_arch -> feature kind of the DINOv2 backbone
BACKBONE_ARCH = {"dinov2_q": "q", "dinov2": "tokens"}
IGNORED = ("save_model", "num_workers", "wandb_p", "wandb_r", "distributed", "parent_submission_dir",
           "horizontal_flip", "img_channels", "objective", "dataset", "num_queries", "evaluate", "return_interm")


def seed_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--run", type=int, default=1)
    p.add_argument("--subj", type=int, default=1)
    p.add_argument("--data_dir", default="../../../algonauts/algonauts_2023_challenge_data/")
    p.add_argument("--output_path", default="./results/")
    p.add_argument("--resume", nargs="?", const=True, default=None)
    p.add_argument("--readout_res", default="streams_inc")
    p.add_argument("--encoder_arch", default="transformer")
    p.add_argument("--backbone_arch", default="dinov2_q")
    p.add_argument("--enc_output_layer", type=int, default=1)
    p.add_argument("--enc_layers", type=int, default=0)
    p.add_argument("--dec_layers", type=int, default=1)
    p.add_argument("--dim_feedforward", type=int, default=1024)
    p.add_argument("--hidden_dim", type=int, default=768)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--nheads", type=int, default=16)
    p.add_argument("--pre_norm", type=int, default=1)
    p.add_argument("--position_embedding", default="sine")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight_decay", type=float, default=1e-4)
    p.add_argument("--lr_drop", type=int, default=100)
    p.add_argument("--lr_backbone", type=float, default=0)
    p.add_argument("--clip_max_norm", type=float, default=0.1)
    p.add_argument("--image_size", type=int, default=None)
    p.add_argument("--saved_feats", default=None)
    p.add_argument("--saved_feats_dir", default=None)
    p.add_argument("--dilation", action="store_true")
    for name in IGNORED:
        p.add_argument(f"--{name}", default=None)
    return p


def translate(seed: argparse.Namespace) -> list[str]:
    """The ``tbe train`` arguments equivalent to the seed's."""
    unsupported = {
        "backbone_arch": (seed.backbone_arch not in BACKBONE_ARCH,
                          f"{seed.backbone_arch!r} is not available; choose {', '.join(BACKBONE_ARCH)} (or pass --backbone NAME)"),
        "enc_layers": (seed.enc_layers != 0, "only 0 (backbone tokens go straight to the decoder) is supported"),
        "pre_norm": (seed.pre_norm != 1, "only the pre-norm decoder (1) is supported"),
        "position_embedding": (seed.position_embedding != "sine", "only 'sine' is supported"),
        "lr_backbone": (seed.lr_backbone > 0, "the backbone is frozen here (features are cached)"),
        "saved_feats": (seed.saved_feats is not None, "features are cached automatically; drop this flag"),
    }
    for flag, (bad, why) in unsupported.items():
        if bad:
            raise InputError(f"--{flag}", why)
    for name in IGNORED:
        if getattr(seed, name) is not None:
            print(f"note: --{name} has no effect here and is ignored", file=sys.stderr)
    out = (Path(seed.output_path) / "nsd_test" / f"{seed.backbone_arch}_{seed.encoder_arch}" / f"subj_{seed.subj:02d}"
           / seed.readout_res / f"enc_{seed.enc_output_layer}" / f"run_{seed.run}")
    args = [
        "--data-dir", seed.data_dir, "--subj", str(seed.subj), "--out", str(out),
        "--readout-res", seed.readout_res, "--encoder-arch", seed.encoder_arch,
        "--feature", BACKBONE_ARCH[seed.backbone_arch], "--enc-output-layer", str(seed.enc_output_layer),
        "--dec-layers", str(seed.dec_layers), "--dim-feedforward", str(seed.dim_feedforward),
        "--hidden-dim", str(seed.hidden_dim), "--dropout", str(seed.dropout), "--nheads", str(seed.nheads),
        "--epochs", str(seed.epochs), "--batch-size", str(seed.batch_size), "--lr", str(seed.lr),
        "--weight-decay", str(seed.weight_decay), "--lr-drop", str(seed.lr_drop),
        "--clip-max-norm", str(seed.clip_max_norm), "--seed", str(seed.run),
    ]
    if seed.image_size:
        args += ["--image-size", str(seed.image_size)]
    if seed.resume:
        args += ["--resume"]
    return args


def main(argv: list[str] | None = None) -> int:
    seed, extra = seed_parser().parse_known_args(argv)
    try:
        tbe_args = translate(seed)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return cli.main(["train", *tbe_args, *extra])


if __name__ == "__main__":
    sys.exit(main())
