"""The ``tbe`` command: one subcommand per job, each a thin call into the layers.

Subcommands are registered in :data:`COMMANDS` (name -> how to add its
arguments, what to run). Every error ends with one line and exit status 2:
bad input as ``error: <file or option>: <problem>`` (the library names
parameters, :func:`flag_of` turns them into flags), a
file-system error as ``error: <file>: <what the OS said>``, and anything
unexpected as ``error: internal error: ...`` with a hint how to see the
traceback (``--traceback`` or ``TBE_TRACEBACK=1``).

Options come from one place: a setting's flag, type, default, choices and
help are its dataclass field's (:func:`model.options.setting`; the training
configuration's sections, the method and statistics settings), made into a
flag by :func:`add_settings_args`; options that several commands share are
added by one function each (``add_*_args``). Only this module turns a
parameter into a flag (:func:`flag_of`), for the flags it makes and for the
library's errors alike.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Callable

from model.device import add_device_arg, pick_device
from model.errors import InputError, OptionError

log = logging.getLogger("tbe")

#: parameters whose flag is not their name's (:func:`flag_of`): the seed's names, a section's prefix,
#: and tbe synth's --vertices
FLAG_NAMES = {
    "backbone.name": "--backbone", "backbone.weights": "--backbone-weights", "backbone.seed": "--backbone-seed",
    "backbone.layer": "--enc-output-layer", "ridge.features": "--ridge-features", "ridge.pool": "--ridge-pool",
    "ridge.n_components": "--ridge-components", "n_vertices": "--vertices",
}
#: flags that several commands define, each for itself, because they mean something else in each: what it
#: writes, what it draws at random, which images or runs it reads (tests/test_options_one_place.py: every
#: other flag that commands share has one definition)
OWN_MEANING = {
    "--out": "what the command writes", "--seed": "what the command draws at random",
    "--run": "one run, several (an ensemble), or a run to read a manifest or subject from",
    "--runs": "the members of an ensemble, or one run per subject of a submission",
    "--data-dir": "required where no run says it, else the run's by default",
    "--subj": "one subject, several (a grid), or the run's by default",
    "--images": "the images to predict, to map instead of a split, or that a labels file names",
    "--n-images": "how many of a split's images to map, or to route (default all)",
    "--split": "the images to map, or to route instead of a labels file",
    "--batch-size": "images per backbone pass, per optimisation step, or mapped at a time",
    "--enc-output-layer": "one layer, or several (a grid)", "--image-size": "painted images, or the backbone's input",
    "--categories": "COCO categories to label, or categories of a labels file to analyse",
    "--n-train": "the virtual subject of tbe synth, or of the demo",
    "--n-test": "the virtual subject of tbe synth, or of the demo",
    "--alpha": "FDR level of each command's own tests", "--confidence": "interval level of each command's own tests",
    "--n-permutations": "each command's own permutation tests", "--n-bootstrap": "each command's own intervals",
}
#: set to 1 to print the traceback of an internal error
TRACEBACK_ENV = "TBE_TRACEBACK"


# --------------------------------------------------------------------------
# Parameters and their flags
# --------------------------------------------------------------------------

def option_name(name: str) -> str:
    """The command-line option of a field: ``n_steps`` -> ``--n-steps``."""
    return "--" + name.replace("_", "-")


def flag_of(parameter: str) -> str:
    """The flag that sets a parameter the library names: ``decoder.readout_map_dim`` -> ``--readout-map-dim``,
    ``n_images`` -> ``--n-images``, ``backbone.layer`` -> ``--enc-output-layer`` (:data:`FLAG_NAMES`)."""
    return FLAG_NAMES.get(parameter) or option_name(parameter.rsplit(".", 1)[-1])


def config_sections() -> dict[str, type]:
    """The run configuration's sections whose every field is a ``tbe train`` flag: section -> its dataclass."""
    from model.runs import RunConfig

    return dict(RunConfig.SECTIONS)


@functools.lru_cache(maxsize=1)
def config_flags() -> dict[str, str]:
    """Every configuration parameter (``section.field``, and the run's own) -> the flag that sets it."""
    flags = {name: option_name(name) for name in ("data_dir", "subj", "readout_res", "encoder_arch")}
    for section, cls in config_sections().items():
        flags.update({f"{section}.{f.name}": flag_of(f"{section}.{f.name}") for f in dataclasses.fields(cls)})
    return flags


def with_flags(text: str, configuration: bool = False) -> str:
    """A library message as the command line says it: each parameter in backquotes becomes its flag (``choose
    another `out``` -> ``choose another --out``); ``configuration`` (a bad value of one): each configuration
    parameter too (``must divide decoder.hidden_dim`` -> ``must divide --hidden-dim``)."""
    text = re.sub(r"`([A-Za-z_][\w.]*)`", lambda m: flag_of(m.group(1)), text)
    if configuration and "." in text:
        for parameter, flag in config_flags().items():
            if "." in parameter:  # a section's field named in the text, e.g. "must divide decoder.hidden_dim"
                text = text.replace(parameter, flag)
    return text


# --------------------------------------------------------------------------
# Shared option groups
# --------------------------------------------------------------------------

def add_cache_arg(p) -> None:
    """``--cache-dir``: the one feature-cache option of every command that computes features."""
    p.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default $TBE_CACHE_DIR or ~/.cache/tbe)")


def add_data_args(p: argparse.ArgumentParser, several: bool = False) -> None:
    """``--data-dir`` and ``--subj`` (``several``: a list or range of subjects, e.g. 1-8 or 1,2)."""
    p.add_argument("--data-dir", type=Path, required=True, help="folder holding subjXX in the Algonauts 2023 layout")
    if several:
        p.add_argument("--subj", type=_int_list, default=[1], metavar="SUBJ",
                       help="subject number, or several (1-8, 1,2): one run per subject in OUT/subjXX (default 1)")
    else:
        p.add_argument("--subj", type=int, default=1, help="subject number (default 1)")


