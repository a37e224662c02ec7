"""The VAT text-audio-video dataset (its Lightning DataModule: ``tav.data.datamodule``).

An item is one ``sequence_length``-frame window of one pre-cut clip, with the audio of exactly those
frames. Everything that can be read once (the stem list, frame counts, captions and their token ids) is
read at construction and stored in numpy/tensor arrays rather than lists of Python objects, so forked
DataLoader workers do not copy-on-write the index (the RAM growth users of the upstream lineage saw).
"""

from __future__ import annotations

import functools
import logging
import os
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from tav.data.audio import chunk_per_frame, fit_length, load_array_pickle, read_audio
from tav.data.config import DataConfig
from tav.data.layout import clip_files
from tav.data.text import build_tokenizer
from tav.data.video import frame_changes, probe_video, read_video, resize_center_crop, to_model_range
from tav.errors import InputError

log = logging.getLogger(__name__)


TRAIN_SPLIT = "train"  # the split that ``max_clips`` cuts; validation and test splits are always read whole


def split_clip_limit(split: str, max_clips: int) -> int:
    """The ``max_clips`` argument of ``list_stems`` for ``split``: ``max_clips`` for the training split, 0 (every
    clip) for any other, so that training on the first N clips never trims the clips a run is judged on."""
    return max_clips if split == TRAIN_SPLIT else 0


def _warn_uncaptioned(split_dir: Path, captioned: set[str]) -> None:
    """One warning for the videos of ``split_dir/mp4`` that have no caption file (they are left out)."""
    try:
        videos = [n[:-4] for n in os.listdir(split_dir / "mp4") if n.endswith(".mp4") and not n.startswith(".")]
    except OSError:
        return  # a missing video folder is reported where a clip is read
    left = sorted(set(videos) - captioned)
    if left:
        log.warning("%s: %d video(s) have no caption in txt/ and are left out (first: %s.mp4); add txt/<stem>.txt "
                    "to use them", split_dir / "mp4", len(left), left[0])


def list_stems(split_dir: Path, max_clips: int = 0) -> list[str]:
    """Stems of ``split_dir/txt/*.txt``, sorted, the first ``max_clips`` of them when it is > 0; a missing or
    unreadable folder is a one-line error."""
    txt = split_dir / "txt"
    try:
        names = os.listdir(txt)
    except FileNotFoundError as e:
        raise InputError(f"{txt}: no such folder; expected <data_path>/<split>/txt/<stem>.txt "
                         "(see datasets/README.md)") from e
    except (PermissionError, NotADirectoryError) as e:
        raise InputError(f"{txt}: cannot list this folder ({e.strerror}); fix its permissions") from e
    stems = sorted(n[:-4] for n in names if n.endswith(".txt") and not n.startswith("."))
    if not stems:
        raise InputError(f"{txt}: holds no .txt captions; nothing to load")
    _warn_uncaptioned(split_dir, set(stems))
    return stems[:max_clips] if max_clips > 0 else stems


