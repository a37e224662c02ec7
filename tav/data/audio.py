"""Audio I/O on PyAV, resampling, per-frame chunking, and the restricted spectrogram-pickle reader.

Audio inside ``tav`` is float32 mono in [-1, 1]. TA2V works at 48 kHz; one video frame owns
``sample_rate / fps`` samples (1600 for URMP at 30 fps, 4800 for Landscape at 10 fps).
"""

from __future__ import annotations

import io
import os
import pickle
from fractions import Fraction
from math import gcd
from pathlib import Path

import av
import numpy as np
from scipy.signal import resample_poly

from tav.errors import InputError
from tav.utils.fileio import atomic_path


def read_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Decode the first audio stream of ``path`` (wav, mp3, mp4, ...) as mono float32 ``(N,)`` at ``sample_rate``.

    Channels are averaged; the encoder's tail padding is trimmed to the stream's recorded duration.
    Raises ``InputError`` naming the file when it is missing, unreadable or has no audio stream.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such audio file; check the path or the dataset layout")
    try:
        with av.open(str(path)) as c:
            if not c.streams.audio:
                raise InputError(f"{path}: has no audio track; give a file with sound or a separate wav")
            stream = c.streams.audio[0]
            chunks = [_frame_to_mono(f) for f in c.decode(stream)]
            native_rate = int(stream.rate)
            duration = (int(stream.duration * stream.time_base * native_rate)
                        if stream.duration is not None and stream.time_base else None)
    except av.FFmpegError as e:
        raise InputError(f"{path}: cannot decode audio ({e}); the file is corrupt or truncated") from e
    if not chunks:
        raise InputError(f"{path}: the audio track holds no samples")
    wave = np.concatenate(chunks)
    if duration is not None and 0 < duration < len(wave):
        wave = wave[:duration]
    return resample(wave, native_rate, sample_rate)


def probe_audio_seconds(path: str | os.PathLike) -> float | None:
    """The duration the container records for the first audio stream of ``path`` (seconds), or None when it
    records none. A decoded length well below it means the file is truncated. For WAV files the ``data`` chunk
    size in the header is used (ffmpeg derives a WAV's duration from the bytes present)."""
    header = _wav_header_seconds(path)
    if header is not None:
        return header
    try:
        with av.open(str(path)) as c:
            if not c.streams.audio:
                return None
            s = c.streams.audio[0]
            return float(s.duration * s.time_base) if s.duration is not None and s.time_base else None
    except av.FFmpegError:
        return None


def _wav_header_seconds(path: str | os.PathLike) -> float | None:
    """Seconds of sound a RIFF/WAVE header announces (``data`` size / (block align * rate)), or None."""
    import struct

    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        rate = align = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if name == b"fmt ":
                fmt = f.read(size)
                if len(fmt) < 16:
                    return None
                rate, align = struct.unpack("<I", fmt[4:8])[0], struct.unpack("<H", fmt[12:14])[0]
                f.seek(size & 1, 1)
                continue
            if name == b"data":
                return size / (align * rate) if rate and align and size < 0xFFFFFFFF else None
            f.seek(size + (size & 1), 1)


def frames_audio(path: str | os.PathLike, sample_rate: int, samples_per_frame: int, start: int,
                 n_frames: int) -> np.ndarray:
    """The mono sound of video frames ``[start, start + n_frames)`` of ``path``: ``(n_frames * spf,)`` float32 in
    [-1, 1] at ``sample_rate``, zero-padded where the file's sound ends early."""
    wave = read_audio(path, sample_rate)
    chunk = wave[start * samples_per_frame: (start + n_frames) * samples_per_frame]
    return np.pad(chunk, (0, n_frames * samples_per_frame - len(chunk))).astype(np.float32)


