"""A small joint audio–video–text encoder, trained contrastively on a VAT dataset (``scripts/train_joint_encoder.py``).

Where AudioCLIP and CLIP are weak (solo instruments, a synthetic domain) or unavailable, a user can train this
guide on their own clips. Three towers map into one ``dim``-wide space:

- frames: ``(N, 3, H, W)`` in [0, 1] -> resized to ``image_size`` -> four stride-2 convolutions (GroupNorm,
  GELU) -> the flattened ``image_size/16`` grid (so *where* things are survives) -> linear;
- audio: ``(N, S)`` mono at ``audio_rate`` (a window around a frame, any length) -> log-mel (``n_mels`` bands,
  10 ms hop) -> three 1-D convolutions -> pooled to ``time_bins`` steps (so *when* things happen in the window
  survives) -> linear;
- captions: BERT word pieces (``tav.data.text``), hashed into ``text_buckets`` learned embeddings -> their mean
  -> MLP.

Trained with InfoNCE between each frame and the audio window centred on it, and between each frame and its
clip's caption (``tav.training.joint_module``). Registered as ``joint`` (``--joint_ckpt``): guidance uses the
frame and audio towers like AudioCLIP's, and the frame and caption towers like CLIP's; the metric tools score
with it the same way.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tav.checkpoint import read_checkpoint, save_checkpoint, strict_from_state_dict
from tav.config import from_dict, to_dict
from tav.encoders.base import Encoder
from tav.errors import InputError

STAGE = "joint"
JOINT_FILE = "joint_encoder.pt"


@dataclass
class JointConfig:
    """The joint encoder's architecture and input settings."""

    dim: int = 128  # joint embedding width
    image_size: int = 64  # frames are resized to this square
    width: int = 32  # channels of the first convolution (doubling to 4x)
    audio_rate: int = 16000  # Hz
    n_mels: int = 64
    n_fft: int = 512
    hop: int = 160  # 10 ms at 16 kHz
    audio_width: int = 128
    time_bins: int = 8  # the audio window is pooled to this many steps
    text_buckets: int = 4096  # word-piece ids are hashed (id mod buckets) into this many learned embeddings
    text_len: int = 16  # word pieces per caption (BERT's [CLS] ... [SEP], padded with 0)
    text_width: int = 64
    logit_scale_init: float = math.log(1 / 0.07)

    def __post_init__(self) -> None:
        if self.image_size % 16 or self.image_size < 16:
            raise InputError(f"joint.image_size {self.image_size}: must be a multiple of 16")


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.GELU())


