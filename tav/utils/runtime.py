"""Device and precision, decided once by the caller: device choice, autocast context, seeding."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

PRECISIONS = ("32", "bf16", "16")
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


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


def read_cpuinfo() -> str | None:
    """The text of /proc/cpuinfo, or None where it cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def cpu_bf16_units(cpuinfo: str | None = None) -> str | None:
    """The CPU's bf16 matrix units oneDNN may use: ``amx`` (AMX tiles, Linux flag ``amx_bf16``), ``avx512_bf16``
    (AVX-512 bf16 dot products), or None; a unit above an ``ONEDNN_MAX_CPU_ISA`` cap does not count (``make
    test-isa`` caps at ``AVX512_CORE``: None). ``cpuinfo``: the text of /proc/cpuinfo (read when None)."""
    if cpuinfo is None:
        cpuinfo = read_cpuinfo()
        if cpuinfo is None:
            return None
    flags = set(cpuinfo.split())
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    capped = bool(cap) and cap != "ALL"
    if "amx_bf16" in flags and not (capped and "AMX" not in cap):
        return "amx"
    if "avx512_bf16" in flags and not (capped and "BF16" not in cap and "AMX" not in cap):
        return "avx512_bf16"
    return None


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name and its wide-vector / bf16 flags (``avx512f``, ``avx512_bf16``, ``amx_tile``), e.g.
    ``"Intel(R) Xeon(R) Processor, avx512f avx512_bf16 amx_tile"``; for benchmark records. ``cpuinfo``: the text of
    /proc/cpuinfo (read when None; the platform's name where it cannot be read)."""
    import platform

    if cpuinfo is None:
        cpuinfo = read_cpuinfo()
        if cpuinfo is None:
            return platform.processor() or platform.machine() or "cpu"
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)}
    name = fields.get("model name") or platform.processor() or platform.machine() or "cpu"
    isa = [f for f in ("avx512f", "avx512_bf16", "amx_tile") if f in fields.get("flags", "").split()]
    return f"{name}, {' '.join(isa)}" if isa else name


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    """True when the CPU has AMX bf16 tile units and oneDNN may use them (see :func:`cpu_bf16_units`)."""
    return cpu_bf16_units(cpuinfo) == "amx"


def cpu_bf16_pays(cpuinfo: str | None = None) -> bool:
    """True where bf16 autocast runs faster than fp32 on this CPU: AMX tiles, or AVX-512 bf16 on an AMD CPU. An
    Intel CPU whose AVX-512 bf16 comes without AMX (AMX absent, or hidden by the hypervisor) runs oneDNN's bf16
    kernels at about half fp32's speed. ``cpuinfo``: the text of /proc/cpuinfo (read when None)."""
    if cpuinfo is None:
        cpuinfo = read_cpuinfo() or ""
    units = cpu_bf16_units(cpuinfo)
    return units == "amx" or (units == "avx512_bf16" and "AuthenticAMD" in cpuinfo)