def _int_list(text: str) -> list[int]:
    from model.training import int_list

    try:
        return int_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_backbone_args(p: argparse.ArgumentParser, several_layers: bool = False) -> None:
    """The backbone options of every command that computes features from a configuration (features, train)."""
    from model.backbone import BackboneConfig

    g = p.add_argument_group("backbone")
    add_settings_args(g, BackboneConfig, ["name"], section="backbone")
    # a checkpoint file, or (--no-pretrained) random weights: the configuration's weights ('pretrained' without either)
    add_setting_arg(g, BackboneConfig, "weights", section="backbone", type=Path, default=None)
    g.add_argument("--no-pretrained", action="store_true", help="seeded random weights (LayerScale 1.0)")
    add_settings_args(g, BackboneConfig, ["seed"], section="backbone")
    if several_layers:
        layer = _field(BackboneConfig, "layer")
        add_setting_arg(g, BackboneConfig, "layer", section="backbone", type=_int_list, default=[layer.default],
                        metavar="LAYER", help=layer.metadata["help"] + "; several (1,3,5,7) train one run per layer "
                                                                       "into OUT/layer{L}_seed{S}")
    else:
        add_settings_args(g, BackboneConfig, ["layer"], section="backbone")
    add_settings_args(g, BackboneConfig, ["feature", "image_size", "precision"], section="backbone")
    add_cache_arg(g)
    add_device_arg(g)


def add_run_args(p: argparse.ArgumentParser, subj: bool = False, required: bool = True, several: bool = False) -> None:
    """A trained run, and optionally another data directory (or subject) than the one it was trained on.

    ``required=False`` leaves the check to the command (``tbe report --list`` needs no run); ``several``
    lets ``--run`` list runs, opened as one equal-weight ensemble (:func:`model.runs.opening.open_runs`).
    """
    if several:
        p.add_argument("--run", type=Path, nargs="+", required=required, metavar="RUN",
                       help="run directory written by tbe train (or an ensemble); several runs of one subject: their "
                            "equal-weight ensemble, attention maps averaged over the runs")
    else:
        p.add_argument("--run", type=Path, required=required, help="run directory written by tbe train")
    p.add_argument("--data-dir", type=Path, default=None, help="data directory (default: the run's)")
    if subj:
        p.add_argument("--subj", type=int, default=None, help="subject number (default: the run's)")


def add_settings_args(p: argparse.ArgumentParser, settings_class: type, names: list[str] | None = None,
                      section: str = "") -> None:
    """One option per field of a settings dataclass (or per field of ``names``, in that order): ``--n-steps`` for
    ``n_steps``, ``--epochs`` for the configuration's ``train.epochs`` (``section='train'``; :func:`flag_of`)."""
    for name in names or [f.name for f in dataclasses.fields(settings_class)]:
        add_setting_arg(p, settings_class, name, section)


