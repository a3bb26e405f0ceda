"""Device choice and mixed precision: CUDA (bf16 autocast), else MPS, else CPU.

The one rule for every command: :func:`pick_device` (``auto`` = CUDA, then
MPS, then CPU; an absent device is refused), :func:`add_device_arg` adds
the ``--device`` option, and the CLI resolves it once before a command runs.

Precision: the frozen backbone's features are computed at the precision the
run's configuration names (``--precision``, :func:`feature_precision`:
float32, or bf16 autocast on the CPU or CUDA; ``auto`` is bf16 where the
device computes bf16 natively, :func:`native_bf16`). Other forward-only
passes (predictions, attention maps, faithfulness curves) run under
:func:`autocast` (bf16 on CUDA); gradient attributions run in float32
(:func:`full_precision`), since the completeness of integrated gradients
(sum of attributions = f(x) - f(baseline)) is only as good as the precision
of the gradients it integrates.
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch

from .errors import OptionError

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
        raise OptionError("device", f"unknown device {name!r}; choose from {', '.join(DEVICES)}")
    if not available[kind]:
        raise OptionError("device", f"{name} is not available on this machine (choose auto or cpu)")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise OptionError("device", f"{name} is not available on this machine ({torch.cuda.device_count()} CUDA devices)")
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


#: ``--precision`` of the frozen backbone: ``auto`` is resolved to one of the others when a command starts
PRECISIONS = ("auto", "float32", "bf16")
#: CPU flags (Linux ``/proc/cpuinfo``) of native bf16 arithmetic: Intel AMX, and AVX-512 BF16 (Intel, AMD Zen 4)
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The CPU's feature flags (empty where ``/proc/cpuinfo`` is not there: macOS, Windows)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[-1].split()}


def native_bf16(device: str | torch.device, cpuinfo: Path = CPUINFO) -> bool:
    """Whether ``device`` computes bf16 natively, so bf16 features cost less than float32 ones.

    CUDA: :func:`torch.cuda.is_bf16_supported` (Ampere and later); CPU: one
    of :data:`BF16_CPU_FLAGS` in ``/proc/cpuinfo`` (without them torch
    emulates bf16, slower than float32); MPS: no (its bf16 is patchy).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(cpu_flags(cpuinfo) & set(BF16_CPU_FLAGS))
    return False


def resolve_precision(precision: str, device: str | torch.device, cpuinfo: Path = CPUINFO) -> str:
    """``float32`` or ``bf16``: ``auto`` is bf16 where :func:`native_bf16`, else float32; a bad name is refused."""
    if precision not in PRECISIONS:
        raise OptionError("precision", f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device, cpuinfo) else "float32"
    return precision


def feature_precision(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Where the backbone computes its features: float32 as it is, bf16 under autocast (CPU or CUDA).

    float32 means float32 on every device (before ``--precision`` existed,
    features computed on CUDA used bf16 autocast).
    """
    if precision == "float32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise OptionError("precision", f"unknown backbone precision {precision!r}; choose float32 or bf16")
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise OptionError("precision", f"bf16 features are computed on the CPU or CUDA, not on {device.type}; "
                                        "use `precision` float32")
    return torch.autocast(device.type, dtype=torch.bfloat16)
