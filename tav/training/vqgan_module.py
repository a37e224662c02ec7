"""Lightning module of the video VQGAN stage: one batch = a generator pass and a
discriminator pass, with two Adam optimisers under manual optimisation.

Lightning 2 forbids ``accumulate_grad_batches`` and ``gradient_clip_val`` as Trainer arguments under
manual optimisation, so both are done here: gradients of ``accumulate_grad_batches`` micro-batches are
summed (each loss divided by the count; DDP syncs only on the last one) and clipped per optimiser to
``gradient_clip_val`` before the step.

``trainer.global_step`` counts generator (autoencoder) optimiser steps, as upstream's Lightning 1.5 step
did: the discriminator optimiser is stepped through the plain torch optimiser so that it does not count a
second time. It is not stepped at all before ``discriminator_iter_start`` (an Adam step with zero
gradients would still advance its bias correction). Consequence: fp16 with a GradScaler is not supported
(one scaler, two optimisers); use bf16 or 32.

Checkpoints: ``hyper_parameters = {"stage": "vqgan", "config": VQGANConfig fields, "train": ...}`` (plain
dicts); the frozen LPIPS is left out (it is rebuilt from its VGG16 file). Logged rows use the global step
as their x-axis (not Lightning's micro-batch count).

Deliberate differences from upstream: one forward per batch feeds both passes (upstream ran the
autoencoder twice, updating the EMA codebook twice per batch), and the same random frame is used by the
2D discriminator and LPIPS in both passes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor

from tav.config import from_dict, to_dict
from tav.errors import InputError
from tav.training.callbacks import check_finite
from tav.training.crops import detail_crops
from tav.training.gpt_module import lr_factor
from tav.training.optim import adam
from tav.training.trainer import logs_this_step
from tav.vqgan.config import VQGANConfig
from tav.vqgan.losses import (
    Perceptual,
    build_perceptual,
    discriminator_loss,
    generator_loss,
    random_frame_index,
    reconstruction_loss,
    select_frames,
)
from tav.vqgan.model import VQGAN

log = logging.getLogger(__name__)


@dataclass
class VQGANTrainConfig:
    """How the VQGAN is trained (the model's own settings, incl. base lr and loss weights, are in VQGANConfig)."""

    batch_size: int = 8  # clips per device and micro-batch
    num_workers: int = 8  # DataLoader worker processes per device
    accumulate_grad_batches: int = 1  # micro-batches summed into one optimiser step (README: 6)
    gradient_clip_val: float | None = None  # max grad norm per optimiser; None or 0 = off (README: 1.0)
    lr_scaling: Literal["upstream", "none"] = "upstream"  # upstream: lr *= accumulate * world/8 * batch/4
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: decay to 0 over the trainer's max_steps
    warmup_steps: int = 0  # linear warm-up of both optimisers' learning rate
    input_key: str = "video"  # batch entry holding (B, 3, T, H, W) clips in [-0.5, 0.5] (upstream: "stft")
    save_every_n_steps: int = 3000  # periodic checkpoints (0 = off); best-by-val and last.ckpt are always kept
    sample_every_n_steps: int = 1500  # real | recon sample videos (0 = off)
    n_sample_videos: int = 4  # clips per sample video
    seed: int = 1234  # seed_everything at start-up
    crop_size: int = 0  # train on one crop_size x crop_size window per clip (0 = whole frames; tav.training.crops)
    crop_detail: float = 0.0  # share of those windows centred on the clip's detail rather than anywhere, in [0, 1]
    channels_last: bool = True  # conv weights in channels_last_3d (oneDNN / cuDNN 3D convs; demo step 1.2x on CPU)

    def __post_init__(self) -> None:
        for name in ("batch_size", "accumulate_grad_batches", "n_sample_videos"):
            if getattr(self, name) < 1:
                raise InputError(f"train.{name}={getattr(self, name)}: must be >= 1")
        for name in ("num_workers", "save_every_n_steps", "sample_every_n_steps", "warmup_steps", "crop_size"):
            if getattr(self, name) < 0:
                raise InputError(f"train.{name}={getattr(self, name)}: must be >= 0")
        if not 0.0 <= self.crop_detail <= 1.0:
            raise InputError(f"train.crop_detail={self.crop_detail}: must be in [0, 1]")
        if self.gradient_clip_val is not None and self.gradient_clip_val < 0:
            raise InputError(f"train.gradient_clip_val={self.gradient_clip_val}: must be >= 0 (0 or None = off)")


def train_config_from_dict(data: dict[str, Any], where: str = "train") -> VQGANTrainConfig:
    """``VQGANTrainConfig`` from a plain dict; unknown keys and wrong types raise ``InputError``."""
    return from_dict(VQGANTrainConfig, data, where)


def effective_lr(base_lr: float, rule: str, accumulate: int, world_size: int, batch_size: int) -> float:
    """The learning rate the optimisers use.

    ``upstream`` (TATS/TA2V): ``accumulate * (world_size / 8) * (batch_size / 4) * base_lr``, e.g. the
    README's 6 * (1/8) * (8/4) * 6e-5 = 9e-5. ``world_size`` counts all processes (devices x nodes);
    upstream counted the GPUs of one node. ``none``: ``base_lr`` unchanged.
    """
    if rule == "none":
        return base_lr
    if rule == "upstream":
        return accumulate * (world_size / 8.0) * (batch_size / 4.0) * base_lr
    raise InputError(f"train.lr_scaling={rule!r}: expected 'upstream' or 'none'")


def _check_crop(size: int, cfg: VQGANConfig) -> None:
    """A training window must hold whole codes and fit the training frames; one-line ``InputError`` otherwise."""
    if not size:
        return
    factor = max(cfg.downsample[1:])
    if size % factor or size > cfg.resolution:
        raise InputError(f"train.crop_size={size}: use a multiple of the spatial downsampling ({factor}) no larger "
                         f"than the resolution ({cfg.resolution}), or 0 for whole frames")


class VQGANModule(pl.LightningModule):
    """Trains ``VQGAN(model_cfg)``; ``hparams`` = ``{"stage": "vqgan", "config": model dict, "train": dict}``
    so ``tav.vqgan.load_vqgan`` reads the checkpoints directly.

    ``perceptual`` overrides the LPIPS module; by default it is built from the local VGG16 file when
    ``model_cfg.perceptual_weight > 0`` and not at all otherwise.
    """

    def __init__(self, model_cfg: VQGANConfig, train_cfg: VQGANTrainConfig, perceptual: Perceptual | None = None):
        super().__init__()
        self.grads_pending = False  # inside an accumulation window (set by each training step)
        self.automatic_optimization = False
        self.model_cfg, self.train_cfg = model_cfg, train_cfg
        self.save_hyperparameters({"stage": "vqgan", "config": to_dict(model_cfg), "train": to_dict(train_cfg)})
        _check_crop(train_cfg.crop_size, model_cfg)
        self.vqgan = VQGAN(model_cfg)
        if train_cfg.channels_last:
            self.vqgan.to_channels_last()
        if perceptual is None and model_cfg.perceptual_weight > 0:
            perceptual = build_perceptual(model_cfg.lpips_input_scale)
        self.perceptual = perceptual
        self.lr: float | None = None  # effective learning rate, set in configure_optimizers

    # ------------------------------------------------------------------------------------ optimisers
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        cfg, tcfg = self.model_cfg, self.train_cfg
        self.lr = effective_lr(cfg.lr, tcfg.lr_scaling, tcfg.accumulate_grad_batches, self.trainer.world_size,
                               tcfg.batch_size)
        if self.trainer.is_global_zero:
            log.info("learning rate %.4g (base %.4g, scaling %s: accumulate %d, %d process(es), batch %d)",
                     self.lr, cfg.lr, tcfg.lr_scaling, tcfg.accumulate_grad_batches, self.trainer.world_size,
                     tcfg.batch_size)
        opt_ae = adam(self.vqgan.autoencoder_parameters(), lr=self.lr, betas=cfg.betas)
        opt_disc = adam(self.vqgan.discriminator_parameters(), lr=self.lr, betas=cfg.betas)
        return [opt_ae, opt_disc]

    def _at_boundary(self, batch_idx: int) -> bool:
        """True on the last micro-batch of an accumulation window (or of the epoch): time to step."""
        n = self.train_cfg.accumulate_grad_batches
        return (batch_idx + 1) % n == 0 or batch_idx + 1 == self.trainer.num_training_batches

    def _clip_and_step(self, opt: Any, raw: torch.optim.Optimizer) -> None:
        tcfg = self.train_cfg
        if self.lr is not None and (tcfg.lr_schedule != "constant" or tcfg.warmup_steps):
            schedule = "cosine_steps" if tcfg.lr_schedule == "cosine" else "constant"
            total = self.trainer.max_steps if self.trainer.max_steps > 0 else self.global_step + 1
            for group in raw.param_groups:
                group["lr"] = self.lr * lr_factor(self.global_step, schedule, tcfg.warmup_steps, total)
        clip = tcfg.gradient_clip_val
        if clip:
            self.clip_gradients(raw, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        opt.step()
        raw.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------------------------ training
    def input_video(self, batch: dict) -> Tensor:
        """``batch[input_key]``: ``(B, C, T, H, W)`` float in [-0.5, 0.5]; a missing key is a one-line error."""
        key = self.train_cfg.input_key
        if key not in batch:
            raise InputError(f"train.input_key={key!r} is not in the batch (keys: {sorted(batch)})")
        return batch[key]

    def training_step(self, batch: dict, batch_idx: int) -> None:
        video = self.input_video(batch)
        if self.train_cfg.crop_size:
            video = detail_crops(video, self.train_cfg.crop_size, self.train_cfg.crop_detail)
        step, boundary = self.global_step, self._at_boundary(batch_idx)
        self.grads_pending = not boundary  # read by StepCheckpoint: a checkpoint now is not an exact resume point
        recon, vq = self.vqgan(video)
        frame_idx = random_frame_index(video)
        g_parts = self.generator_step(video, recon, vq, step, frame_idx, boundary)
        d_parts = self.discriminator_step(video, recon, step, frame_idx, boundary)
        if not logs_this_step(self):
            return
        logs = {f"train_{k}": v for k, v in {**g_parts, **d_parts}.items()}
        logs["train_used_codes"] = float(torch.unique(vq["codes"]).numel())  # distinct codes in this micro-batch
        logs["lr"] = float(self.optimizers()[0].optimizer.param_groups[0]["lr"])
        logs["step"] = float(self.global_step)  # x-axis of the loggers: optimiser steps done (not micro-batches)
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=video.shape[0])

    def generator_step(self, video: Tensor, recon: Tensor, vq: dict[str, Tensor], step: int, frame_idx: Tensor,
                       boundary: bool) -> dict[str, Tensor]:
        """Backward the autoencoder loss (discriminators frozen for it); step the optimiser at a boundary."""
        opt = self.optimizers()[0]
        with opt.toggle_model(sync_grad=boundary):
            loss, parts = generator_loss(self.vqgan, self.perceptual, video, recon, vq, step, frame_idx)
            check_finite(self.trainer, loss, "autoencoder", step, parts)
            self.manual_backward(loss / self.train_cfg.accumulate_grad_batches)
            if boundary:
                self._clip_and_step(opt, opt.optimizer)
        parts["ae_loss"] = loss.detach()
        return parts

    def discriminator_step(self, video: Tensor, recon: Tensor, step: int, frame_idx: Tensor,
                           boundary: bool) -> dict[str, Tensor]:
        """Backward the discriminator loss on detached clips; no-op before ``discriminator_iter_start``."""
        if step < self.model_cfg.discriminator_iter_start:
            return {}
        opt = self.optimizers()[1]
        raw = self.optimizers(use_pl_optimizer=False)[1]  # plain step: global_step counts the generator only
        with opt.toggle_model(sync_grad=boundary):
            loss, parts = discriminator_loss(self.vqgan, video, recon, step, frame_idx)
            check_finite(self.trainer, loss, "discriminator", step, parts)
            self.manual_backward(loss / self.train_cfg.accumulate_grad_batches)
            if boundary:
                self._clip_and_step(raw, raw)
        parts["disc_loss"] = loss.detach()
        return parts

    # ------------------------------------------------------------------------------------ validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        video = self.input_video(batch)
        recon, _ = self.vqgan(video)  # eval mode: the codebook is not updated
        bs = video.shape[0]
        self.log("step", float(self.global_step), batch_size=bs, sync_dist=True)
        self.log("val_recon_loss", reconstruction_loss(self.model_cfg, recon, video), sync_dist=True,
                 prog_bar=True, batch_size=bs)
        if self.perceptual is not None:
            gen = torch.Generator().manual_seed(batch_idx)  # the same frames at every validation
            idx = random_frame_index(video, gen)
            dist = self.perceptual(select_frames(video, idx), select_frames(recon, idx)).mean()
            self.log("val_perceptual_loss", self.model_cfg.perceptual_weight * dist, sync_dist=True, batch_size=bs)

    # ------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # LPIPS is frozen and rebuilt from its VGG16 file: keep its 59 MB out of every checkpoint.
        sd = checkpoint["state_dict"]
        for key in [k for k in sd if k.startswith("perceptual.")]:
            del sd[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.perceptual is not None:  # put the current LPIPS back so the strict load sees every key
            checkpoint["state_dict"].update({f"perceptual.{k}": v for k, v in self.perceptual.state_dict().items()})

    @torch.no_grad()
    def reconstruct(self, video: Tensor) -> Tensor:
        """Eval-mode reconstruction of ``video (B, C, T, H, W)`` in [-0.5, 0.5], clamped to that range.

        Does not touch the codebook or BatchNorm statistics; restores the previous train/eval mode.
        """
        was_training = self.vqgan.training
        self.vqgan.eval()
        try:
            recon, _ = self.vqgan(video)
        finally:
            self.vqgan.train(was_training)
        return recon.float().clamp(-0.5, 0.5)
