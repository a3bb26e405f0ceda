"""Device choice and mixed precision: CUDA (bf16 autocast), else MPS, else CPU.

The one rule for every command: :func:`pick_device` (``auto`` = CUDA, then
MPS, then CPU; an absent device is refused), :func:`add_device_arg` adds
the ``--device`` option, and the CLI resolves it once before a command runs.

Precision: forward-only passes (backbone features, predictions, attention
maps, faithfulness curves) run under :func:`autocast` (bf16 on CUDA);
gradient attributions run in float32 (:func:`full_precision`), since the
completeness of integrated gradients (sum of attributions = f(x) - f(baseline))
is only as good as the precision of the gradients it integrates.
"""
from __future__ import annotations

import argparse
import contextlib

import torch

from .errors import InputError

DEVICES = ("auto", "cpu", "cuda", "mps")
DEVICE_HELP = "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps (default auto)"


def available_devices() -> dict[str, bool]:
    """Which device types this machine offers."""
    return {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
    }


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; naming an absent device is an error (:class:`InputError` on ``--device``)."""
    if isinstance(name, torch.device):
        name = str(name)
    available = available_devices()
    if name == "auto":
        return torch.device(next(d for d in ("cuda", "mps", "cpu") if available[d]))
    kind, _, index = str(name).partition(":")
    if kind not in available or (index and not index.isdigit()):
        raise InputError("--device", f"unknown device {name!r}; choose from {', '.join(DEVICES)}")
    if not available[kind]:
        raise InputError("--device", f"{name} is not available on this machine (choose auto or cpu)")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise InputError("--device", f"{name} is not available on this machine ({torch.cuda.device_count()} CUDA devices)")
    return torch.device(name)


#: the one name of the rule (commands added later reuse it with :func:`add_device_arg`)
resolve_device = pick_device


def add_device_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The ``--device`` option of a command that computes (resolved by the CLI with :func:`pick_device`)."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device a module's parameters (or buffers) live on; CPU for a module without any."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision elsewhere (CPU autocast is slower, MPS bf16 is patchy)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """float32 even inside an autocast region: for gradient attributions (integrated gradients' completeness)."""
    if device.type == "cuda":
        return torch.autocast("cuda", enabled=False)
    return contextlib.nullcontext()  # autocast is only ever enabled on CUDA (:func:`autocast`)
