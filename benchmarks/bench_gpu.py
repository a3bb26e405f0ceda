"""Real scale on one machine in one run: feature extraction, training, attributions, DDP, cache size.

On a CUDA machine this measures, at the size of NSD subject 1, and prints
one table (rows appear as they are measured):

1. **feature extraction**: images/s of ViT-B/14 ``q`` features at 434 px
   (425 px images padded), float32 and bf16 autocast, computed on the device
   from images already there (no PNG decoding); and how far bf16 is from
   float32: r per feature (token x channel, across images) and r per vertex
   of a real-size encoder's predictions from those features;
2. **readout**: forward + backward of the vectorised vertex readout, the
   per-group loop it replaced and the seed's every-query-then-mask readout,
   at ``bench_training.py``'s sizes (50 queries x 20,000 vertices);
3. **training**: one epoch at 9841 images x 39,548 vertices (a random
   ``rois_all``-like set of 50 queries) of the transformer with the
   ``retinotopic`` and ``linear`` readouts, run by :func:`model.training.loop.train_epoch`
   (the step ``tbe train`` runs) from features kept in GPU memory when
   ``--features-on-device auto`` would keep them (else streamed from pinned
   host memory), with peak memory; next to it an
   epoch with the backbone in the loop, as the original trained (float32,
   and bf16), timed over a few steps and extrapolated to the epoch;
4. **integrated gradients** per image per ROI, through the pixels (float32:
   completeness needs it) and at the backbone tokens, with the project's
   attribution models and Captum;
5. **DDP**: ``torch.distributed.run`` with one process per GPU (NCCL; gloo
   with 2 processes on the CPU) on real-shaped training steps; parameters
   must agree across processes afterwards;
6. **feature cache**: the size of one subject's entry per layer, from a
   real cache entry written by :func:`model.features.extract_features`
   (its end-to-end images/s, PNG decoding included, comes with it);
7. **voxels readout**: one query per vertex (39,548 queries, 961 tokens,
   batch 16, hidden 768): time per training step and peak memory against
   ``rois_all`` (the voxel queries decoded in chunks).

Everything it needs is made on the spot: random-weight backbones (LayerScale
1.0, as the project builds them), random images, features and fMRI of the
real sizes in memory. It needs only the repository and torch, timm, numpy,
scipy, pandas, xarray, safetensors, matplotlib and tqdm; Captum for the
integrated-gradients section (without it that section fails alone). Each
section is guarded: a failure is printed in its place and the others still
run. ``--small`` runs a scaled-down version (ViT-S, 112 px, hundreds of
vertices; the CI runs it on the CPU) in under two minutes on 2 cores.

    python benchmarks/bench_gpu.py [--device auto|cuda|cpu] [--small] [--json OUT.json]

On a CPU the real-size ``voxels readout`` section alone is the useful part
(bounded memory at real size; minutes per step on 2 cores)::

    python benchmarks/bench_gpu.py --device cpu --sections "voxels readout" --voxel-steps 1
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable from a plain checkout, without installing
    sys.path.insert(0, str(ROOT))

from analyses.cli import error_line  # noqa: E402
from model.backbone import Backbone, BackboneConfig, build_backbone  # noqa: E402
from model.device import pick_device  # noqa: E402
from model.encoders import DecoderConfig, QuerySet, build_encoder  # noqa: E402
from model.encoders.queries import vertex_queries  # noqa: E402
from model.errors import InputError  # noqa: E402
from model.features import FeatureRows, keep_resident  # noqa: E402
from model.rois import HEMIS, NON_STREAM_CLASSES, ROI_CLASSES  # noqa: E402
from model.runs import TrainConfig  # noqa: E402
from model.training.loop import EpochData, Processes, Targets, make_optimiser, train_epoch  # noqa: E402

#: Training and test images of NSD subjects 1-8 (DESIGN.md section 4).
SUBJECT_IMAGES = {1: (9841, 159), 2: (9841, 159), 3: (9082, 293), 4: (8779, 395),
                  5: (9841, 159), 6: (9082, 293), 7: (9841, 159), 8: (8779, 395)}
#: Fraction of a hemisphere's vertices in each ROI class (the rest are unassigned).
CLASS_FRACTION = {"prf-visualrois": 0.30, "floc-bodies": 0.08, "floc-faces": 0.08, "floc-places": 0.08,
                  "floc-words": 0.08}


@dataclass(frozen=True)
class Scale:
    """Every size the benchmark uses."""

    name: str
    backbone: str
    image_side: int  # native side of the images; the input is padded to a multiple of the patch
    layer: int  # enc_output_layer: 1 = last block
    extract_batch: int
    extract_images: dict  # precision -> images timed
    agreement_images: int
    n_images: int  # training images in an epoch
    n_vertices: tuple[int, int]
    decoder: DecoderConfig
    batch: int
    loop_steps: int  # steps timed with the backbone in the loop
    max_epoch_seconds: float  # a longer epoch is stopped and extrapolated
    pixel_ig: tuple[int, int]  # images, ROIs
    token_ig: tuple[int, int]
    ig_steps: int
    ig_batch: int
    ddp_steps: int
    ddp_cpu_processes: int
    cache_images: int
    section_timeout: float  # for the DDP launch
    readout_vertices: int = 20000  # the readout comparison: 50 queries x this, hidden 768, batch 16
    voxel_steps: int = 3  # training steps timed per readout_res in the voxels section (the fastest counts)


REAL = Scale("real", "vit_base_patch14_dinov2.lvd142m", 425, 1, 64, {"float32": 384, "bfloat16": 1024}, 64,
             9841, (19004, 20544), DecoderConfig(), 16, 24, 60.0, (2, 2), (4, 4), 32, 16, 20, 2, 32,
             section_timeout=240.0)
SMALL = Scale("small", "vit_small_patch14_dinov2.lvd142m", 112, 9, 16, {"float32": 16, "bfloat16": 16}, 16,
              96, (500, 600), DecoderConfig(hidden_dim=64, nheads=4, dim_feedforward=128, readout_maps=2,
                                             readout_map_dim=16),
              16, 2, 60.0, (1, 1), (2, 2), 8, 8, 3, 2, 4, section_timeout=240.0, readout_vertices=2000)
PRECISIONS = ("float32", "bfloat16")
READOUTS = ("retinotopic", "linear")


# --------------------------------------------------------------------------
# Report: rows printed as they come, one table at the end, JSON
# --------------------------------------------------------------------------

@dataclass
class Row:
    section: str
    measure: str
    value: float | str
    unit: str = ""
    note: str = ""

    def line(self) -> str:
        value = f"{self.value:.4g}" if isinstance(self.value, float) else str(self.value)
        return f"{self.section:<20s} {self.measure:<54s} {value:>10s} {self.unit:<10s} {self.note}"


@dataclass
class Report:
    device: str
    scale: str
    rows: list[Row] = field(default_factory=list)
    sections: dict = field(default_factory=dict)

    def add(self, section: str, measure: str, value, unit: str = "", note: str = "") -> None:
        row = Row(section, measure, float(value) if isinstance(value, (int, float, np.floating)) else value, unit, note)
        self.rows.append(row)
        self.sections.setdefault(section, {"ok": None, "results": {}})["results"][measure] = \
            {"value": row.value, "unit": unit, "note": note}
        print(row.line(), flush=True)

    def run(self, section: str, fn, *args) -> None:
        """Run one section; a failure is recorded and printed in its place, and the benchmark goes on."""
        print(f"--- {section}", flush=True)
        entry = self.sections.setdefault(section, {"ok": None, "results": {}})
        start = time.perf_counter()
        try:
            fn(self, *args)
            entry["ok"] = True
        except Exception as exc:  # noqa: BLE001 - one section's failure must not lose the others
            entry.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            self.rows.append(Row(section, "FAILED", f"{type(exc).__name__}: {str(exc)[:150]}"))
            print(f"{section}: FAILED\n{traceback.format_exc()}", flush=True)
        finally:
            entry["seconds"] = round(time.perf_counter() - start, 2)
            release_memory()

    def table(self) -> str:
        head = f"{'section':<20s} {'measure':<54s} {'value':>10s} {'unit':<10s} note"
        return "\n".join([head, "-" * len(head)] + [r.line() for r in self.rows])

    def to_json(self) -> dict:
        return {"device": self.device, "scale": self.scale, "environment": environment(),
                "sections": self.sections, "rows": [asdict(r) for r in self.rows]}


def environment() -> dict:
    import timm

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "timm": timm.__version__,
           "cuda": torch.version.cuda, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env.update(gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(),
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
    return env


# --------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def precision(device: torch.device, name: str) -> contextlib.AbstractContextManager:
    """float32, or bf16 autocast (on CUDA exactly what :func:`model.device.autocast` does)."""
    if name == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class PeakMemory:
    """Peak memory while the block runs: allocated GPU memory on CUDA, resident memory on Linux CPUs."""

    def __init__(self, device: torch.device):
        self.device, self.peak_gib, self.before_gib = device, math.nan, math.nan

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before_gib = torch.cuda.memory_allocated(self.device) / 2**30
        else:
            with contextlib.suppress(OSError):
                self.before_gib = _status_kib("VmRSS") / 2**20
                Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak_gib = torch.cuda.max_memory_allocated(self.device) / 2**30
        else:
            with contextlib.suppress(OSError):
                self.peak_gib = _status_kib("VmHWM") / 2**20

    @property
    def unit(self) -> str:
        return "GiB (GPU)" if self.device.type == "cuda" else "GiB (RSS)"


def _status_kib(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise OSError(name)


def timed(device: torch.device, fn) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


# --------------------------------------------------------------------------
# What the benchmark makes on the spot
# --------------------------------------------------------------------------

def make_backbone(scale: Scale) -> Backbone:
    """The random-weight backbone (LayerScale 1.0, as the project builds it), ``q`` features."""
    return build_backbone(BackboneConfig(scale.backbone, "random", seed=0, layer=scale.layer, feature="q"),
                          scale.image_side)


def random_images(n: int, side: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, device=device, generator=g)


def synthetic_queries(n_vertices: tuple[int, int], seed: int = 0) -> QuerySet:
    """``rois_all``-like queries: every ROI of the five classes plus unassigned, per hemisphere.

    Within a class, ROIs are disjoint random sets of vertices (as integer
    label masks are); ROIs of different classes overlap where they happen to.
    """
    rng = np.random.default_rng(seed)
    total = sum(n_vertices)
    hemis, rois, columns = [], [], []
    offset = 0
    for hemi, n in zip(HEMIS, n_vertices):
        assigned = np.zeros(n, bool)
        for roi_class in NON_STREAM_CLASSES:
            names = ROI_CLASSES[roi_class]
            chosen = rng.permutation(n)[: int(CLASS_FRACTION[roi_class] * n)]
            labels = rng.choice(len(names), size=chosen.size, p=rng.dirichlet(np.full(len(names), 4.0)))
            for i, name in enumerate(names):
                mask = np.zeros(n, bool)
                mask[chosen[labels == i]] = True
                if mask.any():
                    assigned |= mask
                    hemis.append(hemi), rois.append(name), columns.append(_embed(mask, offset, total))
        hemis.append(hemi), rois.append("unknown"), columns.append(_embed(~assigned, offset, total))
        offset += n
    return QuerySet(hemis, rois, dict(zip(HEMIS, n_vertices)), np.stack(columns, axis=1))


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e8 else f"{n_bytes / 1e6:.1f} MB"


def _embed(mask: np.ndarray, offset: int, total: int) -> np.ndarray:
    out = np.zeros(total, bool)
    out[offset:offset + mask.size] = mask
    return out


def make_encoder(scale: Scale, backbone: Backbone, queries: QuerySet, readout: str, device: torch.device):
    torch.manual_seed(0)
    model = build_encoder("transformer", queries, backbone.dim, backbone.grid, replace(scale.decoder, readout=readout))
    return model.to(device)


def features_on(device: torch.device, shape: tuple[int, ...]) -> tuple[torch.Tensor, str]:
    """Random float16 features of ``shape``: in device memory when ``tbe train --features-on-device auto`` would keep
    them there (:func:`model.features.keep_resident`), else in (pinned) host memory, streamed per step."""
    size = math.prod(shape) * 2
    where = device if keep_resident("auto", size, device) else torch.device("cpu")
    out = torch.empty(shape, dtype=torch.float16, device=where, pin_memory=where.type == "cpu" and device.type == "cuda")
    g = torch.Generator(device=where).manual_seed(1)
    for start in range(0, shape[0], 512):  # in slices: no float32 temporary of the whole
        out[start:start + 512] = torch.randn(out[start:start + 512].shape, generator=g, device=where, dtype=torch.float16)
    note = f"{_size(size)} float16 in {'GPU memory (resident)' if where.type == 'cuda' else 'host memory (streamed)'}"
    return out, note


def feature_rows(features: torch.Tensor, device: torch.device) -> FeatureRows:
    """The training rows as ``tbe train`` reads them: resident on the device, or streamed from host memory."""
    return FeatureRows(features if features.device == device else features.numpy(), device)


def random_targets(n_images: int, queries: QuerySet, device: torch.device) -> Targets:
    """Random fMRI of ``n_images`` x every vertex in host memory, read per step as ``tbe train`` reads the fMRI."""
    g = torch.Generator(device=device).manual_seed(2)
    fmri = [torch.randn(n_images, queries.n_vertices[h], generator=g, device=device).cpu().numpy() for h in HEMIS]
    return Targets(fmri, np.ones(queries.n_total, bool))


# --------------------------------------------------------------------------
# 1. Feature extraction
# --------------------------------------------------------------------------

def feature_extraction(report: Report, scale: Scale, device: torch.device) -> None:
    section = "feature extraction"
    backbone = make_backbone(scale).to(device)
    report.add(section, "backbone", scale.backbone, "",
               f"{backbone.input_size} px, {backbone.grid[0]}x{backbone.grid[1]} tokens x {backbone.dim}, random weights")

    def extract(images: torch.Tensor, name: str, keep: bool = True) -> torch.Tensor | None:
        """Features of ``images`` in batches, as :func:`model.features.extract_features` computes them."""
        out = []
        for start in range(0, len(images), scale.extract_batch):
            with torch.inference_mode(), precision(device, name):
                features = backbone(backbone.preprocess(images[start:start + scale.extract_batch]))
            if keep:
                out.append(features.float())
        return torch.cat(out) if keep else None

    for name in PRECISIONS:
        n = scale.extract_images[name]
        images = random_images(n, scale.image_side, device, seed=1)
        extract(images[: scale.extract_batch], name, keep=False)  # warm-up
        with PeakMemory(device) as memory:
            seconds = timed(device, lambda: extract(images, name, keep=False))
        report.add(section, f"images/s, {name}", n / seconds, "images/s", f"{n} images, batch {scale.extract_batch}")
        report.add(section, f"peak memory, {name}", memory.peak_gib, memory.unit)
        del images

    images = random_images(scale.agreement_images, scale.image_side, device, seed=2)
    exact, low = extract(images, "float32"), extract(images, "bfloat16")
    r = per_column_r(exact.flatten(1), low.flatten(1))
    report.add(section, "r per feature, bf16 vs float32: median", float(np.median(r)), "",
               f"token x channel, across {len(images)} images")
    report.add(section, "r per feature, bf16 vs float32: 1st percentile", float(np.percentile(r, 1)))
    report.add(section, "relative error of bf16 features", float((low - exact).norm() / exact.norm()))

    # predictions: float32 features and model, against cached-style float16 bf16 features and a bf16 model
    queries = synthetic_queries(scale.n_vertices)
    model = make_encoder(scale, backbone, queries, "retinotopic", device).eval()
    model.set_feature_stats(exact.cpu().numpy())
    with torch.no_grad():
        pred_exact = model(exact)["pred"].float()
        with precision(device, "bfloat16"):
            pred_low = model(low.half())["pred"].float()
    r = per_column_r(pred_exact, pred_low)
    report.add(section, "r per vertex of predictions, bf16 vs float32: median", float(np.median(r)), "",
               f"{queries.n_total} vertices, retinotopic readout (random init)")
    report.add(section, "r per vertex of predictions, bf16 vs float32: min", float(np.min(r)))


def per_column_r(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Pearson r of each column of a and b (rows are images); constant columns are left out."""
    a, b = a.double() - a.double().mean(0), b.double() - b.double().mean(0)
    denom = a.norm(dim=0) * b.norm(dim=0)
    keep = denom > 0
    return ((a * b).sum(0)[keep] / denom[keep]).cpu().numpy()


