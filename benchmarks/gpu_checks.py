"""Does the GPU compute what the CPU computes? A CUDA-against-CPU agreement check (needs CUDA; < 1 min).

The same tiny models and inputs are run on the CPU in float32 (the
reference) and on ``--device`` in float32 and under bf16 autocast (what
training and prediction use on CUDA); every difference is printed next to
its tolerance, and the exit status is 1 if any is exceeded:

* backbone ``q`` features: float32 rel. error <= 5e-3; bf16 rel. error <= 0.02
* predictions of each readout: float32 rel. error <= 1e-4; bf16 min r per vertex >= 0.99
* gradients of one training step: float32 rel. error <= 1e-3; bf16 rel. error <= 0.1
* decoder attention maps: float32 max abs diff <= 1e-5; bf16 max abs diff <= 0.02
* token- and pixel-level integrated gradients (float32 only, as the project
  computes them): rel. error <= 1e-3 (tokens), <= 2e-2 (pixels)
* the analysis commands' own code (``tbe interpret``, ``check-maps``,
  ``predict``: :func:`analysis_checks`) with the run on the device:
  integrated gradients and saliency maps rel. error <= 2e-2, token
  integrated gradients <= 1e-3, decoder attention (autocast) max abs diff
  <= 0.02, backbone rollout <= 5e-3, predictions (autocast) min r >= 0.99

The looser float32 tolerances of the two rows that pass through the backbone
allow for cuDNN, which by default may compute the patch-embedding
convolution in TF32 on CUDA (the header line says whether it may).
(rel. error: ||device - cpu|| / ||cpu||.) With ``--device cpu`` it runs the
same comparisons on the CPU (float32 is then identical by construction and
the bf16 rows use CPU autocast): that is how the CI keeps this script
working on machines without a GPU. Captum is needed for the two
integrated-gradients rows.

    python benchmarks/gpu_checks.py [--device cuda] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import synthetic_queries  # noqa: E402  (also puts the repository on sys.path)

from analyses.cli import error_line  # noqa: E402
from model.backbone import BackboneConfig, build_backbone  # noqa: E402
from model.device import pick_device  # noqa: E402
from model.encoders import DecoderConfig, build_encoder  # noqa: E402
from model.errors import InputError  # noqa: E402
from model.rois import HEMIS  # noqa: E402
from model.training.loop import hemisphere_mse  # noqa: E402

CPU = torch.device("cpu")
READOUTS = ("retinotopic", "linear", "heads")
GRID = (6, 6)


@dataclass
class Check:
    name: str
    value: float
    tolerance: float
    higher_is_better: bool = False

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.value)) and (self.value >= self.tolerance if self.higher_is_better
                                                  else self.value <= self.tolerance)

    def line(self) -> str:
        sign = ">=" if self.higher_is_better else "<="
        return f"{self.name:<68s} {self.value:>11.3g}  {sign} {self.tolerance:<8g} {'ok' if self.ok else 'FAILED'}"


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, b the CPU reference."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def min_r(a: torch.Tensor, b: torch.Tensor) -> float:
    """The smallest Pearson r over columns (rows are images)."""
    a, b = a.detach().double().cpu().flatten(1), b.detach().double().cpu().flatten(1)
    a, b = a - a.mean(0), b - b.mean(0)
    denom = a.norm(dim=0) * b.norm(dim=0)
    keep = denom > 1e-12
    return float(((a * b).sum(0)[keep] / denom[keep]).min())


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def tiny_encoder(readout: str, queries, features: torch.Tensor):
    torch.manual_seed(0)
    cfg = DecoderConfig(hidden_dim=32, nheads=4, dim_feedforward=64, dropout=0.0, readout=readout, readout_maps=2,
                        readout_map_dim=8)
    model = build_encoder("transformer", queries, features.shape[-1], GRID, cfg)
    model.set_feature_stats(features.numpy())
    return model.eval()


def run_checks(device: torch.device) -> list[Check]:
    checks: list[Check] = []
    queries = synthetic_queries((150, 170))
    g = torch.Generator().manual_seed(0)
    features = torch.randn(16, GRID[0] * GRID[1], 24, generator=g)
    targets = torch.randn(16, queries.n_total, generator=g)
    bounds = [queries.vertex_slice(h) for h in HEMIS]
    valid = torch.ones(queries.n_total)

    for readout in READOUTS:
        reference = tiny_encoder(readout, queries, features)
        on_device = copy.deepcopy(reference).to(device)
        with torch.no_grad():
            ref = reference(features, return_attention=True)
            exact = on_device(features.to(device), return_attention=True)
            with autocast(device, True):
                low = on_device(features.to(device), return_attention=True)
        checks += [Check(f"{readout}: predictions, float32 (rel. error)", rel_error(exact["pred"], ref["pred"]), 1e-4),
                   Check(f"{readout}: predictions, bf16 (min r per vertex)", min_r(low["pred"], ref["pred"]), 0.99, True)]
        if readout == "retinotopic":
            checks += [Check("attention maps, float32 (max abs diff)",
                             float((exact["attention"].float().cpu() - ref["attention"]).abs().max()), 1e-5),
                       Check("attention maps, bf16 (max abs diff)",
                             float((low["attention"].float().cpu() - ref["attention"]).abs().max()), 0.02)]
        grads = {}
        for name, model, x, y, v, bf16 in (("cpu", reference, features, targets, valid, False),
                                           ("float32", on_device, features.to(device), targets.to(device), valid.to(device), False),
                                           ("bf16", on_device, features.to(device), targets.to(device), valid.to(device), True)):
            model.zero_grad(set_to_none=True)
            with autocast(x.device, bf16):
                pred = model(x)["pred"]
            hemisphere_mse(pred, y, v, bounds).mean().backward()
            grads[name] = torch.cat([p.grad.detach().float().cpu().flatten() for p in model.parameters() if p.grad is not None])
        checks += [Check(f"{readout}: training gradients, float32 (rel. error)", rel_error(grads["float32"], grads["cpu"]), 1e-3),
                   Check(f"{readout}: training gradients, bf16 (rel. error)", rel_error(grads["bf16"], grads["cpu"]), 0.1)]

    checks += backbone_checks(device)
    checks += attribution_checks(device, queries, features)
    checks += analysis_checks(device, queries)
    return checks


def backbone_checks(device: torch.device) -> list[Check]:
    config = BackboneConfig("vit_small_patch14_dinov2.lvd142m", "random", seed=0, layer=11, feature="q")
    backbone = build_backbone(config, 56)
    images = torch.randint(0, 256, (4, 3, 56, 56), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = backbone(backbone.preprocess(images))
        on_device = copy.deepcopy(backbone).to(device)
        exact = on_device(on_device.preprocess(images.to(device)))
        with autocast(device, True):
            low = on_device(on_device.preprocess(images.to(device)))
    return [Check("backbone q features, float32 (rel. error)", rel_error(exact, ref), 5e-3),
            Check("backbone q features, bf16 (rel. error)", rel_error(low, ref), 0.02)]


def attribution_checks(device: torch.device, queries, features: torch.Tensor) -> list[Check]:
    """Integrated gradients (float32, as the project computes them) through the project's attribution models."""
    from captum.attr import IntegratedGradients

    from bench_gpu import roi_targets
    from interpret.attribution import ImageModel, TokenModel

    targets = roi_targets(queries, 2)
    encoder = tiny_encoder("retinotopic", queries, features)
    checks = []
    tokens = features[:2]
    baseline = encoder.feature_mean.expand_as(tokens).contiguous()
    token = []
    for where in (CPU, device):
        model = TokenModel(copy.deepcopy(encoder), targets).to(where).eval()
        token.append(IntegratedGradients(model).attribute(tokens.to(where).requires_grad_(True),
                                                          baselines=baseline.to(where), target=1, n_steps=16,
                                                          internal_batch_size=8))
    checks.append(Check("token integrated gradients, float32 (rel. error)", rel_error(token[1], token[0]), 1e-3))

    config = BackboneConfig("vit_small_patch14_dinov2.lvd142m", "random", seed=0, layer=11, feature="q")
    backbone = build_backbone(config, 84)
    enc = build_encoder("transformer", queries, backbone.dim, backbone.grid,
                        DecoderConfig(hidden_dim=32, nheads=4, dim_feedforward=64, dropout=0.0, readout_maps=2,
                                      readout_map_dim=8)).eval()
    images = torch.rand(1, 3, 84, 84, generator=torch.Generator().manual_seed(2))
    pixel = []
    for where in (CPU, device):
        model = ImageModel(copy.deepcopy(backbone), copy.deepcopy(enc), targets).to(where).eval()
        pixel.append(IntegratedGradients(model).attribute(images.to(where).requires_grad_(True),
                                                          baselines=torch.zeros_like(images).to(where), target=0,
                                                          n_steps=8, internal_batch_size=8))
    checks.append(Check("pixel integrated gradients, float32 (rel. error)", rel_error(pixel[1], pixel[0]), 2e-2))
    return checks