def add_setting_arg(p: argparse.ArgumentParser, settings_class: type, name: str, section: str = "", **override) -> None:
    """The option of one field. Its metadata (:func:`model.options.setting`) give its ``help``, ``type`` and
    ``choices``, and its default is the dataclass's, so the two cannot drift apart; a bool is a switch
    (``--no-...`` too where it is on by default). ``override``: argparse arguments this command sets otherwise."""
    from model.options import option_choices, option_help

    f = _field(settings_class, name)
    meta, flag = f.metadata, flag_of(f"{section}.{name}" if section else name)
    kwargs = dict(dest=_dest(flag), default=f.default, help=with_flags(option_help(meta)))
    if meta["type"] is bool:
        kwargs["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
    else:
        choices = option_choices(meta)
        kwargs.update(type=meta["type"], choices=choices,
                      metavar=meta.get("metavar") or (None if choices else kwargs["dest"].upper()))
    kwargs.update(override)
    if "default" not in kwargs["help"] and kwargs["default"] not in (None, False):
        kwargs["help"] += " (default %(default)s)"
    p.add_argument(flag, **kwargs)


def _field(settings_class: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(settings_class) if f.name == name)


def settings_from_args(settings_class: type, args: argparse.Namespace, section: str = ""):
    """The settings dataclass made from the options :func:`add_settings_args` added (a field without an option
    keeps its default)."""
    return settings_class(**{f.name: getattr(args, _dest(flag_of(f"{section}.{f.name}" if section else f.name)), f.default)
                             for f in dataclasses.fields(settings_class)})


def _dest(flag: str) -> str:
    return flag[2:].replace("-", "_")


def config_section(cls, section: str, args: argparse.Namespace):
    """One config dataclass from its flags (``section.field`` -> :func:`flag_of`)."""
    return settings_from_args(cls, args, section)


def backbone_config(args: argparse.Namespace):
    """The :class:`~model.backbone.BackboneConfig` of the backbone options; ``--precision auto`` is resolved
    here, for the command's device (:func:`model.device.resolve_precision`), so the configuration says what was used."""
    from model.backbone import BackboneConfig
    from model.device import resolve_precision

    if args.backbone_weights is not None and args.no_pretrained:
        raise InputError("--backbone-weights", "cannot be combined with --no-pretrained")
    weights = str(args.backbone_weights) if args.backbone_weights else ("random" if args.no_pretrained else "pretrained")
    config = config_section(BackboneConfig, "backbone", args)
    precision = resolve_precision(config.precision, pick_device(getattr(args, "device", None) or "auto"))
    return dataclasses.replace(config, weights=weights, precision=precision)


# --------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------

def _synth_args(p: argparse.ArgumentParser) -> None:
    from model.synthetic import VirtualConfig

    p.add_argument("--out", type=Path, required=True, help="folder to write subjXX into")
    add_settings_args(p, VirtualConfig, ["subj", "n_train", "n_test", "image_size", "seed", "surface"])
    add_setting_arg(p, VirtualConfig, "n_vertices", nargs=2, metavar=("LH", "RH"))
    p.add_argument("--overwrite", action="store_true", help="replace an existing subject")


def _synth(args: argparse.Namespace) -> int:
    from model.synthetic import VirtualConfig, write_virtual_subject

    config = VirtualConfig(args.subj, args.n_train, args.n_test, args.image_size, args.seed, surface=args.surface,
                           n_vertices=tuple(args.vertices) if args.vertices else None)  # n_repeats: the default
    path = write_virtual_subject(args.out, config, overwrite=args.overwrite)
    print(path)
    return 0


def _features_args(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    add_backbone_args(p)
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass of the backbone")


def _features(args: argparse.Namespace) -> int:
    from model.features import subject_features

    for split, fs in subject_features(args.data_dir, args.subj, backbone_config(args), args.cache_dir,
                                      args.batch_size, args.device).items():
        print(f"{split}: {fs.features.shape} float16 in {fs.path}")
    return 0


def add_train_args(p: argparse.ArgumentParser) -> None:
    """``tbe train`` options (also used by main.py)."""
    from model.encoders import ARCHITECTURES, READOUT_RES, DecoderConfig, RidgeConfig
    from model.features import RESIDENCY, RESIDENT_SHARE
    from model.runs import TrainConfig

    add_data_args(p, several=True)
    add_backbone_args(p, several_layers=True)
    p.add_argument("--out", type=Path, required=True,
                   help="run directory to create (a folder of runs for several subjects, layers or seeds)")
    p.add_argument("--readout-res", choices=list(READOUT_RES), default="rois_all",
                   help="which ROIs get a query: " + "; ".join(f"{k}: {with_flags(v.description)}" for k, v in READOUT_RES.items()))
    p.add_argument("--encoder-arch", choices=list(ARCHITECTURES), default="transformer",
                   help="the encoder: " + "; ".join(f"{k}: {v.description}" for k, v in ARCHITECTURES.items()))
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--features-on-device", choices=list(RESIDENCY), default="auto",
                   help="keep the training features on the GPU (auto: when they take at most "
                        f"{RESIDENT_SHARE * 100:.0f}%% of its free memory; never on the CPU); results are the same (default auto)")
    g = p.add_argument_group("optimisation (defaults: the seed's)")
    train = [f.name for f in dataclasses.fields(TrainConfig)]
    add_settings_args(g, TrainConfig, train[:train.index("seed") + 1], section="train")
    g.add_argument("--seeds", type=_int_list, default=None, metavar="SEEDS",
                   help="several seeds (0-4, 0,1): one run per seed (and layer) into OUT/layer{L}_seed{S}; "
                        "complete runs are skipped, interrupted ones resumed")
    add_settings_args(g, TrainConfig, train[train.index("seed") + 1:], section="train")
    g = p.add_argument_group("transformer decoder (defaults: the seed's)")
    shown_first = ["hidden_dim", "nheads", "dec_layers", "dim_feedforward", "dropout", "query_self_attention", "readout",
                   "attention"]  # the order of --help
    add_settings_args(g, DecoderConfig, shown_first + [f.name for f in dataclasses.fields(DecoderConfig)
                                                       if f.name not in shown_first], section="decoder")
    add_settings_args(p.add_argument_group("ridge baseline"), RidgeConfig, section="ridge")


def run_config(args: argparse.Namespace):
    """The :class:`~model.runs.configs.RunConfig` of ``tbe train``'s arguments (checked by :func:`model.training.loop.train`)."""
    from model.encoders import DecoderConfig, RidgeConfig
    from model.runs import RunConfig, TrainConfig

    args = _one_run(args)
    return RunConfig(
        data_dir=str(args.data_dir), subj=args.subj, readout_res=args.readout_res, encoder_arch=args.encoder_arch,
        backbone=backbone_config(args), decoder=config_section(DecoderConfig, "decoder", args),
        train=config_section(TrainConfig, "train", args), ridge=config_section(RidgeConfig, "ridge", args))


def _one_run(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the list options of ``tbe train`` (``--subj``, ``--enc-output-layer``) as single values."""
    args = argparse.Namespace(**vars(args))
    for name, flag in (("subj", "--subj"), ("enc_output_layer", "--enc-output-layer")):
        value = getattr(args, name, None)
        if isinstance(value, list):
            if len(value) != 1:
                raise InputError(flag, f"one value for one run, got {value} (tbe train trains a grid of them)")
            setattr(args, name, value[0])
    return args


def _train(args: argparse.Namespace) -> int:
    """One run; or a grid (several subjects, layers or seeds: :mod:`model.training.grid`)."""
    from model.training import grid_members, train, train_grid

    subjects, layers = args.subj, args.enc_output_layer
    seeds = args.seeds if args.seeds is not None else [args.seed]
    per_member = args.seeds is not None or len(layers) > 1
    args.subj, args.enc_output_layer, args.seed = subjects[0], layers[0], seeds[0]
    if len(subjects) == 1 and not per_member:
        print(train(run_config(args), args.out, args.cache_dir, resume=args.resume, device=args.device,
                    features_on_device=args.features_on_device))
        return 0
    members = grid_members(args.out, subjects, layers, seeds, per_member)
    for out in train_grid(run_config(args), members, args.cache_dir, device=args.device,
                          features_on_device=args.features_on_device):
        print(out)
    return 0


def _predict_args(p: argparse.ArgumentParser) -> None:
    add_run_args(p)
    p.add_argument("--images", type=Path, required=True, help="folder of images")
    p.add_argument("--out", type=Path, required=True, help="predictions: .nc (NetCDF) or .npz")
    add_cache_arg(p)
    add_device_arg(p)


def _predict(args: argparse.Namespace) -> int:
    from model.files import usable_directory
    from model.images import list_images
    from model.rois import HEMIS
    from model.runs import check_prediction_path, open_run, predict, save_predictions, vertex_coordinates

    check_prediction_path(args.out)
    usable_directory(args.out.parent, where=args.out)
    paths = list_images(args.images)
    run = open_run(args.run, args.data_dir, args.device)  # an ensemble: each member from its own features, then the weighted sum
    pred = predict(run.model, run.features(paths, args.cache_dir, device=str(run.device), desc="image features"))
    save_predictions(args.out, {h: pred[:, run.hemi_slice(h)] for h in HEMIS}, [p.name for p in paths],
                     vertex_coordinates(run.subject))
    print(args.out)
    return 0


def _score_args(p: argparse.ArgumentParser) -> None:
    add_run_args(p)
    p.add_argument("--test-fmri", type=Path, default=None,
                   help="folder with {lh,rh}_test_fmri.npy (default: the virtual subject's ground truth); "
                        "for a folder of subject runs, a folder holding subjXX/ folders")
    p.add_argument("--noise-ceiling", type=Path, default=None,
                   help="folder with {lh,rh}_noise_ceiling.npy (subjXX/ folders for a folder of subject runs)")
    p.add_argument("--out", type=Path, default=None,
                   help="scores as JSON (default RUN/test_scores.json; RUN may be a folder of subjXX runs)")


def _score(args: argparse.Namespace) -> int:
    """Score a run or ensemble; a folder of subject runs (``tbe train --subj``) per subject and pooled."""
    import numpy as np

    from model.files import usable_directory, write_json
    from model.runs import TEST_SCORES, expand_subjects
    from model.scoring import SCORES, pool_scores, score_lines, score_table, subject_folder

    runs = expand_subjects(args.run)
    out = args.out or args.run / TEST_SCORES
    usable_directory(out.parent, where=out)
    if len(runs) == 1:
        scores = _score_run(runs[0], args.data_dir, args.test_fmri, args.noise_ceiling)
        write_json(out, scores)
        table = score_table(scores).pivot_table(index=["measure", "group"], columns="hemi", values="value", sort=False)
        print(table.round(3).to_string(na_rep=""))
        for line in score_lines(scores):
            print(line)
        return 0
    per_subject = {}
    for run in runs:
        folder = subject_folder(int(run.name[4:]))
        fmri = args.test_fmri / folder if args.test_fmri else None
        ceiling = args.noise_ceiling / folder if args.noise_ceiling else None
        per_subject[folder] = _score_run(run, args.data_dir, fmri, ceiling)
        write_json(run / TEST_SCORES, per_subject[folder])
    pooled = pool_scores(list(per_subject.values()))
    write_json(out, {"subjects": per_subject, "pooled": pooled})
    for folder, scores in per_subject.items():
        print(f"{folder}: " + "; ".join(f"{name} {scores[name]:.2f}" for name in SCORES if name in scores)
              + f"; mean r {np.mean([scores['hemis'][h]['r']['all'] for h in scores['hemis']]):.3f}")
    print(f"pooled over the vertices of {len(per_subject)} subjects:")
    for line in score_lines(pooled):
        print(line)
    return 0


def _score_run(run: Path, data_dir: Path | None, test_fmri: Path | None, noise_ceiling: Path | None) -> dict:
    from model.rois import HEMIS
    from model.runs import PRED_TEST, check_trained_on, load_run_array, read_config
    from model.scoring import check_shapes, file_reference, score, virtual_reference
    from model.subject import load_subject

    config = read_config(run)
    subject = load_subject(data_dir or config.data_dir, config.subj)
    check_trained_on(run, config, subject)
    preds = {h: load_run_array(run, PRED_TEST, h, subject.n_vertices(h), subject.n_test) for h in HEMIS}
    ref = file_reference(test_fmri, noise_ceiling) if test_fmri else virtual_reference(subject)
    check_shapes(preds, ref, str(run))
    return score(preds, subject, ref)


def _surface_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=Path, default=None,
                   help="a run or ensemble: its subject (instead of --data-dir/--subj), and --values inside it")
    p.add_argument("--data-dir", type=Path, default=None, help="folder holding subjXX (default: the run's)")
    p.add_argument("--subj", type=int, default=None, help="subject number (default: the run's, else 1)")
    p.add_argument("--values", required=True,
                   help="per-vertex .npy files with {hemi} for lh/rh, e.g. 'RUN/{hemi}_val_corr.npy', or with --run "
                        "a file name inside it, e.g. '{hemi}_best_layer.npy' (an ensemble's preferred backbone layer)")
    p.add_argument("--out", type=Path, required=True, help="output prefix: PREFIX.png and PREFIX.{lh,rh}.func.gii")
    p.add_argument("--title", default="",
                   help="figure title and GIFTI name (default title: the --values file stem without {hemi})")
    p.add_argument("--signed", choices=["auto", "yes", "no"], default="auto",
                   help="signed values get a diverging colour map centred on 0, others a sequential one from 0 "
                        "(default auto: signed if any value is negative)")
    p.add_argument("--cmap", default=None, help="override the colour map (default: chosen by --signed)")


def _surface_source(args: argparse.Namespace) -> tuple[Path, int, str]:
    """Data folder, subject and the ``{hemi}`` file template of ``tbe surface``: from --data-dir/--subj, or from --run."""
    from model.runs import read_config

    if "{hemi}" not in args.values:
        raise InputError("--values", "must contain {hemi}, e.g. 'RUN/{hemi}_val_corr.npy'")
    if args.run is None:
        if args.data_dir is None:
            raise InputError("--data-dir", "required without --run (the folder holding subjXX)")
        return args.data_dir, args.subj or 1, args.values
    config = read_config(args.run)
    given = Path(args.values.format(hemi="lh")).exists()
    template = args.values if given else str(args.run / args.values)
    return args.data_dir or Path(config.data_dir), args.subj or config.subj, template


def _surface(args: argparse.Namespace) -> int:
    from analyses.surface import plot_surface, save_gifti, values_title
    from model.files import load_npy
    from model.rois import HEMIS
    from model.subject import load_subject

    data_dir, subj, template = _surface_source(args)
    subject = load_subject(data_dir, subj, check_images=False)
    values = {hemi: load_npy(Path(template.format(hemi=hemi)), kinds="fiub", what="per-vertex values") for hemi in HEMIS}
    png = plot_surface(values, subject, f"{args.out}.png", title=args.title or values_title(args.values), cmap=args.cmap,
                       signed={"auto": None, "yes": True, "no": False}[args.signed])
    for path in [png, *save_gifti(values, subject, args.out, name=args.title or "value")]:
        print(path)
    return 0


def _ensemble_args(p: argparse.ArgumentParser) -> None:
    from model.runs import DEFAULT_TEMPERATURE, WEIGHTINGS

    p.add_argument("--runs", type=Path, nargs="+", required=True,
                   help="complete runs of one subject with one validation split (e.g. OUT/layer*_seed* of a grid)")
    p.add_argument("--out", type=Path, required=True, help="ensemble directory to create (readable as a run)")
    p.add_argument("--weighting", choices=list(WEIGHTINGS), default="softmax",
                   help="per-vertex member weights: " + "; ".join(f"{k}: {w.description}" for k, w in WEIGHTINGS.items())
                        + " (default softmax)")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                   help=f"softmax temperature (default {DEFAULT_TEMPERATURE:g}, the original's; 0 = mean)")
    p.add_argument("--data-dir", type=Path, default=None, help="data directory (default: the runs')")


def _ensemble(args: argparse.Namespace) -> int:
    from model.runs import read_metrics
    from model.training import make_ensemble

    out = make_ensemble(args.runs, args.out, args.weighting, args.temperature, args.data_dir)
    m = read_metrics(out)
    print(f"validation r, cross-fitted: {m['val_r']['mean']:.4f} (in-sample, flattering: {m['val_r_in_sample']['mean']:.4f}; "
          f"best member {m['best_member']}: {m['best_member_val_r']:.4f})")
    print(out)
    return 0


def _submit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=Path, nargs="+", required=True,
                   help="one run or ensemble per subject (or a folder of subjXX runs)")
    p.add_argument("--out", type=Path, required=True, help="the archive to write (.zip)")
    p.add_argument("--allow-partial", action="store_true", help="write an archive without all eight subjects")


def _submit(args: argparse.Namespace) -> int:
    from model.files import usable_directory
    from model.scoring import collect, subject_folder, write_submission

    if args.out.suffix != ".zip":
        raise InputError(args.out, "the submission is a zip archive: use a .zip file name")
    usable_directory(args.out.parent, where=args.out)
    entries = collect(args.runs, args.allow_partial)
    write_submission(entries, args.out)
    for e in entries:
        print(f"{subject_folder(e.subj)}: {e.run} ({' + '.join('x'.join(map(str, e.preds[h].shape)) for h in e.preds)})")
    print(args.out)
    return 0


def _comma_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_map_args(p: argparse.ArgumentParser) -> None:
    """Options shared by ``tbe interpret`` and ``tbe check-maps``."""
    from interpret.attribution import Settings
    from interpret.pipeline import DEFAULT_BATCH, DEFAULT_METHODS, DEFAULT_ROIS

    add_run_args(p, several=True)
    p.add_argument("--split", default="val", help="val or test images (default val)")
    p.add_argument("--images", type=Path, default=None,
                   help="any folder of images instead of --split (its first --n-images, by name)")
    p.add_argument("--n-images", type=int, default=4, help="number of images of --split (or --images)")
    p.add_argument("--containing", default=None,
                   help="only images showing this category (face, body, word, object, place; virtual subjects)")
    p.add_argument("--methods", type=_comma_list, default=list(DEFAULT_METHODS),
                   help=f"comma-separated (default {','.join(DEFAULT_METHODS)}); nt_<method> adds SmoothGrad")
    p.add_argument("--rois", type=_comma_list, default=list(DEFAULT_ROIS),
                   help="comma-separated ROI names ('all' for every query; vertex:<hemi>:<index> for one vertex)")
    p.add_argument("--map-size", type=int, default=None, help="side of the stored maps in cells (default 4 per token)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                   help="images mapped at a time: maps are computed and written (or checked) batch by batch, so memory "
                        "does not grow with --n-images")
    add_cache_arg(p)
    add_device_arg(p)
    add_settings_args(p.add_argument_group("method settings"), Settings,
                      [f.name for f in dataclasses.fields(Settings) if f.name not in WRITTEN_MAPS_ONLY])


#: method settings that only say what ``tbe interpret`` writes: ``tbe check-maps`` writes no maps
WRITTEN_MAPS_ONLY = ["attention_heads"]


def map_job(args: argparse.Namespace, run):
    """The job of ``tbe interpret`` / ``tbe check-maps``, checked against the run (:func:`interpret.pipeline.map_job`)."""
    from interpret.attribution import Settings
    from interpret.pipeline import map_job as checked_job

    return checked_job(run, args.split, args.n_images, args.methods, args.rois, settings_from_args(Settings, args),
                       map_size=args.map_size, containing=args.containing,
                       backbone_attention=getattr(args, "backbone_attention", False), batch_size=args.batch_size)


def map_inputs(args: argparse.Namespace, run, job):
    """The images of ``tbe interpret`` / ``tbe check-maps`` (the first --n-images of --images DIR, else of --split),
    to be read batch by batch."""
    from interpret.pipeline import open_images, source_of
    from model.images import list_images

    if args.images is None:
        return open_images(run, job, args.cache_dir)
    if args.containing is not None:
        raise InputError("--containing", "chooses among a virtual subject's own images; not with --images")
    return source_of(run, list_images(args.images)[:args.n_images], job.map_size, args.cache_dir)


def _interpret_args(p: argparse.ArgumentParser) -> None:
    from interpret.attribution import Settings

    add_map_args(p)
    add_settings_args(p, Settings, WRITTEN_MAPS_ONLY)
    p.add_argument("--out", type=Path, required=True, help="maps as NetCDF (.nc)")
    p.add_argument("--overlays", type=int, default=2, help="overlay figures for this many images (default 2)")
    p.add_argument("--backbone-attention", action="store_true",
                   help="also map the backbone's own attention: its class token's in the last block run, per head, and "
                        "the attention rollout through every block run (costly at large inputs: off unless asked)")


def _interpret(args: argparse.Namespace) -> int:
    import xarray as xr

    from interpret.mapfile import check_maps_path
    from interpret.overlay import overlay, rois_with_maps
    from interpret.pipeline import write_maps
    from model.runs import open_runs

    check_maps_path(args.out)
    run = open_runs(args.run, args.data_dir, args.device)
    job = map_job(args, run)
    images = map_inputs(args, run, job)
    print(write_maps(run, job, images, args.out))
    shown = min(args.overlays, len(images))
    if shown < 1:
        return 0
    inputs = images.batch(0, shown)
    with xr.open_dataset(args.out) as stored:
        ds = stored.isel(image=slice(shown)).load()
    for i in range(shown):
        for hemi in ds.hemi.values:
            rois = rois_with_maps(ds, str(hemi))[:6]
            if rois:
                path = args.out.with_name(f"{args.out.stem}_overlay_{i}_{hemi}.png")
                print(overlay(ds, inputs.images[i], i, str(hemi), rois, path))
    return 0


def _check_maps_args(p: argparse.ArgumentParser) -> None:
    add_map_args(p)
    p.add_argument("--sanity-methods", type=_comma_list, default=None,
                   help="methods for the (costly) randomisation cascade (default: --methods)")
    p.add_argument("--faithfulness-rois", type=_comma_list, default=None,
                   help="ROIs for the (costly) deletion and insertion curves (default: --rois)")
    p.add_argument("--out", type=Path, required=True, help="folder for the tables (CSV) and figures (PNG)")


def _check_maps(args: argparse.Namespace) -> int:
    from interpret.pipeline import check_maps, check_settings, save_check_tables
    from model.runs import open_runs

    run = open_runs(args.run, args.data_dir, args.device)
    job = map_job(args, run)
    inputs = map_inputs(args, run, job)
    sanity = tuple(args.sanity_methods) if args.sanity_methods else None
    faithfulness = tuple(args.faithfulness_rois) if args.faithfulness_rois else None
    tables = check_maps(run, job, inputs, sanity, faithfulness_rois=faithfulness)
    settings = check_settings(job, inputs, sanity, faithfulness, run=run, folder=args.images)
    for path in save_check_tables(tables, args.out, settings):
        print(path)
    for skipped in settings["skipped"]:
        print(f"skipped {skipped}")
    if "attention" in tables:
        from interpret.attention_use import verdict

        print(verdict(tables["attention"]))
    flagged = sorted(set(tables["sanity"].loc[tables["sanity"].flagged, "method"]))
    if flagged:
        print(f"flagged by the randomisation test (maps barely depend on the decoder): {', '.join(flagged)}")
    return 0


def add_stimuli_args(p: argparse.ArgumentParser) -> None:
    """The stimulus options of every command that takes labels (selectivity, routing, claims): one definition.

    The labels format and what each option means: :mod:`analyses.stimuli` (and docs/real-data.md).
    """
    g = p.add_argument_group("stimuli (without --labels: selectivity and claims take a virtual subject's held-out "
                             "images, else the rendered localizer; routing takes --split)")
    g.add_argument("--labels", type=Path, default=None,
                   help="labels CSV: one row per image and category it shows (columns image, category, optionally "
                        "mask and partial); an image's unlisted categories are known absent (tbe labels writes one "
                        "from COCO masks)")
    g.add_argument("--images", type=Path, default=None,
                   help="folder the labels' image and mask paths are relative to (default: the labels file's folder); "
                        "tbe routing without --labels: a folder of images to use as they are (no masks)")
    g.add_argument("--categories", type=_comma_list, default=None,
                   help="comma-separated categories to analyse (rows of others are ignored; default: the file may "
                        "use face,body,place,word,object,scrambled and any other is an error)")
    g.add_argument("--partial-masks", action="store_true",
                   help="every image may show categories its rows do not list: their masks are unknown, not empty "
                        "(per image: the file's partial column)")


def stimulus_options(args: argparse.Namespace):
    """The :class:`~analyses.stimuli.StimulusOptions` of :func:`add_stimuli_args`' options."""
    from analyses.stimuli import StimulusOptions

    return StimulusOptions(args.images, args.labels, tuple(args.categories) if args.categories is not None else None,
                           args.partial_masks)


def _labels_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coco", type=Path, nargs="+", required=True, metavar="INSTANCES",
                   help="COCO instances files (NSD used instances_train2017.json and instances_val2017.json)")
    p.add_argument("--stim-info", type=Path, required=True,
                   help="NSD's nsd_stim_info_merged.csv: each NSD image's COCO id and crop box")
    add_data_args(p)
    p.add_argument("--out", type=Path, required=True,
                   help="labels file to write (.csv); the masks go into OUT_STEM_masks/ beside it")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--categories", type=_comma_list, default=None,
                       help="comma-separated COCO categories or supercategories to label, e.g. person,animal,vehicle "
                            "(default: every category)")
    which.add_argument("--supercategories", action="store_true",
                       help="label every COCO supercategory (person, animal, vehicle, food, ...)")


