"""Save and load VQGAN checkpoints: ``tav`` files, our Lightning files, and the released upstream ``.ckpt``.

The upstream Lightning-1.5 files carry ``hyper_parameters = {"args": argparse.Namespace(...)}``; the
fields that shape the model are mapped onto ``VQGANConfig`` and the rest are ignored. Their state dict
uses the key layout of ``tests/data/state_dicts/ta2v_vqgan.tsv`` and includes the LPIPS weights
(``perceptual_model.*``), which the VQGAN module does not hold: they are accepted and skipped here, and
``tav.vqgan.losses.build_perceptual(state_dict=...)`` can use them.

Our own files: a ``tav`` checkpoint (``save_vqgan``), or a Lightning checkpoint with
``hyper_parameters = {"stage": "vqgan", "config": <VQGANConfig fields, or a run config holding them under
"model">}``. The VQGAN's tensors may sit under one wrapper prefix (e.g. ``vqgan.``); tensors outside it
(LPIPS, EMA copies of the wrapper) are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tav.checkpoint import Checkpoint, read_checkpoint, save_checkpoint, strict_from_state_dict
from tav.config import to_dict
from tav.errors import InputError
from tav.vqgan.config import VQGANConfig, vqgan_config_from_dict
from tav.vqgan.model import VQGAN

PERCEPTUAL_PREFIX = "perceptual_model."
_ANCHOR = "encoder.conv_first.conv.weight"  # present in every VQGAN state dict, whatever the prefix
_CODEBOOK_FLAG = "codebook.initialised"  # ours; absent from upstream files (loads as initialised)

# upstream argparse name -> VQGANConfig field (values are copied unchanged)
_UPSTREAM_FIELDS = {
    "embedding_dim": "embedding_dim", "n_codes": "n_codes", "n_hiddens": "n_hiddens",
    "downsample": "downsample", "norm_type": "norm", "padding_type": "padding_type",
    "image_channels": "image_channels", "resolution": "resolution", "sequence_length": "sequence_length",
    "disc_channels": "disc_channels", "disc_layers": "disc_layers", "disc_loss_type": "disc_loss_type",
    "image_gan_weight": "image_gan_weight", "video_gan_weight": "video_gan_weight",
    "l1_weight": "l1_weight", "gan_feat_weight": "gan_feat_weight", "perceptual_weight": "perceptual_weight",
    "discriminator_iter_start": "discriminator_iter_start", "restart_thres": "restart_thres", "lr": "lr",
}


def vqgan_config_from_upstream(args: Mapping[str, Any], where: str = "upstream args") -> VQGANConfig:
    """``VQGANConfig`` from an upstream TATS/TA2V argparse namespace (as a dict); other flags are ignored.

    Missing fields take upstream's code defaults. ``lpips_input_scale`` is set to the compat value 1.0:
    a released VQGAN was trained with LPIPS fed [-0.5, 0.5], so resumed training keeps that.
    """
    data = {ours: args[theirs] for theirs, ours in _UPSTREAM_FIELDS.items() if args.get(theirs) is not None}
    if "no_random_restart" in args:
        data["random_restart"] = not bool(args["no_random_restart"])
    data["lpips_input_scale"] = 1.0
    return vqgan_config_from_dict(data, where=where)


def _strip_prefix(sd: dict[str, Tensor], where: str) -> dict[str, Tensor]:
    """Keys of the VQGAN itself: a wrapper prefix (``model.``, ``vqgan.`` of a Lightning module) is removed
    and tensors outside it (the wrapper's other parts) are dropped."""
    anchors = [k[: -len(_ANCHOR)] for k in sd if k.endswith(_ANCHOR)]
    if len(anchors) != 1:
        raise InputError(f"{where}: expected one VQGAN encoder ({_ANCHOR}) in the state dict, found {len(anchors)}")
    prefix = anchors[0]
    if not prefix:
        return sd
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def vqgan_from_state_dict(cfg: VQGANConfig, state_dict: Mapping[str, Tensor], where: str = "state dict") -> VQGAN:
    """Build ``VQGAN(cfg)`` and load ``state_dict`` strictly; only ``perceptual_model.*`` may be extra and
    ``codebook.initialised`` absent (upstream files: the codebook is then marked initialised). Missing,
    unexpected or mis-shaped tensors raise a one-line ``InputError`` (``tav.checkpoint.strict_from_state_dict``).

    Also the way to use the VQGAN copy inside a GPT checkpoint (``first_stage_model.*`` with the prefix
    removed). Returns the model in train mode on CPU.
    """
    sd = {k: v for k, v in state_dict.items() if not k.startswith(PERCEPTUAL_PREFIX)}
    return strict_from_state_dict(lambda: VQGAN(cfg), sd, where, "VQGAN", optional=(_CODEBOOK_FLAG,))


def _config_of(ckpt: Checkpoint, config: VQGANConfig | None) -> VQGANConfig:
    where = str(ckpt.path)
    if ckpt.config is not None:  # VQGANConfig fields, or a run config with them under "model"
        data = ckpt.config.get("model") if isinstance(ckpt.config.get("model"), dict) else ckpt.config
        return vqgan_config_from_dict(data, where=f"{where}: config")
    if ckpt.legacy_args is not None:
        return vqgan_config_from_upstream(ckpt.legacy_args, where=f"{where}: hyper_parameters.args")
    if config is None:
        raise InputError(f"{where}: holds VQGAN weights but no config; pass config=VQGANConfig(...) "
                         "matching the weights")
    return config


def read_vqgan_checkpoint(path: str | os.PathLike,
                          config: VQGANConfig | None = None) -> tuple[VQGANConfig, dict[str, Tensor], Checkpoint]:
    """Config, VQGAN state dict (wrapper prefix removed; ``perceptual_model.*`` kept if present) and the
    raw ``Checkpoint`` of a VQGAN file of any supported format. ``config`` is used only when the file
    records none (a bare state dict)."""
    ckpt = read_checkpoint(path, expect="vqgan")
    cfg = _config_of(ckpt, config)
    return cfg, _strip_prefix(ckpt.state_dict, str(ckpt.path)), ckpt


def load_vqgan(path: str | os.PathLike, device: str | torch.device = "cpu",
               config: VQGANConfig | None = None) -> VQGAN:
    """VQGAN in eval mode on ``device`` from a ``tav`` file, our Lightning file or an upstream ``.ckpt``.

    The architecture comes from the file; ``config`` only serves bare state dicts. Wrong-stage files,
    missing/unexpected keys and shape mismatches raise a one-line ``InputError`` naming the file.
    """
    cfg, sd, ckpt = read_vqgan_checkpoint(path, config)
    model = vqgan_from_state_dict(cfg, sd, where=str(ckpt.path))
    return model.to(device).eval()


def save_vqgan(model: VQGAN, path: str | os.PathLike, **extra: Any) -> Path:
    """Write ``model`` as a ``tav`` checkpoint (config + state dict; ``extra`` adds e.g. ``step``)."""
    return save_checkpoint(path, "vqgan", to_dict(model.cfg), model.state_dict(), **extra)
