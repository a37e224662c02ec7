"""Bring your own sound: one audio file (+ caption, + first image for TIA2V) -> one mp4 as long as the audio.

:func:`generate` is what ``scripts/generate.py`` calls per request: it reads and checks the inputs (every
check happens before anything is written), makes ``round(duration * fps)`` frames by sliding windows
(:mod:`tav.pipelines.long_video`), and writes ``out.mp4`` (H.264 + the input sound as AAC, start-aligned)
and the sidecar ``out.json`` (every setting, the seed, the windows, the checkpoints' hashes), both atomically.

The models are built once into a :class:`TA2VModels` or :class:`TIA2VModels` and reused for every request.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tav.data.audio import fit_length, probe_audio_seconds, read_audio, samples_per_frame
from tav.data.video import resize_center_crop, to_model_range, to_uint8, write_video
from tav.errors import InputError, NonFiniteOutputError
from tav.pipelines.long_video import ta2v_long, tia2v_long, tia2v_windows
from tav.pipelines.ta2v import TwoStageSampler
from tav.pipelines.tia2v import TIA2VSampler
from tav.pipelines.windows import window_starts
from tav.utils.fileio import dumps_strict, file_sha256, remove_stale_temps, write_text_atomic

log = logging.getLogger(__name__)

SILENCE = 1e-4  # peak amplitude below which the sound is treated as silent
Progress = Callable[[int, int], None]


@dataclass
class Sound:
    """A request's sound: mono float32 ``wave`` at ``rate`` Hz and its duration in seconds."""

    path: Path
    wave: np.ndarray
    rate: int

    @property
    def seconds(self) -> float:
        return len(self.wave) / self.rate


def load_sound(path: str | os.PathLike, rate: int) -> Sound:
    """The first audio stream of ``path`` (any container PyAV reads, a video file's sound included), mono at
    ``rate``. One-line ``InputError`` naming the file when it is missing, unreadable, truncated or soundless."""
    path = Path(path)
    wave = read_audio(path, rate)
    recorded = probe_audio_seconds(path)
    got = len(wave) / rate
    if recorded is not None and got < recorded - max(0.05, 0.01 * recorded):
        raise InputError(f"{path}: truncated: its header says {recorded:.2f} s of sound but only {got:.2f} s decode; "
                         "re-export or re-download the file")
    return Sound(path, wave.astype(np.float32), rate)


def frame_count(sound: Sound, fps: float, flag: str = "--audio") -> int:
    """``round(duration * fps)``; an ``InputError`` when that is less than one frame."""
    n = round(sound.seconds * fps)
    if n < 1:
        raise InputError(f"{flag} {sound.path}: {sound.seconds * 1000:.1f} ms of sound is shorter than one video frame "
                         f"at {fps:g} fps; give at least {1000 / fps:.0f} ms")
    return n


def is_silent(sound: Sound) -> bool:
    return float(np.abs(sound.wave).max(initial=0.0)) < SILENCE


def load_image(path: str | os.PathLike, size: int) -> torch.Tensor:
    """An image file of any size -> ``(3, size, size)`` float32 in [-0.5, 0.5], resized (shorter side) and
    centre-cropped as the data pipeline does."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"--image {path}: no such file")
    try:
        with Image.open(path) as im:
            rgb = np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"--image {path}: not a readable image ({err}); give a PNG or JPEG") from None
    return resize_center_crop(to_model_range(rgb[None]), size)[:, 0]


def check_out_path(out: str | os.PathLike) -> Path:
    """``out`` as a Path ending in .mp4, its folder created; ``InputError`` when it cannot be written."""
    out = Path(out)
    if out.suffix.lower() != ".mp4":
        raise InputError(f"--out {out}: the output must be an .mp4 file")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"--out {out}: cannot create its folder ({err.strerror})") from None
    if not os.access(out.parent, os.W_OK):
        raise InputError(f"--out {out}: the folder {out.parent} is not writable; choose another --out")
    remove_stale_temps(out.parent, recursive=False)  # half-written outputs of a killed run
    return out


@dataclass
class TA2VModels:
    """What a TA2V request needs, built once: the two-stage sampler, the GPT's tokenizer and its settings."""

    sampler: TwoStageSampler
    tokenize: Callable[[list[str]], torch.Tensor]  # captions -> (B, L) ids
    count_pieces: Callable[[str], int]  # word pieces of a caption, [CLS]/[SEP] included
    fps: float
    sample_rate: int
    hashes: dict[str, str] = field(default_factory=dict)  # flag -> sha256 of the checkpoint
    settings: dict[str, Any] = field(default_factory=dict)  # recorded in the sidecar
    context_frames: int | None = None  # GPT context, latent frames (0: independent windows)
    stage2: bool = True
    stage2_stride: int | None = None  # frames between stage-2 windows (default half a window; 0: no overlap)


@dataclass
class TIA2VModels:
    """What a TIA2V request needs, built once: the motion (+ SHR) sampler, CLIP-L and the BEATs token function."""

    sampler: TIA2VSampler
    clip_l: Any
    audio_tokens: Callable[[np.ndarray, int, int, float], torch.Tensor]  # (wave, rate, n_frames, fps) -> (n, P, D)
    fps: float
    sample_rate: int
    hashes: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    shr: bool = True
    hand_over: bool = True  # window k + 1 starts from window k's last frame (False: from the given image)