def _labels(args: argparse.Namespace) -> int:
    from analyses.coco_labels import write_coco_labels

    written = write_coco_labels(args.coco, args.stim_info, args.data_dir, args.subj, args.out, args.categories,
                                args.supercategories)
    shown = ", ".join(f"{k} {v}" for k, v in written.counts.items() if v)
    print(f"{written.n_images} images: {shown}")
    print(written.labels)
    return 0


def _selectivity_args(p: argparse.ArgumentParser) -> None:
    from analyses.selectivity import SelectivitySettings

    add_run_args(p, subj=True)
    add_stimuli_args(p)
    p.add_argument("--out", type=Path, required=True, help="folder for the tables (CSV), dataset (NetCDF) and figures")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutations, the bootstrap and rendered images")
    add_cache_arg(p)
    add_device_arg(p)
    add_settings_args(p.add_argument_group("statistics"), SelectivitySettings)


def _selectivity(args: argparse.Namespace) -> int:
    from analyses.selectivity import SelectivitySettings, run_selectivity

    table = run_selectivity(args.run, args.data_dir, args.out, args.subj, settings_from_args(SelectivitySettings, args),
                            stimuli=stimulus_options(args), seed=args.seed, cache_dir=args.cache_dir,
                            device=args.device)
    found = table[table["supported"] & table["preferred"]]
    for source, part in found.groupby("source", sort=False):
        print(f"{source}: " + ", ".join(f"{h}:{r} {c}" for h, r, c in zip(part.hemi, part.roi, part.category)))
    print(args.out / "selectivity.csv")
    return 0


