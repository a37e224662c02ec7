"""Per-video-frame audio for an encoder's audio tower.

Two modes:

- ``"window"`` (tav default): resample the clip to the encoder's ``audio_rate`` (AudioCLIP 44.1 kHz,
  wav2clip 16 kHz) and give each video frame a window of ``window_s`` seconds centred on that frame (shifted
  to stay inside the clip), times the encoder's ``audio_scale`` (AudioCLIP: the int16 range). A 0.5 s
  window spans many STFT frames, unlike upstream's 33 ms rows.
- ``"upstream"`` (compat): no resampling and no scaling; the clip is cut into ``n_frames`` equal rows
  (1600 samples at 48 kHz and 30 fps), which is what TA2V fed both AudioCLIP and wav2clip. Upstream passed
  float audio in [-1, 1] even to AudioCLIP, so the scale is 1 in this mode; guidance behaviour published
  with the release depends on exactly these inputs.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from tav.data.audio import resample
from tav.encoders.base import Encoder

AudioMode = Literal["window", "upstream"]


def window_starts(n_samples: int, n_frames: int, window: int) -> Tensor:
    """First sample of each frame's window, ``(n_frames,)`` long.

    Frame ``i`` owns ``[i * n / F, (i + 1) * n / F)``; its window of ``window`` samples is centred on the
    middle of that span (``start = floor(centre - window / 2 + 1/2)``, exact integer maths) and clamped to
    ``[0, n_samples - window]``.
    """
    if not 0 < window <= n_samples:
        raise ValueError(f"window must be in [1, {n_samples}] samples, got {window}")
    i = torch.arange(n_frames, dtype=torch.long)
    # centre - window/2 + 1/2 = ((2i + 1) * n - F * window + F) / (2F); floor division keeps it exact
    starts = torch.div((2 * i + 1) * n_samples - n_frames * window + n_frames, 2 * n_frames, rounding_mode="floor")
    return starts.clamp(0, n_samples - window)


def frame_windows(wave: Tensor, n_frames: int, window: int) -> Tensor:
    """``(..., S)`` waveform -> ``(..., n_frames, window)``: row ``i`` is the window centred on frame ``i``."""
    starts = window_starts(wave.shape[-1], n_frames, window).to(wave.device)
    index = starts[:, None] + torch.arange(window, device=wave.device)  # (n_frames, window)
    return wave[..., index]


def _as_numpy(audio: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(audio, Tensor):
        return audio.detach().to("cpu", torch.float32).numpy()
    return np.asarray(audio, dtype=np.float32)


def encoder_audio(audio: Tensor | np.ndarray, rate_in: int, encoder: Encoder, n_frames: int, *,
                  window_s: float = 0.5, mode: AudioMode = "window",
                  device: str | torch.device = "cpu") -> Tensor:
    """Per-frame audio input for ``encoder.encode_audio``.

    Args:
        audio: ``(B, N)`` mono float in [-1, 1] at ``rate_in`` Hz, covering exactly the clip's ``n_frames``
            video frames (numpy or torch).
        rate_in: sample rate of ``audio`` (48000 for the TA2V datasets).
        encoder: reads ``audio_rate`` and ``audio_scale`` (see the module docstring for the modes).
        n_frames: number of video frames in the clip (16 for TA2V).
        window_s: window length in seconds ("window" mode), capped at the whole clip.
        mode: ``"window"`` (resample, centred windows, ``audio_scale``) or ``"upstream"`` (equal raw rows).
        device: where the result goes.

    Returns:
        ``(B, n_frames, W)`` float32: ``W = min(round(window_s * audio_rate), clip length)`` in "window" mode,
        ``N // n_frames`` in "upstream" mode. Fold to ``(B * n_frames, W)`` for ``encode_audio``.
    """
    if encoder.audio_rate is None:
        raise ValueError(f"{encoder.name} has no audio tower")
    waves = _as_numpy(audio)
    if waves.ndim != 2:
        raise ValueError(f"audio must be (B, N), got shape {waves.shape}")
    if mode == "upstream":
        if waves.shape[1] % n_frames:
            raise ValueError(f"upstream audio mode needs N divisible by n_frames; got N={waves.shape[1]}, "
                             f"n_frames={n_frames}")
        rows = torch.from_numpy(waves).reshape(waves.shape[0], n_frames, -1)  # (B, F, N // F), scale 1
        return rows.to(device, torch.float32)
    if mode != "window":
        raise ValueError(f"unknown audio mode {mode!r}; expected 'window' or 'upstream'")
    rate = int(encoder.audio_rate)
    waves = np.stack([resample(w, rate_in, rate) for w in waves])  # (B, M), M = round(N * rate / rate_in)
    window = min(round(window_s * rate), waves.shape[1])
    rows = frame_windows(torch.from_numpy(waves), n_frames, window)  # (B, F, W)
    return (rows * float(encoder.audio_scale)).to(device, torch.float32)