# --------------------------------------------------------------------------
# 2. The readout alone: vectorised, the per-group loop it replaced, the seed's
# --------------------------------------------------------------------------

def readout(report: Report, scale: Scale, device: torch.device) -> None:
    """bench_training.py's readout comparison (same sizes) on this device."""
    from bench_training import LOOP, OURS, SEED, interleaved_times, random_queries, readout_steps

    section = "readout"
    queries = random_queries(scale.readout_vertices, 50)
    steps = readout_steps(queries, 768, 16, device)
    peaks = {}
    for name, step in steps.items():
        with PeakMemory(device) as memory:
            step()
        peaks[name] = memory.peak_gib - memory.before_gib
    seconds = interleaved_times(steps, rounds=5, sync=lambda: sync(device))
    shape = f"50 queries x {queries.n_total} vertices ({len(queries.groups())} groups), hidden 768, batch 16"
    for name in (OURS, LOOP, SEED):
        report.add(section, f"{name}, forward + backward", 1000 * seconds[name], "ms", shape if name == OURS else "")
        report.add(section, f"{name}, peak memory above the inputs", 1024 * peaks[name], "MiB")
    report.add(section, "vectorised: speed-up over the seed's", seconds[SEED] / seconds[OURS], "x")
    report.add(section, "vectorised: speed-up over the loop", seconds[LOOP] / seconds[OURS], "x")


