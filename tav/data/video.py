"""Video I/O on PyAV, the value-range conversions, and the resize + centre-crop used by every stage.

Conventions: on disk and in ``read_video`` video is uint8 ``(T, H, W, 3)`` RGB; inside models
it is float ``(3, T, H, W)`` (or batched ``(B, 3, T, H, W)``) in [-0.5, 0.5]. Convert only through
``to_model_range`` / ``to_uint8`` so every encoder sees the same range.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

from tav.errors import InputError
from tav.utils.fileio import atomic_path

if TYPE_CHECKING:  # torch is imported lazily: I/O-only processes (dataset builder workers) stay light
    import torch


@dataclass(frozen=True)
class VideoInfo:
    """What a container says about itself, without decoding every frame."""

    frames: int  # frame count of the first video stream (0 if the container does not record it)
    fps: float
    width: int
    height: int
    has_audio: bool
    audio_sample_rate: int  # 0 when there is no audio stream


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; check the path or the dataset layout")
    try:
        return av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot open ({e}); the file is corrupt or truncated, re-export it") from e


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read container metadata of ``path`` (an mp4/mov/webm/mkv file)."""
    with _open(path) as c:
        if not c.streams.video:
            raise InputError(f"{path}: has no video stream")
        vs = c.streams.video[0]
        fps = float(vs.average_rate or vs.guessed_rate or 0)
        frames = int(vs.frames or 0)
        if frames == 0 and vs.duration and vs.time_base and fps:
            frames = round(float(vs.duration * vs.time_base) * fps)
        has_audio = bool(c.streams.audio)
        sr = int(c.streams.audio[0].rate) if has_audio else 0
        return VideoInfo(frames, fps, vs.codec_context.width, vs.codec_context.height, has_audio, sr)


def read_video(
    path: str | os.PathLike, start: int = 0, num_frames: int | None = None
) -> tuple[np.ndarray, float]:
    """Decode frames ``[start, start + num_frames)`` of ``path`` (all frames from ``start`` if None).

    Returns ``(frames, fps)`` with frames uint8 ``(T, H, W, 3)`` RGB. Raises ``InputError`` naming the file
    when it cannot be decoded or holds fewer frames than asked for (a truncated file).
    """
    frames: list[np.ndarray] = []
    with _open(path) as c:
        if not c.streams.video:
            raise InputError(f"{path}: has no video stream")
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        fps = float(vs.average_rate or vs.guessed_rate or 0)
        try:
            for i, frame in enumerate(c.decode(vs)):
                if i < start:
                    continue
                frames.append(frame.to_ndarray(format="rgb24"))
                if num_frames is not None and len(frames) == num_frames:
                    break
        except av.FFmpegError as e:
            raise InputError(f"{path}: decoding failed after {len(frames)} frames ({e}); "
                             "the file is corrupt or truncated, re-export it") from e
    if num_frames is not None and len(frames) < num_frames:
        raise InputError(f"{path}: asked for frames {start}..{start + num_frames - 1} but the file ends "
                         f"after {start + len(frames)}; it is truncated or shorter than configured")
    if not frames:
        raise InputError(f"{path}: no decodable frames at or after frame {start}")
    return np.stack(frames), fps


# x264's macroblock-tree rate control reads uninitialised heap memory in its AVX-512 lookahead kernel at some
# frame widths (64 and 192 px seen), so the same frames encoded twice gave different streams (decoded pixels up
# to 32/255 apart) depending on what the process had allocated before. Without mbtree (and single-threaded) the
# stream is a function of the frames alone; see docs/determinism.md.
_X264_DETERMINISTIC = {"threads": "1", "x264-params": "mbtree=0"}


