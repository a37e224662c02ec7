"""The TIA2V splits and their condition cache, without Lightning (what the samplers need).

The encoders (CLIP ViT-L/14 and, for the motion model, BEATs) are loaded only while the cache is built, on
the training device, and never in a DataLoader worker (upstream ran a ViT-L in every worker).
``tav.tia2v.datamodule.TIA2VDataModule`` adds Lightning's loaders for training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from tav.data.config import DataConfig
from tav.encoders.registry import get_encoder, resolve_encoder_path
from tav.tia2v.conditions import build_condition_cache
from tav.tia2v.data import TIA2VDataset
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


class TIA2VSplits:
    """The splits of ``<data_path>`` with their conditions cached in ``cache_dir``."""

    def __init__(self, data_path: str | os.PathLike, data_cfg: DataConfig, cache_dir: str | os.PathLike,
                 conditions: ConditionSpec):
        self.data_path, self.data_cfg, self.cache_dir = Path(data_path), data_cfg, Path(cache_dir)
        self.conditions = conditions

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

    def dataset(self, split: str) -> TIA2VDataset:
        return TIA2VDataset(self.data_path, split, self.data_cfg, self.cache_dir)