def _routing_args(p: argparse.ArgumentParser) -> None:
    from interpret.routing import RoutingSettings

    add_run_args(p, several=True)
    p.add_argument("--split", choices=("val", "test"), default=None,
                   help="the run's validation or test images, instead of --labels or --images (default val; a virtual "
                        "subject's masks come with them)")
    add_stimuli_args(p)
    p.add_argument("--n-images", type=int, default=None, help="use the first N images (default all)")
    p.add_argument("--out", type=Path, required=True, help="folder for routing.csv and routing.png")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap, the shift test and the mask shuffles")
    add_cache_arg(p)
    add_device_arg(p)
    add_settings_args(p.add_argument_group("statistics"), RoutingSettings)


def _routing(args: argparse.Namespace) -> int:
    from analyses.routing import run_routing
    from interpret.routing import RoutingSettings

    table = run_routing(args.run, args.data_dir, args.out, settings_from_args(RoutingSettings, args),
                        stimuli=stimulus_options(args), split=args.split, n_images=args.n_images, seed=args.seed,
                        cache_dir=args.cache_dir, device=args.device)
    for label, part in table.groupby("routing", sort=False):
        print(f"{label}: " + ", ".join(f"{h}:{r}" for h, r in zip(part.hemi, part.roi)))
    print(args.out / "routing.csv")
    return 0


