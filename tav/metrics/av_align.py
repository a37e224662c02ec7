"""AV-Align: how well a video's motion peaks line up with its audio onsets.

Source: the AV-Align definition of TempoTokens (Yariv et al., 2023), as TIA2V's ``audio_video_align.py`` uses it.

Video side: OpenCV Farneback optical flow (pyr_scale 0.5, levels 3, winsize 15, iterations 3, poly_n 5,
poly_sigma 1.2, flags 0) between consecutive grayscale frames; the mean flow magnitude of each pair gives a
trajectory of length ``T`` (entry 0 repeats the flow of frames 0→1, entry ``i`` is the flow ``i−1 → i``); its
strict local maxima ``a[i−1] < a[i] > a[i+1]`` are the peaks, at times ``i / fps``. Frames arrive as RGB
(``tav.data.video.read_video``) and are turned grey with ``cv2.COLOR_RGB2GRAY``, which equals upstream's
``COLOR_BGR2GRAY`` on its BGR frames.

Audio side: mono at 22 050 Hz (``librosa.load``'s default rate); ``librosa.onset.onset_strength`` →
``onset_detect`` (hop 512, librosa's defaults otherwise) → onset times. ``read_audio_file`` decodes with
``tav.data.audio.read_audio`` at the file's own rate and ``audio_onsets`` resamples with ``librosa.resample``
(soxr_hq, what ``librosa.load`` uses), so a wav gives the same samples as upstream's ``librosa.load``.

Score per video: an audio onset ``t`` is a hit when some video peak lies strictly within
``(t − w/fps, t + w/fps)`` (``w = window_frames``, default 1; each onset counts once), and
``IoU = hits / (n_audio + n_video − hits)``. Distances are compared in frames with a 1e-9-frame margin, so a
peak exactly ``w`` frames away is outside whatever the float rounding. A video with no onset and no peak has
no IoU (upstream divides by zero): its IoU is NaN, and folder summaries leave it out and count it as skipped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from tav.data.audio import read_audio
from tav.data.video import read_video
from tav.errors import InputError
from tav.metrics.folders import area_resize, audio_rate

AUDIO_RATE = 22050  # librosa.load's default
HOP_LENGTH = 512  # onset_detect's default
WINDOW_FRAMES = 1
FARNEBACK = {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5, "poly_sigma": 1.2,
             "flags": 0}
_EDGE = 1e-9  # frames: keeps the window open at exactly ±w frames despite float rounding


def motion_trajectory(frames: np.ndarray) -> np.ndarray:
    """Mean Farneback flow magnitude per frame, ``(T,)`` float64 (pixels/frame), from uint8 ``(T, H, W, 3)``
    RGB frames. Entry 0 repeats entry 1 (the flow 0→1). Fewer than 2 frames give zeros."""
    import cv2

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if len(frames) < 2:
        return np.zeros(len(frames), np.float64)
    grey = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
    mags = []
    for prev, cur in zip(grey[:-1], grey[1:], strict=True):
        flow = cv2.calcOpticalFlowFarneback(prev, cur, None, **FARNEBACK)  # (H, W, 2) float32
        mags.append(float(np.sqrt((flow.astype(np.float64) ** 2).sum(-1)).mean()))
    return np.asarray([mags[0], *mags], dtype=np.float64)


def peak_indices(values: np.ndarray) -> np.ndarray:
    """Indices ``i`` (1 ≤ i ≤ len−2) with ``values[i−1] < values[i] > values[i+1]`` (strict; plateaus are none)."""
    a = np.asarray(values, dtype=np.float64)
    if len(a) < 3:
        return np.zeros(0, np.int64)
    inner = (a[1:-1] > a[:-2]) & (a[1:-1] > a[2:])
    return np.flatnonzero(inner) + 1


def video_motion_peaks(frames: np.ndarray, fps: float) -> np.ndarray:
    """Motion-peak times in seconds, ``(P,)`` float64, of uint8 ``(T, H, W, 3)`` RGB frames shown at ``fps``."""
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return peak_indices(motion_trajectory(frames)) / float(fps)


def audio_onsets(wave: np.ndarray, rate: int, delta: float | None = None) -> np.ndarray:
    """Onset times in seconds, ``(K,)`` float64, of mono float ``wave (N,)`` in [-1, 1] at ``rate`` Hz.

    The wave is resampled to 22 050 Hz (``librosa.resample``, soxr_hq) unless already there; then
    ``onset_strength`` → ``onset_detect`` with hop 512. ``delta=None`` is AV-Align's detector (librosa's
    defaults: the envelope normalised per clip, threshold 0.07 of its range). A number picks peaks on the raw
    envelope (mean dB rise per mel band and hop) that stand ``delta`` above their neighbourhood's mean instead,
    so a clip with no note attack has no onset (``tav.metrics.synthetic``).
    """
    import librosa

    y = np.asarray(wave, dtype=np.float32).reshape(-1)
    if rate != AUDIO_RATE:
        y = librosa.resample(y, orig_sr=rate, target_sr=AUDIO_RATE, res_type="soxr_hq")
    if len(y) == 0:
        return np.zeros(0, np.float64)
    envelope = librosa.onset.onset_strength(y=y, sr=AUDIO_RATE, hop_length=HOP_LENGTH)
    if delta is None:
        frames = librosa.onset.onset_detect(onset_envelope=envelope, sr=AUDIO_RATE, hop_length=HOP_LENGTH)
    else:
        frames = librosa.onset.onset_detect(onset_envelope=envelope, sr=AUDIO_RATE, hop_length=HOP_LENGTH,
                                            normalize=False, delta=delta)
    return np.asarray(librosa.frames_to_time(frames, sr=AUDIO_RATE, hop_length=HOP_LENGTH), dtype=np.float64)


def _hits(audio_times: np.ndarray, video_times: np.ndarray, fps: float, window_frames: float) -> int:
    if len(audio_times) == 0 or len(video_times) == 0:
        return 0
    gap = np.abs(audio_times[:, None] - video_times[None, :]) * fps  # (K, P) in frames
    return int((gap < window_frames - _EDGE).any(axis=1).sum())


def av_align_iou(audio_times: Sequence[float], video_times: Sequence[float], fps: float,
                 window_frames: float = WINDOW_FRAMES) -> float:
    """``hits / (n_audio + n_video − hits)``, hits = audio onsets with a video peak strictly within ±``window_frames``
    frames (each onset counted once). NaN when both lists are empty."""
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    a = np.asarray(audio_times, dtype=np.float64).reshape(-1)
    v = np.asarray(video_times, dtype=np.float64).reshape(-1)
    hits = _hits(a, v, fps, window_frames)
    union = len(a) + len(v) - hits
    return float("nan") if union == 0 else hits / union


@dataclass(frozen=True)
class AlignScore:
    """One video's AV-Align: ``iou`` (NaN when neither side has a peak), the counts, and the fps used."""

    iou: float
    n_audio: int
    n_video: int
    hits: int
    fps: float

    @property
    def skipped(self) -> bool:
        return math.isnan(self.iou)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["iou"] = None if self.skipped else self.iou
        return out