def _video_codec(lossless: bool, suffix: str = ".mp4") -> str:
    if suffix == ".webm":
        return "libvpx-vp9"
    if lossless:
        return "libx264rgb" if "libx264rgb" in av.codecs_available else "ffv1"
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = 48000,
    lossless: bool = False,
    crf: int = 17,
) -> Path:
    """Write uint8 ``frames (T, H, W, 3)`` to ``path`` at ``fps``, with an optional audio track; atomic.

    ``audio``: float ``(N,)`` mono or ``(C, N)`` in [-1, 1] at ``sample_rate``, muxed as AAC. The video is
    H.264 (yuv420p; yuv444p for odd sizes) when the encoder exists, MPEG-4 Part 2 otherwise;
    ``lossless=True`` gives bit-exact RGB (libx264rgb crf 0). A ``.webm`` path gives VP9 + Opus (what every
    browser plays; the audio must then be at 48 kHz). This is the only video writer in ``tav``.
    """
    frames = np.ascontiguousarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_video: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    path = Path(path)
    codec = _video_codec(lossless, path.suffix.lower())
    if codec == "libvpx-vp9" and audio is not None and sample_rate != 48000:
        raise ValueError(f"write_video: {path.name}: Opus audio must be at 48000 Hz, got {sample_rate}")
    _, h, w, _ = frames.shape
    with atomic_path(path) as tmp, av.open(str(tmp), "w") as c:
        vs = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        vs.width, vs.height = w, h
        if codec == "libx264rgb":
            vs.pix_fmt, vs.options = "rgb24", {"crf": "0", "preset": "veryfast", **_X264_DETERMINISTIC}
        elif codec == "ffv1":
            vs.pix_fmt = "rgb24"
        elif codec == "libvpx-vp9":
            vs.pix_fmt, vs.options = "yuv420p", {"crf": "20", "b": "0", "deadline": "good", "cpu-used": "4"}
        elif codec == "libx264":
            vs.pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
            vs.options = {"crf": str(crf), "preset": "medium", **_X264_DETERMINISTIC}
        else:
            vs.pix_fmt = "yuv420p"
        astream = _add_audio_stream(c, audio, sample_rate) if audio is not None else None
        for f in frames:
            c.mux(vs.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(vs.encode())
        if astream is not None:
            _encode_audio(c, astream, audio, sample_rate)
    return path


def _add_audio_stream(container, audio: np.ndarray, sample_rate: int):
    channels = 1 if audio.ndim == 1 else audio.shape[0]
    webm = container.format.name.startswith("matroska") or container.format.name == "webm"
    stream = container.add_stream("libopus" if webm else "aac", rate=sample_rate)
    stream.layout = "mono" if channels == 1 else "stereo"
    return stream


def _encode_audio(container, stream, audio: np.ndarray, sample_rate: int) -> None:
    pcm = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    pcm = np.ascontiguousarray(pcm[None] if pcm.ndim == 1 else pcm)
    frame = av.AudioFrame.from_ndarray(pcm, format="fltp", layout="mono" if len(pcm) == 1 else "stereo")
    frame.sample_rate = sample_rate
    frame.pts, frame.time_base = 0, Fraction(1, sample_rate)  # gives the stream an exact duration
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def frame_changes(frames: np.ndarray) -> np.ndarray:
    """uint8 ``(T, H, W, 3)`` frames -> ``(T - 1,)`` mean absolute change into frames 1..T-1, in [0, 1]."""
    return np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3)) / 255.0


def to_model_range(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` -> float32 ``(3, T, H, W)`` in [-0.5, 0.5]."""
    import torch

    x = torch.as_tensor(frames)
    return x.permute(3, 0, 1, 2).float().div(255.0).sub(0.5)


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """float ``(3, T, H, W)`` or ``(B, 3, T, H, W)`` in [-0.5, 0.5] -> uint8 ``(T, H, W, 3)`` / ``(B, T, H, W, 3)``.

    Values outside the range are clamped (the VQGAN decoder has no output activation).
    """
    import torch

    x = ((video.detach().float() + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return x.movedim(-4, -1)


def resize_center_crop(video: torch.Tensor, resolution: int) -> torch.Tensor:
    """Scale the shorter side of ``video (C, T, H, W)`` to ``resolution``, then centre-crop to a square.

    Bilinear, ``align_corners=False``, no antialiasing, long side rounded up: the upstream recipe, so the
    released weights see the inputs they were trained on.
    """
    import torch.nn.functional as F

    c, t, h, w = video.shape
    if h <= w:
        size = (resolution, math.ceil(w * resolution / h))
    else:
        size = (math.ceil(h * resolution / w), resolution)
    if (h, w) != size:
        frames = video.permute(1, 0, 2, 3)  # (T, C, H, W): one image per frame
        frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=False)
        video = frames.permute(1, 0, 2, 3)
    top = (video.shape[2] - resolution) // 2
    left = (video.shape[3] - resolution) // 2
    return video[:, :, top : top + resolution, left : left + resolution]