# --------------------------------------------------------------------------
# 3. Training: an epoch from features in memory, against the backbone in the loop
# --------------------------------------------------------------------------

def training(report: Report, scale: Scale, device: torch.device) -> None:
    """Epochs of :func:`model.training.loop.train_epoch` (the step ``tbe train`` runs), from cached features and through the backbone."""
    section = "training epoch"
    backbone = make_backbone(scale).to(device)
    queries = synthetic_queries(scale.n_vertices)
    n_tokens = backbone.grid[0] * backbone.grid[1]
    features, where = features_on(device, (scale.n_images, n_tokens, backbone.dim))
    targets = random_targets(scale.n_images, queries, device)
    data = EpochData(feature_rows(features, device), targets, np.arange(scale.n_images), [queries.vertex_slice(h) for h in HEMIS])
    procs, tc = Processes(0, 1, device), TrainConfig(batch_size=scale.batch)
    report.add(section, "features", where, "", f"{scale.n_images} images x {n_tokens} tokens x {backbone.dim}")
    report.add(section, "fMRI", f"{_size(queries.n_total * scale.n_images * 4)} float32", "",
               f"{scale.n_images} x {queries.n_total} vertices in host memory, {queries.n_queries} queries")
    epochs = {}
    for readout in READOUTS:
        model = make_encoder(scale, backbone, queries, readout, device)
        model.set_feature_stats(features[:128].float().cpu().numpy())
        with PeakMemory(device) as memory:
            seconds, done = timed_epoch(model, data, tc, procs, scale)
        steps = math.ceil(scale.n_images / scale.batch)
        note = f"{steps} steps of {scale.batch}" if done == steps else f"extrapolated from {done}/{steps} steps"
        epochs[readout] = seconds
        report.add(section, f"epoch, {readout} readout", seconds, "s", note + "; model.training.loop.train_epoch")
        report.add(section, f"peak memory, {readout} readout", memory.peak_gib, memory.unit,
                   f"features and fMRI included; the model and its step: {memory.peak_gib - memory.before_gib:.2f}")
        del model
        release_memory()

    # the original's way: every step runs the backbone first (random images already on the device)
    model = make_encoder(scale, backbone, queries, "retinotopic", device)
    model.set_feature_stats(features[:128].float().cpu().numpy())
    images = random_images(scale.batch, scale.image_side, device, seed=3)
    for name in PRECISIONS:
        loop = replace(data, features=BackboneInTheLoop(backbone, images, name))
        seconds, done = timed_epoch(model, loop, tc, procs, scale, max_steps=scale.loop_steps)
        report.add(section, f"epoch, backbone in the loop ({name})", seconds, "s",
                   f"extrapolated from {done} steps; retinotopic readout")
        report.add(section, f"speed-up of cached features over the backbone ({name})", seconds / epochs["retinotopic"], "x")


