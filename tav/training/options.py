"""``TrainerOptions``: where and how a training runs, as typed options (every field a flag of the training scripts).

Kept apart from ``tav.training.trainer`` (which builds the Lightning ``Trainer`` from them) so that command lines
which only parse the flags, such as the samplers', do not import Lightning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from tav.errors import InputError

log = logging.getLogger(__name__)


@dataclass
class TrainerOptions:
    """Where and how to run; every field is a command-line flag of the training scripts."""

    accelerator: str = "auto"  # cpu | gpu | auto
    devices: str = "auto"  # a count, a list like "0,1", or auto
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_find_unused_parameters_true | fsdp ...
    precision: str = "32"  # 32 | bf16 | 16 (mixed precision via autocast)
    gpus: int | None = None  # seed flag (Lightning 1.x): N GPUs; falls back to CPU with a warning
    max_steps: int = -1
    max_epochs: int | None = None
    val_check_interval: float = 1.0  # fraction of an epoch (<= 1.0) or a number of training batches
    limit_val_batches: float = 1.0
    sync_batchnorm: bool = False
    progress_bar_refresh_rate: int = 1  # 0 disables the bar
    log_every_n_steps: int = 50
    default_root_dir: str = "runs"
    accumulate_grad_batches: int = 1  # automatic-optimisation modules only
    gradient_clip_val: float | None = None  # automatic-optimisation modules only
    verbose: bool = False  # Lightning's model summary (and, via the scripts, its info lines) shown
    extra: dict = field(default_factory=dict)  # further Trainer keyword arguments


def resolve_devices(opts: TrainerOptions) -> tuple[str, int | str | list[int]]:
    """Accelerator and devices after applying the seed's ``--gpus``."""
    accelerator, devices = opts.accelerator, opts.devices
    if opts.gpus is not None and accelerator == "auto" and devices == "auto":
        if opts.gpus > 0 and torch.cuda.is_available():
            accelerator, devices = "gpu", str(opts.gpus)
        else:
            if opts.gpus > 0:
                log.warning("--gpus %d given but no CUDA device is available; running on the CPU", opts.gpus)
            accelerator, devices = "cpu", "1"
    if isinstance(devices, str) and devices not in ("auto", "-1"):
        if "," in devices:
            devices = [int(d) for d in devices.split(",") if d]
        elif devices.isdigit():
            devices = int(devices)
        else:
            raise InputError(f"--devices {devices!r}: give a count, a list like 0,1, or auto")
    return accelerator, devices
