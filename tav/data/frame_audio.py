"""Frames with the sound around them: the training items of the joint encoder (``tav.encoders.joint``).

An item is one clip of a VAT split: ``K`` of its frames, the audio window centred on each of them, and the
caption's word pieces. Training draws the frames at random (distinct, from the torch RNG, seeded per item by
``tav.training.determinism``); evaluation takes ``K`` evenly spaced frames, so it is the same every time.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from tav.data.audio import read_audio
from tav.data.datamodule import check_enough_items
from tav.data.dataset import list_stems, split_clip_limit
from tav.data.layout import clip_files
from tav.data.text import build_tokenizer
from tav.data.video import read_video
from tav.encoders.audio import frame_windows
from tav.errors import InputError
from tav.training.determinism import make_loader


@dataclass
class FrameAudioConfig:
    """What an item holds (the ``data:`` section of ``configs/joint/*.yaml``)."""

    frames_per_item: int = 4  # K frames of one clip per item (negatives for each other)
    frame_span: int = 0  # training draws the K frames from one run of this many consecutive frames (0: anywhere)
    window_s: float = 0.5  # seconds of audio centred on each frame
    image_size: int = 64  # frames are resized to this square (the encoder's input size)
    audio_rate: int = 16000  # Hz
    text_len: int = 16  # word pieces per caption
    cache_clips: int = 512  # decoded clips kept in memory per process
    max_clips: int = 0  # > 0: only the first N clips of the train split, in stem order (0: all of them)
    flip: bool = True  # training: mirror an item's frames left-right at random (off where left/right matters)

    def __post_init__(self) -> None:
        if self.max_clips < 0:
            raise InputError(f"data config: max_clips must be >= 0 (0 = every clip), got {self.max_clips}")
        if self.frame_span < 0:
            raise InputError(f"data config: frame_span must be >= 0 (0 = frames from anywhere), got {self.frame_span}")


class FrameAudioDataset(Dataset):
    """Items of ``<root>/<split>``: ``images (K, 3, S, S)`` in [0, 1], ``audio (K, W)`` mono in [-1, 1] at
    ``audio_rate`` (W = ``window_s`` seconds), ``text (L,)`` word-piece ids, ``caption``, ``stem``."""

    def __init__(self, root: str | os.PathLike, split: str, cfg: FrameAudioConfig, train: bool):
        self.dir, self.cfg, self.train = Path(root) / split, cfg, train
        self.stems = list_stems(self.dir, split_clip_limit(split, cfg.max_clips))
        if not self.stems:
            raise InputError(f"{self.dir}: no clips (txt/<stem>.txt); build the dataset first")
        self._tokenize = build_tokenizer("bert", cfg.text_len)
        self._clip = functools.lru_cache(maxsize=cfg.cache_clips)(self._load)

    def __len__(self) -> int:
        return len(self.stems)

    def _load(self, index: int) -> tuple[Tensor, Tensor, str]:
        files = clip_files(self.dir, self.stems[index])
        frames, _ = read_video(files.mp4)
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255.0)  # (T, 3, H, W)
        video = F.interpolate(video, size=(self.cfg.image_size,) * 2, mode="bilinear", antialias=True,
                              align_corners=False).clamp(0, 1)
        wave = torch.from_numpy(read_audio(files.audio, self.cfg.audio_rate))
        window = round(self.cfg.window_s * self.cfg.audio_rate)
        if len(wave) < window:
            wave = F.pad(wave, (0, window - len(wave)))
        windows = frame_windows(wave, len(video), window)  # (T, W)
        caption = files.txt.read_text(encoding="utf-8").strip().splitlines()[0]
        return video, windows, caption

    def frame_indices(self, n_frames: int) -> Tensor:
        k = min(self.cfg.frames_per_item, n_frames)
        if self.train:
            span = min(self.cfg.frame_span or n_frames, n_frames)
            k = min(k, span)
            first = int(torch.randint(n_frames - span + 1, ())) if span < n_frames else 0
            return first + torch.randperm(span)[:k].sort().values
        return torch.linspace(0, n_frames - 1, k).round().long()

    def __getitem__(self, index: int) -> dict:
        video, windows, caption = self._clip(index)
        t = self.frame_indices(len(video))
        images = video[t]
        if self.train and self.cfg.flip and bool(torch.rand(()) < 0.5):
            images = images.flip(-1)  # left and right carry nothing of the sound or the caption
        return {"images": images, "audio": windows[t], "text": self._tokenize([caption])[0], "caption": caption,
                "stem": self.stems[index]}


class FrameAudioDataModule(pl.LightningDataModule):
    """Train on ``<data_path>/train`` (random frames), validate on ``<data_path>/test`` (fixed frames)."""

    def __init__(self, data_path: str | os.PathLike, cfg: FrameAudioConfig, batch_size: int, num_workers: int,
                 seed: int = 0):
        super().__init__()
        self.data_path, self.cfg, self.batch_size, self.num_workers = Path(data_path), cfg, batch_size, num_workers
        self.seed = seed
        self._sets: dict[str, FrameAudioDataset] = {}

    def dataset(self, split: str) -> FrameAudioDataset:
        if split not in self._sets:
            self._sets[split] = FrameAudioDataset(self.data_path, split, self.cfg, train=split == "train")
        return self._sets[split]

    def train_dataloader(self) -> DataLoader:
        data = self.dataset("train")
        check_enough_items(self, len(data), self.data_path / "train")
        return make_loader(data, self.batch_size, shuffle=True, seed=self.seed, trainer=self.trainer,
                           num_workers=self.num_workers, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.dataset("test"), self.batch_size, shuffle=False, seed=self.seed,
                           trainer=self.trainer, num_workers=self.num_workers)


def clip_items(root: str | os.PathLike, split: str, cfg: FrameAudioConfig, n: int | None = None) -> list[dict]:
    """The first ``n`` clips of a split as evaluation items (fixed frames)."""
    data = FrameAudioDataset(root, split, cfg, train=False)
    return [data[i] for i in range(min(n or len(data), len(data)))]
