"""Lightning data for TIA2V training: the condition cache built once, then :class:`TIA2VDataset` loaders.

The encoders (CLIP ViT-L/14 and, for the motion model, BEATs) are loaded only while the cache is built, on
the training device, and never in a DataLoader worker (upstream ran a ViT-L in every worker).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from tav.data.config import DataConfig
from tav.encoders.registry import clear_encoder_cache, get_encoder, resolve_encoder_path
from tav.tia2v.conditions import build_condition_cache
from tav.tia2v.data import TIA2VDataset
from tav.training.determinism import make_loader
from tav.utils.fileio import file_sha256


@dataclass
class ConditionSpec:
    """Which encoders fill the condition cache, and where they run."""

    clip_l_path: str | None = None  # CLIP ViT-L/14 folder; None = saved_ckpts/clip-vit-large-patch14
    beats_path: str | None = None  # BEATs file; None = saved_ckpts/BEATs_iter3_plus_AS20K.pt
    beats_mode: str = "fixed"  # fixed | compat: the per-frame BEATs input (tav.encoders.beats)
    device: str = "cpu"
    batch_size: int = 16  # frames per encoder call
    need_audio: bool = True  # False for the content / SHR models (no BEATs needed)


def _folder_hash(path: Path) -> str:
    """sha256 of a weight file, or of the weight files of a from_pretrained folder (sorted by name)."""
    if path.is_file():
        return file_sha256(path)
    files = sorted(p for p in path.glob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".json"))
    return "+".join(file_sha256(p)[:16] for p in files)


def audio_tokens_fn(encoder, mode: str):
    """``fn(wave (S,), rate, n_frames, fps) -> (n_frames, P, D)``: BEATs tokens per frame of a whole file."""
    from tav.encoders.beats import beats_frame_tokens

    return partial(_tokens, encoder=encoder, mode=mode, frame_tokens=beats_frame_tokens)


def _tokens(wave, rate, n_frames, fps, *, encoder, mode, frame_tokens):
    return frame_tokens(encoder, wave, rate, n_frames, fps, mode)


class TIA2VDataModule(pl.LightningDataModule):
    """Train/val/test loaders over ``<data_path>/<split>`` with conditions from ``cache_dir``."""

    def __init__(self, data_path: str | os.PathLike, data_cfg: DataConfig, cache_dir: str | os.PathLike,
                 conditions: ConditionSpec, batch_size: int = 1, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.seed = seed
        self.data_path, self.data_cfg, self.cache_dir = Path(data_path), data_cfg, Path(cache_dir)
        self.conditions, self.batch_size, self.num_workers = conditions, batch_size, num_workers

    def cache_key(self) -> dict:
        """What the cached tensors depend on: encoder weights, BEATs input mode, frame size."""
        c = self.conditions
        key = {"clip_l": _folder_hash(resolve_encoder_path("clip_l", c.clip_l_path)),
               "resolution": self.data_cfg.resolution}
        if c.need_audio:
            key.update(beats=_folder_hash(resolve_encoder_path("beats", c.beats_path)), beats_mode=c.beats_mode)
        return key

    def build_cache(self, split: str, progress=None) -> Path:
        """Fill ``cache_dir`` for ``split`` (finished entries are kept); returns the split's cache folder."""
        c = self.conditions
        clip_l = get_encoder("clip_l", c.clip_l_path, c.device)
        audio_fn = None
        if c.need_audio:
            audio_fn = audio_tokens_fn(get_encoder("beats", c.beats_path, c.device), c.beats_mode)
        with torch.no_grad():
            return build_condition_cache(self.data_path, split, self.data_cfg, clip_l, audio_fn, self.cache_dir,
                                         key=self.cache_key(), batch_size=c.batch_size, progress=progress)

    def prepare_data(self) -> None:
        """Lightning calls this on one process per node before training: build the train split's cache there
        (the other ranks wait), then free the encoders."""
        self.build_cache("train")
        clear_encoder_cache()

    def dataset(self, split: str) -> TIA2VDataset:
        return TIA2VDataset(self.data_path, split, self.data_cfg, self.cache_dir)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.dataset(split)
        return make_loader(ds, self.batch_size, shuffle=shuffle, seed=self.seed, trainer=self.trainer,
                           num_workers=self.num_workers, drop_last=shuffle and len(ds) >= self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
