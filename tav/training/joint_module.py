"""Trains the joint audio–video–text encoder (``tav.encoders.joint``) contrastively.

A batch holds ``B`` clips with ``K`` frames each (``tav.data.frame_audio``). With unit embeddings ``f`` (frames),
``a`` (the audio window centred on each frame) and ``c`` (captions), and the learned scale ``s``:

- frame <-> audio: InfoNCE over the ``B·K`` pairs, both directions; the other frames of the same clip are
  negatives, so the encoder must tell notes apart (pitch, onsets), not only clips;
- frame <-> caption: InfoNCE where every frame of a clip, and of any clip with the same caption, is a positive
  of that caption (multi-positive: ``-log Σ_pos softmax``), both directions.

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
from tav.training.callbacks import check_finite
from tav.training.optim import adam


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


def joint_train_config(data: dict[str, Any], where: str = "train") -> JointTrainConfig:
    return from_dict(JointTrainConfig, data, where)


def multi_positive_nce(logits: Tensor, positive: Tensor) -> Tensor:
    """``-log Σ_{j positive} softmax(logits[i])_j`` averaged over rows ``i``; ``positive`` bool, same shape."""
    masked = logits.masked_fill(~positive, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(masked, dim=1)).mean()


class JointModule(pl.LightningModule):
    """``JointModel(cfg)`` trained on ``tav.data.frame_audio`` batches; ``hparams`` record the stage and config."""

    def __init__(self, model_cfg: JointConfig, train_cfg: JointTrainConfig):
        super().__init__()
        self.model_cfg, self.train_cfg = model_cfg, train_cfg
        self.save_hyperparameters({"stage": STAGE, "config": to_dict(model_cfg), "train": to_dict(train_cfg)})
        self.model = JointModel(model_cfg)

    def embed(self, batch: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Unit embeddings ``f (B·K, D)``, ``a (B·K, D)``, ``c (B, D)`` and the clip of each frame ``(B·K,)``."""
        b, k = batch["images"].shape[:2]
        frames = (batch["images"].flatten(0, 1) - 0.5) / 0.5
        f = F.normalize(self.model.encode_frames(frames).float(), dim=-1)
        a = F.normalize(self.model.encode_audio(batch["audio"].flatten(0, 1)).float(), dim=-1)
        c = F.normalize(self.model.encode_tokens(batch["text"]).float(), dim=-1)
        return f, a, c, torch.arange(b, device=f.device).repeat_interleave(k)

    def losses(self, batch: dict) -> dict[str, Tensor]:
        f, a, c, clip = self.embed(batch)
        scale = self.model.logit_scale.exp().clamp(max=100.0)
        fa = scale * f @ a.T
        target = torch.arange(len(f), device=f.device)
        audio = (F.cross_entropy(fa, target) + F.cross_entropy(fa.T, target)) / 2
        text = batch["text"]
        same_caption = (text[:, None, :] == text[None, :, :]).all(-1)  # (B, B) clips with one caption
        positive = same_caption[clip]  # (B·K, B): frame i's caption is caption j
        fc = scale * f @ c.T
        caption = (multi_positive_nce(fc, positive) + multi_positive_nce(fc.T, positive.T)) / 2
        accuracy = (fa.argmax(1) == target).float().mean()
        return {"loss": audio + self.train_cfg.caption_weight * caption, "audio_nce": audio, "caption_nce": caption,
                "audio_acc": accuracy, "scale": scale.detach()}

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        parts = self.losses(batch)
        check_finite(self.trainer, parts["loss"], "joint-encoder", self.global_step, parts)
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
