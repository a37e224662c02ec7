"""Save and load the TIA2V U-Nets, and the content → motion weight transfer.

Formats read by :func:`load_tia2v_unet` (all through ``torch.load(weights_only=True)``):

- ``tav`` files (:func:`save_tia2v_unet`, the trainer's ``modelNNNNNN.pt`` / ``emaNNNNNN.pt``):
  ``{"stage": "tia2v_<part>", "config": {"unet": TIA2VUNetConfig fields, "process": ProcessConfig fields},
  "state_dict", "version", **extra}``;
- our Lightning checkpoints: ``hyper_parameters = {"stage": "tia2v_<part>", "config": {...as above},
  ...}``, tensors under ``net.`` (trained) and ``ema.`` (EMA, preferred; ``ema=False`` takes ``net.``);
- upstream bare state dicts (guided-diffusion ``modelNNNNNN.pt`` / ``ema_0.9999_NNNNNN.pt``, the released
  "TIA" and "Diffusion" files): no config. The architecture is read from the tensor shapes, with the
  released preset of the part for what the shapes cannot tell (image size, heads, frames, token counts);
  the process is ``TIA2V_PROCESS`` (4000 cosine steps, ε, learned range, RESCALED_MSE, ``rescale_timesteps``).

``compat``: ``"tia2v"`` turns on every † switch of the part (``double_residual``; motion also
``dual_block_frame_collapse`` and ``audio_row_mapping``), ``"fixed"`` turns the motion bugs off, None keeps
the file's setting; bare upstream files default to ``"tia2v"`` (logged). The switch values are
:func:`tav.compat.tia2v.compat_switches`'s. ``overrides`` name fields of ``TIA2VUNetConfig`` or
``ProcessConfig`` and win over everything.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tav.checkpoint import (
    FORMAT_VERSION,
    detect_stage,
    read_checkpoint,
    safe_load,
    save_checkpoint,
    state_dict_of,
    strict_from_state_dict,
)
from tav.compat import tia2v as tia2v_compat  # a module import: tav.compat.tia2v imports tav.tia2v's blocks
from tav.config import from_dict, to_dict
from tav.diffusion.config import input_levels, require_key
from tav.diffusion.load import split_overrides
from tav.diffusion.schedule import ProcessConfig
from tav.errors import InputError
from tav.tia2v.config import PARTS, TIA2VUNetConfig, tia2v_preset
from tav.tia2v.temporal import DualTemporalTransformer
from tav.tia2v.unet import TIA2VUNet

log = logging.getLogger(__name__)

TIA2V_PROCESS = {"steps": 4000, "noise_schedule": "cosine", "learn_sigma": True, "predict_xstart": False,
                 "loss": "rescaled_mse", "rescale_timesteps": True}  # the released process, all three U-Nets
STAGES = {part: f"tia2v_{part}" for part in PARTS}  # recorded stage of tav / Lightning files
UNET_FIELDS = frozenset(f.name for f in fields(TIA2VUNetConfig))
INFERRED = ("in_channels", "out_channels", "model_channels", "channel_mult", "num_res_blocks",
            "use_scale_shift_norm", "context_dim", "context_dim_temp", "transformer_depth")


# -------------------------------------------------------------------------------- bare upstream state dicts
def detect_part(sd: Mapping[str, Tensor]) -> str | None:
    """``"content"`` / ``"motion"`` / ``"shr"`` for a TIA2V U-Net state dict, None for anything else."""
    if "input_blocks.0.0.weight" not in sd or not any(".transformer_blocks." in k for k in sd):
        return None
    if any(".temporal_conv." in k or ".transformers.0." in k for k in sd):
        return "motion"
    return "shr" if sd["input_blocks.0.0.weight"].ndim == 5 else "content"


def _require(sd: Mapping[str, Tensor], key: str) -> Tensor:
    return require_key(sd, key, "TIA2V U-Net")


def tia2v_config_from_state_dict(sd: Mapping[str, Tensor], part: str, **overrides: Any) -> TIA2VUNetConfig:
    """Architecture of an upstream TIA2V state dict: shapes where they tell, else the part's released preset.

    Read from the tensors: in/out channels, ``model_channels``, ``channel_mult``, ``num_res_blocks``, FiLM,
    context widths, transformer depth and the levels with transformers. ``overrides`` set the rest
    (``image_size``, ``num_heads``, ``num_frames``, switches, ...); overriding a field read from the
    tensors with another value raises ``InputError``.
    """
    conv_in = _require(sd, "input_blocks.0.0.weight")
    mc = int(conv_in.shape[0])
    levels = input_levels(sd, attention="proj_in.weight", what="TIA2V U-Net")
    if any(level[0][0] % mc for level in levels):
        raise InputError(f"TIA2V U-Net state dict: level widths {[lv[0][0] for lv in levels]} are not multiples of "
                         f"model_channels {mc}")
    depth = 0
    while f"middle_block.1.transformer_blocks.{depth}.norm1.weight" in sd:
        depth += 1
    inferred: dict[str, Any] = {
        "in_channels": int(conv_in.shape[1]), "out_channels": int(_require(sd, "out.2.weight").shape[0]),
        "model_channels": mc, "channel_mult": tuple(level[0][0] // mc for level in levels),
        "num_res_blocks": len(levels[0]), "transformer_depth": depth,
        "use_scale_shift_norm": _require(sd, "input_blocks.1.0.emb_layers.1.weight").shape[0] == 2 * levels[0][0][0],
        "context_dim": int(_require(sd, "middle_block.1.transformer_blocks.0.attn2.to_k.weight").shape[1])}
    if part == "motion":
        key = "middle_block.2.transformers.0.transformer_blocks.0.attn2.to_k.weight"
        inferred["context_dim_temp"] = int(_require(sd, key).shape[1])
    clash = {k: v for k, v in overrides.items() if k in inferred and v != inferred[k]
             and not (isinstance(v, (list, tuple)) and tuple(v) == inferred[k])}
    if clash:
        raise InputError(f"cannot override {sorted(clash)} of an upstream state dict: they are read from its tensors "
                         f"({ {k: inferred[k] for k in clash} })")
    base = to_dict(tia2v_preset(part))
    data = {**base, **inferred, **overrides}
    ds_with_transformer = {2**i for i, level in enumerate(levels) if level[0][1]}
    base_levels = {base["image_size"] // r for r in base["attention_resolutions"]} & {2**i for i in range(len(levels))}
    if "attention_resolutions" not in overrides and (ds_with_transformer != base_levels
                                                     or data["image_size"] != base["image_size"]):
        data["attention_resolutions"] = tuple(data["image_size"] // d for d in sorted(ds_with_transformer))
    return from_dict(TIA2VUNetConfig, data, where=f"inferred {part} config")


# ---------------------------------------------------------------------------------------------- reading
def _stored(obj: Mapping, path: Path, part: str, ema: bool) -> tuple[dict, dict, dict[str, Tensor]]:
    """``(unet dict, process dict, tensors)`` of a tav or Lightning TIA2V file."""
    lightning = "hyper_parameters" in obj and not ("stage" in obj and "config" in obj)
    config = obj["hyper_parameters"].get("config") if lightning else obj.get("config")
    if not lightning and not (isinstance(obj.get("version", FORMAT_VERSION), int)
                              and obj.get("version", FORMAT_VERSION) <= FORMAT_VERSION):
        raise InputError(f"{path}: checkpoint format version {obj.get('version')!r} is newer than this tav")
    if not isinstance(config, Mapping) or not isinstance(config.get("unet"), Mapping) \
            or not isinstance(config.get("process"), Mapping):
        raise InputError(f"{path}: config has no 'unet'/'process' sections; not a tav TIA2V checkpoint")
    sd = state_dict_of(obj) or {}
    if lightning:
        prefix = "ema." if ema else "net."
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not sd:
        raise InputError(f"{path}: no {'ema./net.' if lightning else ''} U-Net tensors in this {part} checkpoint")
    return dict(config["unet"]), dict(config["process"]), sd


def read_tia2v_checkpoint(path: str | os.PathLike, part: str, *, ema: bool = True, compat: str | None = None,
                          **overrides: Any) -> tuple[TIA2VUNetConfig, ProcessConfig, dict[str, Tensor]]:
    """``(config, process, state_dict)`` of a TIA2V ``part`` checkpoint (any format of the module docstring),
    with ``compat`` and ``overrides`` applied. Files of another part or model raise a one-line ``InputError``
    naming the file and what to pass instead."""
    path = Path(path)
    if part not in PARTS:
        raise InputError(f"part={part!r}: must be one of {PARTS}")
    unet_over, process_over = split_overrides(overrides, str(path), UNET_FIELDS, model="TIA2V U-Net")
    obj = safe_load(path)
    stage = detect_stage(obj)
    if stage in STAGES.values():
        found = stage.removeprefix("tia2v_")
        if found != part:
            raise InputError(f"{path}: holds the TIA2V {found} U-Net, not the {part} U-Net wanted here; pass the "
                             f"{part} model's checkpoint")
        unet, process, sd = _stored(obj, path, part, ema)
    elif stage == "unet" and isinstance(obj, Mapping) and "config" not in obj and "hyper_parameters" not in obj:
        sd = state_dict_of(obj) or {}
        found = detect_part(sd)
        if found is None:
            raise InputError(f"{path}: a guided-diffusion U-Net without spatial transformers (the TA2V prior?), not "
                             f"a TIA2V {part} U-Net; load it with tav.diffusion.load_unet")
        if found != part:
            raise InputError(f"{path}: holds an upstream TIA2V {found} U-Net state dict, not the {part} U-Net wanted "
                             f"here; pass the {part} model's checkpoint")
        if compat is None:
            compat = "tia2v"
            log.info("%s: upstream %s state dict; compat='tia2v' (the released weights' switches %s on)", path, part,
                     sorted(tia2v_compat.compat_switches(part, compat)))
        unet = to_dict(tia2v_config_from_state_dict(sd, part, **unet_over))
        process = {**TIA2V_PROCESS, "learn_sigma": unet["out_channels"] == 2 * unet["in_channels"]}
    else:
        got = f"a {stage!r} checkpoint" if stage else "no recognisable model"
        raise InputError(f"{path}: holds {got}, but a TIA2V {part} U-Net (tav file, Lightning checkpoint or "
                         "upstream state dict) was expected")
    cfg = from_dict(TIA2VUNetConfig, {**unet, **tia2v_compat.compat_switches(part, compat), **unet_over},
                    where=f"{path}: config.unet")
    process_cfg = from_dict(ProcessConfig, {**process, **process_over}, where=f"{path}: config.process")
    return cfg, process_cfg, sd


def tia2v_from_state_dict(cfg: TIA2VUNetConfig, sd: Mapping[str, Tensor], where: str = "state dict") -> TIA2VUNet:
    """``TIA2VUNet(cfg)`` on CPU with ``sd`` loaded strictly; missing, unexpected or mis-shaped keys are one line."""
    return strict_from_state_dict(lambda: TIA2VUNet(cfg), sd, where, f"TIA2V {cfg.part}",
                                  hint="; check part and the architecture overrides")


def load_tia2v_unet(path: str | os.PathLike, part: str, device: str | torch.device = "cpu",
                    compat: str | None = None, **overrides: Any) -> TIA2VUNet:
    """The TIA2V ``part`` U-Net (``"content"``, ``"motion"``, ``"shr"``) of ``path``, in eval mode on ``device``.

    ``net.process`` is the ``ProcessConfig`` the weights go with (stored, else ``TIA2V_PROCESS``). ``compat``: see the
    module docstring (bare upstream files default to ``"tia2v"``). ``overrides``: ``TIA2VUNetConfig`` /
    ``ProcessConfig`` fields, plus ``ema`` (default True: a Lightning checkpoint's EMA weights).
    """
    ema = overrides.pop("ema", True)
    cfg, process, sd = read_tia2v_checkpoint(path, part, ema=ema, compat=compat, **overrides)
    net = tia2v_from_state_dict(cfg, sd, where=str(path)).to(device).eval()
    net.process = process
    return net


def audio_dropout_of(path: str | os.PathLike) -> float:
    """The ``--audio_dropout`` motion weights were trained with: recorded in our exports and Lightning checkpoints;
    0 for files that record none (upstream's, which never saw null audio tokens)."""
    try:
        raw = read_checkpoint(path, expect=STAGES["motion"]).raw
    except InputError:
        return 0.0
    train = (raw.get("hyper_parameters") or {}).get("train") or {}
    return float(raw.get("audio_dropout") or train.get("audio_dropout") or 0.0)


def beats_mode_for(path: str | os.PathLike, net: TIA2VUNet) -> str:
    """The BEATs input mode motion weights expect: the one recorded in the file (ours), else ``compat`` for
    weights trained with upstream's bugs (the released files) and ``fixed`` otherwise."""
    try:
        raw = read_checkpoint(path, expect=STAGES["motion"]).raw
    except InputError:  # an upstream bare state dict records nothing
        raw = {}
    recorded = raw.get("beats_mode") or (raw.get("hyper_parameters") or {}).get("beats_mode")
    if recorded:
        return recorded
    return "compat" if tia2v_compat.has_motion_bugs(net.config) else "fixed"


def save_tia2v_unet(net: TIA2VUNet, path: str | os.PathLike, process: ProcessConfig, **extra: Any) -> Path:
    """Write ``net`` as a ``tav`` file: stage ``tia2v_<part>``, its config, ``process`` and its state dict
    (``extra``: e.g. ``step``, ``weights="ema"``)."""
    config = {"unet": to_dict(net.config), "process": to_dict(process)}
    return save_checkpoint(path, STAGES[net.config.part], config, net.state_dict(), **extra)


# ---------------------------------------------------------------------------------- content -> motion
def _shifted_index(motion_net: TIA2VUNet) -> dict[str, list[int]]:
    """Per container (``input_blocks.i``, ``middle_block``, ``output_blocks.i``) of the motion net: the motion
    index of each content layer (the content layers are the motion ones without the dual temporal blocks)."""
    containers = {"middle_block": motion_net.middle_block}
    containers.update({f"input_blocks.{i}": b for i, b in enumerate(motion_net.input_blocks)})
    containers.update({f"output_blocks.{i}": b for i, b in enumerate(motion_net.output_blocks)})
    return {name: [k for k, layer in enumerate(block) if not isinstance(layer, DualTemporalTransformer)]
            for name, block in containers.items()}


def _remap(key: str, index: dict[str, list[int]]) -> str:
    head, _, rest = key.partition(".")
    if head in ("input_blocks", "output_blocks"):
        number, _, rest = rest.partition(".")
        head = f"{head}.{number}"
    layer, _, rest = rest.partition(".")
    kept = index.get(head)
    if kept is None or not layer.isdigit() or int(layer) >= len(kept):
        return key
    return f"{head}.{kept[int(layer)]}.{rest}"


@torch.no_grad()
def transfer_content_to_motion(content_state_dict: Mapping[str, Tensor], motion_net: TIA2VUNet,
                               remap_shifted: bool = False) -> dict[str, Any]:
    """Copy a content model's tensors into ``motion_net`` in place and report what happened.

    Upstream copies by name: 354 of the 366 released content tensors; ``middle_block.2.*`` and
    ``output_blocks.2.2.conv.*`` are dropped because the motion net's extra dual blocks shift their indices.
    ``remap_shifted=True`` also maps every shifted module to its motion index (content ``middle_block.2`` →
    motion ``middle_block.3``, ``output_blocks.2.2`` → ``output_blocks.2.3``).

    Returns ``{"copied": motion keys written, "skipped": content keys whose target has another shape,
    "unused": content keys with no target, "fresh": motion keys left at their initialisation, "remapped":
    {content key: motion key} for the shifted ones copied}``.
    """
    if motion_net.config.part != "motion":
        raise InputError(f"transfer_content_to_motion: the target is a {motion_net.config.part} U-Net; it must be "
                         "a motion U-Net")
    target = motion_net.state_dict()
    index = _shifted_index(motion_net) if remap_shifted else {}
    report: dict[str, Any] = {"copied": [], "skipped": [], "unused": [], "fresh": [], "remapped": {}}
    for key, value in content_state_dict.items():
        dst = _remap(key, index) if remap_shifted else key
        if dst not in target:
            report["unused"].append(key)
        elif tuple(target[dst].shape) != tuple(value.shape):
            report["skipped"].append(key)
        else:
            target[dst].copy_(value.to(device=target[dst].device, dtype=target[dst].dtype))
            report["copied"].append(dst)
            if dst != key:
                report["remapped"][key] = dst
    copied = set(report["copied"])
    report["fresh"] = [k for k in target if k not in copied]
    log.info("content -> motion transfer: %d copied (%d remapped), %d skipped (shape), %d unused, %d fresh",
             len(copied), len(report["remapped"]), len(report["skipped"]), len(report["unused"]), len(report["fresh"]))
    return report