def _claims_args(p: argparse.ArgumentParser) -> None:
    from analyses.claims import ClaimSettings

    add_run_args(p)
    p.add_argument("--claims", type=Path, required=True,
                   help="text file, one claim per line, e.g. 'FFA-1 prefers face', 'lh V1v attends upper-right', "
                        "'EBA routes by content' (grammar: analyses/claims.py)")
    add_stimuli_args(p)
    p.add_argument("--out", type=Path, required=True, help="folder for claims.csv")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutations and the bootstrap")
    add_cache_arg(p)
    add_device_arg(p)
    add_settings_args(p.add_argument_group("statistics"), ClaimSettings)


def _claims(args: argparse.Namespace) -> int:
    from analyses.claims import ClaimSettings, run_claims

    table = run_claims(args.run, args.data_dir, args.claims, args.out, settings_from_args(ClaimSettings, args),
                       stimuli=stimulus_options(args), seed=args.seed, cache_dir=args.cache_dir, device=args.device)
    for row in table.itertuples():
        print(f"{row.verdict:>13}  {row.hemi}  {row.claim}  (effect {row.effect:.3g}, p_fdr {row.p_fdr:.3g})")
    print(args.out / "claims.csv")
    return 0


def _localizer_args(p: argparse.ArgumentParser) -> None:
    from analyses.localizer import ALPHA

    add_run_args(p, subj=True)
    p.add_argument("--out", type=Path, required=True, help="folder for localizer.csv, the t-maps (NetCDF) and surface/")
    p.add_argument("--n-per-category", type=int, default=48, help="localizer images per category (default 48)")
    p.add_argument("--alpha", type=float, default=ALPHA, help=f"FDR level of the thresholded maps (default {ALPHA})")
    p.add_argument("--seed", type=int, default=0, help="seed of the rendered localizer images")
    p.add_argument("--no-surface", action="store_true", help="skip the surface figures (GIFTI files are still written)")
    add_cache_arg(p)
    add_device_arg(p)


