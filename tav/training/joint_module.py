"""Trains the joint audio–video–text encoder (``tav.encoders.joint``) contrastively.

A batch holds ``B`` clips with ``K`` frames each (``tav.data.frame_audio``). With unit embeddings ``f`` (frames),
``a`` (the audio window centred on each frame) and ``c`` (captions), and the learned scale ``s``:

- frame <-> audio: InfoNCE over the ``B·K`` pairs, both directions; the other frames of the same clip are
  negatives, so the encoder must tell notes apart (pitch, onsets), not only clips;
- frame <-> caption: InfoNCE where every frame of a clip, and of any clip with the same caption, is a positive
  of that caption (multi-positive: ``-log Σ_pos softmax``), both directions.

Frames a stage-2 guide reads are not the sharp clean training frames: they are small (16 px in the demo) and
partly noised, and a guide that never saw such frames answers them with gradients that tint the background and
speckle the picture. ``degrade_sizes`` / ``tint_std`` / ``noise_std`` train on such frames (validation stays
clean): a share ``degrade_p`` of the frames is shrunk to one of ``degrade_sizes`` px and brought back, every frame
gets a smooth random colour field (``tint_std``: the background's colour then tells nothing) and Gaussian noise of
a random std up to ``noise_std`` (a noise-aware guide, as GLIDE's noised CLIP, Nichol et al. 2022).

The sound says nothing of a shape's colour, yet a guide trained only as above may tie the two through its few
training clips, and at stage 2's weights the audio term's gradient then repaints the shape. ``colour_shuffle_p``
(ours) shows the frame <-> audio term a share of the frames in another RGB order (one of the five non-identity
orders) and leaves those frames out of the frame <-> caption term, which needs their colour: the audio similarity
learns not to depend on the colour.

Source of the loss: CLIP (Radford et al. 2021), symmetric InfoNCE with a learned temperature.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from tav.config import from_dict, to_dict
from tav.encoders.joint import STAGE, JointConfig, JointModel, save_joint
from tav.errors import InputError
from tav.training.callbacks import check_finite
from tav.training.determinism import step_seed
from tav.training.optim import adam
from tav.training.trainer import logs_this_step


@dataclass
class JointTrainConfig:
    """How the joint encoder is trained (the ``train:`` section of ``configs/joint/*.yaml``)."""

    batch_size: int = 16  # clips per device; K frames each
    num_workers: int = 2
    lr: float = 1e-3  # AdamW
    weight_decay: float = 0.01
    warmup_steps: int = 50  # linear warm-up, then constant
    max_steps: int = 1000
    caption_weight: float = 1.0  # weight of the frame <-> caption term
    save_interval: int = 500  # joint_encoder.pt and a resumable checkpoint every N steps (0: at the end only)
    log_interval: int = 10
    seed: int = 1234
    degrade_sizes: tuple[int, ...] = ()  # frame sizes (px) a training frame may be shrunk to and brought back
    degrade_p: float = 0.5  # share of training frames shrunk (when degrade_sizes is set)
    noise_std: float = 0.0  # Gaussian noise of std U(0, noise_std), pixel units of [0, 1], on every training frame
    tint_std: float = 0.0  # std of a smooth random colour field (a 4x4 grid, bicubic) added to every training frame
    colour_shuffle_p: float = 0.0  # share of training frames the audio term sees recoloured (ours; module docstring)

    def __post_init__(self) -> None:
        if not 0.0 <= self.colour_shuffle_p < 1.0:
            raise InputError(f"joint train: colour_shuffle_p {self.colour_shuffle_p} must be in [0, 1) (the caption "
                             "term needs frames in their own colours)")
        if any(s < 1 for s in self.degrade_sizes) or not 0.0 <= self.degrade_p <= 1.0 or min(self.noise_std,
                                                                                               self.tint_std) < 0:
            raise InputError(f"joint train: degrade_sizes {list(self.degrade_sizes)} must be >= 1 px, degrade_p "
                             f"{self.degrade_p} in [0, 1], noise_std {self.noise_std} and tint_std {self.tint_std} "
                             ">= 0")

    @property
    def degrades(self) -> bool:
        return bool(self.degrade_sizes) or self.noise_std > 0 or self.tint_std > 0


def degrade_frames(frames: Tensor, sizes: tuple[int, ...], p: float, noise_std: float, tint_std: float = 0.0,
                   generator: torch.Generator | None = None) -> Tensor:
    """``(N, 3, H, W)`` frames in [0, 1] -> the same shape, degraded as a guide's input is: a share ``p`` of the
    frames shrunk to a random one of ``sizes`` px and resized back (bilinear, antialiased), then a smooth colour
    field of std ``tint_std`` (a random 4x4 grid, bicubic) and ``σ·ε`` with ``σ ~ U(0, noise_std)`` per frame
    added (not clamped: a guide's input is not). All draws come from ``generator``."""
    n, _, h, w = frames.shape
    out = frames
    if sizes:
        pick = torch.randint(len(sizes), (n,), generator=generator, device=frames.device)
        chosen = torch.rand(n, generator=generator, device=frames.device) < p
        out = frames.clone()
        for k, size in enumerate(sizes):
            idx = torch.nonzero(chosen & (pick == k)).flatten()
            if len(idx):
                small = F.interpolate(frames[idx], size=(size, size), mode="bilinear", antialias=True,
                                      align_corners=False)
                out[idx] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).to(out.dtype)
    if tint_std > 0:
        field = tint_std * torch.randn(n, 3, 4, 4, generator=generator, device=frames.device)
        out = out + F.interpolate(field, size=(h, w), mode="bicubic", align_corners=False)
    if noise_std > 0:
        sigma = noise_std * torch.rand(n, 1, 1, 1, generator=generator, device=frames.device)
        out = out + sigma * torch.randn(out.shape, generator=generator, device=frames.device)
    return out


# the five RGB orders other than the identity
CHANNEL_ORDERS = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def shuffle_colours(frames: Tensor, p: float, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``(N, 3, H, W)`` frames -> the same frames with a share ``p`` of them in a random non-identity RGB order, and
    the bool mask ``(N,)`` of those recoloured. All draws come from ``generator``."""
    n, dev = frames.shape[0], frames.device
    chosen = torch.rand(n, generator=generator, device=dev) < p
    pick = torch.randint(len(CHANNEL_ORDERS), (n,), generator=generator, device=dev)
    order = torch.tensor(CHANNEL_ORDERS, device=dev)[pick]  # (N, 3)
    recoloured = torch.gather(frames, 1, order[:, :, None, None].expand_as(frames))
    return torch.where(chosen[:, None, None, None], recoloured, frames), chosen


def joint_train_config(data: dict[str, Any], where: str = "train") -> JointTrainConfig:
    return from_dict(JointTrainConfig, data, where)


def multi_positive_nce(logits: Tensor, positive: Tensor) -> Tensor:
    """``-log Σ_{j positive} softmax(logits[i])_j`` averaged over rows ``i``; ``positive`` bool, same shape."""
    masked = logits.masked_fill(~positive, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(masked, dim=1)).mean()


def caption_nce(logits: Tensor, positive: Tensor, keep: Tensor) -> Tensor:
    """The frame <-> caption term over the frames ``keep`` marks: ``logits (B·K, B)`` frames against captions,
    ``positive`` of the same shape, ``keep (B·K,)`` bool. Both directions of ``multi_positive_nce``; a caption none
    of whose frames is kept drops out of the caption -> frame direction. Zero (with a graph) if no frame is kept."""
    if bool(keep.all()):
        return (multi_positive_nce(logits, positive) + multi_positive_nce(logits.T, positive.T)) / 2
    if not bool(keep.any()):
        return logits.sum() * 0.0
    logits, positive = logits[keep], positive[keep]
    has = positive.any(0)  # captions with a kept frame
    return (multi_positive_nce(logits, positive) + multi_positive_nce(logits.T[has], positive.T[has])) / 2


class JointModule(pl.LightningModule):
    """``JointModel(cfg)`` trained on ``tav.data.frame_audio`` batches; ``hparams`` record the stage and config."""

    def __init__(self, model_cfg: JointConfig, train_cfg: JointTrainConfig):
        super().__init__()
        self.model_cfg, self.train_cfg = model_cfg, train_cfg
        self.save_hyperparameters({"stage": STAGE, "config": to_dict(model_cfg), "train": to_dict(train_cfg)})
        self.model = JointModel(model_cfg)
        self._gen: torch.Generator | None = None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """The generator of the frame degradations, seeded per batch by (seed, rank, epoch, batch): a resumed run
        draws what the uninterrupted run drew."""
        seed = step_seed(self.train_cfg.seed, self.global_rank, self.current_epoch, batch_idx)
        self._gen = torch.Generator(device=self.device).manual_seed(seed)

    def embed(self, batch: dict) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Unit embeddings ``f (B·K, D)``, ``a (B·K, D)``, ``c (B, D)``, the clip of each frame ``(B·K,)`` and
        which frames were recoloured for the audio term ``(B·K,)`` bool (``colour_shuffle_p``; training only)."""
        b, k = batch["images"].shape[:2]
        frames, t = batch["images"].flatten(0, 1), self.train_cfg
        recoloured = torch.zeros(len(frames), dtype=torch.bool, device=frames.device)
        if self.training and t.degrades:
            frames = degrade_frames(frames, t.degrade_sizes, t.degrade_p, t.noise_std, t.tint_std, self._gen)
        if self.training and t.colour_shuffle_p > 0:
            frames, recoloured = shuffle_colours(frames, t.colour_shuffle_p, self._gen)
        frames = (frames - 0.5) / 0.5
        f = F.normalize(self.model.encode_frames(frames).float(), dim=-1)
        a = F.normalize(self.model.encode_audio(batch["audio"].flatten(0, 1)).float(), dim=-1)
        c = F.normalize(self.model.encode_tokens(batch["text"]).float(), dim=-1)
        return f, a, c, torch.arange(b, device=f.device).repeat_interleave(k), recoloured

    def losses(self, batch: dict) -> dict[str, Tensor]:
        f, a, c, clip, recoloured = self.embed(batch)
        scale = self.model.logit_scale.exp().clamp(max=100.0)
        fa = scale * f @ a.T
        target = torch.arange(len(f), device=f.device)
        audio = (F.cross_entropy(fa, target) + F.cross_entropy(fa.T, target)) / 2
        text = batch["text"]
        same_caption = (text[:, None, :] == text[None, :, :]).all(-1)  # (B, B) clips with one caption
        caption = caption_nce(scale * f @ c.T, same_caption[clip], ~recoloured)  # positive (B·K, B): frame's caption
        accuracy = (fa.argmax(1) == target).float().mean()
        return {"loss": audio + self.train_cfg.caption_weight * caption, "audio_nce": audio, "caption_nce": caption,
                "audio_acc": accuracy, "scale": scale.detach()}

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        parts = self.losses(batch)
        check_finite(self.trainer, parts["loss"], "joint-encoder", self.global_step, parts)
        if logs_this_step(self):
            self.log_dict({f"train_{k}": v.detach() for k, v in parts.items()}, batch_size=len(batch["text"]))
        return parts["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        parts = self.losses(batch)
        self.log_dict({f"val_{k}": v for k, v in parts.items()}, batch_size=len(batch["text"]))

    def configure_optimizers(self):
        t = self.train_cfg
        opt = adam(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay, decoupled=True)
        warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(t.warmup_steps, 1)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}

    def export(self, path: str | Path, **extra: Any) -> Path:
        """The trained encoder as a plain ``tav`` file (``tav.encoders.joint.load_joint`` reads it)."""
        return save_joint(self.model, path, step=self.global_step, **extra)