def align_score(frames: np.ndarray, wave: np.ndarray, rate: int, fps: float,
                window_frames: float = WINDOW_FRAMES) -> AlignScore:
    """AV-Align of uint8 RGB ``frames (T, H, W, 3)`` at ``fps`` against mono ``wave (N,)`` at ``rate`` Hz."""
    video = video_motion_peaks(frames, fps)
    audio = audio_onsets(wave, rate)
    return AlignScore(av_align_iou(audio, video, fps, window_frames), len(audio), len(video),
                      _hits(audio, video, float(fps), window_frames), float(fps))


def read_audio_file(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Mono float32 ``(N,)`` in [-1, 1] at the file's own rate, and that rate (as ``librosa.load(sr=None)``)."""
    rate = audio_rate(path)
    return read_audio(path, rate), rate


def av_align_folder(video_paths: Sequence[str | os.PathLike], audio_paths: Sequence[str | os.PathLike],
                    fps: Sequence[float | None] | float | None = None, window_frames: float = WINDOW_FRAMES,
                    resize: tuple[int, int] | None = None) -> list[AlignScore]:
    """AV-Align of each video file against its audio file (paired by position: pair them first).

    ``fps``: one value for all, one per video, or ``None`` (a ``None`` means that video's container fps).
    ``resize``: ``(h, w)`` area pre-resize of the frames (``--resize``)."""
    if len(video_paths) != len(audio_paths):
        raise ValueError(f"{len(video_paths)} videos but {len(audio_paths)} audio files")
    rates = [fps] * len(video_paths) if fps is None or np.ndim(fps) == 0 else list(fps)
    if len(rates) != len(video_paths):
        raise ValueError(f"{len(rates)} fps values for {len(video_paths)} videos")
    out = []
    for video_path, audio_path, rate in zip(video_paths, audio_paths, rates, strict=True):
        frames, container_fps = read_video(video_path)
        use = float(rate) if rate is not None else container_fps
        if not use > 0:
            raise InputError(f"{video_path}: the container gives no frame rate; pass --fps")
        if resize is not None:
            frames = area_resize(frames, resize)
        wave, sr = read_audio_file(audio_path)
        out.append(align_score(frames, wave, sr, use, window_frames))
    return out


def summarize(scores: Sequence[AlignScore]) -> dict:
    """``{"N", "n_skipped", "mean", "std"}`` over the videos with an IoU (``std`` with ``ddof=0``); mean and std
    are NaN when every video was skipped."""
    values = np.array([s.iou for s in scores if not s.skipped], dtype=np.float64)
    mean = float(values.mean()) if len(values) else float("nan")
    std = float(values.std()) if len(values) else float("nan")
    return {"N": len(values), "n_skipped": len(scores) - len(values), "mean": mean, "std": std}

