"""Training an encoder from the feature cache into a run directory.

AdamW with the seed's defaults (StepLR gamma 0.5, gradient clipping 0.1),
loss = MSE(lh) + MSE(rh), model selection on the validation mean r (the mean
over hemispheres of the mean over vertices). Deterministic for a seed on the
CPU: each epoch's data order and dropout draw from seeds derived from
(seed, epoch), so ``resume`` after an interruption ends exactly where an
uninterrupted run would. Under ``torchrun`` each process takes a share of
every batch (DistributedDataParallel; gloo on CPU, NCCL on CUDA) and the
loss is weighted so the gradient equals the single-process one.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from .architectures import architecture, build_encoder
from .device import autocast, pick_device
from .errors import InputError
from .features import FeatureSet, subject_features
from .files import atomic_path, read_rows, save_npy, write_json
from .manifest import write_run_manifest
from .metrics import pearson_r, roi_summary
from .progress import activity, progress
from .readout import build_queries
from .rois import HEMIS
from .run import (CHECKPOINT, METRICS, VAL_INDICES, WEIGHTS, RunConfig, iter_batches, load_weights,
                  predict, read_config, save_weights, write_config)
from .subject import Subject, load_subject, train_val_split

log = logging.getLogger(__name__)

STATS_IMAGES = 512  # training images used for the token standardisation statistics


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------

@dataclass
class Processes:
    """This process's place among the ``torchrun`` workers (one process: rank 0 of 1)."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_processes(device: str = "auto") -> Processes:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes(0, 1, pick_device(device))
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    return Processes(dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local}" if cuda else "cpu"))


# --------------------------------------------------------------------------
# Targets: memory-mapped rows, both hemispheres side by side
# --------------------------------------------------------------------------

class Targets:
    """Rows of the training fMRI, read on demand from the memory maps (never copied whole)."""

    def __init__(self, subject: Subject):
        self.fmri = [subject.fmri[h] for h in HEMIS]
        valid = []
        for hemi in HEMIS:
            ok = np.ones(subject.n_vertices(hemi), bool)
            ok[subject.nan_vertices.get(hemi, [])] = False
            valid.append(ok)
        self.valid = np.concatenate(valid)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """float32 rows ``idx`` of both hemispheres side by side, NaN (all-NaN vertices) as 0."""
        order = np.argsort(idx)  # sequential reads from the memory maps
        out = np.empty((len(idx), sum(f.shape[1] for f in self.fmri)), np.float32)
        start = 0
        for f in self.fmri:
            out[order, start:start + f.shape[1]] = read_rows(f, idx[order])
            start += f.shape[1]
        return np.nan_to_num(out, copy=False, nan=0.0)


def hemisphere_mse(pred: torch.Tensor, true: torch.Tensor, valid: torch.Tensor, bounds: list[slice]) -> torch.Tensor:
    """Per-image MSE(lh) + MSE(rh) over valid vertices: (B,)."""
    sq = (pred.float() - true) ** 2 * valid
    return sum(sq[:, s].sum(1) / valid[s].sum().clamp_min(1) for s in bounds)


def validation_r(pred: np.ndarray, true: np.ndarray, valid: np.ndarray, bounds: list[slice]) -> tuple[np.ndarray, dict]:
    """Per-vertex r and the selection score: mean over hemispheres of the mean r (NaN counted as 0)."""
    r = pearson_r(pred, true)
    r[~valid] = np.nan
    means = {h: float(np.nanmean(np.nan_to_num(r[s][valid[s]], nan=0.0))) for h, s in zip(HEMIS, bounds)}
    means["mean"] = float(np.mean([means[h] for h in HEMIS]))
    return r, means


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


# --------------------------------------------------------------------------
# Checkpoints for --resume
# --------------------------------------------------------------------------

def save_checkpoint(path: Path, model, optimizer, scheduler, state: dict) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for index, param_state in opt["state"].items():
        for name, value in param_state.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    meta = {"state": json.dumps(state), "param_groups": json.dumps(opt["param_groups"]),
            "scheduler": json.dumps(scheduler.state_dict())}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    from safetensors import safe_open

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
    except Exception as exc:  # noqa: BLE001
        raise InputError(path, f"corrupted checkpoint ({type(exc).__name__}); remove it to start over") from None
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    scheduler.load_state_dict(json.loads(meta["scheduler"]))
    return json.loads(meta["state"])


