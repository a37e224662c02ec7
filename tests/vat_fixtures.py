"""Tiny VAT datasets whose pixels and samples encode the frame index, for alignment tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tav.data.layout import write_clip

GRAY_STEP = 20  # frame i: top half gray 20 + 20 * (i // 10), bottom half gray 20 + 20 * (i % 10)


def frame_index_clip(n_frames: int, height: int, width: int, sample_rate: int, fps: float):
    """Frames (T,H,W,3) whose two flat halves encode the index; audio whose frame-i chunk equals (i+1)/200.

    The levels are 20 gray levels apart, so H.264 and resizing cannot blur one index into another.
    """
    idx = np.arange(n_frames)
    frames = np.empty((n_frames, height, width, 3), np.uint8)
    frames[:, : height // 2] = (20 + GRAY_STEP * (idx // 10))[:, None, None, None]
    frames[:, height // 2 :] = (20 + GRAY_STEP * (idx % 10))[:, None, None, None]
    spf = int(sample_rate / fps)
    audio = np.repeat((np.arange(n_frames) + 1) / 200.0, spf).astype(np.float32)
    return np.ascontiguousarray(frames), audio


def make_vat(root: Path, n_frames: int, fps: float, stems=("a_1", "b_2"), size=(40, 48),
             sample_rate: int = 48000, splits=("train", "test"), spectrogram: bool = True) -> Path:
    """Write a VAT dataset under ``root`` whose pixels and samples encode the frame index (see above)."""
    for split in splits:
        for k, stem in enumerate(stems):
            frames, audio = frame_index_clip(n_frames, size[0], size[1], sample_rate, fps)
            spec = np.linspace(0, 1, n_frames * 6 * 4, dtype=np.float32).reshape(n_frames, 6, 4)
            write_clip(root / split, stem, frames, fps, audio, sample_rate, f"clip number {k} of {split}.",
                       spec if spectrogram else None)
    return root
