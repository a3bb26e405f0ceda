"""Making an ensemble of runs (``tbe ensemble``): members checked, weights fitted, the ensemble directory written.

What an ensemble is, its directory and how it reads as a run:
:mod:`model.runs.ensembles`; its weights and cross-fitted validation r:
:mod:`model.runs.ensemble_weights`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..files import atomic_directory, digest_json, load_npy, save_npy, usable_directory, write_json
from ..metrics import roi_summary
from ..rois import HEMIS
from ..runs import (BEST_LAYER, BEST_MEMBER, DEFAULT_TEMPERATURE, ENSEMBLE, ENSEMBLE_WEIGHTS, HALVES_SEED, MANIFEST,
                    METRICS, PRED_TEST, VAL_CORR, VAL_CORR_IN_SAMPLE, VAL_INDICES, VAL_PRED, EnsembleConfig, Member,
                    check_members, check_weighting, combine, cross_fit, data_fingerprint, software_manifest,
                    validation_halves)
from .loop import Targets, validation_means

log = logging.getLogger(__name__)

#: what metrics.json says about its two validation r
VAL_R_NOTE = ("val_r is cross-fitted: member weights chosen on one half of the validation images, r measured on the "
              "other half, both ways, averaged per vertex. val_r_in_sample chooses the weights on the very images it "
              "scores them on, which flatters the ensemble.")


def _member_arrays(members: list[Member], template: str, hemi: str, n_rows: int, n_vertices: int, what: str
                   ) -> list[np.ndarray]:
    out = []
    for m in members:
        path = m.path / template.format(hemi=hemi)
        if template == VAL_PRED and not path.is_file():
            raise InputError(path, "missing validation predictions (runs write them since ensembles exist); "
                                   "train the run again to use it in an ensemble")
        arr = load_npy(path, ndim=2, kinds="f", shape=(n_rows, n_vertices), mmap=True, what=what)
        out.append(arr)
    return out


def make_ensemble(runs: Sequence[str | Path], out: str | Path, weighting: str = "softmax",
                  temperature: float = DEFAULT_TEMPERATURE, data_dir: str | Path | None = None) -> Path:
    """Combine complete runs into the ensemble directory ``out`` (written atomically; see :mod:`model.runs.ensembles`).

    Every check (weighting, members, data, arrays) comes before anything is
    written; ``out`` must not exist or be empty.
    """
    check_weighting(weighting, temperature)
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(out, "exists and is not empty; choose another `out`")
    usable_directory(out.parent, where=out)
    subject, members, val_idx = check_members(runs, data_dir)
    targets = Targets.of_subject(subject)
    true = targets.rows(val_idx)
    halves = validation_halves(len(val_idx))
    bounds = [slice(0, subject.n_vertices("lh")), slice(subject.n_vertices("lh"), true.shape[1])]
    results, test = {}, {}
    for hemi, cols in zip(HEMIS, bounds):
        v = subject.n_vertices(hemi)
        val_preds = _member_arrays(members, VAL_PRED, hemi, len(val_idx), v, "validation predictions")
        test_preds = _member_arrays(members, PRED_TEST, hemi, subject.n_test, v, "test predictions")
        results[hemi] = cross_fit(val_preds, true[:, cols], weighting, temperature, halves)
        test[hemi] = combine(test_preds, results[hemi].weights).astype(np.float32)
        if not np.isfinite(test[hemi]).all():
            bad = next(m for m, p in zip(members, test_preds) if not np.isfinite(np.asarray(p)).all())
            raise InputError(bad.path / PRED_TEST.format(hemi=hemi), "holds NaN or infinite predictions")
    weights = np.concatenate([results[h].weights for h in HEMIS], axis=1)
    cross = np.concatenate([results[h].cross_fitted for h in HEMIS])
    in_sample = np.concatenate([results[h].in_sample for h in HEMIS])
    members_r = np.concatenate([results[h].members_r for h in HEMIS], axis=1)
    for r in (cross, in_sample, members_r):
        r[..., ~targets.valid] = np.nan
    best = np.argmax(np.where(np.isfinite(members_r), members_r, -np.inf), axis=0)
    layers = [m.config.backbone.layer for m in members]
    config = EnsembleConfig([str(m.path) for m in members], weighting, float(temperature), str(subject.root.resolve().parent),
                            subject.subj, {h: subject.n_vertices(h) for h in HEMIS}, subject.fingerprint(),
                            [m.label for m in members])
    member_means = [validation_means(r, targets.valid, bounds) for r in members_r]
    cross_means = validation_means(cross, targets.valid, bounds)
    best_member = int(np.argmax([mm["mean"] for mm in member_means]))
    metrics = {
        "kind": "ensemble", "encoder_arch": "ensemble", "readout_res": _common(m.config.readout_res for m in members),
        "backbone": f"ensemble of {len(members)} runs ({weighting}"
                    + (f", temperature {temperature:g}" if weighting == "softmax" else "") + "): "
                    + "; ".join(m.label for m in members),
        "weighting": weighting, "temperature": float(temperature), "n_members": len(members),
        "n_train": int(subject.n_train - len(val_idx)), "n_val": int(len(val_idx)), "n_test": int(subject.n_test),
        "best_epoch": None, "history": [],
        "val_r": cross_means, "val_r_cross_fitted": cross_means,
        "val_r_in_sample": validation_means(in_sample, targets.valid, bounds),
        "members": [{"path": str(m.path), "label": m.label, "val_r": mm} for m, mm in zip(members, member_means)],
        "best_member": members[best_member].label, "best_member_val_r": member_means[best_member]["mean"],
        "val_r_gain_over_best_member": cross_means["mean"] - member_means[best_member]["mean"],
        "halves": {"seed": HALVES_SEED, "sizes": [len(halves[0]), len(halves[1])]},
        "note": VAL_R_NOTE,
        "val_roi_summary": roi_summary({h: cross[s] for h, s in zip(HEMIS, bounds)}, subject.labels,
                                       subject.mappings, name="val_r").to_dict(orient="records"),
    }
    with atomic_directory(out, overwrite=out.exists()) as tmp:
        write_json(tmp / ENSEMBLE, config.to_dict())
        save_npy(tmp / ENSEMBLE_WEIGHTS, weights)
        save_npy(tmp / VAL_INDICES, val_idx)
        for hemi, s in zip(HEMIS, bounds):
            save_npy(tmp / VAL_CORR.format(hemi=hemi), cross[s].astype(np.float32))
            save_npy(tmp / VAL_CORR_IN_SAMPLE.format(hemi=hemi), in_sample[s].astype(np.float32))
            save_npy(tmp / PRED_TEST.format(hemi=hemi), test[hemi])
            save_npy(tmp / BEST_MEMBER.format(hemi=hemi), best[s].astype(np.int16))
            if len(set(layers)) > 1:
                save_npy(tmp / BEST_LAYER.format(hemi=hemi), np.asarray(layers)[best[s]].astype(np.int16))
        write_json(tmp / MANIFEST, ensemble_manifest(config, members))
        write_json(tmp / METRICS, metrics)
    log.info("ensemble of %d runs: cross-fitted validation r %.4f (in-sample %.4f; best member %s %.4f)",
             len(members), cross_means["mean"], metrics["val_r_in_sample"]["mean"], metrics["best_member"],
             metrics["best_member_val_r"])
    return out


def _common(values) -> str:
    values = set(values)
    return values.pop() if len(values) == 1 else "mixed"


def ensemble_manifest(config: EnsembleConfig, members: list[Member]) -> dict:
    """What made the ensemble: this process's environment, the data, and each member's own manifest's digest."""
    manifest = software_manifest("ensemble")
    listed = []
    for m in members:
        entry: dict = {"path": str(m.path), "manifest": None}
        try:
            own = json.loads((m.path / MANIFEST).read_text())
            entry.update({"manifest": MANIFEST, "manifest_digest": digest_json(own), "seeds": own.get("seeds"),
                          "backbone": own.get("backbone"), "feature_cache": own.get("feature_cache")})
        except (OSError, ValueError):
            entry["note"] = "no readable manifest.json"
        listed.append(entry)
    manifest.update({"data": data_fingerprint(config.data_dir, config.subj), "members": listed,
                     "ensemble": {"weighting": config.weighting, "temperature": config.temperature}})
    return manifest