class JointModel(nn.Module):
    """The three towers and the learned temperature (trainable; ``JointEncoder`` wraps it frozen)."""

    def __init__(self, cfg: JointConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.image = nn.Sequential(_conv(3, w), _conv(w, 2 * w), _conv(2 * w, 4 * w), _conv(4 * w, 4 * w),
                                   nn.Flatten(), nn.Linear(4 * w * (cfg.image_size // 16) ** 2, cfg.dim))
        a = cfg.audio_width
        self.audio = nn.Sequential(
            nn.Conv1d(cfg.n_mels, a, 3, padding=1), nn.GELU(), nn.Conv1d(a, a, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(a, a, 3, stride=2, padding=1), nn.GELU(), nn.AdaptiveAvgPool1d(cfg.time_bins), nn.Flatten(),
            nn.Linear(a * cfg.time_bins, cfg.dim))
        self.tokens = nn.Embedding(cfg.text_buckets, cfg.text_width, padding_idx=0)
        self.text = nn.Sequential(nn.Linear(cfg.text_width, 2 * cfg.text_width), nn.GELU(),
                                  nn.Linear(2 * cfg.text_width, cfg.dim))
        self.logit_scale = nn.Parameter(torch.tensor(cfg.logit_scale_init))
        self.register_buffer("mel", torch.from_numpy(_mel_basis(cfg)))  # saved: the loader builds on meta
        self.register_buffer("window", torch.hann_window(cfg.n_fft))

    def encode_frames(self, frames: Tensor) -> Tensor:
        """``(N, 3, S, S)`` normalised frames -> ``(N, dim)``."""
        return self.image(frames)

    def log_mel(self, audio: Tensor) -> Tensor:
        """``(N, S)`` at ``audio_rate`` -> ``(N, n_mels, frames)`` log-mel (float32)."""
        spec = torch.stft(audio.float(), self.cfg.n_fft, self.cfg.hop, window=self.window, center=True,
                          return_complex=True).abs().square()
        return torch.log(torch.einsum("mf,nft->nmt", self.mel, spec) + 1e-6)

    def encode_audio(self, audio: Tensor) -> Tensor:
        """``(N, S)`` at ``audio_rate`` in [-1, 1] -> ``(N, dim)``."""
        return self.audio(self.log_mel(audio))

    def encode_tokens(self, ids: Tensor) -> Tensor:
        """``(N, L)`` word-piece ids (0 = padding) -> ``(N, dim)``."""
        mask = (ids != 0).unsqueeze(-1).float()
        buckets = torch.where(ids != 0, ids % (self.cfg.text_buckets - 1) + 1, 0)  # 0 stays padding
        pooled = (self.tokens(buckets) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.text(pooled)


def _mel_basis(cfg: JointConfig) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=cfg.audio_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels).astype(np.float32)


class JointEncoder(Encoder):
    """The frozen joint encoder behind the common ``Encoder`` interface."""

    name = "joint"
    image_mean = (0.5, 0.5, 0.5)
    image_std = (0.5, 0.5, 0.5)
    audio_scale = 1.0

    def __init__(self, model: JointModel):
        super().__init__()
        self.model = model
        self.dim, self.image_size, self.audio_rate = model.cfg.dim, model.cfg.image_size, model.cfg.audio_rate
        self._tokenize = None
        self.freeze()

    def encode_images(self, images: Tensor) -> Tensor:
        return self.model.encode_frames(self.preprocess_images(images))

    def encode_audio(self, audio: Tensor) -> Tensor:
        if audio.dim() != 2:
            raise ValueError(f"joint: audio must be (N, S), got {tuple(audio.shape)}")
        return self.model.encode_audio(audio.to(self.device))

    def encode_texts(self, captions: Sequence[str]) -> Tensor:
        if self._tokenize is None:
            from tav.data.text import build_tokenizer

            self._tokenize = build_tokenizer("bert", self.model.cfg.text_len)
        return self.model.encode_tokens(self._tokenize(list(captions)).to(self.device))


def save_joint(model: JointModel, path: str | os.PathLike, **extra) -> Path:
    """Write ``model`` as a ``tav`` checkpoint of stage ``joint`` (config + state dict)."""
    return save_checkpoint(path, STAGE, to_dict(model.cfg), model.state_dict(), **extra)


def load_joint(path: str | os.PathLike, device: str | torch.device = "cpu") -> JointEncoder:
    """The frozen joint encoder of ``path``: our export or a ``train_joint_encoder.py`` Lightning checkpoint.

    A file of another model (AudioCLIP, CLIP, ...) or one that does not fit its config is a one-line
    ``InputError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no joint-encoder file; train one with scripts/train_joint_encoder.py "
                         "(or pass --joint_ckpt)")
    ckpt = read_checkpoint(path, expect=STAGE)
    cfg = from_dict(JointConfig, dict(ckpt.config or {}), where=f"{path}: config")
    sd = ckpt.state_dict
    if ckpt.format == "lightning":
        sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    model = strict_from_state_dict(lambda: JointModel(cfg), sd, str(path), "the joint encoder")
    return JointEncoder(model).to(device)


def save_tiny_joint(path: str | os.PathLike, seed: int = 0, **overrides) -> Path:
    """A joint encoder with seeded random weights (tests, demos without training); the global RNG is kept."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = JointModel(JointConfig(**{"dim": 32, "width": 8, "audio_width": 32, "text_width": 16,
                                          "text_buckets": 512, **overrides}))
    return save_joint(model, path)