def read_caption(path: Path) -> str:
    """The caption in ``path``: UTF-8, lines joined by spaces; empty or undecodable is a one-line error."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: caption is not UTF-8 text ({e.reason} at byte {e.start}); "
                         "re-save it as UTF-8") from e
    caption = " ".join(line.strip() for line in text.splitlines() if line.strip())
    if not caption:
        raise InputError(f"{path}: caption is empty; write one sentence describing the clip")
    return caption


def crop_start(mode: str, n_frames: int, span: int, stem: str, seed: int, rng: torch.Generator | None) -> int:
    """First frame of the window. ``seeded`` depends only on (seed, stem): the same on every machine."""
    last = n_frames - span
    if mode == "random":
        return int(torch.randint(0, last + 1, (1,), generator=rng))
    if mode == "center":
        return last // 2
    if mode == "seeded":
        return int(np.random.default_rng([seed, zlib.crc32(stem.encode())]).integers(0, last + 1))
    return min(max(int(mode), 0), last)


class VATDataset(Dataset):
    """``<root>/<split>/{mp4,txt,audio|wav,stft_pickle}/<stem>.*`` as training items.

    Item (a dict):
      video   float32 (3, T, R, R) in [-0.5, 0.5], T = sequence_length, R = resolution
      audio   float32 (T, spf * sample_every_n_frames) in [-1, 1]: row t is the sound of frame t
              (absent with ``cfg.load_audio = False``)
      audio_context, audio_span  with ``cfg.audio_context_s > 0``: float32 ``(N + 2m,)``, the clip's sound and
              ``m`` samples around it (shifted to stay inside the file, zero-padded if the file is shorter), and
              int64 ``(2,)``, where the clip's ``N`` samples lie in it (for per-frame audio windows)
      text    long (L,) caption token ids (L = text_seq_len for BERT, 77 for CLIP, 0 for none)
      caption str;  stem str;  start int (first frame of the window in the file)
      stft    float32 (1, T, F, t) in [-1, 1], only with ``cfg.load_stft``
    """

    def __init__(self, root: str | os.PathLike, split: str, cfg: DataConfig, train: bool | None = None):
        self.cfg = cfg
        self.split_dir = Path(root) / split
        self.train = (split == "train") if train is None else train
        self.crop = self.cfg.train_crop if self.train else self.cfg.eval_crop
        stems = list_stems(self.split_dir, split_clip_limit(split, cfg.max_clips))
        frames = [self._check_clip(s) for s in stems]
        captions = [read_caption(clip_files(self.split_dir, s).txt) for s in stems]
        self.stems = np.array(stems)  # fixed-width unicode: no per-item Python objects to refcount
        self.captions = np.array(captions)
        self.frame_counts = np.array(frames, dtype=np.int64)
        self.text = build_tokenizer(cfg.tokenizer, cfg.text_seq_len, cfg.tokenizer_path)(captions)
        self._motion: dict[int, np.ndarray] = {}  # window_motion per clip
        self._decoded = functools.lru_cache(maxsize=cfg.cache_clips)(self._decode) if cfg.cache_clips else None

    def _check_clip(self, stem: str) -> int:
        f = clip_files(self.split_dir, stem)
        if not f.mp4.is_file():
            raise InputError(f"{f.txt}: has a caption but {f.mp4} is missing; add the video or remove the caption")
        if self.cfg.load_stft and not f.stft.is_file():
            raise InputError(f"{f.stft}: missing (load_stft is on); add it or turn load_stft off")
        n = probe_video(f.mp4).frames
        if n != self.cfg.frames_per_file:
            log.warning("%s: has %d frames, config says load_vid_len=%d; using %d", f.mp4, n,
                        self.cfg.frames_per_file, n)
        if n < self.cfg.span:
            raise InputError(f"{f.mp4}: has {n} frames, fewer than the {self.cfg.span} one item needs; "
                             "remove it or lower --sequence_length")
        return n

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, idx: int) -> dict:
        cfg, stem = self.cfg, str(self.stems[idx])
        n_frames = int(self.frame_counts[idx])
        start = self._start(idx, n_frames)
        files = clip_files(self.split_dir, stem)
        if self._decoded is not None:  # the same frames as decoding the window, without the decode
            frames = self._decoded(idx)[start: start + cfg.span]
        else:
            frames, _ = read_video(files.mp4, start, cfg.span)
        video = to_model_range(frames[:: cfg.sample_every_n_frames])
        item = {
            "video": resize_center_crop(video, cfg.resolution).contiguous(),
            "text": self.text[idx],
            "caption": str(self.captions[idx]),
            "stem": stem,
            "start": start,
        }
        if cfg.load_audio:
            wave = self._wave(files, n_frames)
            item["audio"] = torch.from_numpy(self._audio(wave, n_frames, start))
            if cfg.audio_context_s > 0:
                context, span = self._context(wave, start)
                item["audio_context"], item["audio_span"] = torch.from_numpy(context), torch.tensor(span)
        if cfg.load_stft:
            item["stft"] = self._stft(files.stft, start)
        return item

    def _start(self, idx: int, n_frames: int) -> int:
        """First frame of item ``idx``'s window: ``crop_start``, or with ``cfg.moving_windows`` (training, random
        crops) for that share of the items a window drawn in proportion to its picture change."""
        cfg = self.cfg
        if self.train and self.crop == "random" and cfg.moving_windows > 0:
            if float(torch.rand(())) < cfg.moving_windows:  # draws only when on: the same stream as upstream when off
                weights = self.window_motion(idx)
                if weights.sum() > 0:
                    return int(torch.multinomial(torch.from_numpy(weights), 1))
        return crop_start(self.crop, n_frames, cfg.span, str(self.stems[idx]), cfg.crop_seed, None)

    def window_motion(self, idx: int) -> np.ndarray:
        """``(n_frames - span + 1,)`` float64: for each window start, the summed mean absolute change (in [0, 1]
        per frame) into the window's frames 1..span-1. Computed once per clip and kept."""
        if idx not in self._motion:
            n = int(self.frame_counts[idx])
            frames = self._decoded(idx) if self._decoded is not None else self._decode(idx)
            changes = np.concatenate([[0.0], np.cumsum(frame_changes(frames[:n]), dtype=np.float64)])
            span = self.cfg.span
            self._motion[idx] = changes[span - 1:] - changes[: n - span + 1]
        return self._motion[idx]

    def _decode(self, idx: int) -> np.ndarray:
        """Every frame of clip ``idx``, uint8 ``(T, H, W, 3)`` (kept by the ``cache_clips`` LRU cache)."""
        frames, _ = read_video(clip_files(self.split_dir, str(self.stems[idx])).mp4)
        if len(frames) < self.frame_counts[idx]:
            raise InputError(f"{self.stems[idx]}: decoded {len(frames)} frames, expected {self.frame_counts[idx]}")
        return frames

    def _wave(self, files, n_frames: int) -> np.ndarray:
        """The file's sound fitted to its ``n_frames`` frames: float32 ``(n_frames * spf,)``."""
        cfg, spf = self.cfg, self.cfg.samples_per_frame
        source = files.audio if files.audio.is_file() else files.mp4
        wave = read_audio(source, cfg.sample_rate)
        need = n_frames * spf
        if len(wave) < need - spf:
            raise InputError(f"{source}: audio has {len(wave)} samples at {cfg.sample_rate} Hz but the "
                             f"{n_frames}-frame clip needs {need}; re-export the audio at full length")
        if len(wave) != need:  # up to a frame's worth short, or longer: fit to the video
            log.debug("%s: fitting %d audio samples to %d", source, len(wave), need)
        return fit_length(wave, need)

    def _audio(self, wave: np.ndarray, n_frames: int, start: int) -> np.ndarray:
        """The item's frames' sound, ``(sequence_length, span * spf / sequence_length)``."""
        cfg = self.cfg
        window = chunk_per_frame(wave, n_frames, cfg.samples_per_frame)[start : start + cfg.span]  # (span, spf)
        return np.ascontiguousarray(window.reshape(cfg.sequence_length, -1))

    def _context(self, wave: np.ndarray, start: int) -> tuple[np.ndarray, list[int]]:
        """The item's sound with ``audio_context_s`` seconds on each side: ``(N + 2m,)`` and the clip's span."""
        cfg, spf = self.cfg, self.cfg.samples_per_frame
        a, b = start * spf, (start + cfg.span) * spf
        m = round(cfg.audio_context_s * cfg.sample_rate)
        lo = min(max(a - m, 0), max(len(wave) - (b - a + 2 * m), 0))  # shifted to stay inside the file
        context = fit_length(wave[lo:], b - a + 2 * m)
        return np.ascontiguousarray(context, dtype=np.float32), [a - lo, b - lo]

    def _stft(self, path: Path, start: int) -> torch.Tensor:
        spec = load_array_pickle(path)
        if spec.ndim != 3 or spec.shape[0] < start + self.cfg.span:
            raise InputError(f"{path}: spectrogram shape {spec.shape}; expected (frames>={start + self.cfg.span}, "
                             "freq, time)")
        x = torch.from_numpy(np.asarray(spec[start : start + self.cfg.span : self.cfg.sample_every_n_frames],
                                        dtype=np.float32)) * 2 - 1  # [0,1] -> [-1,1]
        x = F.interpolate(x[:, None], size=tuple(self.cfg.stft_size), mode="bilinear", align_corners=False)
        return x.permute(1, 0, 2, 3).contiguous()  # (1, T, F, t)
