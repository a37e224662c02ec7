"""Per-video-frame audio for an encoder's audio tower.

Two modes:

- ``"window"`` (tav default): resample the clip to the encoder's ``audio_rate`` (AudioCLIP 44.1 kHz,
  wav2clip 16 kHz) and give each video frame a window of ``window_s`` seconds centred on that frame, times the
  encoder's ``audio_scale`` (AudioCLIP: the int16 range). A 0.5 s window spans many STFT frames, unlike
  upstream's 33 ms rows. The windows come from the sound around the clip when the caller passes it (``spans``;
  ``sample_tav.py`` reads a quarter second on each side); given the clip alone they are shifted to stay inside
  it, so in a clip shorter than the window every frame would get the same sound.
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


def window_starts(n_samples: int, n_frames: int, window: int, span: tuple[int, int] | None = None) -> Tensor:
    """First sample of each frame's window, ``(n_frames,)`` long.

    The clip's frames own samples ``[a, b)`` of the ``n_samples``-long wave (``span``; default the whole wave,
    longer waves give each window sound from around the clip). Frame ``i`` owns ``[a + i * n / F,
    a + (i + 1) * n / F)`` with ``n = b - a``; its window of ``window`` samples is centred on the middle of that
    span (``start = floor(centre - window / 2 + 1/2)``, exact integer maths) and clamped to ``[0, n_samples - window]``.
    """
    if not 0 < window <= n_samples:
        raise ValueError(f"window must be in [1, {n_samples}] samples, got {window}")
    a, b = (0, n_samples) if span is None else (int(span[0]), int(span[1]))
    if not 0 <= a < b <= n_samples:
        raise ValueError(f"span [{a}, {b}) must lie inside the {n_samples}-sample wave and be non-empty")
    n, i = b - a, torch.arange(n_frames, dtype=torch.long)
    # centre - window/2 + 1/2 = a + ((2i + 1) * n - F * window + F) / (2F); floor division keeps it exact
    starts = a + torch.div((2 * i + 1) * n - n_frames * window + n_frames, 2 * n_frames, rounding_mode="floor")
    return starts.clamp(0, n_samples - window)


def frame_windows(wave: Tensor, n_frames: int, window: int, span: tuple[int, int] | None = None) -> Tensor:
    """``(..., S)`` waveform -> ``(..., n_frames, window)``: row ``i`` is the window centred on frame ``i`` of the
    clip that owns samples ``span`` of the wave (default all of it; see :func:`window_starts`)."""
    starts = window_starts(wave.shape[-1], n_frames, window, span).to(wave.device)
    index = starts[:, None] + torch.arange(window, device=wave.device)  # (n_frames, window)
    return wave[..., index]


def _as_numpy(audio: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(audio, Tensor):
        return audio.detach().to("cpu", torch.float32).numpy()
    return np.asarray(audio, dtype=np.float32)


def encoder_audio(audio: Tensor | np.ndarray, rate_in: int, encoder: Encoder, n_frames: int, *,
                  window_s: float = 0.5, mode: AudioMode = "window", spans: Tensor | np.ndarray | None = None,
                  device: str | torch.device = "cpu") -> Tensor:
    """Per-frame audio input for ``encoder.encode_audio``.

    Args:
        audio: ``(B, N)`` mono float in [-1, 1] at ``rate_in`` Hz (numpy or torch): the clip's ``n_frames`` video
            frames, and with ``spans`` the sound around them.
        rate_in: sample rate of ``audio`` (48000 for the TA2V datasets).
        encoder: reads ``audio_rate`` and ``audio_scale`` (see the module docstring for the modes).
        n_frames: number of video frames in the clip (16 for TA2V).
        window_s: window length in seconds ("window" mode), capped at the length of ``audio``.
        mode: ``"window"`` (resample, centred windows, ``audio_scale``) or ``"upstream"`` (equal raw rows).
        spans: ``(B, 2)`` integer ``[start, end)`` of each row's clip inside ``audio`` (default: the whole row is
            the clip). With sound around the clip, every frame's window is centred on that frame even when the
            clip is shorter than the window; without it the windows are shifted to stay inside the clip, and a
            clip shorter than ``window_s`` gives every frame the same window.
        device: where the result goes.

    Returns:
        ``(B, n_frames, W)`` float32: ``W = min(round(window_s * audio_rate), N resampled)`` in "window" mode,
        ``clip length // n_frames`` in "upstream" mode. Fold to ``(B * n_frames, W)`` for ``encode_audio``.
    """
    if encoder.audio_rate is None:
        raise ValueError(f"{encoder.name} has no audio tower")
    waves = _as_numpy(audio)
    if waves.ndim != 2:
        raise ValueError(f"audio must be (B, N), got shape {waves.shape}")
    n_in = waves.shape[1]
    bounds = np.tile([0, n_in], (len(waves), 1)) if spans is None else _as_numpy(spans).astype(np.int64)
    if bounds.shape != (len(waves), 2):
        raise ValueError(f"spans must be (B, 2) = ({len(waves)}, 2), got shape {bounds.shape}")
    if mode == "upstream":
        clips = np.stack([w[a:b] for w, (a, b) in zip(waves, bounds, strict=True)])
        if clips.shape[1] % n_frames:
            raise ValueError(f"upstream audio mode needs N divisible by n_frames; got N={clips.shape[1]}, "
                             f"n_frames={n_frames}")
        rows = torch.from_numpy(clips).reshape(clips.shape[0], n_frames, -1)  # (B, F, N // F), scale 1
        return rows.to(device, torch.float32)
    if mode != "window":
        raise ValueError(f"unknown audio mode {mode!r}; expected 'window' or 'upstream'")
    rate = int(encoder.audio_rate)
    waves = np.stack([resample(w, rate_in, rate) for w in waves])  # (B, M), M = round(N * rate / rate_in)
    m = waves.shape[1]
    window = min(round(window_s * rate), m)
    scaled = np.clip(np.round(bounds * (m / n_in)).astype(np.int64), 0, m)  # the spans at the encoder's rate
    rows = torch.stack([frame_windows(torch.from_numpy(w), n_frames, window, (int(a), int(b)))
                        for w, (a, b) in zip(waves, scaled, strict=True)])  # (B, F, W)
    return (rows * float(encoder.audio_scale)).to(device, torch.float32)
