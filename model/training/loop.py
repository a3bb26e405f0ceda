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
from safetensors.torch import load_file

from ..device import autocast, pick_device
from ..encoders import QuerySet, architecture, build_encoder, build_queries
from ..errors import InputError
from ..features import FeatureRows, FeatureSet, check_residency, default_cache_dir, subject_features, training_rows
from ..files import read_rows, save_npy, save_safetensors, usable_directory, write_json
from ..metrics import pearson_r, roi_summary
from ..progress import activity, progress
from ..rois import HEMIS
from ..runs import (CHECKPOINT, CONFIG, METRICS, PRED_TEST, VAL_CORR, VAL_INDICES, VAL_PRED, WEIGHTS, RunConfig,
                    TrainConfig, iter_batches, load_weights, predict, save_weights, write_config, write_run_manifest)
from ..scoring import SUMMARY_IMAGES, describe_faithfulness, query_reliability, run_summary
from ..subject import Subject, load_subject, train_val_split
from .claiming import Claim, DivergedError, claim_run_directory

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
    """Rows of the training fMRI, read on demand from the memory maps (never copied whole).

    ``fmri``: one (images, vertices) array per hemisphere; ``valid``: which
    vertices (both hemispheres side by side) count in the loss.
    """

    def __init__(self, fmri: list[np.ndarray], valid: np.ndarray):
        self.fmri, self.valid = list(fmri), np.asarray(valid, bool)

    @classmethod
    def of_subject(cls, subject: Subject) -> "Targets":
        """A subject's training fMRI; its all-NaN vertices are not valid."""
        valid = []
        for hemi in HEMIS:
            ok = np.ones(subject.n_vertices(hemi), bool)
            ok[subject.nan_vertices.get(hemi, [])] = False
            valid.append(ok)
        return cls([subject.fmri[h] for h in HEMIS], np.concatenate(valid))

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
    return r, validation_means(r, valid, bounds)


def validation_means(r: np.ndarray, valid: np.ndarray, bounds: list[slice]) -> dict[str, float]:
    """Per-hemisphere means of per-vertex r over valid vertices (NaN counted as 0), and their mean (``'mean'``)."""
    means = {h: float(np.nanmean(np.nan_to_num(r[s][valid[s]], nan=0.0))) for h, s in zip(HEMIS, bounds)}
    means["mean"] = float(np.mean([means[h] for h in HEMIS]))
    return means


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
    save_safetensors(path, tensors, meta)


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

@dataclass
class EpochData:
    """What one training epoch reads: feature rows on the device, fMRI rows, the training rows, hemisphere bounds."""

    features: FeatureRows
    targets: Targets
    train_idx: np.ndarray
    bounds: list[slice]


@dataclass
class Job:
    """What the steps of one training job share."""

    config: RunConfig
    out: Path
    procs: Processes
    claim: Claim
    feats: dict[str, FeatureSet]
    subject: Subject
    targets: Targets
    train_idx: np.ndarray
    val_idx: np.ndarray
    bounds: list[slice]
    rows: FeatureRows  # the training split's features, streamed or resident on the device
    queries: QuerySet

    @property
    def data(self) -> EpochData:
        return EpochData(self.rows, self.targets, self.train_idx, self.bounds)


