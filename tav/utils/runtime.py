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


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` (``32`` | ``bf16`` | ``16``) on ``device``; 32 is a no-op."""
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