# --------------------------------------------------------------------------
# The training job
# --------------------------------------------------------------------------

def train(config: RunConfig, out: str | Path, cache_dir: str | Path | None = None, resume: bool = False,
          device: str = "auto", stop_after_epoch: int | None = None) -> Path:
    """Train (or fit) the encoder described by ``config`` into the run directory ``out``.

    ``stop_after_epoch`` ends the job after that many epochs as if it had been
    interrupted (used to test ``resume``).
    """
    procs = setup_processes(device)
    out = Path(out)
    arch = architecture(config.encoder_arch)
    config.data_dir = str(Path(config.data_dir).resolve())  # a run must open from any working directory
    subject = load_subject(config.data_dir, config.subj)
    queries = build_queries(subject, config.readout_res)
    config.queries, config.n_vertices = queries.names, dict(queries.n_vertices)
    _prepare_directory(out, config, resume, procs)

    if procs.main:
        feats = subject_features(config.data_dir, config.subj, config.backbone, cache_dir, device=str(procs.device))
    procs.barrier()
    if not procs.main:
        feats = subject_features(config.data_dir, config.subj, config.backbone, cache_dir, device=str(procs.device))
    config.feature_dim = int(feats["train"].features.shape[-1])
    config.grid = tuple(feats["train"].grid)
    if procs.main:
        write_config(out, config)
        write_run_manifest(out, config, feats, resume=resume)

    train_idx, val_idx = train_val_split(subject.n_train, config.train.val_fraction, config.train.split_seed)
    if procs.main:
        save_npy(out / VAL_INDICES, val_idx)
    targets = Targets(subject)
    bounds = [queries.vertex_slice(h) for h in HEMIS]

    torch.manual_seed(config.train.seed)
    model = build_encoder(config.encoder_arch, queries, config.feature_dim, config.grid, config.decoder, config.ridge)
    model.set_feature_stats(read_rows(feats["train"].features, np.sort(train_idx)[:STATS_IMAGES]))
    start = time.perf_counter()
    if arch.capabilities.closed_form:
        with activity(f"{config.encoder_arch} fit"):
            model.core.fit(lambda: (model.normalise(b) for b in iter_batches(feats["train"].features, train_idx, 256)),
                           targets.rows(train_idx))
        history, best_epoch = [], None
        if procs.main:
            save_weights(out / WEIGHTS, model, {"encoder_arch": config.encoder_arch})
    else:
        history, best_epoch = _fit_gradient(model, config, feats["train"], targets, train_idx, val_idx, bounds,
                                            out, resume, procs, stop_after_epoch)
        if history is None:  # interrupted on purpose
            return out
    elapsed = time.perf_counter() - start
    if procs.main:
        load_weights(out / WEIGHTS, model)
        _finish(model, config, subject, feats, targets, val_idx, bounds, out, history, best_epoch, elapsed, procs)
    procs.barrier()
    return out


def _prepare_directory(out: Path, config: RunConfig, resume: bool, procs: Processes) -> None:
    if resume:
        if not (out / CHECKPOINT).is_file() and not (out / WEIGHTS).is_file():
            raise InputError(out, "nothing to resume (no checkpoint.safetensors)")
        old = read_config(out)
        mine = config.comparable()
        theirs = old.comparable()
        for key in ("feature_dim", "grid"):
            mine.pop(key), theirs.pop(key)
        if mine != theirs:
            diff = [k for k in mine if mine[k] != theirs.get(k)]
            raise InputError(out / "config.json", f"--resume with different settings ({', '.join(diff)}); use a new --out")
        return
    if out.exists() and any(out.iterdir()):
        hint = "it holds an interrupted run: add --resume" if (out / CHECKPOINT).is_file() else "choose another --out"
        raise InputError(out, f"run directory is not empty; {hint}")
    if procs.main:
        out.mkdir(parents=True, exist_ok=True)