class BackboneInTheLoop(FeatureRows):
    """Feature rows computed by the backbone at every step, as the original trained (the same images each time)."""

    def __init__(self, backbone: Backbone, images: torch.Tensor, precision_name: str):
        super().__init__(images, images.device)
        self.backbone, self.images, self.precision_name = backbone, images, precision_name

    def rows(self, idx: np.ndarray) -> torch.Tensor:
        with torch.no_grad(), precision(self.device, self.precision_name):
            return self.backbone(self.backbone.preprocess(self.images[: len(idx)])).float()


def timed_epoch(model, data: EpochData, tc: TrainConfig, procs: Processes, scale: Scale,
                max_steps: int | None = None) -> tuple[float, int]:
    """Seconds of one epoch of :func:`model.training.loop.train_epoch`, and how many steps were timed.

    Two warm-up steps, then a probe of a few steps; an epoch the probe says
    would take longer than ``scale.max_epoch_seconds`` (or longer than
    ``max_steps``) runs fewer steps, extrapolated to the epoch.
    """
    optimizer, _ = make_optimiser(model, tc)
    steps = math.ceil(len(data.train_idx) / tc.batch_size)

    def run(n_steps: int, epoch: int) -> float:
        part = replace(data, train_idx=data.train_idx[: n_steps * tc.batch_size])
        return timed(procs.device, lambda: train_epoch(model, model, optimizer, part, tc, epoch, procs))

    run(2, 0)  # warm-up: kernels chosen, memory pools filled
    limit = steps if max_steps is None else min(max_steps, steps)
    probe = min(limit, 10)
    per_step = run(probe, 1) / probe
    n = limit if per_step * limit <= scale.max_epoch_seconds else max(probe, int(scale.max_epoch_seconds / per_step))
    seconds = per_step * probe if n == probe else run(n, 2)
    return seconds * steps / n, n


