"""Device and precision, decided once by the caller: device choice, autocast context, seeding."""

from __future__ import annotations

import contextlib
import logging
import os

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("32", "bf16", "16")


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu; anything else is passed to ``torch.device``."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def deterministic_kernels(device: torch.device) -> None:
    """Ask for run-to-run identical results on ``device`` (see docs/determinism.md).

    On CUDA: deterministic algorithms (warn-only: an op without a deterministic kernel warns once instead of
    failing), cuDNN autotuning off, a fixed cuBLAS workspace. On the CPU the kernels are already deterministic
    for a given shape, and the deterministic mode would only add work (it fills every new tensor), so nothing
    changes there.
    """
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def cpu_bf16_units(cpuinfo: str | None = None) -> str | None:
    """The CPU's bf16 matrix units oneDNN may use: ``amx`` (AMX tiles, Linux flag ``amx_bf16``), ``avx512_bf16``
    (AVX-512 bf16 dot products), or None; a unit above an ``ONEDNN_MAX_CPU_ISA`` cap does not count (``make
    test-isa`` caps at ``AVX512_CORE``: None). ``cpuinfo``: the text of /proc/cpuinfo (read when None)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    flags = set(cpuinfo.split())
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    capped = bool(cap) and cap != "ALL"
    if "amx_bf16" in flags and not (capped and "AMX" not in cap):
        return "amx"
    if "avx512_bf16" in flags and not (capped and "BF16" not in cap and "AMX" not in cap):
        return "avx512_bf16"
    return None


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    """True when the CPU has AMX bf16 tile units and oneDNN may use them (see :func:`cpu_bf16_units`)."""
    return cpu_bf16_units(cpuinfo) == "amx"


def auto_precision(device: torch.device) -> str:
    """``bf16`` where bf16 autocast pays on ``device``, else ``32``: a CUDA GPU with bf16 support, or a CPU with
    bf16 units (AMX or AVX-512 bf16). Measured per training or sampling step on the two 2-core CPU kinds
    (``benchmarks/bench_precision.py``): AMD Zen 4 (avx512_bf16, no AMX) demo VQGAN 1.58x, demo diffusion prior
    1.29x, release U-Net guided step 1.72x; Intel with AMX demo VQGAN 1.46x, prior 1.46x, TIA2V U-Nets 1.8x."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "32"
    return "bf16" if device.type == "cpu" and cpu_bf16_units() is not None else "32"


def resolve_precision(precision: str, device: torch.device) -> str:
    """A ``--precision`` value made concrete: ``auto`` -> :func:`auto_precision` of ``device``, others as given."""
    return auto_precision(device) if precision == "auto" else precision


def precision_note(requested: str, device: torch.device) -> str:
    """What ``--precision requested`` means on ``device``, for the log: e.g. ``bf16 autocast (auto: this CPU has
    AMX)``, ``fp32 (auto: no bf16 units on this CPU)``."""
    resolved = resolve_precision(requested, device)
    name = {"32": "fp32", "bf16": "bf16 autocast", "16": "fp16 autocast"}.get(resolved, resolved)
    if requested != "auto":
        return name
    if device.type == "cpu":
        why = {"amx": "this CPU has AMX", "avx512_bf16": "this CPU has AVX-512 bf16"}.get(
            cpu_bf16_units(), "no bf16 units on this CPU")
    else:
        why = f"{device.type} {'with' if resolved == 'bf16' else 'without'} bf16 support"
    return f"{name} (auto: {why})"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` (``auto`` | ``32`` | ``bf16`` | ``16``) on ``device``; 32 is a
    no-op, ``auto`` is :func:`resolve_precision`'s choice."""
    precision = resolve_precision(precision, device)
    if precision in ("32", "32-true", "fp32"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def lightning_precision(precision: str, accelerator: str) -> str:
    """Map ``32|bf16|16`` to Lightning's names; bf16 on CPU stays ``bf16-mixed`` (works, slower than GPU)."""
    if precision in ("32", "32-true", "fp32"):
        return "32-true"
    if precision.startswith("bf16"):
        return "bf16-mixed"
    if precision.startswith("16"):
        return "16-mixed"
    raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
