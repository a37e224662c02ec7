"""CLIP-text and CLIP-audio scores: pure functions on frames, captions and audio.

Both scores compare each video frame with a condition in an encoder's joint space and report
``100 · cos`` averaged over frames (per video); the caller averages over videos.

Protocols (frames come in as uint8 ``(N, T, H, W, 3)`` **RGB**):

- ``"tav"``: RGB in [0, 1], bicubic resize of the short side to the tower's input size (antialiased, as
  CLIP's PIL preprocessing) and centre crop, then the encoder's own mean/std normalisation. CLIP-audio
  gives frame ``t`` the audio window of ``window_s`` seconds centred on it, at the audio tower's rate.
- ``"ta2v"``: upstream's pipeline: BGR in [0, 1], a plain bilinear resize to the input size and **no**
  normalisation; a caption file's lines are scored separately and averaged; the audio (upstream reads it
  at 48 kHz) is cut into ``T`` equal raw chunks (no resampling, no int16 scaling).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tav.encoders.audio import encoder_audio
from tav.encoders.base import Encoder

Caption = str | Sequence[str]


def _flat_frames(videos: np.ndarray | Tensor, protocol: str) -> Tensor:
    """uint8 ``(N, T, H, W, 3)`` RGB -> uint8 ``(N*T, H, W, 3)`` in the protocol's channel order."""
    x = videos if isinstance(videos, Tensor) else torch.from_numpy(np.ascontiguousarray(videos))
    if x.dim() != 5 or x.shape[-1] != 3:
        raise ValueError(f"videos must be (N, T, H, W, 3), got {tuple(x.shape)}")
    if protocol == "ta2v":
        x = x.flip(-1)  # upstream decodes with OpenCV and never converts BGR to RGB
    elif protocol != "tav":
        raise ValueError(f"unknown protocol {protocol!r}; expected 'tav' or 'ta2v'")
    return x.reshape(-1, *x.shape[2:])


