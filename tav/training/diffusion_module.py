"""Lightning module of the TA2V stage-2 prior: an unconditional video diffusion U-Net.

One batch: real clips ``batch[input_key]`` ``(B, 3, T, H, W)`` in [-0.5, 0.5] -> uniform timesteps ->
``GaussianSchedule.training_losses`` (MSE on ε plus, with learned sigma, the variational-bound term on the
variance) -> AdamW. Only the video is used: upstream passed the caption into an unconditional U-Net and
crashed. Logged as ``train_loss``, ``train_mse``, ``train_vb`` and the loss per quarter of the
timestep range (``train_loss_q0`` .. ``q3``, as guided-diffusion logs it).

EMA: ``self.ema`` is a frozen copy of the network, updated after every optimiser step as
``ema <- rate * ema + (1 - rate) * net`` (guided-diffusion's ``update_ema``). It lives in the module, so
it is saved in (and restored from) every Lightning checkpoint; DDP ignores it (no gradients).

Checkpoints: ``hyper_parameters = {"stage": "unet", "config": {"unet": UNetConfig fields, "process":
ProcessConfig fields}, "train": DiffusionTrainConfig fields}``; tensors under ``net.`` and ``ema.``;
``tav.load_unet`` reads either. ``UNetExport`` also writes the plain files ``modelNNNNNN.pt`` and
``emaNNNNNN.pt`` (weights in the upstream key layout + the config) every ``save_interval`` steps.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from tav.config import from_dict, to_dict
from tav.diffusion.config import UNetConfig
from tav.diffusion.load import save_unet
from tav.diffusion.schedule import GaussianSchedule, ProcessConfig
from tav.diffusion.unet3d import UNet
from tav.errors import InputError
from tav.training.callbacks import PeriodicExport, check_finite
from tav.training.crops import detail_crops
from tav.training.determinism import step_seed
from tav.training.optim import adam
from tav.training.trainer import logs_this_step, shows_progress

log = logging.getLogger(__name__)


@dataclass
class DiffusionTrainConfig:
    """How the diffusion prior is trained (the ``train:`` section of ``configs/diffusion/*.yaml``)."""

    batch_size: int = 1  # clips per device (README: 1)
    num_workers: int = 8  # DataLoader worker processes per device
    lr: float = 5e-5  # AdamW learning rate (README: 5e-5; constant, no annealing)
    weight_decay: float = 0.0  # AdamW weight decay (README: 0)
    betas: tuple[float, ...] = (0.9, 0.999)  # AdamW betas (guided-diffusion: torch defaults)
    ema_rate: float = 0.9999  # EMA decay per optimiser step
    log_interval: int = 50  # log every N optimiser steps
    save_interval: int = 5000  # modelNNNNNN.pt / emaNNNNNN.pt + a resumable checkpoint every N steps
    max_steps: int = -1  # optimiser steps of the run; -1 = until killed (upstream)
    lr_anneal_steps: int = 0  # > 0: lr decays linearly to 0 over this many steps, then the run stops
    input_key: str = "video"  # batch entry with the (B, 3, T, H, W) clips
    seed: int = 1234  # seed_everything at start-up
    crop_size: int = 0  # train on one crop_size x crop_size window per clip (0 = whole frames; tav.training.crops)
    crop_detail: float = 0.0  # share of those windows centred on the clip's detail rather than anywhere, in [0, 1]

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        for name in ("batch_size", "log_interval"):
            if getattr(self, name) < 1:
                raise InputError(f"train.{name}={getattr(self, name)}: must be >= 1")
        for name in ("num_workers", "save_interval", "weight_decay", "lr_anneal_steps", "crop_size"):
            if getattr(self, name) < 0:
                raise InputError(f"train.{name}={getattr(self, name)}: must be >= 0")
        if not 0.0 <= self.ema_rate < 1.0:
            raise InputError(f"train.ema_rate={self.ema_rate}: must be in [0, 1)")
        if self.lr <= 0:
            raise InputError(f"train.lr={self.lr}: must be > 0")
        if not 0.0 <= self.crop_detail <= 1.0:
            raise InputError(f"train.crop_detail={self.crop_detail}: must be in [0, 1]")


def train_config_from_dict(data: dict[str, Any], where: str = "train") -> DiffusionTrainConfig:
    """``DiffusionTrainConfig`` from a plain dict; unknown keys and wrong types raise ``InputError``."""
    return from_dict(DiffusionTrainConfig, data, where)


EMATensors = tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]


def ema_tensors(ema: nn.Module, net: nn.Module) -> EMATensors:
    """The tensors :func:`ema_update` pairs up: (EMA parameters, parameters, EMA buffers, buffers). Collected once
    per training: walking the module tree every step cost the tiny TIA2V motion model 3.5-4 ms a step against 0.8 ms
    (its step takes about 0.16 s on a 2-core CPU)."""
    ema_params, params = list(ema.parameters()), list(net.parameters())
    ema_bufs, bufs = list(ema.buffers()), list(net.buffers())
    if len(ema_params) != len(params) or len(ema_bufs) != len(bufs):
        raise InputError(f"EMA copy has {len(ema_params)} parameters and {len(ema_bufs)} buffers; the network "
                         f"{len(params)} and {len(bufs)}")
    return ema_params, params, ema_bufs, bufs


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, rate: float, tensors: EMATensors | None = None) -> None:
    """``ema_p <- rate * ema_p + (1 - rate) * p`` for every parameter (buffers are copied). ``tensors``: the
    pairs from :func:`ema_tensors`, reused across steps (collected here when None)."""
    ema_params, params, ema_bufs, bufs = tensors or ema_tensors(ema, net)
    params = [p.detach() if p.dtype == e.dtype else p.detach().to(e.dtype)
              for p, e in zip(params, ema_params, strict=True)]
    torch._foreach_lerp_(ema_params, params, 1.0 - rate)
    if ema_bufs:
        torch._foreach_copy_(ema_bufs, bufs)


def quartile_losses(loss: Tensor, t: Tensor, num_timesteps: int) -> dict[str, Tensor]:
    """Mean of the per-sample ``loss (B,)`` per quarter of the timestep range (only quarters present)."""
    quarter = (t * 4 // num_timesteps).clamp(max=3)
    return {f"train_loss_q{q}": loss[quarter == q].mean() for q in range(4) if bool((quarter == q).any())}


class DiffusionModule(pl.LightningModule):
    """Trains ``UNet(unet_cfg)`` as an unconditional video prior under ``process_cfg``; keeps an EMA copy."""

    stage = "unet"  # recorded in checkpoints; subclasses training other networks set their own

    def __init__(self, unet_cfg: UNetConfig, process_cfg: ProcessConfig, train_cfg: DiffusionTrainConfig):
        super().__init__()
        learn_sigma = unet_cfg.out_channels == 2 * unet_cfg.in_channels
        if process_cfg.learn_sigma != learn_sigma:
            raise InputError(f"process.learn_sigma={process_cfg.learn_sigma} but the U-Net has "
                             f"out_channels={unet_cfg.out_channels} for in_channels={unet_cfg.in_channels}: "
                             "learned sigma needs twice the input channels")
        factor = unet_cfg.spatial_divisor
        if train_cfg.crop_size % factor:
            raise InputError(f"train.crop_size={train_cfg.crop_size}: use a multiple of the U-Net's downsampling "
                             f"({factor}), or 0 for whole frames")
        self.unet_cfg, self.process_cfg, self.train_cfg = unet_cfg, process_cfg, train_cfg
        self.save_hyperparameters({"stage": self.stage, "train": to_dict(train_cfg),
                                   "config": {"unet": to_dict(unet_cfg), "process": to_dict(process_cfg)}})
        self.net = self.build_net(unet_cfg)
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        self.schedule = GaussianSchedule.from_config(process_cfg)
        self._ema_step = -1
        self._ema_tensors: EMATensors | None = None
        self._gen: torch.Generator | None = None

    def _apply(self, fn: Callable, *args: Any, **kwargs: Any) -> DiffusionModule:
        # .to() / .double() / .cuda() put new tensors in place of buffers: pair the EMA's tensors up again
        self._ema_tensors = None
        return super()._apply(fn, *args, **kwargs)

    def build_net(self, cfg: Any) -> nn.Module:
        """The network trained by this module (the TA2V prior: ``UNet(cfg)``)."""
        return UNet(cfg)

    def export_net(self, net: nn.Module, path: Path, **extra: Any) -> Path:
        """Write ``net`` (the raw or EMA weights) as a plain file that the stage's loader reads."""
        return save_unet(net, path, self.process_cfg, **extra)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """The generator of timesteps and noise, seeded for this batch by (seed, rank, epoch, batch): DDP ranks
        draw different noise, and a resumed run draws what the uninterrupted run drew at the same batch."""
        seed = step_seed(self.train_cfg.seed, self.global_rank, self.current_epoch, batch_idx)
        self._gen = torch.Generator(device=self.device).manual_seed(seed)

    def configure_optimizers(self) -> dict[str, Any]:
        t = self.train_cfg
        params = [p for p in self.net.parameters() if p.requires_grad]
        opt = adam(params, lr=t.lr, weight_decay=t.weight_decay, betas=t.betas, decoupled=True)
        anneal = t.lr_anneal_steps
        factor = (lambda step: max(0.0, 1.0 - step / anneal)) if anneal > 0 else (lambda step: 1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def input_video(self, batch: dict) -> Tensor:
        """``(B, C, T, H, W)`` clips of a batch, checked against the U-Net config."""
        key, cfg = self.train_cfg.input_key, self.unet_cfg
        if key not in batch:
            raise InputError(f"train.input_key={key!r} is not in the batch (keys: {sorted(batch)})")
        x = batch[key]
        if x.dim() != cfg.dims + 2 or x.shape[1] != cfg.in_channels:
            raise InputError(f"batch[{key!r}] has shape {tuple(x.shape)}; the U-Net expects (B, "
                             f"{cfg.in_channels}, {'T, ' if cfg.dims == 3 else ''}H, W)")
        return x

    def diffusion_terms(self, batch: dict) -> tuple[dict[str, Tensor], Tensor]:
        """Per-sample loss terms ``{"loss", "mse", "vb"}`` (each ``(N,)``) and the timesteps ``t (N,)`` of one
        batch: one window per clip when ``train.crop_size`` is set, uniform ``t``, Gaussian noise, all from the
        module's generator, one network call."""
        x0 = self.input_video(batch)
        if self.train_cfg.crop_size:
            x0 = detail_crops(x0, self.train_cfg.crop_size, self.train_cfg.crop_detail, self._gen)
        t = self.schedule.sample_timesteps(x0.shape[0], x0.device, generator=self._gen)
        noise = torch.randn(x0.shape, generator=self._gen, device=x0.device, dtype=x0.dtype)
        return self.schedule.training_losses(self.net, x0, t, noise=noise), t

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        terms, t = self.diffusion_terms(batch)
        loss = terms["loss"].mean()
        check_finite(self.trainer, loss, "diffusion", self.global_step)
        bs, logging = len(batch[self.train_cfg.input_key]), logs_this_step(self)
        if logging or shows_progress(self):
            self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=bs)
        if logging:
            parts = {f"train_{k}": v.mean() for k, v in terms.items() if k != "loss"}
            parts.update(quartile_losses(terms["loss"].detach(), t, self.schedule.num_timesteps))
            parts["step"] = float(self.global_step + 1)
            self.log_dict(parts, on_step=True, on_epoch=False, batch_size=bs)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.global_step != self._ema_step:  # once per optimiser step (accumulation-safe)
            self._ema_step = self.global_step
            if self._ema_tensors is None:
                self._ema_tensors = ema_tensors(self.ema, self.net)
            ema_update(self.ema, self.net, self.train_cfg.ema_rate, self._ema_tensors)


class UNetExport(PeriodicExport):
    """Every ``every_n_steps`` optimiser steps and at the end of training, rank 0 writes
    ``<dirpath>/modelNNNNNN.pt`` (the trained weights) and ``<dirpath>/emaNNNNNN.pt`` (the EMA weights):
    plain ``tav`` files (config + state dict in the upstream key layout), written atomically."""

    def __init__(self, dirpath: str | Path, every_n_steps: int):
        self.dirpath = Path(dirpath)
        super().__init__(every_n_steps, self._write)

    def _write(self, module: DiffusionModule, step: int) -> None:
        for name, net in (("model", module.net), ("ema", module.ema)):
            module.export_net(net, self.dirpath / f"{name}{step:06d}.pt", step=step, weights=name)
        log.info("exported %s/{model,ema}%06d.pt", self.dirpath, step)
