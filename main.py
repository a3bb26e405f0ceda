"""The original project's command line, kept working: a thin shim over ``tbe train``.

    python main.py --run 1 --subj 1 --enc_output_layer 1 --readout_res 'rois_all'

The seed's flags (underscored) are translated to ``tbe train`` options, and
where the original's model differs from ``tbe train``'s defaults the
original's setting is passed (:data:`ORIGINAL_SETTINGS`): the linear readout,
the standard cross-attention, raw tokens, N(0, 1) query embeddings, and a
split and initialisation seeded by ``--run``. Any ``tbe train`` option (``--no-pretrained``, ``--backbone``,
``--cache-dir``, ...) may be added, and wins. The run directory follows the seed's layout:
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

CLIP = "vit_large_patch14_clip_quickgelu_224.openai"  # OpenAI's CLIP ViT-L/14 (QuickGELU), as open_clip's 'ViT-L-14'
#: the seed's backbone_arch -> (timm backbone, or None for tbe's default DINOv2 ViT-B/14; feature). ``dinov2``:
#: block tokens through the final LayerNorm, as DINOv2's get_intermediate_layers(norm=True) gave them; ``clip``:
#: the last block's tokens through ln_post and CLIP's projection (768); ``_cls``: the class token instead.
BACKBONE_ARCH = {
    "dinov2_q": (None, "q"), "dinov2": (None, "tokens_norm"),
    "dinov2_q_cls": (None, "q_cls"), "dinov2_cls": (None, "tokens_norm_cls"),
    "resnet18": ("resnet18.tv_in1k", "tokens"), "resnet50": ("resnet50.tv_in1k", "tokens"),
    "clip": (CLIP, "tokens_proj"), "clip_cls": (CLIP, "tokens_proj_cls"),
}
#: where the original differs from ``tbe train``'s defaults: its values (docs/original.md)
ORIGINAL_SETTINGS = (
    "--readout", "linear",  # one linear readout per vertex of its queries' tokens (rois_all: summed over its ROIs)
    "--attention", "standard",  # multi-head cross-attention with the positions in the keys (DETR's)
    "--no-standardise-tokens",  # raw backbone tokens into the decoder
    "--query-init", "normal",  # nn.Embedding's N(0, 1), not re-initialised
    "--val-fraction", "0.1",  # 90/10 split, round(0.9 N) training images
)
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
        "pre_norm": (seed.pre_norm not in (0, 1), "must be 1 (pre-norm layers) or 0 (post-norm)"),
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
        "--feature", BACKBONE_ARCH[seed.backbone_arch][1], "--enc-output-layer", str(seed.enc_output_layer),
        "--dec-layers", str(seed.dec_layers), "--dim-feedforward", str(seed.dim_feedforward),
        "--hidden-dim", str(seed.hidden_dim), "--dropout", str(seed.dropout), "--nheads", str(seed.nheads),
        "--epochs", str(seed.epochs), "--batch-size", str(seed.batch_size), "--lr", str(seed.lr),
        "--weight-decay", str(seed.weight_decay), "--lr-drop", str(seed.lr_drop),
        "--clip-max-norm", str(seed.clip_max_norm), "--enc-layers", str(seed.enc_layers),
        "--pre-norm" if seed.pre_norm else "--no-pre-norm", "--position-embedding", seed.position_embedding,
        # --run draws a new split and a new initialisation (the original drew both from OS entropy)
        "--seed", str(seed.run), "--split-seed", str(seed.run),
        *ORIGINAL_SETTINGS,
    ]
    if BACKBONE_ARCH[seed.backbone_arch][0] is not None:
        args += ["--backbone", BACKBONE_ARCH[seed.backbone_arch][0]]
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