def _clip_resize(x: Tensor, size: int) -> Tensor:
    """CLIP preprocessing geometry: bicubic short side -> ``size`` (antialiased), centre crop, clamp [0, 1]."""
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new = (max(size, round(h * scale)), max(size, round(w * scale)))
    if new != (h, w):
        x = F.interpolate(x, size=new, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    return x[..., top : top + size, left : left + size]


def _raw_tower(encoder: Encoder, x: Tensor) -> Tensor:
    """The image tower on ``x (M, 3, S, S)`` as given, with no mean/std normalisation (upstream ``ta2v``).

    ``encode_images`` always normalises, so its normalisation is undone first: the tower sees ``x``.
    """
    mean = torch.tensor(encoder.image_mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(encoder.image_std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return encoder.encode_images(x * std + mean)


def _normed(f: Tensor) -> np.ndarray:
    f = f.detach().to("cpu", torch.float64)
    return (f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)).numpy()


@torch.no_grad()
def image_features(encoder: Encoder, videos: np.ndarray | Tensor, protocol: str = "tav",
                   frames_per_batch: int = 64) -> np.ndarray:
    """Unit-norm frame features ``(N, T, D)`` float64 of uint8 ``videos (N, T, H, W, 3)`` RGB."""
    n, t = videos.shape[:2]
    flat = _flat_frames(videos, protocol)
    size = int(encoder.image_size)
    out = []
    for i in range(0, n * t, frames_per_batch):
        batch = flat[i : i + frames_per_batch].to(encoder.device).permute(0, 3, 1, 2).float() / 255.0  # [0, 1]
        if protocol == "ta2v":
            batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False)
            out.append(_raw_tower(encoder, batch))
        else:
            out.append(encoder.encode_images(_clip_resize(batch, size)))
    feats = torch.cat(out) if out else torch.zeros(0, encoder.dim)
    return _normed(feats).reshape(n, t, -1)


@torch.no_grad()
def text_features(encoder: Encoder, captions: Sequence[Caption], protocol: str = "tav") -> list[np.ndarray]:
    """Unit-norm caption features, one ``(L, D)`` float64 array per video.

    A caption is a string or a list of lines; ``tav`` joins the lines with spaces (L = 1), ``ta2v`` keeps
    one row per line as upstream does.
    """
    out = []
    for caption in captions:
        lines = [caption] if isinstance(caption, str) else [str(line) for line in caption]
        if protocol != "ta2v":
            lines = [" ".join(lines)]
        out.append(_normed(encoder.encode_texts(lines)))
    return out


def frame_text_scores(image_feats: np.ndarray, text_feats: Sequence[np.ndarray],
                      clamp_zero: bool = False) -> np.ndarray:
    """Per video ``100 · cos(frame, caption line)`` averaged over frames and lines: ``(N,)`` float64.

    ``image_feats``: ``(N, T, D)`` unit-norm; ``text_feats``: ``N`` unit-norm ``(L, D)`` arrays.
    ``clamp_zero``: ``max(100 · cos, 0)`` per frame first (the torchmetrics CLIPScore convention).
    """
    if len(image_feats) != len(text_feats):
        raise ValueError(f"{len(image_feats)} videos but {len(text_feats)} captions")
    out = []
    for img, txt in zip(image_feats, text_feats, strict=True):
        per_frame = 100.0 * (img @ txt.T)  # (T, L)
        out.append(float((np.maximum(per_frame, 0.0) if clamp_zero else per_frame).mean()))
    return np.array(out, dtype=np.float64)


def clip_text_scores(encoder: Encoder, videos: np.ndarray | Tensor, captions: Sequence[Caption],
                     protocol: str = "tav") -> np.ndarray:
    """CLIP-text score per video, ``(N,)`` float64: ``100 · cos(frame, caption)`` averaged over frames.

    ``videos``: uint8 ``(N, T, H, W, 3)`` RGB; ``captions``: one string (or list of lines) per video.
    """
    return frame_text_scores(image_features(encoder, videos, protocol), text_features(encoder, captions, protocol))


@torch.no_grad()
def audio_features(encoder: Encoder, audios: Sequence[np.ndarray] | np.ndarray, rate: int, n_frames: int,
                   protocol: str = "tav", window_s: float = 0.5) -> np.ndarray:
    """Unit-norm per-frame audio features ``(N, n_frames, D)`` float64.

    ``audios``: one mono float waveform in [-1, 1] per video, at ``rate`` Hz, covering that video's frames.
    ``tav``: ``encoder_audio(..., mode="window")``; ``ta2v``: ``n_frames`` equal raw chunks (a tail that does
    not divide evenly is dropped; upstream's reshape would fail). Each video's rows are embedded together.
    """
    out = []
    for wave in audios:
        wave = np.asarray(wave, dtype=np.float32).reshape(-1)
        if protocol == "ta2v":
            wave = wave[: len(wave) // n_frames * n_frames]
            rows = encoder_audio(wave[None], rate, encoder, n_frames, mode="upstream")
        else:
            rows = encoder_audio(wave[None], rate, encoder, n_frames, window_s=window_s, mode="window")
        out.append(_normed(encoder.encode_audio(rows[0].to(encoder.device))))  # (n_frames, D)
    return np.stack(out) if out else np.zeros((0, n_frames, encoder.dim))


@dataclass(frozen=True)
class AudioScores:
    """CLIP-audio result per video: ``cos100`` = ``100 · cos`` averaged over frames; for AudioCLIP also
    ``logit`` = ``clamp(exp(logit_scale_ai), 1, 100) · cos`` averaged over frames (upstream's number) and
    that ``scale``."""

    cos100: np.ndarray
    logit: np.ndarray | None = None
    scale: float | None = None

    def primary(self, protocol: str) -> np.ndarray:
        """The reported score: upstream's logit-scaled one under ``ta2v`` when there is one, else ``cos100``."""
        return self.logit if protocol == "ta2v" and self.logit is not None else self.cos100


def frame_audio_scores(image_feats: np.ndarray, audio_feats: np.ndarray, scale: float | None = None) -> AudioScores:
    """Frame ``t`` against audio window ``t`` (the diagonal), averaged over frames."""
    if image_feats.shape != audio_feats.shape:
        raise ValueError(f"image features {image_feats.shape} and audio features {audio_feats.shape} differ; "
                         "the image and audio towers must share one joint space and frame count")
    cos = (image_feats * audio_feats).sum(-1).mean(-1)  # (N,)
    return AudioScores(100.0 * cos, None if scale is None else scale * cos, scale)


def audio_image_scale(encoder: Encoder) -> float | None:
    """AudioCLIP's clamped audio-image logit scale, ``None`` for encoders without one."""
    scale = getattr(encoder, "audio_image_scale", None)
    return None if scale is None else float(scale)
