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

import numpy as np

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
    p.add_argument("--surface", choices=["fsaverage5", "fsaverage6"], default=d.surface,
                   help="fsaverage6 density (subdivided fsaverage5) allows real-size subjects, for benchmarks")
    p.add_argument("--vertices", type=int, nargs=2, metavar=("LH", "RH"), default=None,
                   help="exact numbers of challenge vertices (e.g. 19004 20544 as NSD subject 1, with --surface fsaverage6)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing subject")


def _synth(args: argparse.Namespace) -> int:
    from model.virtual.writer import VirtualConfig, write_virtual_subject

    config = VirtualConfig(args.subj, args.n_train, args.n_test, args.image_size, args.seed, surface=args.surface,
                           n_vertices=tuple(args.vertices) if args.vertices else None)
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


def add_train_args(p: argparse.ArgumentParser) -> None:
    """``tbe train`` options (also used by main.py)."""
    from model.architectures import ARCHITECTURES, RidgeConfig
    from model.baselines import RIDGE_FEATURES
    from model.encoder import DecoderConfig
    from model.readout import READOUT_RES, READOUTS
    from model.run import TrainConfig

    add_data_args(p)
    add_backbone_args(p)
    t, d, r = TrainConfig(), DecoderConfig(), RidgeConfig()
    p.add_argument("--out", type=Path, required=True, help="run directory to create")
    p.add_argument("--readout-res", choices=list(READOUT_RES), default="rois_all")
    p.add_argument("--encoder-arch", choices=list(ARCHITECTURES), default="transformer")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    g = p.add_argument_group("optimisation (defaults: the seed's)")
    g.add_argument("--epochs", type=int, default=t.epochs)
    g.add_argument("--batch-size", type=int, default=t.batch_size)
    g.add_argument("--lr", type=float, default=t.lr)
    g.add_argument("--weight-decay", type=float, default=t.weight_decay)
    g.add_argument("--lr-drop", type=int, default=t.lr_drop, help="halve the learning rate every N epochs")
    g.add_argument("--clip-max-norm", type=float, default=t.clip_max_norm)
    g.add_argument("--seed", type=int, default=t.seed, help="initialisation, data order and dropout")
    g.add_argument("--split-seed", type=int, default=t.split_seed, help="train/validation split")
    g.add_argument("--val-fraction", type=float, default=t.val_fraction)
    g = p.add_argument_group("transformer decoder (defaults: the seed's)")
    g.add_argument("--hidden-dim", type=int, default=d.hidden_dim)
    g.add_argument("--nheads", type=int, default=d.nheads)
    g.add_argument("--dec-layers", type=int, default=d.dec_layers)
    g.add_argument("--dim-feedforward", type=int, default=d.dim_feedforward)
    g.add_argument("--dropout", type=float, default=d.dropout)
    g.add_argument("--query-self-attention", action="store_true")
    g.add_argument("--readout", choices=list(READOUTS), default=d.readout,
                   help="vertex readout: the seed's linear one, or linear + per-vertex spatial pooling (default)")
    g.add_argument("--readout-maps", type=int, default=d.readout_maps, help="feature maps per query (retinotopic readout)")
    g.add_argument("--readout-map-dim", type=int, default=d.readout_map_dim, help="token embedding size of those maps")
    g = p.add_argument_group("ridge baseline")
    g.add_argument("--ridge-features", choices=list(RIDGE_FEATURES), default=r.features)
    g.add_argument("--ridge-pool", type=int, default=r.pool)


