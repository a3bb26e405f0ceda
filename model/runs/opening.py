"""Opening a run directory: a run, an ensemble of runs, or several runs as one ensemble in memory.

:func:`open_run` opens whatever a run directory holds (a run through
:func:`model.runs.run.open_single_run`, an ensemble through
:func:`open_ensemble`, every member checked); :func:`open_runs` opens several
runs as one equal-weight ensemble, for the attention tools.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..files import load_npy
from ..rois import HEMIS
from ..subject import Subject
from .configs import EnsembleConfig, read_ensemble_config
from .ensembles import EnsembleEncoder, EnsembleRun, check_members, feature_groups
from .layout import ENSEMBLE_WEIGHTS, METRICS, is_ensemble
from .run import Run, check_trained_on, open_single_run


def open_run(run: str | Path, data_dir: str | Path | None = None, device: str | torch.device = "cpu") -> Run:
    """Rebuild the encoder of a complete run or ensemble; ``data_dir`` defaults to the one it was trained on.

    A run opens as :func:`~model.runs.run.open_single_run` opens it (placed on
    ``device``, refused with one line naming the file when it does not fit its
    data); an ensemble directory as a :class:`~model.runs.ensembles.EnsembleRun`
    (every member opened and checked).
    """
    run = Path(run)
    if is_ensemble(run):
        return open_ensemble(run, data_dir, device)
    return open_single_run(run, data_dir, device)


def open_ensemble(ens: str | Path, data_dir: str | Path | None = None, device: str | torch.device = "cpu") -> EnsembleRun:
    """Open an ensemble directory and every member (each checked as :func:`~model.runs.opening.open_run` checks a run), on ``device``."""
    ens = Path(ens)
    config = read_ensemble_config(ens)
    if not (ens / METRICS).is_file():
        raise InputError(ens, "incomplete ensemble (no metrics.json); make it again with tbe ensemble")
    where = data_dir if data_dir is not None else config.data_dir
    members = []
    for path in config.members:
        if not Path(path).is_dir():
            raise InputError(path, f"missing: a member of the ensemble {ens} (ensemble.json lists it)")
        members.append(open_run(path, where, device))
    subject = members[0].subject
    for m in members[1:]:
        if m.config.subj != config.subj or m.val_indices.shape != members[0].val_indices.shape \
                or not np.array_equal(m.val_indices, members[0].val_indices):
            raise InputError(m.path, f"no longer fits the ensemble {ens} (other subject or validation split)")
    check_trained_on(ens, config, subject)
    n_total = sum(subject.n_vertices(h) for h in HEMIS)
    weights = load_npy(ens / ENSEMBLE_WEIGHTS, ndim=2, kinds="f", shape=(len(members), n_total), what="member weights")
    shared = all(m.queries.names == members[0].queries.names for m in members)
    queries = members[0].queries if shared else _roi_queries(subject)
    firsts, channels = feature_groups([m.config for m in members])
    model = EnsembleEncoder([m.model for m in members], weights, channels,
                            members[0].queries.memberships if shared else None).to(members[0].device).eval()
    return EnsembleRun(ens, config, subject, queries, model, members[0].device, members=members, groups=firsts)


def open_runs(runs: str | Path | Sequence[str | Path], data_dir: str | Path | None = None,
              device: str | torch.device = "cpu") -> Run:
    """One run (or ensemble) as :func:`~model.runs.opening.open_run` opens it; several runs as one equal-weight ensemble.

    Several runs are opened as an :class:`EnsembleRun` held in memory
    (nothing is written): every vertex weighs each member ``1/M``, so its
    predictions are the members' mean and the attention map of each ROI
    query is the mean of the members' head-averaged last-layer maps (see
    :class:`EnsembleEncoder`). This is what ``tbe interpret --run A B``
    and the other attention tools open. The runs must be ones
    :func:`check_members` accepts (one subject and its data, one validation
    split, none an ensemble), with the same ROI queries and one token grid
    (else their maps cannot be averaged); otherwise one error names the run.
    """
    if isinstance(runs, (str, Path)) or len(runs) == 1:
        return open_run(runs if isinstance(runs, (str, Path)) else runs[0], data_dir, device)
    subject, listed, _ = check_members(runs, data_dir)
    first = listed[0]
    for m in listed[1:]:
        if tuple(m.config.grid) != tuple(first.config.grid):
            raise InputError(m.path, f"gives a {m.config.grid[0]}x{m.config.grid[1]} token grid, {first.path} a "
                                     f"{first.config.grid[0]}x{first.config.grid[1]} one: attention maps on other grids "
                                     "cannot be averaged")
        if list(m.config.queries) != list(first.config.queries):
            raise InputError(m.path, f"has other ROI queries ({m.config.readout_res}) than {first.path} "
                                     f"({first.config.readout_res}): their attention maps cannot be averaged")
    members = [open_run(m.path, subject.root.parent, device) for m in listed]
    n_total = sum(subject.n_vertices(h) for h in HEMIS)
    weights = np.full((len(members), n_total), 1.0 / len(members))
    firsts, channels = feature_groups([m.config for m in members])
    model = EnsembleEncoder([m.model for m in members], weights, channels,
                            members[0].queries.memberships).to(members[0].device).eval()
    config = EnsembleConfig([str(m.path) for m in listed], "mean", 0.0, str(subject.root.parent), subject.subj,
                            {h: subject.n_vertices(h) for h in HEMIS}, subject.fingerprint(), [m.label for m in listed])
    path = Path(" + ".join(str(m.path) for m in listed))  # a name for the maps' attributes, not a directory
    return EnsembleRun(path, config, subject, members[0].queries, model, members[0].device, members=members,
                       groups=firsts)


def _roi_queries(subject: Subject):
    from ..encoders import build_queries

    return build_queries(subject, "rois_all")