def analysis_checks(device: torch.device, queries) -> list[Check]:
    """The code behind ``tbe interpret``/``check-maps``/``predict`` with the run on ``device``, against the CPU.

    The same functions the commands call (:func:`interpret.attribution.attribute`,
    :func:`interpret.attention.decoder_attention` and ``backbone_attention``,
    :func:`model.runs.predictions.predict`), each given an encoder and backbone placed on
    the device, as ``open_run(..., device)`` places them: attributions in
    float32, attention and predictions under bf16 autocast on CUDA.
    """
    from types import SimpleNamespace

    from bench_gpu import roi_targets
    from interpret.attention import backbone_attention, decoder_attention
    from interpret.attribution import Settings, attribute
    from interpret.maps import MapGrid
    from model.runs import predict

    config = BackboneConfig("vit_small_patch14_dinov2.lvd142m", "random", seed=0, layer=11, feature="q")
    backbone = build_backbone(config, 84).eval()
    images = torch.rand(2, 3, 84, 84, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        tokens = backbone(backbone.preprocess(images)).numpy()
    torch.manual_seed(0)
    encoder = build_encoder("transformer", queries, backbone.dim, backbone.grid,
                            DecoderConfig(hidden_dim=32, nheads=4, dim_feedforward=64, dropout=0.0, readout_maps=2,
                                          readout_map_dim=8)).eval()
    encoder.set_feature_stats(tokens)
    grid, names, targets = MapGrid.for_backbone(backbone), ["a", "b"], roi_targets(queries, 2)
    methods = ["integrated_gradients", "saliency", "token_integrated_gradients"]
    out = []
    for where in (CPU, device):
        enc, bb = copy.deepcopy(encoder).to(where), copy.deepcopy(backbone).to(where)
        run = SimpleNamespace(model=enc, queries=queries)
        maps = attribute(run, bb, images, tokens, targets, methods, grid, names, Settings(n_steps=8, internal_batch_size=8),
                         encoder=enc)
        out.append({"maps": maps, "attention": decoder_attention(run, tokens, grid, names, each_head=True),
                    "backbone": backbone_attention(bb, images, grid, names), "pred": predict(enc, tokens)})
    cpu, dev = out

    def values(ds, name) -> torch.Tensor:
        return torch.from_numpy(np.nan_to_num(ds[name].values.astype(np.float64)))

    return [
        Check("tbe interpret: integrated gradients maps, float32 (rel. error)",
              rel_error(values(dev["maps"], "integrated_gradients"), values(cpu["maps"], "integrated_gradients")), 2e-2),
        Check("tbe interpret: saliency maps, float32 (rel. error)",
              rel_error(values(dev["maps"], "saliency"), values(cpu["maps"], "saliency")), 2e-2),
        Check("tbe interpret: token integrated gradients maps, float32 (rel. error)",
              rel_error(values(dev["maps"], "token_integrated_gradients"),
                        values(cpu["maps"], "token_integrated_gradients")), 1e-3),
        Check("tbe interpret: decoder attention maps, autocast (max abs diff)",
              float((values(dev["attention"], "attention") - values(cpu["attention"], "attention")).abs().max()), 0.02),
        Check("tbe interpret: backbone rollout, float32 (rel. error)",
              rel_error(values(dev["backbone"], "backbone_rollout"), values(cpu["backbone"], "backbone_rollout")), 5e-3),
        Check("tbe predict: predictions, autocast (min r per vertex)",
              min_r(torch.from_numpy(dev["pred"]), torch.from_numpy(cpu["pred"])), 0.99, True),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="the device compared with the CPU (default cuda)")
    parser.add_argument("--json", type=Path, help="also write the checks here as JSON")
    args = parser.parse_args(argv)
    try:
        device = pick_device(args.device)
    except InputError as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)  # flags named as tbe names them
        return 2
    start = time.perf_counter()
    checks = run_checks(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    print(f"{device} ({name}) against the CPU, float32 reference; torch {torch.__version__}; TF32 allowed in "
          f"matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN {torch.backends.cudnn.allow_tf32}")
    for check in checks:
        print(check.line())
    failed = [c.name for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)}/{len(checks)} within tolerance in {time.perf_counter() - start:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "name": name, "torch": torch.__version__,
                                         "checks": [{**asdict(c), "ok": c.ok} for c in checks]}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
