"""``VATDataModule``: the Lightning side of ``VATDataset`` (train on ``train/``, validate on ``test/``).

Kept apart from ``tav.data.dataset`` so that the samplers, which read clips but never train, do not import
Lightning (about 3 s of a sampler's start on a CPU).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from tav.data.config import DataConfig
from tav.data.dataset import VATDataset
from tav.errors import InputError
from tav.training.determinism import make_loader


def check_enough_items(datamodule: pl.LightningDataModule, n_items: int, where: Path) -> None:
    """Training drops incomplete batches: fewer items than one batch per process would train on nothing."""
    world = datamodule.trainer.world_size if datamodule.trainer is not None else 1
    if n_items < datamodule.batch_size * world:
        raise InputError(f"{where}: {n_items} training items, fewer than one batch ({datamodule.batch_size} x "
                         f"{world} processes); lower --batch_size or add clips")


class VATDataModule(pl.LightningDataModule):
    """Train on ``<data_path>/train``, validate and test on ``<data_path>/test``.

    Loaders come from ``tav.training.determinism.make_loader``: each process's share, an order and random crops
    drawn from ``seed``, and a resumed run continuing inside the epoch where it stopped.
    """

    def __init__(self, data_path: str | os.PathLike, cfg: DataConfig, batch_size: int = 8,
                 num_workers: int = 4, pin_memory: bool = True, seed: int = 0):
        super().__init__()
        self.data_path, self.cfg, self.seed = Path(data_path), cfg, seed
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self._sets: dict[str, VATDataset] = {}

    def dataset(self, split: str) -> VATDataset:
        if split not in self._sets:
            self._sets[split] = VATDataset(self.data_path, split, self.cfg)
        return self._sets[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if shuffle:
            check_enough_items(self, len(self.dataset(split)), self.data_path / split)
        return make_loader(self.dataset(split), self.batch_size, shuffle=shuffle, seed=self.seed,
                           trainer=self.trainer, num_workers=self.num_workers, drop_last=shuffle,
                           pin_memory=self.pin_memory)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