def _fit_gradient(model, config: RunConfig, train_feats: FeatureSet, targets: Targets, train_idx, val_idx, bounds,
                  out: Path, resume: bool, procs: Processes, stop_after_epoch: int | None):
    tc = config.train
    device = procs.device
    model.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, tc.lr_drop, gamma=0.5)
    state = {"epoch": 0, "best_r": -math.inf, "best_epoch": None, "history": []}
    if resume and (out / CHECKPOINT).is_file():
        state = load_checkpoint(out / CHECKPOINT, model, optimizer, scheduler)
        log.info("resuming after epoch %d", state["epoch"])
    net = model
    if procs.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    valid = torch.as_tensor(targets.valid, dtype=torch.float32, device=device)
    val_true = targets.rows(val_idx)
    regularise = model.core.regularization if model.capabilities.regularisation else None
    n = len(train_idx)
    epochs = range(state["epoch"], tc.epochs)
    bar = progress(epochs, desc="training", unit="epoch", disable=not procs.main)
    for epoch in bar:
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            return None, None
        torch.manual_seed(_epoch_seed(tc.seed, epoch) + procs.rank)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(_epoch_seed(tc.seed, epoch))).numpy()
        model.train()
        t0, total, seen = time.perf_counter(), 0.0, 0
        for start in range(0, n, tc.batch_size):
            batch = order[start:start + tc.batch_size]
            shard = batch[procs.rank::procs.world]
            weight = len(shard) * procs.world / len(batch)
            if len(shard) == 0:  # every process must step together; contribute nothing
                shard, weight = batch[:1], 0.0
            rows = train_idx[shard]
            x = torch.from_numpy(read_rows(train_feats.features, rows).astype(np.float32, copy=False)).to(device)
            y = torch.from_numpy(targets.rows(rows)).to(device)
            with autocast(device):
                pred = net(x)["pred"]
            per_image = hemisphere_mse(pred, y, valid, bounds)
            loss = per_image.mean() * weight
            if regularise is not None:
                loss = loss + regularise()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.clip_max_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_max_norm)
            optimizer.step()
            if weight:
                total, seen = total + float(per_image.detach().sum()), seen + len(shard)
        scheduler.step()
        seconds = time.perf_counter() - t0
        entry = {"epoch": epoch + 1, "train_loss": total / max(seen, 1), "seconds": seconds, "images_per_second": n / seconds}
        if procs.main:
            _, means = validation_r(predict(model, train_feats.features, val_idx, device=device), val_true, targets.valid, bounds)
            entry.update({"val_r_lh": means["lh"], "val_r_rh": means["rh"], "val_r": means["mean"]})
            if means["mean"] > state["best_r"]:
                state["best_r"], state["best_epoch"] = means["mean"], epoch + 1
                save_weights(out / WEIGHTS, model, {"encoder_arch": config.encoder_arch, "epoch": str(epoch + 1)})
                entry["best"] = True
            bar.set_postfix(val_r=f"{means['mean']:.3f}", best=f"{state['best_r']:.3f}")
            log.info("epoch %d/%d: loss %.4f, val r %.4f%s", epoch + 1, tc.epochs, entry["train_loss"], means["mean"],
                     " (best)" if entry.get("best") else "")
        state["history"].append(entry)
        state["epoch"] = epoch + 1
        if procs.main:
            save_checkpoint(out / CHECKPOINT, model, optimizer, scheduler, state)
        procs.barrier()
    return state["history"], state["best_epoch"]


def _finish(model, config: RunConfig, subject: Subject, feats, targets: Targets, val_idx, bounds, out: Path,
            history, best_epoch, elapsed: float, procs: Processes) -> None:
    """Validation r, test predictions, and metrics.json (written last)."""
    val_pred = predict(model, feats["train"].features, val_idx, device=procs.device)
    r, means = validation_r(val_pred, targets.rows(val_idx), targets.valid, bounds)
    test_pred = predict(model, feats["test"].features, device=procs.device)
    per_hemi = {}
    for hemi, s in zip(HEMIS, bounds):
        save_npy(out / f"{hemi}_val_corr.npy", r[s].astype(np.float32))
        save_npy(out / f"{hemi}_pred_test.npy", test_pred[:, s].astype(np.float32))
        per_hemi[hemi] = r[s]
    summary = roi_summary(per_hemi, subject.labels, subject.mappings, name="val_r")
    write_json(out / METRICS, {
        "encoder_arch": config.encoder_arch,
        "readout_res": config.readout_res,
        "backbone": feats["train"].meta.get("describe", ""),
        "n_train": int(subject.n_train - len(val_idx)),
        "n_val": int(len(val_idx)),
        "n_test": int(subject.n_test),
        "best_epoch": best_epoch,
        "val_r": means,
        "fit_seconds": round(elapsed, 2),
        "history": history,
        "val_roi_summary": summary.to_dict(orient="records"),
    })
    log.info("run complete: %s (validation r lh %.3f, rh %.3f)", out, means["lh"], means["rh"])