def run_config(args: argparse.Namespace):
    from model.architectures import RidgeConfig
    from model.encoder import DecoderConfig
    from model.run import RunConfig, TrainConfig

    for name in ("epochs", "batch_size", "dec_layers", "hidden_dim", "nheads"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')}", f"must be at least 1, got {getattr(args, name)}")
    return RunConfig(
        data_dir=str(args.data_dir), subj=args.subj, readout_res=args.readout_res, encoder_arch=args.encoder_arch,
        backbone=backbone_config(args),
        decoder=DecoderConfig(args.hidden_dim, args.nheads, args.dec_layers, args.dim_feedforward, args.dropout,
                              args.query_self_attention, args.readout, args.readout_maps, args.readout_map_dim),
        train=TrainConfig(args.epochs, args.batch_size, args.lr, args.weight_decay, args.lr_drop, args.clip_max_norm,
                          args.seed, args.split_seed, args.val_fraction),
        ridge=RidgeConfig(args.ridge_features, args.ridge_pool))


def _train(args: argparse.Namespace) -> int:
    from model.train import train

    out = train(run_config(args), args.out, args.cache_dir, resume=args.resume, device=args.device)
    print(out)
    return 0


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--images", type=Path, required=True, help="folder of images")
    p.add_argument("--out", type=Path, required=True, help="predictions: .nc (NetCDF) or .npz")
    p.add_argument("--data-dir", type=Path, default=None, help="data directory (default: the run's)")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--device", default="auto")


def _predict(args: argparse.Namespace) -> int:
    from model.features import extract_features
    from model.rois import HEMIS
    from model.run import open_run, predict, save_predictions

    if not args.images.is_dir():
        raise InputError(args.images, "not a folder of images")
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InputError(args.images, f"no images ({', '.join(IMAGE_SUFFIXES)})")
    run = open_run(args.run, args.data_dir)
    feats = extract_features(run.backbone(), paths, args.cache_dir, device=args.device, desc="image features")
    pred = predict(run.model, feats.features)
    save_predictions(args.out, {h: pred[:, run.hemi_slice(h)] for h in HEMIS}, [p.name for p in paths])
    print(args.out)
    return 0


def _score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, default=None, help="data directory (default: the run's)")
    p.add_argument("--test-fmri", type=Path, default=None,
                   help="folder with {lh,rh}_test_fmri.npy (default: the virtual subject's ground truth)")
    p.add_argument("--noise-ceiling", type=Path, default=None, help="folder with {lh,rh}_noise_ceiling.npy")
    p.add_argument("--out", type=Path, default=None, help="scores as JSON (default RUN/test_scores.json)")


def _score(args: argparse.Namespace) -> int:
    from model.files import write_json
    from model.rois import HEMIS
    from model.run import read_config
    from model.scoring import check_shapes, file_reference, score, score_table, virtual_reference
    from model.subject import load_subject

    config = read_config(args.run)
    subject = load_subject(args.data_dir or config.data_dir, config.subj)
    preds = {}
    for hemi in HEMIS:
        path = args.run / f"{hemi}_pred_test.npy"
        if not path.is_file():
            raise InputError(path, "missing test predictions (did training finish?)")
        preds[hemi] = np.load(path, allow_pickle=False)
    ref = file_reference(args.test_fmri, args.noise_ceiling) if args.test_fmri else virtual_reference(subject)
    check_shapes(preds, ref, str(args.run))
    scores = score(preds, subject, ref)
    write_json(args.out or args.run / "test_scores.json", scores)
    table = score_table(scores).pivot_table(index=["measure", "group"], columns="hemi", values="value")
    print(table.round(3).to_string())
    if "challenge_score" in scores:
        print(f"challenge score: {scores['challenge_score']:.2f}")
    return 0


def _surface_args(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    p.add_argument("--values", required=True,
                   help="per-vertex .npy files with {hemi} for lh/rh, e.g. 'RUN/{hemi}_val_corr.npy'")
    p.add_argument("--out", type=Path, required=True, help="output prefix: PREFIX.png and PREFIX.{lh,rh}.func.gii")
    p.add_argument("--title", default="")
    p.add_argument("--cmap", default="inferno")


def _surface(args: argparse.Namespace) -> int:
    from analyses.surface import plot_surface, save_gifti
    from model.rois import HEMIS
    from model.subject import load_subject

    subject = load_subject(args.data_dir, args.subj, check_images=False)
    if "{hemi}" not in args.values:
        raise InputError("--values", "must contain {hemi}, e.g. 'RUN/{hemi}_val_corr.npy'")
    values = {}
    for hemi in HEMIS:
        path = Path(args.values.format(hemi=hemi))
        if not path.is_file():
            raise InputError(path, "missing file")
        values[hemi] = np.load(path, allow_pickle=False)
    png = plot_surface(values, subject, f"{args.out}.png", title=args.title or Path(args.values).stem, cmap=args.cmap)
    for path in [png, *save_gifti(values, subject, args.out, name=args.title or "value")]:
        print(path)
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
    "train": ("train an encoder (or fit a baseline) into a run directory", add_train_args, _train),
    "predict": ("predict responses to any folder of images with a trained run", _predict_args, _predict),
    "score": ("score a run's test predictions (virtual subject ground truth or your files)", _score_args, _score),
    "surface": ("put per-vertex values on fsaverage: a figure and GIFTI files", _surface_args, _surface),
    "demo": ("run the whole suite on a virtual subject", _demo_args, _demo),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tbe", description="Transformer encoders of human visual cortex")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(handler=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="tbe: %(message)s", stream=sys.stderr)
    try:
        return args.handler(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