def _frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    x = frame.to_ndarray()
    if frame.format.is_packed:  # interleaved (1, N*C) -> (C, N)
        x = x.reshape(-1, len(frame.layout.channels)).T
    x = x.astype(np.float32)
    if np.issubdtype(frame.to_ndarray().dtype, np.integer):
        x /= float(np.iinfo(frame.to_ndarray().dtype).max) + 1.0
    return x.mean(axis=0)


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling of mono ``wave (N,)``; the result has exactly ``round(N * rate_out / rate_in)``."""
    wave = np.asarray(wave, dtype=np.float32)
    if rate_in == rate_out:
        return wave
    g = gcd(rate_in, rate_out)
    out = resample_poly(wave, rate_out // g, rate_in // g).astype(np.float32)
    n = round(len(wave) * rate_out / rate_in)
    return fit_length(out, n)


def fit_length(wave: np.ndarray, n: int) -> np.ndarray:
    """Trim ``wave (N,)`` to ``n`` samples or zero-pad its tail."""
    if len(wave) >= n:
        return wave[:n]
    return np.pad(wave, (0, n - len(wave)))


def write_wav(path: str | os.PathLike, wave: np.ndarray, sample_rate: int) -> Path:
    """Write mono float ``wave (N,)`` in [-1, 1] as 16-bit PCM wav, atomically."""
    pcm = (np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0) * 32767.0).round().astype(np.int16)
    path = Path(path)
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="wav") as c:
        stream = c.add_stream("pcm_s16le", rate=sample_rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts, frame.time_base = 0, Fraction(1, sample_rate)
        c.mux(stream.encode(frame))
        c.mux(stream.encode(None))
    return path


def samples_per_frame(sample_rate: int, fps: float, rate_name: str = "sample_rate", fps_name: str = "fps") -> int:
    """Audio samples owned by one video frame, ``sample_rate / fps``, exactly (1600 at 48 kHz and 30 fps).

    Raises ``InputError`` naming both options when that is not a whole number: every frame must own an
    equal chunk of the sound.
    """
    per_frame = Fraction(sample_rate) / Fraction(str(fps)) if fps > 0 else Fraction(1, 3)
    if fps <= 0 or per_frame.denominator != 1:
        raise InputError(f"{rate_name} {sample_rate} / {fps_name} {fps} = "
                         f"{float(per_frame) if fps > 0 else float('nan'):.3f} audio samples per video frame; it "
                         "must be a whole number: pick an fps that divides the sample rate (e.g. 48000 Hz at 30 or "
                         "10 fps)")
    return int(per_frame)


def chunk_per_frame(wave: np.ndarray, num_frames: int, samples_per_frame: int) -> np.ndarray:
    """Cut ``wave (N,)`` into ``(num_frames, samples_per_frame)``: row i is the sound of video frame i.

    The caller has already fitted the length; this only checks it.
    """
    need = num_frames * samples_per_frame
    if len(wave) != need:
        raise ValueError(f"chunk_per_frame: need {need} samples, got {len(wave)}")
    return wave.reshape(num_frames, samples_per_frame)


def spectrogram(wave: np.ndarray, num_frames: int, n_fft: int = 512, freq_bins: int = 96,
                time_bins: int = 16) -> np.ndarray:
    """Per-video-frame log-magnitude spectrogram in [0, 1], float32 ``(num_frames, freq_bins, time_bins)``.

    ``tav``'s own recipe (upstream never published its STFT parameters): Hann STFT with hop
    ``N / (num_frames * time_bins)``, log1p magnitude of the lowest ``freq_bins`` bins, scaled by the clip
    maximum, split into one ``(freq, time)`` slice per video frame.
    """
    hop = max(1, len(wave) // (num_frames * time_bins))
    n_cols = num_frames * time_bins
    pad = np.pad(np.asarray(wave, dtype=np.float32), (n_fft // 2, n_fft // 2 + hop * n_cols))
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_cols)[:, None]
    mag = np.abs(np.fft.rfft(pad[idx] * np.hanning(n_fft).astype(np.float32), axis=1))[:, :freq_bins]
    logmag = np.log1p(mag)
    logmag /= max(float(logmag.max()), 1e-8)
    return logmag.T.reshape(freq_bins, num_frames, time_bins).transpose(1, 0, 2).astype(np.float32)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays and plain containers only; any other global is refused before it is built."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # protocol-2 pickles store the array bytes through it
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def load_array_pickle(path: str | os.PathLike) -> np.ndarray:
    """Load the numpy array stored in the pickle at ``path`` without executing anything else.

    ``.npy`` files are read with ``allow_pickle=False``. Raises ``InputError`` naming the file if it holds
    anything but an array (or a list/tuple of arrays, which are stacked).
    """
    path = Path(path)
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as e:
            raise InputError(f"{path}: not a plain numpy array ({e}); re-save it with numpy.save") from e
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as e:
        raise InputError(f"{path}: refused to load ({e}); stft pickles may hold numpy arrays only") from e
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(a, np.ndarray) for a in obj):
        obj = np.stack(obj)
    if not isinstance(obj, np.ndarray):
        raise InputError(f"{path}: holds {type(obj).__name__}, not a numpy array; re-save it as an array")
    return obj
