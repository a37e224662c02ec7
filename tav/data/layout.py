"""The VAT on-disk layout (also in ``datasets/README.md``), and the one function that writes a clip into it.

``<root>/{train,test}/{mp4,txt,audio|wav,stft_pickle}/<stem>.<ext>``, modalities paired by stem. The
README of the upstream datasets says ``audio/``, the upstream code reads ``wav/``: both are accepted, and
``tav`` writes ``audio/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tav.data.audio import write_wav
from tav.data.video import write_video
from tav.utils.fileio import atomic_path, write_text_atomic

SPLITS = ("train", "test")
AUDIO_DIRS = ("audio", "wav")
STFT_DIR = "stft_pickle"


@dataclass(frozen=True)
class ClipFiles:
    """Paths of one clip's files (audio/stft may not exist)."""

    mp4: Path
    txt: Path
    audio: Path
    stft: Path


def clip_files(split_dir: str | os.PathLike, stem: str) -> ClipFiles:
    """Paths of ``stem`` under ``split_dir``; ``audio/`` is preferred over ``wav/`` and ``.npy`` over ``.pickle``."""
    d = Path(split_dir)
    audio = next((d / a / f"{stem}.wav" for a in AUDIO_DIRS if (d / a / f"{stem}.wav").exists()),
                 d / AUDIO_DIRS[0] / f"{stem}.wav")
    stft = d / STFT_DIR / f"{stem}.npy"
    if not stft.exists() and (d / STFT_DIR / f"{stem}.pickle").exists():
        stft = d / STFT_DIR / f"{stem}.pickle"
    return ClipFiles(d / "mp4" / f"{stem}.mp4", d / "txt" / f"{stem}.txt", audio, stft)


def clip_complete(split_dir: str | os.PathLike, stem: str) -> bool:
    """True when every file ``write_clip`` writes for ``stem`` exists (each was written atomically)."""
    f = clip_files(split_dir, stem)
    return f.mp4.exists() and f.audio.exists() and f.txt.exists()


def write_clip(
    split_dir: str | os.PathLike,
    stem: str,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray,
    sample_rate: int,
    caption: str,
    spectrogram: np.ndarray | None = None,
) -> ClipFiles:
    """Write one clip: ``mp4/`` (H.264 + AAC), ``audio/`` (16-bit wav), ``stft_pickle/`` (.npy), ``txt/``.

    frames: uint8 ``(T, H, W, 3)``; audio: float ``(N,)`` in [-1, 1] at ``sample_rate``; spectrogram: float
    ``(T, F, t)`` in [0, 1]. Each file is written atomically and the caption last, so a clip whose
    ``txt`` exists is complete. Used by the dataset builder and the demo dataset alike.
    """
    d = Path(split_dir)
    files = ClipFiles(d / "mp4" / f"{stem}.mp4", d / "txt" / f"{stem}.txt",
                      d / AUDIO_DIRS[0] / f"{stem}.wav", d / STFT_DIR / f"{stem}.npy")
    write_video(files.mp4, frames, fps, audio=audio, sample_rate=sample_rate)
    write_wav(files.audio, audio, sample_rate)
    if spectrogram is not None:
        with atomic_path(files.stft) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.asarray(spectrogram, dtype=np.float32), allow_pickle=False)
    write_text_atomic(files.txt, caption.strip() + "\n")
    return files