# --------------------------------------------------------------------------
# 4. Integrated gradients
# --------------------------------------------------------------------------

def integrated_gradients(report: Report, scale: Scale, device: torch.device) -> None:
    """Seconds per image per ROI, in float32 (completeness needs it), with the project's attribution models."""
    from captum.attr import IntegratedGradients

    from interpret.attribution import METHODS, ImageModel, Settings, TokenModel

    section = "integrated gradients"
    settings = Settings(n_steps=scale.ig_steps, internal_batch_size=scale.ig_batch)
    backbone = make_backbone(scale).to(device)
    queries = synthetic_queries(scale.n_vertices)
    encoder = make_encoder(scale, backbone, queries, "retinotopic", device).eval()
    images = random_images(max(scale.pixel_ig[0], scale.token_ig[0]), scale.image_side, device, seed=4).float() / 255
    with torch.no_grad():
        tokens = backbone(backbone.preprocess(images))
    encoder.set_feature_stats(tokens.cpu().numpy())
    for level, (n_images, n_rois), model_for, inputs, baseline in (
            ("pixel", scale.pixel_ig, lambda t: ImageModel(backbone, encoder, t), images, torch.zeros_like(images)),
            ("token", scale.token_ig, lambda t: TokenModel(encoder, t), tokens,
             encoder.feature_mean.expand_as(tokens).contiguous())):
        targets = roi_targets(queries, n_rois)
        model = model_for(targets).to(device).eval()
        explainer = IntegratedGradients(model)
        spec = METHODS["integrated_gradients" if level == "pixel" else "token_integrated_gradients"]
        seconds, deltas = 0.0, []
        for i in range(n_images):
            x = inputs[i:i + 1].clone().requires_grad_(True)
            ctx = {"baseline": baseline[i:i + 1], "token_baseline": baseline[i:i + 1]}
            for t in range(len(targets)):
                kwargs = spec.kwargs(settings, ctx, 1)
                start = time.perf_counter()
                attr, delta = explainer.attribute(x, target=t, return_convergence_delta=True, **kwargs)
                sync(device)
                seconds += time.perf_counter() - start
                with torch.no_grad():
                    gap = (model(x) - model(kwargs["baselines"]))[0, t].abs()
                deltas.append(float(delta.abs().sum() / gap.clamp_min(1e-12)))
        per_map = seconds / (n_images * len(targets))
        report.add(section, f"{level} level, s per image per ROI", per_map, "s",
                   f"{settings.n_steps} steps, batch {settings.internal_batch_size}, {n_images} images x "
                   f"{len(targets)} ROIs, float32")
        report.add(section, f"{level} level, completeness error (max)", max(deltas), "",
                   "|sum of attributions - (f(x) - f(baseline))| / |f(x) - f(baseline)|")


