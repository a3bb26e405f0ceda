"""The ``tbe`` command: one subcommand per job, each a thin call into the layers.

Subcommands are registered in :data:`COMMANDS` (name -> how to add its
arguments, what to run). Bad input ends with one line,
``error: <file or option>: <problem>``, and exit status 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from model.errors import InputError

log = logging.getLogger("tbe")


# --------------------------------------------------------------------------
# Shared option groups
# --------------------------------------------------------------------------

def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, required=True, help="folder holding subjXX in the Algonauts 2023 layout")
    p.add_argument("--subj", type=int, default=1, help="subject number (default 1)")


def add_backbone_args(p: argparse.ArgumentParser) -> None:
    from model.backbone import DEFAULT_BACKBONE, FEATURES

    g = p.add_argument_group("backbone")
    g.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"timm ViT name (default {DEFAULT_BACKBONE})")
    g.add_argument("--backbone-weights", type=Path, default=None,
                   help="local checkpoint (official DINOv2 .pth or .safetensors) instead of downloading")
    g.add_argument("--no-pretrained", action="store_true", help="seeded random weights (LayerScale 1.0)")
    g.add_argument("--backbone-seed", type=int, default=0, help="seed of the random weights (default 0)")
    g.add_argument("--enc-output-layer", type=int, default=1,
                   help="block whose features are used, counted from the end: 1 = last (default 1)")
    g.add_argument("--feature", choices=sorted(FEATURES), default="q", help="block output tokens or attention queries (default q)")
    g.add_argument("--image-size", type=int, default=None,
                   help="resize images to this side (default: native size, padded to a multiple of the patch)")
    g.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default $TBE_CACHE_DIR or ~/.cache/tbe)")
    g.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps")


def backbone_config(args: argparse.Namespace):
    from model.backbone import BackboneConfig

    if args.backbone_weights is not None and args.no_pretrained:
        raise InputError("--backbone-weights", "cannot be combined with --no-pretrained")
    weights = str(args.backbone_weights) if args.backbone_weights else ("random" if args.no_pretrained else "pretrained")
    return BackboneConfig(args.backbone, weights, args.backbone_seed, args.enc_output_layer, args.feature, args.image_size)


# --------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------

def _synth_args(p: argparse.ArgumentParser) -> None:
    from model.virtual.writer import VirtualConfig

    d = VirtualConfig()
    p.add_argument("--out", type=Path, required=True, help="folder to write subjXX into")
    p.add_argument("--subj", type=int, default=d.subj)
    p.add_argument("--n-train", type=int, default=d.n_train)
    p.add_argument("--n-test", type=int, default=d.n_test)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--overwrite", action="store_true", help="replace an existing subject")


def _synth(args: argparse.Namespace) -> int:
    from model.virtual.writer import VirtualConfig, write_virtual_subject

    config = VirtualConfig(args.subj, args.n_train, args.n_test, args.image_size, args.seed)
    path = write_virtual_subject(args.out, config, overwrite=args.overwrite)
    print(path)
    return 0


def _features_args(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    add_backbone_args(p)
    p.add_argument("--batch-size", type=int, default=16)


def _features(args: argparse.Namespace) -> int:
    from model.features import subject_features

    for split, fs in subject_features(args.data_dir, args.subj, backbone_config(args), args.cache_dir,
                                      args.batch_size, args.device).items():
        print(f"{split}: {fs.features.shape} float16 in {fs.path}")
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo"), help="working folder (default ./demo)")
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")


def _demo(args: argparse.Namespace) -> int:
    from analyses.demo import run_demo

    run_demo(args.out, n_train=args.n_train, n_test=args.n_test, seed=args.seed, device=args.device)
    return 0


Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
COMMANDS: dict[str, Command] = {
    "synth": ("write a virtual subject in the Algonauts layout", _synth_args, _synth),
    "features": ("compute (or find in the cache) backbone features of a subject's images", _features_args, _features),
    "demo": ("run the whole suite on a virtual subject", _demo_args, _demo),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tbe", description="Transformer encoders of human visual cortex")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="tbe: %(message)s", stream=sys.stderr)
    try:
        return args.run(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
