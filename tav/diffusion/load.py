"""Save and load diffusion U-Nets: ``tav`` files, our Lightning checkpoints and upstream bare state dicts.

Formats (all read with ``weights_only=True`` through ``tav.checkpoint``):
- ``tav`` (``save_unet``; the trainer's ``modelNNNNNN.pt`` / ``emaNNNNNN.pt``): ``{"stage": "unet", "config":
  {"unet": UNetConfig fields, "process": ProcessConfig fields}, "state_dict": U-Net keys, "step", "weights"}``;
- our Lightning checkpoints (``scripts/diffusion_video_train_3d.py``): the same config under
  ``hyper_parameters``; tensors under ``net.`` (trained) and ``ema.`` (EMA). ``ema=True`` takes the EMA;
- upstream bare state dicts (the released ``model300000.pt``, guided-diffusion key layout): no config at
  all. The architecture is inferred from the tensors (``unet_config_from_state_dict``); ``num_heads`` and
  the attention order cannot be inferred and default to upstream's (4, legacy). The process defaults to
  the released setting (4000 cosine steps, learned range, MSE) with ``rescale_timesteps=True``, the
  convention of upstream's sampler (its trainer defaulted to False; which one the released weights saw is
  unknown, see ``docs/upstream.md``: pass ``rescale_timesteps=False`` to try the other).

``overrides`` name fields of either ``UNetConfig`` (e.g. ``num_heads``, ``gradient_checkpointing``,
``attention_impl``) or ``ProcessConfig`` (e.g. ``rescale_timesteps``); they replace stored values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tav.checkpoint import Checkpoint, read_checkpoint, save_checkpoint, strict_from_state_dict
from tav.config import from_dict, to_dict
from tav.diffusion.config import UNetConfig, unet_config_from_state_dict
from tav.diffusion.schedule import GaussianSchedule, ProcessConfig
from tav.diffusion.unet3d import UNet
from tav.errors import InputError

UNET_FIELDS = frozenset(f.name for f in fields(UNetConfig))
PROCESS_FIELDS = frozenset(f.name for f in fields(ProcessConfig))
LIGHTNING_PREFIXES = {True: "ema.", False: "net."}


def split_overrides(overrides: Mapping[str, Any], where: str, unet_fields: frozenset[str] = UNET_FIELDS,
                    model: str = "U-Net") -> tuple[dict, dict]:
    """``overrides`` split into ``(network settings, ProcessConfig settings)``; a name in neither
    ``unet_fields`` nor ``ProcessConfig`` is a one-line ``InputError`` naming ``where`` and ``model``."""
    unknown = sorted(set(overrides) - unet_fields - PROCESS_FIELDS)
    if unknown:
        raise InputError(f"{where}: unknown {model}/process setting(s) {unknown}; known: "
                         f"{sorted(unet_fields | PROCESS_FIELDS)}")
    return ({k: v for k, v in overrides.items() if k in unet_fields},
            {k: v for k, v in overrides.items() if k in PROCESS_FIELDS})


def _tensors(ckpt: Checkpoint, ema: bool) -> dict[str, Tensor]:
    """The U-Net tensors of a checkpoint, prefix removed (Lightning files: ``ema.`` or ``net.``)."""
    if ckpt.format != "lightning":
        return dict(ckpt.state_dict)
    prefix = LIGHTNING_PREFIXES[ema]
    sd = {k[len(prefix):]: v for k, v in ckpt.state_dict.items() if k.startswith(prefix)}
    if not sd:
        raise InputError(f"{ckpt.path}: no '{prefix}*' tensors in this training checkpoint")
    return sd


def read_unet_checkpoint(path: str | os.PathLike, *, ema: bool = True, process_defaults: Mapping | None = None,
                         **overrides: Any) -> tuple[UNetConfig, ProcessConfig, dict[str, Tensor]]:
    """``(UNetConfig, ProcessConfig, state_dict)`` of a diffusion checkpoint, ``overrides`` applied.

    ``process_defaults`` are process settings for files that record none (upstream bare state dicts); for a
    file that records its process, a default that disagrees with it is a one-line ``InputError``.
    """
    ckpt = read_checkpoint(path, expect="unet")
    where = str(ckpt.path)
    unet_over, process_over = split_overrides(overrides, where)
    defaults = dict(process_defaults or {})
    split_overrides(defaults, where)
    if ckpt.config is None:
        process_over = {**defaults, **process_over}
    else:
        stored = dict(ckpt.config.get("process") or {})
        for key, value in defaults.items():
            if key in stored and stored[key] != value:
                raise InputError(f"{where}: trained with {key}={stored[key]!r}, which disagrees with {value!r}; "
                                 f"drop that setting (the checkpoint records its diffusion process)")
    sd = _tensors(ckpt, ema)
    if ckpt.config is not None:  # tav / Lightning: the stored config wins over inference
        stored = ckpt.config
        if not isinstance(stored.get("unet"), Mapping) or not isinstance(stored.get("process"), Mapping):
            raise InputError(f"{where}: config has no 'unet'/'process' sections; not a tav diffusion checkpoint")
        unet_cfg = from_dict(UNetConfig, {**stored["unet"], **unet_over}, where=f"{where}: config.unet")
        process = from_dict(ProcessConfig, {**stored["process"], **process_over}, where=f"{where}: config.process")
    else:  # upstream bare state dict
        unet_cfg = unet_config_from_state_dict(sd, **unet_over)
        process = from_dict(ProcessConfig, {"learn_sigma": unet_cfg.learn_sigma, **process_over},
                            where=f"{where}: process overrides")
    return unet_cfg, process, sd


def unet_from_state_dict(cfg: UNetConfig, sd: Mapping[str, Tensor], where: str = "state dict") -> UNet:
    """``UNet(cfg)`` with ``sd`` loaded strictly; missing, unexpected or mis-shaped keys are one line."""
    return strict_from_state_dict(lambda: UNet(cfg), sd, where, "U-Net")


def load_unet(path: str | os.PathLike, device: str | torch.device = "cpu", *, ema: bool = True,
              process_defaults: Mapping | None = None, **overrides: Any) -> UNet:
    """The diffusion U-Net of ``path`` in eval mode on ``device``, called as ``net(x, t)``.

    ``t`` are the timestep values the network itself receives: with ``net.process.rescale_timesteps`` the
    original step times ``1000 / net.process.steps``, else the integer step. ``net.process`` is the
    ``ProcessConfig`` the weights go with (stored, or the upstream default for bare state dicts).
    ``ema`` picks the EMA weights of a training checkpoint (other files hold one set); ``process_defaults``:
    see :func:`read_unet_checkpoint`. Wrong-stage files and mismatched weights raise a one-line
    ``InputError`` naming the file.
    """
    cfg, process, sd = read_unet_checkpoint(path, ema=ema, process_defaults=process_defaults, **overrides)
    net = unet_from_state_dict(cfg, sd, where=str(path)).to(device).eval()
    net.process = process
    return net


def load_diffusion(path: str | os.PathLike, device: str | torch.device = "cpu", respacing: str | None = None, *,
                   ema: bool = True, process_defaults: Mapping | None = None,
                   **overrides: Any) -> tuple[UNet, GaussianSchedule]:
    """``(net, schedule)``: ``load_unet`` plus the process it was trained with, respaced if asked
    (``"100"``, ``"ddim50"``; None = all steps)."""
    net = load_unet(path, device, ema=ema, process_defaults=process_defaults, **overrides)
    return net, GaussianSchedule.from_config(net.process, respacing=respacing)


def save_unet(net: UNet, path: str | os.PathLike, process: ProcessConfig, **extra: Any) -> Path:
    """Write ``net`` as a ``tav`` file: its config, ``process`` and its state dict (``extra``: e.g. ``step``)."""
    config = {"unet": to_dict(net.config), "process": to_dict(process)}
    return save_checkpoint(path, "unet", config, net.state_dict(), **extra)