def _warn_long_caption(caption: str, pieces: int, limit: int) -> None:
    if pieces > limit:
        log.warning("the caption has %d word pieces; the text prefix holds %d, so the first %d were kept",
                    pieces, limit, limit - 1)


def generate(models: TA2VModels | TIA2VModels, audio: str | os.PathLike, caption: str, out: str | os.PathLike,
             image: str | os.PathLike | None = None, seed: int = 0, fps: float | None = None,
             progress: Progress | None = None) -> dict:
    """One video for one sound; returns the sidecar dict (also written next to ``out`` as ``.json``)."""
    if not caption or not caption.strip():
        raise InputError("--caption is empty: describe the video, e.g. \"A red circle moves to a Flute.\"")
    out = check_out_path(out)
    fps = float(fps or models.fps)
    samples_per_frame(models.sample_rate, fps, "the models' sample rate", "--fps")
    sound = load_sound(audio, models.sample_rate)
    n_frames = frame_count(sound, fps)
    if is_silent(sound):
        log.warning("%s is silent: the video is generated, but the guidance has no sound to follow", sound.path)
    t0 = time.perf_counter()
    if isinstance(models, TA2VModels):
        if image is not None:
            log.info("--image %s is ignored: TA2V starts from the caption only", image)
        video, record = _run_ta2v(models, sound, caption, n_frames, fps, seed, progress)
    else:
        if image is None:
            raise InputError("--image: TIA2V needs the first frame; pass --image FILE (PNG or JPEG)")
        video, record = _run_tia2v(models, sound, caption, Path(image), n_frames, fps, seed, progress)
    seconds = time.perf_counter() - t0
    if not torch.isfinite(video).all():
        raise NonFiniteOutputError(f"{out}: the generated video holds NaN or inf values; nothing was written. Check "
                                   "the checkpoints (a diverged run?), or try --precision 32")
    frames = to_uint8(video[0]).numpy()
    write_video(out, frames, fps, audio=sound.wave, sample_rate=sound.rate)
    sidecar = {"method": "ta2v" if isinstance(models, TA2VModels) else "tia2v", "audio": str(sound.path),
               "audio_sha256": file_sha256(sound.path), "audio_seconds": round(sound.seconds, 6),
               "caption": caption, "image": None if image is None else str(image), "seed": seed, "fps": fps,
               "frames": n_frames, "size": list(frames.shape[1:3]), "sample_rate": sound.rate,
               "silent": is_silent(sound), **record, "settings": models.settings, "checkpoints": models.hashes,
               "seconds": round(seconds, 3), "video": str(out)}
    write_text_atomic(out.with_suffix(".json"), dumps_strict(sidecar, indent=1, sort_keys=True) + "\n")
    return sidecar


def _run_ta2v(m: TA2VModels, sound: Sound, caption: str, n_frames: int, fps: float, seed: int,
              progress: Progress | None) -> tuple[torch.Tensor, dict]:
    limit = m.sampler.gpt.cfg.text_seq_len
    _warn_long_caption(caption, m.count_pieces(caption), limit)
    spf = samples_per_frame(sound.rate, fps)
    audio = torch.from_numpy(fit_length(sound.wave, n_frames * spf))[None]
    ids = m.tokenize([caption])
    v1, v2, windows = ta2v_long(m.sampler, ids, caption, audio, sound.rate, n_frames, seed, m.context_frames,
                                stage2=m.stage2, stride=m.stage2_stride, progress=progress)
    window = m.sampler.vqgan.cfg.sequence_length
    stride = window if m.stage2_stride == 0 else m.stage2_stride or max(1, window // 2)
    stage2 = [[s, min(s + window, n_frames)] for s in window_starts(n_frames, window, stride)]
    return (v2 if v2 is not None else v1), {"windows": [w.to_dict() for w in windows],
                                            "stage2_windows": stage2 if v2 is not None else []}


def _run_tia2v(m: TIA2VModels, sound: Sound, caption: str, image: Path, n_frames: int, fps: float, seed: int,
               progress: Progress | None) -> tuple[torch.Tensor, dict]:
    net_cfg = m.sampler.motion.net.config
    first = load_image(image, net_cfg.image_size)
    count = getattr(m.clip_l.tokenize, "count", None)
    if count is not None:
        _warn_long_caption(caption, count(caption), m.clip_l.context_length)
    windows = tia2v_windows(n_frames, net_cfg.num_frames)
    padded = windows[-1].start + net_cfg.num_frames
    wave = fit_length(sound.wave, padded * samples_per_frame(sound.rate, fps))
    with torch.no_grad():
        tokens = m.audio_tokens(wave, sound.rate, padded, fps).float().cpu()
    motion, refined, windows = tia2v_long(m.sampler, m.clip_l, first, caption, tokens, n_frames, seed, shr=m.shr,
                                          hand_over=m.hand_over, progress=progress)
    return (refined if refined is not None else motion), {"windows": [w.to_dict() for w in windows],
                                                          "shr": refined is not None}


def hashes_of(paths: dict[str, str | os.PathLike | None]) -> dict[str, str]:
    """``{flag: sha256}`` of the checkpoint files given (None entries skipped)."""
    return {k: file_sha256(v) for k, v in paths.items() if v is not None and Path(v).is_file()}