def _localizer(args: argparse.Namespace) -> int:
    from analyses.localizer import run_localizer

    table = run_localizer(args.run, args.data_dir, args.out, subj=args.subj, seed=args.seed, cache_dir=args.cache_dir,
                          n_per_category=args.n_per_category, alpha=args.alpha, surface=not args.no_surface,
                          device=args.device)
    shown = table[table["reference"] != ""].pivot_table(index=["contrast", "reference"], columns="hemi",
                                                        values=["dice", "dice_ceiling", "auc"])
    print(shown.round(3).to_string())
    print(args.out / "localizer.csv")
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo"), help="working folder (default ./demo)")
    p.add_argument("--n-train", type=int, default=1000, help="training images of the demo's virtual subject")
    p.add_argument("--n-test", type=int, default=200, help="test images of the demo's virtual subject")
    p.add_argument("--seed", type=int, default=0, help="seed of the virtual subject and the training")
    add_device_arg(p)


def _demo(args: argparse.Namespace) -> int:
    from analyses.demo import run_demo

    run_demo(args.out, n_train=args.n_train, n_test=args.n_test, seed=args.seed, device=args.device)
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    from analyses.report_notebooks import NOTEBOOKS

    add_run_args(p, required=False)
    p.add_argument("--out", type=Path, help="report folder, e.g. reports/NAME (index.html and one HTML per notebook)")
    p.add_argument("--notebooks", type=_comma_list, default=None,
                   help=f"comma-separated subset of {','.join(NOTEBOOKS)} (default: all)")
    p.add_argument("--ridge-run", type=Path, default=None, help="baseline run to compare with (encoding accuracy)")
    add_cache_arg(p)
    add_device_arg(p)
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"), default=[],
                   help="notebook parameter (YAML value: 3, 0.5, true, '[V1v, FFA-1]'); "
                        "NOTEBOOK.NAME sets it in one notebook only; repeatable")
    p.add_argument("--timeout", type=float, default=None, help="seconds a single notebook cell may run (default: no limit)")
    p.add_argument("--list", action="store_true", help="list every notebook's parameters and defaults, and exit")
    p.add_argument("--show-code", action="store_true",
                   help="show the notebooks' code cells in the HTML (default: hidden; a reader sees text, tables, "
                        "figures and one table of the settings)")


