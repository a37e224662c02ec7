"""Lightning data for TIA2V training: :class:`tav.tia2v.splits.TIA2VSplits` (the condition cache built once) with
:class:`TIA2VDataset` loaders."""

from __future__ import annotations

import os

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from tav.data.config import DataConfig
from tav.encoders.registry import clear_encoder_cache
from tav.tia2v.splits import ConditionSpec, TIA2VSplits, audio_tokens_fn
from tav.training.determinism import make_loader

__all__ = ["ConditionSpec", "TIA2VDataModule", "audio_tokens_fn"]


class TIA2VDataModule(TIA2VSplits, pl.LightningDataModule):
    """Train/val/test loaders over ``<data_path>/<split>`` with conditions from ``cache_dir``."""

    def __init__(self, data_path: str | os.PathLike, data_cfg: DataConfig, cache_dir: str | os.PathLike,
                 conditions: ConditionSpec, batch_size: int = 1, num_workers: int = 0, seed: int = 0):
        pl.LightningDataModule.__init__(self)
        TIA2VSplits.__init__(self, data_path, data_cfg, cache_dir, conditions)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed

    def prepare_data(self) -> None:
        """Lightning calls this on one process per node before training: build the train split's cache there
        (the other ranks wait), then free the encoders."""
        self.build_cache("train")
        clear_encoder_cache()

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.dataset(split)
        return make_loader(ds, self.batch_size, shuffle=shuffle, seed=self.seed, trainer=self.trainer,
                           num_workers=self.num_workers, drop_last=shuffle and len(ds) >= self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