def train(config: RunConfig, out: str | Path, cache_dir: str | Path | None = None, resume: bool = False,
          device: str = "auto", stop_after_epoch: int | None = None, features_on_device: str = "auto") -> Path:
    """Train (or fit) the encoder described by ``config`` into the run directory ``out``.

    Every option and input is checked before anything is written; the run
    directory is held by this job alone (see :mod:`model.training.claiming`), and a
    failed fresh run leaves nothing behind. ``stop_after_epoch`` ends the job
    after that many epochs as if it had been interrupted (used to test
    ``resume``). ``features_on_device`` (auto, always, never; see
    :func:`model.features.keep_resident`) keeps the training features on
    the device instead of streaming them from the cache; results are the same.
    """
    out = Path(out)
    check_residency(features_on_device)  # before any work
    subject = _check_before_writing(config, out, cache_dir)
    procs = setup_processes(device)
    with claim_run_directory(out, config, resume, writer=procs.main) as claim:
        feats = _features(config, cache_dir, procs)
        _record_features(config, feats, claim)
        train_idx, val_idx = train_val_split(subject.n_train, config.train.val_fraction, config.train.split_seed)
        if procs.main:
            write_config(out, config)
            write_run_manifest(out, config, feats, resume=resume)
            save_npy(out / VAL_INDICES, val_idx)
        queries = build_queries(subject, config.readout_res)
        gradient = not architecture(config.encoder_arch).capabilities.closed_form
        rows = training_rows(feats["train"].features, procs.device, features_on_device if gradient else "never")
        job = Job(config, out, procs, claim, feats, subject, Targets.of_subject(subject), train_idx, val_idx,
                  [queries.vertex_slice(h) for h in HEMIS], rows, queries)
        torch.manual_seed(config.train.seed)
        model = build_encoder(config.encoder_arch, queries, config.feature_dim, config.grid, config.decoder, config.ridge,
                          config.train.standardise_tokens)
        model.set_feature_stats(read_rows(feats["train"].features, np.sort(train_idx)[:STATS_IMAGES]))
        _log_grid_choices(config, model)
        start = time.perf_counter()
        if architecture(config.encoder_arch).capabilities.closed_form:
            history, best_epoch = _fit_closed_form(job, model), None
        else:
            history, best_epoch = _fit_gradient(job, model, stop_after_epoch)
            if history is None:  # interrupted on purpose
                return out
        elapsed = time.perf_counter() - start
        if procs.main:
            load_weights(out / WEIGHTS, model)
            _finish(job, model, history, best_epoch, elapsed)
        procs.barrier()
    return out


def _log_grid_choices(config: RunConfig, model) -> None:
    """Say what an option that the token grid decides became (``--content-key auto``)."""
    chosen = getattr(model.core, "content_key", None)
    if config.decoder.attention == "windows" and chosen not in (None, config.decoder.content_key):
        log.info("content key %s: `%s` on %d x %d tokens", chosen, config.decoder.content_key, *config.grid)


def resolve_config(config: RunConfig) -> Subject:
    """Check ``config`` against its data and fill in what the data decides, as training does; returns the subject.

    Fills ``data_dir`` (made absolute), the decoder's sizes left to its
    readout, ``queries``, ``n_vertices`` and ``data_fingerprint`` in place: a config so resolved compares with a
    trained run's ``config.json`` (:func:`model.training.claiming.settings_differences`).
    """
    config.validate()
    config.decoder = config.decoder.resolved()
    config.data_dir = str(Path(config.data_dir).resolve())  # a run must open from any working directory
    subject = load_subject(config.data_dir, config.subj)
    config.train.validate(subject.n_train)
    queries = build_queries(subject, config.readout_res)
    config.queries, config.n_vertices = queries.names, dict(queries.n_vertices)
    config.data_fingerprint = subject.fingerprint()
    return subject


def _check_before_writing(config: RunConfig, out: Path, cache_dir: str | Path | None) -> Subject:
    """Every check that needs no writing: options, data, split, weights file, folders. Fills in what the data decides."""
    subject = resolve_config(config)
    weights = config.backbone.weights
    if weights not in ("random", "pretrained") and not Path(weights).is_file():
        raise InputError(weights, "missing checkpoint file (backbone weights)")
    usable_directory(cache_dir if cache_dir is not None else default_cache_dir(), write=False)
    usable_directory(out)
    return subject


def _features(config: RunConfig, cache_dir, procs: Processes) -> dict[str, FeatureSet]:
    """The subject's features: computed by the main process, then read from the cache by the others."""
    def compute():
        return subject_features(config.data_dir, config.subj, config.backbone, cache_dir, device=str(procs.device))

    feats = compute() if procs.main else None
    procs.barrier()
    return feats if procs.main else compute()


def _record_features(config: RunConfig, feats: dict[str, FeatureSet], claim: Claim) -> None:
    """Store the feature key and shape in the config (and refuse to resume on other features)."""
    config.feature_dim = int(feats["train"].features.shape[-1])
    config.grid = tuple(feats["train"].grid)
    config.feature_key = feats["train"].key
    previous = claim.previous.feature_key if claim.previous is not None else {}
    if previous and previous != config.feature_key:
        diff = ", ".join(k for k in previous if previous[k] != config.feature_key.get(k))
        raise InputError(claim.path / CONFIG, f"`resume` with other backbone features ({diff} differ); use a new `out`")


def _fit_closed_form(job: Job, model) -> list:
    with activity(f"{job.config.encoder_arch} fit"):
        model.core.fit(lambda: (model.normalise(b) for b in iter_batches(job.feats["train"].features, job.train_idx, 256)),
                       job.targets.rows(job.train_idx))
    if job.procs.main:
        save_weights(job.out / WEIGHTS, model, {"encoder_arch": job.config.encoder_arch})
    return []


