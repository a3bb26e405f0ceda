"""Device choice and mixed precision: CUDA (bf16 autocast), else MPS, else CPU."""
from __future__ import annotations

import contextlib

import torch

from .errors import InputError

DEVICES = ("auto", "cpu", "cuda", "mps")


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; naming an absent device is an error."""
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
    }
    if name == "auto":
        return torch.device(next(d for d in ("cuda", "mps", "cpu") if available[d]))
    if name.split(":")[0] not in available:
        raise InputError("--device", f"unknown device {name!r}; choose from {', '.join(DEVICES)}")
    if not available[name.split(":")[0]]:
        raise InputError("--device", f"{name} is not available on this machine")
    return torch.device(name)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision elsewhere (CPU autocast is slower, MPS bf16 is patchy)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
