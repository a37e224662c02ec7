"""Lightning module for the three TIA2V diffusion U-Nets: content, motion and SHR.

It is the TA2V prior's :class:`~tav.training.diffusion_module.DiffusionModule` (EMA, per-rank generator,
non-finite check, ``modelNNNNNN.pt`` / ``emaNNNNNN.pt`` exports, resumable checkpoints) with a conditioned
network and its own batch → loss step. A batch comes from :class:`tav.tia2v.data.TIA2VDataset`:

- ``video`` ``(B, 3, F, H, W)`` in [-0.5, 0.5];
- ``text`` ``(B, 77, D)`` CLIP-L text hidden states; ``image`` ``(B, D)`` the window's first-frame CLIP-L
  image embedding; ``audio_tokens`` ``(B, F, P, D)`` BEATs tokens per frame (motion only).

Per part:

- ``content``: frames flattened to ``(B·F, 3, H, W)``, context = text + image ``(B, 78, D)``;
- ``motion``: the same plus ``context_temp`` = per-frame audio tokens followed by the text ``(B·F, P+77, D)``;
- ``shr``: the clip as a 3D tensor ``(B, 3, F, H, W)`` with the text ``(B, 77, D)`` as context.

Timesteps: per frame for content and motion when ``per_frame_t`` (upstream; sampling shares one t per clip),
else one per clip repeated over its frames; one per clip for SHR. Upstream's side-trained discriminators
(no effect on the generator) are not reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from tav.config import from_dict
from tav.errors import InputError
from tav.tia2v.conditions import motion_context
from tav.tia2v.config import TIA2VUNetConfig
from tav.tia2v.load import save_tia2v_unet, transfer_content_to_motion
from tav.tia2v.unet import TIA2VUNet
from tav.training.diffusion_module import DiffusionModule, DiffusionTrainConfig


@dataclass
class TIA2VTrainConfig(DiffusionTrainConfig):
    """``DiffusionTrainConfig`` plus the TIA2V settings (the ``train:`` section of ``configs/tia2v/*.yaml``)."""

    per_frame_t: bool = True  # content/motion: an independent timestep per frame (upstream) or one per clip
    freeze_spatial: bool = False  # motion: train only the tensors that did not come from the content model
    audio_dropout: float = 0.0  # motion: share of clips trained with null (zero) audio tokens, for audio CFG
    # motion with first_frame=clean: share of clips trained as the sampler's --motion_init first starts, frames
    # 1.. noised to the top trained step from copies of frame 0 (the loss still targets the clip's own frames)
    copy_init: float = 0.0
    # with copy_init: draw those clips at their own t on the path DDIM takes from the copies at the top step
    # (x_src = x0 + w_t·(copy − x0), w_t = 1 at the top step and 0 at t = 0) instead of all at the top step
    copy_path: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.crop_size:
            raise InputError(f"train.crop_size={self.crop_size}: training windows are for the TA2V prior; TIA2V "
                             "models train on whole frames (use 0)")
        if not 0.0 <= self.audio_dropout <= 1.0:
            raise InputError(f"train.audio_dropout={self.audio_dropout} (--audio_dropout): must be in [0, 1]")
        if not 0.0 <= self.copy_init <= 1.0:
            raise InputError(f"train.copy_init={self.copy_init} (--copy_init): must be in [0, 1]")
        if self.copy_path and self.copy_init <= 0:
            raise InputError("train.copy_path (--copy_path) moves the clips that train.copy_init draws: add "
                             "--copy_init P with P > 0, or drop --copy_path")


def tia2v_train_config(data: dict[str, Any], where: str = "train") -> TIA2VTrainConfig:
    """``TIA2VTrainConfig`` from a plain dict; unknown keys and wrong types raise ``InputError``."""
    return from_dict(TIA2VTrainConfig, data, where)


def conditions_of(batch: dict, part: str, audio_keep: Tensor | None = None) -> dict[str, Tensor]:
    """The network's keyword conditions for one batch (see the module docstring for the shapes); motion only:
    ``audio_keep`` ``(B,)`` bool, False where a clip gets the null audio tokens (zeros) instead of its own."""
    need = {"content": ("text", "image"), "motion": ("text", "image", "audio_tokens"), "shr": ("text",)}[part]
    missing = [k for k in need if k not in batch]
    if missing:
        raise InputError(f"the {part} model needs batch entries {list(need)}; missing {missing}: build the "
                         "condition cache with the training script's --cache_dir")
    text = batch["text"]
    if part == "shr":
        return {"context": text}
    kwargs = {"context": torch.cat([text, batch["image"][:, None].to(text.dtype)], dim=1)}
    if part == "motion":
        audio = batch["audio_tokens"]
        if audio_keep is not None:
            audio = audio * audio_keep.view(-1, 1, 1, 1).to(audio.dtype)
        kwargs["context_temp"] = motion_context(audio, text)
    return kwargs


class TIA2VModule(DiffusionModule):
    """Trains ``TIA2VUNet(cfg)`` (content, motion or SHR) under ``process_cfg``; keeps an EMA copy."""

    def __init__(self, unet_cfg: TIA2VUNetConfig, process_cfg, train_cfg: TIA2VTrainConfig,
                 beats_mode: str | None = None, data: dict | None = None):
        super().__init__(unet_cfg, process_cfg, train_cfg)
        self.beats_mode = beats_mode  # BEATs input mode of the cached audio tokens (motion), recorded in files
        self.hparams["beats_mode"] = beats_mode
        self.data_record = data  # tav.data.config.data_record of the training data, recorded in files
        self.hparams["data"] = data
        self.init_report: dict | None = None  # content -> motion transfer (copied / skipped / fresh keys)
        if train_cfg.copy_init > 0 and not self.clean_first_frame:
            raise InputError(f"train.copy_init={train_cfg.copy_init} (--copy_init) is for a motion model given the "
                             "first frame clean: add --set first_frame=clean, or use --copy_init 0")

    @property
    def stage(self) -> str:
        """``tia2v_content`` | ``tia2v_motion`` | ``tia2v_shr`` (recorded in checkpoints)."""
        return f"tia2v_{self.unet_cfg.part}"

    def initialise_from_content(self, content_state_dict: dict[str, Tensor], remap_shifted: bool = False) -> dict:
        """Motion only: copy the content model's tensors by name (upstream's 354 of 366; ``remap_shifted`` also
        maps the modules whose index moved), restart the EMA from the result and, with ``freeze_spatial``,
        stop training the copied tensors. Returns the transfer report."""
        if self.unet_cfg.part != "motion":
            raise InputError(f"--model_path initialises a motion model from a content model, not a {self.unet_cfg.part}"
                             " model")
        report = transfer_content_to_motion(content_state_dict, self.net, remap_shifted=remap_shifted)
        self.ema.load_state_dict(self.net.state_dict())
        if self.train_cfg.freeze_spatial:
            copied = set(report["copied"])
            for name, p in self.net.named_parameters():
                p.requires_grad_(name not in copied)
        self.init_report = report
        return report

    def build_net(self, cfg: TIA2VUNetConfig) -> nn.Module:
        return TIA2VUNet(cfg)

    def export_net(self, net: nn.Module, path: Path, **extra: Any) -> Path:
        if self.unet_cfg.part == "motion":  # the sampler's --audio_cfg_scale needs a model that saw null tokens
            extra["audio_dropout"] = self.train_cfg.audio_dropout
        return save_tia2v_unet(net, path, self.process_cfg, beats_mode=self.beats_mode, data=self.data_record,
                               **extra)

    def flat_inputs(self, batch: dict) -> tuple[Tensor, Tensor]:
        """``(x0, t)`` in the network's layout: ``(B·F, 3, H, W)`` frames with ``(B·F,)`` timesteps for
        content/motion, ``(B, 3, F, H, W)`` clips with ``(B,)`` timesteps for SHR."""
        video = self.input_video(batch)
        b, f = video.shape[0], video.shape[2]
        draw = self.schedule.sample_timesteps
        if self.unet_cfg.part == "shr":
            return video, draw(b, video.device, generator=self._gen)
        x0 = rearrange(video, "b c f h w -> (b f) c h w")
        if self.train_cfg.per_frame_t:
            t = draw(b * f, video.device, generator=self._gen)
        else:
            t = draw(b, video.device, generator=self._gen).repeat_interleave(f)
        if self.clean_first_frame:  # frame 0 is given: at t = 0, the others around it
            t = t.view(b, f).clone()
            t[:, 0] = 0
            t = t.reshape(-1)
        return x0, t

    def copy_start(self, x0: Tensor, t: Tensor, frames: int) -> tuple[Tensor | None, Tensor]:
        """``train.copy_init``: for that share of the clips, frames 1.. of ``x0`` ``(B·F, C, H, W)`` are replaced by
        copies of frame 0 as the data to noise, at the top trained step (where ``--motion_init first`` starts), or
        with ``copy_path`` by x0 + w_t·(copy − x0) at their own t (:meth:`copy_weight`). Returns (the data to noise
        or None, the timesteps ``(B·F,)``); draws nothing when the share is 0."""
        share = self.train_cfg.copy_init
        if share <= 0:
            return None, t
        b = len(t) // frames
        pick = torch.rand(b, generator=self._gen, device=x0.device) < share  # (B,)
        rows = (pick[:, None] & (torch.arange(frames, device=x0.device) > 0)).reshape(-1)  # (B·F,)
        first = x0.view(b, frames, *x0.shape[1:])[:, :1].expand(-1, frames, *x0.shape[1:]).reshape(x0.shape)
        top = torch.full_like(t, self.schedule.trained_steps - 1)
        if self.train_cfg.copy_path:
            w = self.copy_weight(t, top).view(-1, *[1] * (x0.dim() - 1)).to(x0.dtype)
            return torch.where(rows.view_as(w), x0 + w * (first - x0), x0), t
        x_src = torch.where(rows.view(-1, *[1] * (x0.dim() - 1)), first, x0)
        return x_src, torch.where(rows, top, t)

    def copy_weight(self, t: Tensor, top: Tensor) -> Tensor:
        """``(B·F,)`` share of (copy − x0) left at step ``t`` on the deterministic DDIM path from the copies
        noised to ``top`` when every step predicts x0: sqrt(ᾱ_top (1 − ᾱ_t) / (ᾱ_t (1 − ᾱ_top))), 1 at the
        top, falling to nearly 0 at t = 0 (the path keeps ε = (x_t − sqrt(ᾱ_t) x0) / sqrt(1 − ᾱ_t) constant).
        Computed in float64 on the CPU, where the schedule lives, and returned as float32 on ``t``'s device."""
        ac = self.schedule.alphas_cumprod  # float64, CPU
        a_t, a_top = ac[t.cpu()], ac[top.cpu()]
        w = torch.sqrt(a_top * (1 - a_t) / (a_t * (1 - a_top))).clamp(max=1.0)
        return w.to(device=t.device, dtype=torch.float32)

    @property
    def clean_first_frame(self) -> bool:
        """Motion with ``first_frame: clean``: frame 0 enters at t = 0 and is left out of the loss."""
        return self.unet_cfg.part == "motion" and self.unet_cfg.first_frame == "clean"

    def input_video(self, batch: dict) -> Tensor:
        key, cfg = self.train_cfg.input_key, self.unet_cfg
        x = batch.get(key)
        if x is None or x.dim() != 5 or x.shape[1] != cfg.in_channels or x.shape[-1] != cfg.image_size:
            shape = None if x is None else tuple(x.shape)
            raise InputError(f"batch[{key!r}] has shape {shape}; the {cfg.part} U-Net expects (B, "
                             f"{cfg.in_channels}, F, {cfg.image_size}, {cfg.image_size}): check --resolution")
        return x

    def diffusion_terms(self, batch: dict) -> tuple[dict[str, Tensor], Tensor]:
        x0, t = self.flat_inputs(batch)
        noise = torch.randn(x0.shape, generator=self._gen, device=x0.device, dtype=x0.dtype)
        keep = None
        if self.unet_cfg.part == "motion" and self.train_cfg.audio_dropout > 0:  # draws only when on: same stream
            keep = torch.rand(len(batch["audio_tokens"]), generator=self._gen, device=x0.device)
            keep = keep >= self.train_cfg.audio_dropout
        kwargs = conditions_of(batch, self.unet_cfg.part, keep)
        x_src, t = self.copy_start(x0, t, self.input_video(batch).shape[2])
        terms = self.schedule.training_losses(self.net, x0, t, noise=noise, model_kwargs=kwargs, x_src=x_src)
        if self.clean_first_frame:
            f = self.input_video(batch).shape[2]
            keep = torch.arange(len(t), device=t.device) % f != 0
            terms, t = {k: v[keep] for k, v in terms.items()}, t[keep]
        return terms, t