def make_optimiser(model, tc: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.StepLR]:
    """AdamW over the trainable parameters and its StepLR schedule (halved every ``tc.lr_drop`` epochs).

    Parts the core names in ``lr_scales()`` get their own group at that
    multiple of ``tc.lr``; a scale of 1 adds no group, so a run trained
    before a part had one resumes with the optimiser state it saved.
    """
    groups = [{"params": [p for p in model.core.get_submodule(name).parameters() if p.requires_grad], "lr": tc.lr * scale}
              for name, scale in model.core.lr_scales().items() if scale != 1]
    grouped = {id(p) for g in groups for p in g["params"]}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in grouped]
    optimizer = torch.optim.AdamW([{"params": rest}, *groups], lr=tc.lr, weight_decay=tc.weight_decay)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, tc.lr_drop, gamma=0.5)


def _fit_gradient(job: Job, model, stop_after_epoch: int | None):
    """Epochs of AdamW from the checkpoint (if resuming); returns (history, best epoch), or (None, None) when stopped."""
    tc, procs = job.config.train, job.procs
    model.to(procs.device)
    optimizer, scheduler = make_optimiser(model, tc)
    state = {"epoch": 0, "best_r": -math.inf, "best_epoch": None, "history": []}
    if job.claim.resuming and (job.out / CHECKPOINT).is_file():
        state = load_checkpoint(job.out / CHECKPOINT, model, optimizer, scheduler)
        log.info("resuming after epoch %d", state["epoch"])
    net = model
    if procs.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[procs.device.index] if procs.device.type == "cuda" else None)
    val_true = job.targets.rows(job.val_idx)
    bar = progress(range(state["epoch"], tc.epochs), desc="training", unit="epoch", disable=not procs.main)
    for epoch in bar:
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            return None, None
        entry = _train_epoch(job, net, model, optimizer, epoch)
        scheduler.step()
        if procs.main:
            _validate_epoch(job, model, val_true, epoch, state, entry)
            bar.set_postfix(val_r=f"{entry['val_r']:.3f}", best=f"{state['best_r']:.3f}")
        state["history"].append(entry)
        state["epoch"] = epoch + 1
        if procs.main:
            save_checkpoint(job.out / CHECKPOINT, model, optimizer, scheduler, state)
        procs.barrier()
    return state["history"], state["best_epoch"]


def _train_epoch(job: Job, net, model, optimizer, epoch: int) -> dict:
    return train_epoch(net, model, optimizer, job.data, job.config.train, epoch, job.procs, job.out)