def auto_precision(device: torch.device) -> str:
    """``bf16`` where bf16 autocast pays on ``device``, else ``32``: a CUDA GPU with bf16 support, or a CPU where
    :func:`cpu_bf16_pays`. Measured per training or sampling step on 2-core CPUs (``benchmarks/bench_precision.py``):
    AMD Zen 4 (avx512_bf16, no AMX) demo VQGAN 1.58x, demo diffusion prior 1.29x, release U-Net guided step 1.72x;
    Intel with AMX demo VQGAN 1.46x, prior 1.46x, TIA2V U-Nets 1.8x; Intel with avx512_bf16 and no AMX demo VQGAN
    0.54x, prior 0.57x, GPT 0.68x (slower: fp32 there)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "32"
    return "bf16" if device.type == "cpu" and cpu_bf16_pays() else "32"


def resolve_precision(precision: str, device: torch.device) -> str:
    """A ``--precision`` value made concrete: ``auto`` -> :func:`auto_precision` of ``device``, others as given."""
    return auto_precision(device) if precision == "auto" else precision


def decoding_precision(precision: str, device: torch.device) -> str:
    """The precision of autoregressive decoding (the GPT's stage 1) when the samplers run at ``precision``.

    fp32 on a CPU, whatever ``precision`` says: a batch's one-token matrix products are too small for the bf16 units
    and the casts cost more (bf16 decoding ran at 0.84x fp32 on the AMX kind, ``benchmarks/bench_gpt.py``), and the
    demo's judges do not tell the two apart (``benchmarks/bench_demo_stage1.py --precision``). Elsewhere
    :func:`resolve_precision`'s value.
    """
    return "32" if device.type == "cpu" else resolve_precision(precision, device)


def precision_note(requested: str, device: torch.device) -> str:
    """What ``--precision requested`` means on ``device``, for the log: e.g. ``bf16 autocast (auto: this CPU has
    AMX)``, ``fp32 (auto: no bf16 units on this CPU)``."""
    resolved = resolve_precision(requested, device)
    name = {"32": "fp32", "bf16": "bf16 autocast", "16": "fp16 autocast"}.get(resolved, resolved)
    if requested != "auto":
        return name
    if device.type == "cpu":
        units, pays = cpu_bf16_units(), cpu_bf16_pays()
        why = {"amx": "this CPU has AMX", "avx512_bf16": "this CPU has AVX-512 bf16"}.get(
            units, "no bf16 units on this CPU")
        if units is not None and not pays:
            why = "this CPU has AVX-512 bf16 without AMX, slower than fp32 on Intel"
    else:
        why = f"{device.type} {'with' if resolved == 'bf16' else 'without'} bf16 support"
    return f"{name} (auto: {why})"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` (``auto`` | ``32`` | ``bf16`` | ``16``) on ``device``; 32 is a
    no-op, ``auto`` is :func:`resolve_precision`'s choice."""
    dtype = autocast_dtype(precision, device)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def lightning_precision(precision: str, accelerator: str) -> str:
    """Map ``32|bf16|16`` to Lightning's names; bf16 on CPU stays ``bf16-mixed`` (works, slower than GPU)."""
    if precision in ("32", "32-true", "fp32"):
        return "32-true"
    if precision.startswith("bf16"):
        return "bf16-mixed"
    if precision.startswith("16"):
        return "16-mixed"
    raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The low-precision dtype :func:`autocast` runs ``precision`` in on ``device``; None for fp32."""
    precision = resolve_precision(precision, device)
    if precision in ("32", "32-true", "fp32"):
        return None
    return torch.bfloat16 if precision.startswith("bf16") else torch.float16


@contextlib.contextmanager
def held_weights(modules: Sequence[nn.Module], dtype: torch.dtype | None = None, kinds: tuple[type, ...] = CONVS,
                 channels_last: bool = False) -> Iterator[None]:
    """Within, the weights and biases of the layers of ``kinds`` in ``modules`` are held in ``dtype`` (None: as
    they are), and with ``channels_last`` their 4D / 5D weights in ``channels_last`` / ``channels_last_3d``;
    the original tensors are put back after.

    For frozen networks under autocast: autocast casts a layer's fp32 weight on every call, and its cache keeps
    only leaf tensors that require grad, so a frozen network's weights were re-cast at every call (every
    sampling step). Casting once gives the same low-precision operands. oneDNN and cuDNN pick the convolution
    kernels by the weights' layout (a channels-last weight makes the output channels-last too).
    """
    params = list({id(p): p for m in modules for layer in m.modules() if isinstance(layer, kinds)
                   for p in layer.parameters(recurse=False)}.values())
    originals = [p.data for p in params]
    try:
        with torch.inference_mode(False):
            for p in params:
                data = p.data.detach() if dtype is None else p.data.detach().to(dtype)
                if channels_last and data.dim() in (4, 5):
                    data = data.contiguous(memory_format=torch.channels_last if data.dim() == 4
                                           else torch.channels_last_3d)
                p.data = data
        yield
    finally:
        for p, data in zip(params, originals, strict=True):
            p.data = data


def sampling_weights(modules: Sequence[nn.Module], precision: str, device: torch.device
                     ) -> contextlib.AbstractContextManager:
    """:func:`held_weights` as the samplers use it for their frozen networks under ``precision``: convolution
    weights held in the autocast dtype, and on a CPU with AMX in bf16 also channels-last (oneDNN's AMX
    convolutions then skip a layout reorder per call: on the 2-core AMX kind the release U-Net's guided forward +
    backward 2.5x -> 3.5x fp32's speed, ``benchmarks/bench_precision.py``; on AMD Zen 4's AVX-512 bf16 the demo's
    stage 2 is 7% slower channels-last, so it stays contiguous there). fp32 leaves them as they are."""
    dtype = autocast_dtype(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    amx = device.type == "cpu" and dtype == torch.bfloat16 and cpu_has_amx()
    return held_weights(modules, dtype, CONVS, channels_last=amx)
