"""Lightning module of the text -> video-token GPT stage.

One batch: BERT ids ``(B, L)`` + VQGAN codes of the clips -> cross-entropy of the video tokens only
(``tav.gpt.model.token_loss``). ``train.softmax`` picks its vocabulary: the video codes alone (``video``,
the default) or the full text + video vocabulary as upstream (``full``, the ``urmp_upstream`` preset).
Logged as ``train_text_loss`` / ``val_text_loss`` (upstream's names) with top-1 / top-5 token accuracy
(``*_text_acc1``, ``*_text_acc5``). Automatic optimisation: the Trainer does accumulation, clipping and
mixed precision.

The codes come from a token cache (``batch["codes"]``, ``tav.data.token_cache``) or are encoded on the
fly from ``batch[first_stage_key]`` with the frozen VQGAN: under ``no_grad``, autocast off (fp32 codes
equal cached ones) and in eval mode. The VQGAN is deliberately kept *outside* the module tree (a plain
holder): Lightning's ``train()`` calls, DDP wrapping, ``sync_batchnorm`` conversion and the checkpoint
never see it, so it stays in eval mode without overriding ``train`` and is not copied into every GPT
checkpoint (upstream stored it under ``first_stage_model.*``). The GPT config records the VQGAN file's
sha256, ``n_codes`` and code grid instead (``tav.gpt.check_vqgan_compat``).

Optimiser: AdamW, betas (0.9, 0.95), weight decay on Linear weights only (none on biases,
LayerNorm, the token embedding, ``pos_emb``). ``lr = accumulate * world_size * batch_size * base_lr``
(upstream rule; ``lr_scaling: none`` uses ``base_lr``). Schedules: ``cosine_steps`` (default: optional
linear warm-up, then one cosine from lr to 0 over ``max_steps``), ``constant`` (optional warm-up), and
``cosine_epochs`` (upstream: ``CosineAnnealingLR(T_max=cosine_t_max)`` stepped per epoch, periodic).

Checkpoints: ``hyper_parameters = {"stage": "gpt", "config": GPTConfig fields, "train": GPTTrainConfig
fields, "vqgan_path": str}``; the GPT tensors are the only ones, under ``gpt.``; ``tav.load_gpt`` reads
them directly.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from tav.config import from_dict, to_dict
from tav.errors import InputError
from tav.gpt.config import GPTConfig
from tav.gpt.model import GPT, token_accuracy, token_loss
from tav.gpt.sampling import null_prefix
from tav.training.callbacks import check_finite
from tav.training.determinism import step_seed
from tav.training.optim import adam
from tav.training.trainer import logs_this_step, shows_progress
from tav.vqgan.model import VQGAN

log = logging.getLogger(__name__)

LRSchedule = Literal["cosine_steps", "constant", "cosine_epochs"]


@dataclass
class GPTTrainConfig:
    """How the GPT is trained (the ``train:`` section of ``configs/gpt/*.yaml``)."""

    batch_size: int = 8  # clips per device and micro-batch
    num_workers: int = 8  # DataLoader worker processes per device
    base_lr: float = 4.5e-5  # scaled by lr_scaling (README: 4.5e-5 -> 3.6e-4 at batch 8, 1 GPU)
    lr_scaling: Literal["upstream", "none"] = "upstream"  # upstream: lr = accumulate * world * batch * base_lr
    betas: tuple[float, ...] = (0.9, 0.95)  # AdamW betas
    weight_decay: float = 0.01  # Linear weights only (upstream preset: 0.8)
    lr_schedule: LRSchedule = "cosine_steps"  # see the module docstring (upstream preset: cosine_epochs)
    warmup_steps: int = 0  # linear warm-up (cosine_steps, constant)
    cosine_t_max: int = 15  # cosine_epochs: CosineAnnealingLR T_max in epochs (upstream 15)
    max_steps: int = 500000  # optimiser steps of the run (and the length of cosine_steps); -1 = unlimited
    first_stage_key: str = "video"  # batch entry with the (B, 3, T, H, W) clips (on-the-fly encoding)
    cond_key: str = "text"  # batch entry with the (B, L) caption ids; only "text" exists (audio never enters)
    precompute_tokens: bool = False  # encode each split once into a token cache instead of every batch
    token_cache_dir: str | None = None  # None = <default_root_dir>/token_cache
    token_stride: int = 1  # cache every token_stride-th window start of random-crop training clips
    save_every_n_steps: int = 20000  # periodic checkpoints (0 = off); best-by-val and last.ckpt always kept
    seed: int = 1234  # seed_everything at start-up
    softmax: Literal["video", "full"] = "video"  # loss over video codes only, or the full vocabulary (upstream)

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        for name in ("batch_size", "cosine_t_max", "token_stride"):
            if getattr(self, name) < 1:
                raise InputError(f"train.{name}={getattr(self, name)}: must be >= 1")
        for name in ("num_workers", "save_every_n_steps", "warmup_steps", "weight_decay"):
            if getattr(self, name) < 0:
                raise InputError(f"train.{name}={getattr(self, name)}: must be >= 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise InputError(f"train.betas={list(self.betas)}: need two values in [0, 1)")
        if self.base_lr <= 0:
            raise InputError(f"train.base_lr={self.base_lr}: must be > 0")
        if self.lr_schedule == "cosine_steps" and self.max_steps <= 0:
            raise InputError("train.lr_schedule=cosine_steps decays over max_steps: give --max_steps > 0 "
                             "(or --lr_schedule constant)")
        if self.cond_key != "text":
            raise InputError(f"--cond1_stage_key {self.cond_key}: the GPT is conditioned on the caption only "
                             "('text'); audio never enters the GPT")


def train_config_from_dict(data: dict[str, Any], where: str = "train") -> GPTTrainConfig:
    """``GPTTrainConfig`` from a plain dict; unknown keys and wrong types raise ``InputError``."""
    return from_dict(GPTTrainConfig, data, where)


def effective_lr(base_lr: float, rule: str, accumulate: int, world_size: int, batch_size: int) -> float:
    """The AdamW learning rate: ``upstream`` = ``accumulate * world_size * batch_size * base_lr`` (README:
    1 * 1 * 8 * 4.5e-5 = 3.6e-4; ``world_size`` = devices x nodes); ``none`` = ``base_lr``."""
    if rule == "none":
        return base_lr
    if rule == "upstream":
        return accumulate * world_size * batch_size * base_lr
    raise InputError(f"train.lr_scaling={rule!r}: expected 'upstream' or 'none'")


def lr_factor(step: int, schedule: str, warmup_steps: int, max_steps: int) -> float:
    """Multiplier of the learning rate at optimiser step ``step`` (0-based) for the per-step schedules."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: ``weight_decay`` on Linear weights; 0 on biases, LayerNorm, embeddings and ``pos_emb``."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            (decay if isinstance(module, nn.Linear) and name == "weight" else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class FrozenVQGAN:
    """Holds the frozen VQGAN outside the LightningModule's module tree (see the module docstring)."""

    def __init__(self, vqgan: VQGAN):
        self.module = vqgan.eval().requires_grad_(False)

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """``video (B, 3, T, H, W)`` in [-0.5, 0.5] -> codes ``(B, t, h, w)`` long; fp32, eval mode."""
        if next(self.module.parameters()).device != video.device:
            self.module.to(video.device)
        with torch.autocast(video.device.type, enabled=False):
            return self.module.encode(video.float())


class GPTModule(pl.LightningModule):
    """Trains ``GPT(model_cfg)`` on (caption ids, video codes); ``vqgan`` encodes batches that hold video
    instead of codes (None when a token cache supplies the codes)."""

    def __init__(self, model_cfg: GPTConfig, train_cfg: GPTTrainConfig, vqgan: VQGAN | None = None,
                 vqgan_path: str | None = None, data: dict | None = None):
        super().__init__()
        if model_cfg.text_mode != "bert":
            raise InputError("GPT training supports text_mode 'bert' only (BERT word-piece prefix)")
        self.model_cfg, self.train_cfg = model_cfg, train_cfg
        self.save_hyperparameters({"stage": "gpt", "config": to_dict(model_cfg), "train": to_dict(train_cfg),
                                   "vqgan_path": vqgan_path, "data": data})
        self.gpt = GPT(model_cfg)
        self.frozen = FrozenVQGAN(vqgan) if vqgan is not None else None
        self.lr: float | None = None  # peak learning rate, set in configure_optimizers
        self._gen: torch.Generator | None = None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """The generator of the caption dropout, seeded per batch by (seed, rank, epoch, batch): a resumed run
        drops the captions the uninterrupted run dropped."""
        seed = step_seed(self.train_cfg.seed, self.global_rank, self.current_epoch, batch_idx)
        self._gen = torch.Generator(device=self.device).manual_seed(seed)

    def drop_captions(self, prefix: Tensor) -> Tensor:
        """``prefix (B, L)`` with each row replaced by the null prefix with probability ``model.text_dropout``
        (training only; the rows are drawn from the per-batch generator)."""
        p = self.model_cfg.text_dropout
        if not (self.training and p > 0):
            return prefix
        gen = self._gen if self._gen is not None else torch.Generator(device=prefix.device).manual_seed(0)
        drop = torch.rand(prefix.shape[0], generator=gen, device=prefix.device) < p  # (B,)
        return torch.where(drop.unsqueeze(1), null_prefix(prefix), prefix)

    # ------------------------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        tcfg, trainer = self.train_cfg, self.trainer
        self.lr = effective_lr(tcfg.base_lr, tcfg.lr_scaling, trainer.accumulate_grad_batches, trainer.world_size,
                               tcfg.batch_size)
        if trainer.is_global_zero:
            log.info("learning rate %.4g (base %.4g, scaling %s: accumulate %d, %d process(es), batch %d), "
                     "schedule %s", self.lr, tcfg.base_lr, tcfg.lr_scaling, trainer.accumulate_grad_batches,
                     trainer.world_size, tcfg.batch_size, tcfg.lr_schedule)
        opt = adam(param_groups(self.gpt, tcfg.weight_decay), lr=self.lr, betas=tcfg.betas, decoupled=True)
        if tcfg.lr_schedule == "cosine_epochs":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=tcfg.cosine_t_max)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        schedule, warmup, max_steps = tcfg.lr_schedule, tcfg.warmup_steps, tcfg.max_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, schedule, warmup, max_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------------------------ inputs
    def batch_inputs(self, batch: dict) -> tuple[Tensor, Tensor]:
        """``(prefix (B, L) long, codes (B, t, h, w) long)`` of a batch; bad batches are one-line errors."""
        cfg, key = self.model_cfg, self.train_cfg.cond_key
        if key not in batch:
            raise InputError(f"train.cond_key={key!r} is not in the batch (keys: {sorted(batch)})")
        prefix = batch[key].long()
        if prefix.dim() != 2 or prefix.shape[1] != cfg.text_seq_len:
            raise InputError(f"caption ids have shape {tuple(prefix.shape)}; the GPT expects (B, "
                             f"{cfg.text_seq_len}): data.text_seq_len must equal model.text_seq_len")
        if "codes" in batch:
            codes = batch["codes"].long()
        else:
            vkey = self.train_cfg.first_stage_key
            if vkey not in batch:
                raise InputError(f"train.first_stage_key={vkey!r} is not in the batch (keys: {sorted(batch)})")
            if self.frozen is None:
                raise InputError("batch holds video but the GPT module has no VQGAN to encode it")
            codes = self.frozen.encode(batch[vkey])
        if tuple(codes.shape[1:]) != tuple(cfg.latent_shape):
            raise InputError(f"VQGAN codes have grid {tuple(codes.shape[1:])} but the GPT expects "
                             f"{tuple(cfg.latent_shape)}: clip size and VQGAN do not match the config")
        return prefix, codes

    def _loss_and_accuracy(self, batch: dict, accuracy: bool = True
                           ) -> tuple[Tensor, Tensor | None, Tensor | None, int]:
        """Loss, top-1 and top-5 accuracy (None unless ``accuracy``) and batch size of one batch."""
        prefix, codes = self.batch_inputs(batch)
        prefix = self.drop_captions(prefix)
        video_only = self.train_cfg.softmax == "video"
        logits, targets = self.gpt.training_logits(prefix, codes, video_only)  # (B, N, V), (B, N): video positions
        loss = token_loss(logits, targets)
        acc1, acc5 = token_accuracy(logits.detach(), targets) if accuracy else (None, None)
        return loss, acc1, acc5, prefix.shape[0]

    # ------------------------------------------------------------------------------------ steps
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        logging = logs_this_step(self)
        loss, acc1, acc5, bs = self._loss_and_accuracy(batch, accuracy=logging)
        check_finite(self.trainer, loss, "text", self.global_step)
        if logging or shows_progress(self):
            self.log("train_text_loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=bs)
        if logging:
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            self.log_dict({"train_text_acc1": acc1, "train_text_acc5": acc5, "lr": float(lr),
                           "step": float(self._steps_after(batch_idx))}, on_step=True, on_epoch=False, batch_size=bs)
        return loss

    def _steps_after(self, batch_idx: int) -> int:
        """Optimiser steps done once this micro-batch is through: the x-axis of the logged rows (and the
        ``step`` of checkpoint names), as in the VQGAN stage."""
        n, trainer = self.trainer.accumulate_grad_batches, self.trainer
        boundary = (batch_idx + 1) % n == 0 or batch_idx + 1 == trainer.num_training_batches
        return self.global_step + int(boundary)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, acc1, acc5, bs = self._loss_and_accuracy(batch)
        self.log("step", float(self.global_step), batch_size=bs, sync_dist=True)
        self.log("val_text_loss", loss, prog_bar=True, sync_dist=True, batch_size=bs)
        self.log_dict({"val_text_acc1": acc1, "val_text_acc5": acc5}, sync_dist=True, batch_size=bs)