def roi_targets(queries: QuerySet, n: int):
    """The mean response of the first ``n`` left-hemisphere ROI queries (as :func:`interpret.maps.roi_targets`)."""
    from interpret.maps import Targets

    members = torch.as_tensor(queries.memberships, dtype=torch.float32)
    picked = [q for q, h in enumerate(queries.hemis) if h == "lh"][:n]
    rows = [members[:, q] / members[:, q].sum() for q in picked]
    return Targets([queries.hemis[q] for q in picked], [queries.rois[q] for q in picked], torch.stack(rows))


# --------------------------------------------------------------------------
# 5. DDP under torch.distributed.run
# --------------------------------------------------------------------------

#: environment a parent process may carry (launched by torchrun itself, or left by a test) that would make the
#: launcher or its workers join another job's rendezvous instead of their own
INHERITED_DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "GROUP_RANK", "ROLE_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                             "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE")
#: tries of the launch: a port picked free can be taken by another process before the launcher binds it
DDP_TRIES = 2
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on the loopback interface that is free now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def ddp_command(processes: int, out: Path, device: torch.device, small: bool, port: int) -> list[str]:
    """torch.distributed.run on one node, its rendezvous on an explicit loopback port.

    Not ``--standalone``: that advertises the host's fully qualified name
    as the workers' MASTER_ADDR (a name lookup, which on a sandboxed or busy
    machine can be slow or resolve to an interface the workers cannot
    reach), whereas here every address is the loopback's.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={processes}",
               "--rdzv-backend=c10d", f"--rdzv-endpoint={LOOPBACK}:{port}", f"--rdzv-id=tbe-bench-{os.getpid()}-{port}",
               f"--local-addr={LOOPBACK}", "--max-restarts=0",
               str(Path(__file__).resolve()), "--ddp-worker", str(out), "--device", device.type]
    return command + (["--small"] if small else [])


def ddp_env() -> dict[str, str]:
    """This process's environment without another job's distributed settings; gloo on the loopback (Linux)."""
    env = {k: v for k, v in os.environ.items() if k not in INHERITED_DISTRIBUTED_ENV and not k.startswith("TORCHELASTIC_")}
    env.update({"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"})
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def _tail(text: str | bytes | None, lines: int = 25) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").strip().splitlines()[-lines:])


def launch_ddp(processes: int, out: Path, device: torch.device, small: bool, timeout: float) -> float:
    """Run the DDP workers; returns the launch's wall time. A failure raises with torchrun's stderr tail."""
    failures = []
    for attempt in range(1, DDP_TRIES + 1):
        port = free_port()
        start = time.perf_counter()
        try:
            done = subprocess.run(ddp_command(processes, out, device, small, port), env=ddp_env(), capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"torch.distributed.run (port {port}) did not finish in {timeout:.0f} s; its stderr ends:\n"
                               f"{_tail(exc.stderr)}") from None
        if done.returncode == 0 and out.is_file():
            return time.perf_counter() - start
        failures.append(f"try {attempt} (rendezvous port {port}) exited {done.returncode}; its stderr ends:\n"
                        f"{_tail(done.stderr) or _tail(done.stdout)}")
        print(f"DDP: {failures[-1]}", file=sys.stderr, flush=True)
    raise RuntimeError("torch.distributed.run failed: " + "\n".join(failures))


def ddp(report: Report, scale: Scale, device: torch.device) -> None:
    section = "DDP"
    processes = torch.cuda.device_count() if device.type == "cuda" else scale.ddp_cpu_processes
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ddp.json"
        wall = launch_ddp(processes, out, device, scale is SMALL, scale.section_timeout)
        result = json.loads(out.read_text())
    report.add(section, "processes (world size)", float(result["world_size"]), "", f"backend {result['backend']}")
    report.add(section, "seconds per step", result["seconds_per_step"], "s",
               f"batch {scale.batch} shared by the processes, real-shaped ({result['shape']})")
    report.add(section, "images/s", result["images_per_second"], "images/s")
    report.add(section, "parameters agree across processes", "yes" if result["in_sync"] else "NO",
               "", f"max spread {result['spread']:.2g}")
    report.add(section, "wall time of the launch", wall, "s", "process start, imports, rendezvous, steps")


def ddp_worker(out: Path, scale: Scale, device_type: str) -> None:
    """One process of the DDP section (started by torch.distributed.run)."""
    import torch.distributed as dist

    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    cuda = device_type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    with torch.device("meta"):
        probe = make_backbone(scale)
    queries = synthetic_queries(scale.n_vertices)
    torch.manual_seed(0)
    model = build_encoder("transformer", queries, probe.dim, probe.grid, scale.decoder).to(device)
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if cuda else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=TrainConfig().lr)
    share = max(1, scale.batch // world)
    g = torch.Generator(device=device).manual_seed(100 + rank)
    x = torch.randn(share, probe.grid[0] * probe.grid[1], probe.dim, device=device, generator=g)
    y = torch.randn(share, queries.n_total, device=device, generator=g)

    def step() -> None:
        with precision(device, "bfloat16" if cuda else "float32"):
            pred = net(x)["pred"]
        loss = ((pred.float() - y) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(scale.ddp_steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / scale.ddp_steps
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(gathered, checksum)
    spread = float(torch.cat(gathered).max() - torch.cat(gathered).min())
    if rank == 0:
        out.write_text(json.dumps({"world_size": world, "backend": dist.get_backend(), "seconds_per_step": seconds,
                                   "images_per_second": share * world / seconds, "in_sync": spread == 0.0,
                                   "spread": spread,
                                   "shape": f"{probe.grid[0] * probe.grid[1]} tokens x {probe.dim}, {queries.n_total} vertices"}))
    dist.destroy_process_group()


# --------------------------------------------------------------------------
# 7. One query per vertex (--readout-res voxels) against rois_all
# --------------------------------------------------------------------------

def voxels(report: Report, scale: Scale, device: torch.device) -> None:
    """A training step (forward, backward, AdamW) with one query per vertex, against rois_all's 50 queries.

    Both use the linear readout (voxels needs it) on the same random tokens;
    the voxel queries are decoded in chunks of ``DecoderConfig.query_chunk``
    with activation checkpointing, so no batch x heads x vertices x tokens
    attention tensor is ever made.
    """
    section = "voxels readout"
    with torch.device("meta"):
        probe = make_backbone(scale)
    n_tokens = probe.grid[0] * probe.grid[1]
    g = torch.Generator(device).manual_seed(4)
    x = torch.randn(scale.batch, n_tokens, probe.dim, device=device, generator=g)
    decoder = replace(scale.decoder, readout="linear")
    dtype_name = "bfloat16" if device.type == "cuda" else "float32"
    results = {}
    for name, queries in (("rois_all", synthetic_queries(scale.n_vertices)),
                          ("voxels", vertex_queries(dict(zip(HEMIS, scale.n_vertices))))):
        torch.manual_seed(0)
        model = build_encoder("transformer", queries, probe.dim, probe.grid, decoder).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=TrainConfig().lr)
        y = torch.randn(scale.batch, queries.n_total, device=device, generator=g)

        def step(model=model, optimizer=optimizer, y=y) -> None:
            with precision(device, dtype_name):
                pred = model(x)["pred"]
            loss = ((pred.float() - y) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        step()  # allocations and the optimizer's state
        with PeakMemory(device) as memory:
            seconds = min(timed(device, step) for _ in range(scale.voxel_steps))
        results[name] = (seconds, memory.peak_gib)
        dense = scale.batch * decoder.nheads * queries.n_queries * n_tokens * getattr(torch, dtype_name).itemsize
        report.add(section, f"training step, {name}", 1000 * seconds, "ms",
                   f"{queries.n_queries} queries, {n_tokens} tokens, batch {scale.batch}, hidden {decoder.hidden_dim}"
                   + (f"; chunks of {decoder.query_chunk} (a whole {dtype_name} attention map would be {_size(dense)})"
                      if name == "voxels" else ""))
        report.add(section, f"peak memory, {name}", memory.peak_gib, memory.unit,
                   f"the step above what was allocated before: {memory.peak_gib - memory.before_gib:.2f}")
        del model, optimizer, y
        release_memory()
    report.add(section, "voxels / rois_all, step time", results["voxels"][0] / results["rois_all"][0], "x")
    report.add(section, "voxels / rois_all, peak memory", results["voxels"][1] / results["rois_all"][1], "x")


# --------------------------------------------------------------------------
# 6. The feature cache
# --------------------------------------------------------------------------

def feature_cache(report: Report, scale: Scale, device: torch.device) -> None:
    """Size of a real cache entry per image (written by the project's cache), scaled to NSD subjects."""
    from PIL import Image

    from model.features import extract_features

    section = "feature cache"
    backbone = make_backbone(scale)
    with tempfile.TemporaryDirectory() as tmp:
        images = random_images(scale.cache_images, scale.image_side, torch.device("cpu"), seed=5)
        paths = []
        for i, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
            paths.append(Path(tmp) / f"train-{i + 1:04d}_nsd-{i:05d}.png")
            Image.fromarray(image).save(paths[-1])
        start = time.perf_counter()
        entry = extract_features(backbone, paths, Path(tmp) / "cache", batch_size=scale.extract_batch,
                                 device=str(device), desc="cache")
        seconds = time.perf_counter() - start
        array = entry.path / "features.npy"
        per_image = (array.stat().st_size - _npy_header_bytes(array)) / len(paths)
        shape = entry.features.shape
    report.add(section, "end-to-end extraction into the cache", len(paths) / seconds, "images/s",
               f"{len(paths)} PNGs: decoding, backbone, float16 write")
    report.add(section, "bytes per image", per_image, "bytes", f"{shape[1]} tokens x {shape[2]} channels, float16")
    for subj, (n_train, n_test) in SUBJECT_IMAGES.items():
        if subj == 1 or scale is REAL:
            report.add(section, f"subject {subj}, one layer: train + test", (n_train + n_test) * per_image / 1e9, "GB",
                       f"{n_train} + {n_test} images; every block of {backbone.depth}: "
                       f"{backbone.depth * (n_train + n_test) * per_image / 1e9:.0f} GB")


def _npy_header_bytes(path: Path) -> int:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        read(f)
        return f.tell()


# --------------------------------------------------------------------------

SECTIONS = {
    "feature extraction": feature_extraction,
    "readout": readout,
    "training epoch": training,
    "integrated gradients": integrated_gradients,
    "DDP": ddp,
    "feature cache": feature_cache,
    "voxels readout": voxels,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cuda, cpu or mps")
    parser.add_argument("--small", action="store_true", help="the scaled-down version (minutes on a CPU)")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    parser.add_argument("--voxel-steps", type=int, default=None,
                        help=f"training steps timed per readout in the voxels section, after one untimed "
                             f"(default {REAL.voxel_steps}; the fastest counts)")
    parser.add_argument("--ddp-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    scale = SMALL if args.small else REAL
    if args.voxel_steps is not None:
        scale = replace(scale, voxel_steps=args.voxel_steps)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ddp_worker:
        ddp_worker(args.ddp_worker, scale, args.device)
        return 0
    try:
        device = pick_device(args.device)
        unknown = [s for s in args.sections.split(",") if s not in SECTIONS]
        if unknown:
            raise InputError("--sections", f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
        if scale.voxel_steps < 1:
            raise InputError("--voxel-steps", f"must be at least 1, not {scale.voxel_steps}")
    except InputError as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)  # flags named as tbe names them
        return 2
    report = Report(str(device), scale.name)
    print(f"bench_gpu ({scale.name} scale) on {device}: {json.dumps(environment())}", flush=True)
    start = time.perf_counter()
    for name in args.sections.split(","):
        report.run(name, SECTIONS[name], scale, device)
    report.add("total", "wall time", time.perf_counter() - start, "s")
    print("\n" + report.table(), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=1, default=str))
    return 0 if all(s.get("ok") is not False for s in report.sections.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