def _report(args: argparse.Namespace) -> int:
    from analyses.report import make_report
    from analyses.report_notebooks import describe_parameters, params_from_pairs

    if args.list:
        print(describe_parameters())
        return 0
    for option, value in (("--run", args.run), ("--out", args.out)):
        if value is None:
            raise InputError(option, "required (see tbe report --help)")
    report = make_report(args.run, args.data_dir, args.out, params_from_pairs(args.parameter), args.notebooks,
                         args.ridge_run, args.cache_dir, timeout=args.timeout, show_code=args.show_code,
                         device=args.device)
    print(report.index)
    if report.failed:
        print(f"error: notebooks failed: {', '.join(report.failed)} (see {report.index})", file=sys.stderr)
        return 1
    return 0


def _env_args(p: argparse.ArgumentParser) -> None:
    from model.runs import FORMATS

    p.add_argument("--run", type=Path, default=None, help="a run directory (its manifest.json)")
    p.add_argument("--report", type=Path, default=None, help="a report folder (its manifest.json)")
    p.add_argument("--format", choices=list(FORMATS), default="pip",
                   help="conda: an environment.yml for conda-forge; pip: a requirements.txt (default pip)")
    p.add_argument("--out", type=Path, default=None, help="file to write (default: print it)")


def _env(args: argparse.Namespace) -> int:
    from model.runs import FORMATS, read_manifest, write_environment

    if (args.run is None) == (args.report is None):
        raise InputError("--run/--report", "give exactly one of them: the run or the report whose environment to write")
    source = args.run if args.run is not None else args.report
    manifest = read_manifest(source)
    if args.out is None:
        print(FORMATS[args.format][0](manifest, str(source)), end="")
        return 0
    print(write_environment(manifest, args.format, args.out, str(source)))
    return 0


Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
COMMANDS: dict[str, Command] = {
    "synth": ("write a virtual subject in the Algonauts layout", _synth_args, _synth),
    "features": ("compute (or find in the cache) backbone features of a subject's images", _features_args, _features),
    "train": ("train an encoder (or fit a baseline) into a run directory", add_train_args, _train),
    "predict": ("predict responses to any folder of images with a trained run", _predict_args, _predict),
    "ensemble": ("combine runs of one subject per vertex by their validation r (a run directory itself)",
                 _ensemble_args, _ensemble),
    "score": ("score a run's test predictions: the challenge score and ours (virtual subject ground truth or your files)",
              _score_args, _score),
    "submit": ("write the Algonauts 2023 submission archive (subj01..subj08 test predictions, float32)",
               _submit_args, _submit),
    "surface": ("put per-vertex values on fsaverage: a figure and GIFTI files", _surface_args, _surface),
    "interpret": ("attention and attribution maps of a trained run (NetCDF + overlays)", _interpret_args, _interpret),
    "check-maps": ("sanity, localization and faithfulness checks of the maps", _check_maps_args, _check_maps),
    "labels": ("a labels file of a subject's NSD images with per-category masks, from COCO annotations cropped as NSD "
               "cropped them", _labels_args, _labels),
    "selectivity": ("ROI selectivity of predicted (and measured) responses and of attention, with permutation statistics",
                    _selectivity_args, _selectivity),
    "routing": ("how each ROI query routes the image: location and content indices, tests and labels",
                _routing_args, _routing),
    "claims": ("test hypotheses written as sentences ('FFA-1 prefers face') with calibrated statistics",
               _claims_args, _claims),
    "localizer": ("in-silico fLoc localizer: per-vertex contrast t-maps, predicted ROIs, Dice/AUC against the ROI masks",
                  _localizer_args, _localizer),
    "demo": ("run the whole suite on a virtual subject", _demo_args, _demo),
    "report": ("execute the report notebooks on a run and render them to HTML", _report_args, _report),
    "env": ("write the exact environment (conda or pip) of a run or report, from its manifest.json", _env_args, _env),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tbe", description="Transformer encoders of human visual cortex")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--traceback", action="store_true",
                        help=f"print the Python traceback of an internal error (or set {TRACEBACK_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        show_defaults(p)
        p.set_defaults(handler=run)
    return parser


def show_defaults(p: argparse.ArgumentParser) -> None:
    """Append ``(default X)`` to every option's help that does not state its default already.

    argparse lists an option's choices itself (``{a,b,c}``); flags
    (``store_true``) default to off and say so by being flags.
    """
    for action in p._actions:
        if action.help in (None, argparse.SUPPRESS) or action.default in (None, False, argparse.SUPPRESS):
            continue
        if "default" not in action.help.lower():
            default = ",".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else "%(default)s"
            action.help += f" (default {default})" if default else " (default: none)"


def error_line(exc: BaseException) -> str:
    """The one line an error is reported with (without the ``error: `` prefix)."""
    from model.files import describe_os_error

    if isinstance(exc, OptionError):
        return f"{flag_of(exc.parameter)}: {with_flags(exc.problem, configuration=True)}"
    if isinstance(exc, InputError):
        return f"{exc.where}: {with_flags(exc.problem)}"
    if isinstance(exc, OSError):
        where, problem = describe_os_error(exc)
        return f"{where}: {problem}"
    if isinstance(exc, MemoryError):
        return "out of memory (try a smaller --batch-size, or fewer images)"
    text = " ".join(str(exc).split())[:300]
    return (f"internal error: {type(exc).__name__}: {text} (a bug: rerun with --traceback or {TRACEBACK_ENV}=1 "
            "to see where, and please report it)")


def main(argv: list[str] | None = None) -> int:
    from model.runs import record_command

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="tbe: %(message)s", stream=sys.stderr)
    record_command(["tbe", *(sys.argv[1:] if argv is None else argv)])  # for manifests written by this command
    try:
        if getattr(args, "device", None) is not None:  # every command that computes: refused before any work
            args.device = str(pick_device(args.device))
        return args.handler(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every error is one line and exit status 2
        expected = isinstance(exc, (InputError, OSError, MemoryError))
        if not expected and (args.traceback or os.environ.get(TRACEBACK_ENV, "0") not in ("", "0")):
            traceback.print_exc()
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2
    finally:
        record_command(None)


if __name__ == "__main__":
    sys.exit(main())
