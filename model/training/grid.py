"""Grids of training runs: several subjects, backbone layers and seeds from one ``tbe train`` command.

    tbe train --subj 1-8 --enc-output-layer 1,3,5,7 --seeds 0-4 --out DIR ...

trains every combination into ``DIR/subj01/layer1_seed0/`` ... : a folder per
subject when several subjects are given (``DIR/subjXX``), a folder per member
(``layer{L}_seed{S}``) when ``--seeds`` or several layers are given. Every
other option is the same for all members. It is ``tbe train`` itself rather
than a separate ``tbe sweep`` because a member is nothing but a ``tbe train``
run with one value of each list: the same options, checks and run
directories, ``main.py`` and ``torchrun`` unchanged (under ``torchrun`` every
process walks the grid in the same order and each member is one DDP job).

* **Features once per layer**: members are trained subject by subject and
  layer by layer, so the first member of a layer extracts its features into
  the cache and the others read them.
* **Resumable**: a complete member (``metrics.json``) is skipped, after
  checking it was trained with the settings and data asked for; an
  interrupted one (a checkpoint) is resumed; one stopped before its first
  checkpoint starts over.
* **One split per subject**: ``--split-seed`` is shared, so a subject's
  members have the same validation images and can be ensembled
  (``tbe ensemble``, :mod:`model.runs.ensembles`).
* **Progress**: one line per member (:func:`model.progress.progress`), next to
  each member's own epoch progress.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import InputError
from ..progress import progress
from ..runs import CHECKPOINT, CONFIG, METRICS, RunConfig, read_config

log = logging.getLogger(__name__)

#: the settings a complete member must have been trained with to be skipped
SKIP_IF_EQUAL = ("subj", "readout_res", "encoder_arch", "backbone", "decoder", "train", "ridge")


def int_list(text: str) -> list[int]:
    """``'1,3,5-7'`` -> ``[1, 3, 5, 6, 7]`` (a single number, a comma-separated list, ranges ``a-b``).

    Negative numbers are single values (``-1``), not ranges. Raises
    ``ValueError`` for anything else (argparse turns it into a usage error).
    """
    values: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            values.append(int(part))
            continue
        except ValueError:
            pass
        low, sep, high = part.partition("-")
        if not sep or not low.strip().isdigit() or not high.strip().isdigit() or int(low) > int(high):
            raise ValueError(f"{part!r} is neither a whole number nor a range a-b with a <= b")
        values.extend(range(int(low), int(high) + 1))
    if not values:
        raise ValueError("empty list")
    if len(set(values)) != len(values):
        raise ValueError(f"{text!r} lists a value twice")
    return values


@dataclass(frozen=True)
class GridMember:
    """One run of a grid: its subject, backbone layer, seed and run directory."""

    subj: int
    layer: int
    seed: int
    out: Path

    @property
    def label(self) -> str:
        return f"subj{self.subj:02d}/layer{self.layer}_seed{self.seed}"


def grid_members(out: str | Path, subjects: Sequence[int], layers: Sequence[int], seeds: Sequence[int],
                 per_member: bool) -> list[GridMember]:
    """The grid's runs in training order (subject, then layer, then seed) and their directories under ``out``."""
    out = Path(out)
    members = []
    for subj in subjects:
        base = out / f"subj{subj:02d}" if len(subjects) > 1 else out
        for layer in layers:
            for seed in seeds:
                members.append(GridMember(subj, layer, seed, base / f"layer{layer}_seed{seed}" if per_member else base))
    return members


def member_config(base: RunConfig, member: GridMember) -> RunConfig:
    """``base`` with the member's subject, backbone layer and training seed."""
    return dataclasses.replace(base, subj=member.subj, backbone=dataclasses.replace(base.backbone, layer=member.layer),
                               train=dataclasses.replace(base.train, seed=member.seed))


def member_state(path: Path) -> str:
    """``'complete'``, ``'interrupted'`` (a checkpoint to resume from) or ``'new'`` (nothing, or started over)."""
    if (path / METRICS).is_file() and (path / CONFIG).is_file():
        return "complete"
    if (path / CHECKPOINT).is_file() and (path / CONFIG).is_file():
        return "interrupted"
    return "new"


def check_complete(path: Path, config: RunConfig, fingerprint: dict[str, str]) -> None:
    """A complete member may be skipped only if it was trained as asked, on this data; else one error naming it."""
    done = read_config(path)
    wanted = dataclasses.replace(config, decoder=config.decoder.resolved()).to_dict()  # as training records it
    found = done.to_dict()
    diff = [k for k in SKIP_IF_EQUAL if wanted[k] != found[k]]
    if fingerprint and done.data_fingerprint and fingerprint != done.data_fingerprint:
        diff.append("data")
    if diff:
        raise InputError(path / CONFIG, f"holds a complete run trained with other settings ({', '.join(diff)} differ); "
                                        "choose another `out`, or remove this run to train it again")


def train_grid(base: RunConfig, members: Sequence[GridMember], cache_dir: str | Path | None = None,
               device: str = "auto", features_on_device: str = "auto") -> list[Path]:
    """Train every member not yet complete (see the module docstring); returns the members' run directories.

    ``device`` and ``features_on_device`` are passed to :func:`model.training.loop.train` for each member.
    """
    from ..subject import load_subject
    from .loop import train

    fingerprints: dict[int, dict[str, str]] = {}
    main = int(os.environ.get("RANK", "0")) == 0
    done = []
    bar = progress(list(members), desc="grid", unit="run", disable=not main)
    for number, member in enumerate(bar, start=1):
        bar.set_postfix(run=member.label)
        log.info("grid run %d of %d: %s", number, len(members), member.out)
        config = member_config(base, member)
        state = member_state(member.out)
        if state == "complete":
            if member.subj not in fingerprints:
                fingerprints[member.subj] = load_subject(base.data_dir, member.subj).fingerprint()
            check_complete(member.out, config, fingerprints[member.subj])
            log.info("%s: complete, skipped", member.out)
        else:
            if state == "interrupted":
                log.info("%s: interrupted, resuming", member.out)
            train(config, member.out, cache_dir, resume=state == "interrupted", device=device,
                  features_on_device=features_on_device)
        done.append(member.out)
    bar.close()
    return done