def train_epoch(net, model, optimizer, data: EpochData, tc: TrainConfig, epoch: int, procs: Processes,
                out: Path | None = None) -> dict:
    """One pass over the training images in this epoch's seeded order; stops on a non-finite loss.

    ``net`` is ``model`` or its DistributedDataParallel wrapper; forward
    passes run under bf16 autocast on CUDA. This is the step ``tbe train``
    runs (and benchmarks/bench_gpu.py times). ``out`` names the run in a
    divergence error.
    """
    torch.manual_seed(_epoch_seed(tc.seed, epoch) + procs.rank)
    n = len(data.train_idx)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(_epoch_seed(tc.seed, epoch))).numpy()
    valid = torch.as_tensor(data.targets.valid, dtype=torch.float32, device=procs.device)
    regularise = model.core.regularization if model.capabilities.regularisation else None
    model.train()
    t0, total, seen = time.perf_counter(), 0.0, 0
    for step, start in enumerate(range(0, n, tc.batch_size)):
        batch = order[start:start + tc.batch_size]
        shard = batch[procs.rank::procs.world]
        weight = len(shard) * procs.world / len(batch)
        if len(shard) == 0:  # every process must step together; contribute nothing
            shard, weight = batch[:1], 0.0
        rows = data.train_idx[shard]
        x = data.features.rows(rows)
        y = torch.from_numpy(data.targets.rows(rows)).to(procs.device)
        with autocast(procs.device):
            pred = net(x)["pred"]
        per_image = hemisphere_mse(pred, y, valid, data.bounds)
        loss = per_image.mean() * weight
        if regularise is not None:
            loss = loss + regularise()
        if not math.isfinite(float(loss.detach())):
            raise DivergedError(out or Path("."), f"training diverged: the loss became {float(loss.detach())} in epoch {epoch + 1}, "
                                         f"batch {step + 1}; nothing was kept (try a lower learning rate than {tc.lr:g})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tc.clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_max_norm)
        optimizer.step()
        if weight:
            total, seen = total + float(per_image.detach().sum()), seen + len(shard)
    seconds = time.perf_counter() - t0
    return {"epoch": epoch + 1, "train_loss": total / max(seen, 1), "seconds": seconds, "images_per_second": n / seconds}


def _validate_epoch(job: Job, model, val_true: np.ndarray, epoch: int, state: dict, entry: dict) -> None:
    """Validation r of this epoch into ``entry``; the best epoch's weights are saved."""
    pred = predict(model, job.rows, job.val_idx, device=job.procs.device)
    _, means = validation_r(pred, val_true, job.targets.valid, job.bounds)
    entry.update({"val_r_lh": means["lh"], "val_r_rh": means["rh"], "val_r": means["mean"]})
    if means["mean"] > state["best_r"]:
        state["best_r"], state["best_epoch"] = means["mean"], epoch + 1
        save_weights(job.out / WEIGHTS, model, {"encoder_arch": job.config.encoder_arch, "epoch": str(epoch + 1)})
        entry["best"] = True
    log.info("epoch %d/%d: loss %.4f, val r %.4f%s", epoch + 1, job.config.train.epochs, entry["train_loss"], means["mean"],
             " (best)" if entry.get("best") else "")


def _finish(job: Job, model, history, best_epoch, elapsed: float) -> None:
    """Validation r and predictions, test predictions, and metrics.json (written last)."""
    config, out, feats, device = job.config, job.out, job.feats, job.procs.device
    val_pred = predict(model, job.rows, job.val_idx, device=device)
    test_pred = predict(model, feats["test"].features, device=device)
    if not (np.isfinite(val_pred).all() and np.isfinite(test_pred).all()):
        raise DivergedError(out, "training diverged: the encoder predicts non-finite values; nothing was kept "
                                 f"(try a lower learning rate than {config.train.lr:g})")
    r, means = validation_r(val_pred, job.targets.rows(job.val_idx), job.targets.valid, job.bounds)
    per_hemi = {}
    for hemi, s in zip(HEMIS, job.bounds):
        save_npy(out / VAL_CORR.format(hemi=hemi), r[s].astype(np.float32))
        save_npy(out / VAL_PRED.format(hemi=hemi), val_pred[:, s].astype(np.float32))
        save_npy(out / PRED_TEST.format(hemi=hemi), test_pred[:, s].astype(np.float32))
        per_hemi[hemi] = r[s]
    summary = roi_summary(per_hemi, job.subject.labels, job.subject.mappings, name="val_r")
    faithfulness = _attention_faithfulness(job, model, val_pred)
    write_json(out / METRICS, {
        "encoder_arch": config.encoder_arch,
        "readout_res": config.readout_res,
        "backbone": feats["train"].meta.get("describe", ""),
        "n_train": int(job.subject.n_train - len(job.val_idx)),
        "n_val": int(len(job.val_idx)),
        "n_test": int(job.subject.n_test),
        "best_epoch": best_epoch,
        "val_r": means,
        "fit_seconds": round(elapsed, 2),
        "history": history,
        "val_roi_summary": summary.to_dict(orient="records"),
        **({"attention_faithfulness": faithfulness} if faithfulness else {}),
    })
    log.info("run complete: %s (validation r lh %.3f, rh %.3f)", out, means["lh"], means["rh"])
    if faithfulness:
        (log.info if faithfulness["faithful"] or faithfulness.get("measured") is False else log.warning)(
            describe_faithfulness(faithfulness))


def _attention_faithfulness(job: Job, model, val_pred: np.ndarray) -> dict | None:
    """The deletion test of the attention (:mod:`model.scoring.faithfulness`) on validation images, for the summary.

    Queries count when the run predicts them reliably on the validation
    images; the test itself runs on the first :data:`~model.scoring.faithfulness.SUMMARY_IMAGES`.
    """
    if not model.capabilities.decoder_attention or len(job.val_idx) < 3:
        return None
    memberships = job.queries.memberships
    reliability = query_reliability(val_pred, job.targets.rows(job.val_idx), memberships, job.targets.valid)
    idx = np.sort(job.val_idx)[:SUMMARY_IMAGES]
    return run_summary(model, lambda: read_rows(job.feats["train"].features, idx), memberships, job.queries.names,
                       reliability)
