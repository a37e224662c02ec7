"""Randomness that depends on where training is, not on how it got there: resumed runs replay exactly.

A run killed and resumed from a checkpoint must draw the same numbers as the run that was never stopped. Saving
and restoring RNG states is not enough with Lightning: the next batch is fetched (and augmented) before the
checkpoint of the current one is written, validation draws numbers between steps, and DataLoader workers hold
their own generators. So nothing here carries state across steps:

- **training steps**: :class:`StepSeeds` seeds torch (every device), numpy and ``random`` at the start of every
  training batch from ``(seed, rank, epoch, batch index)``, and validation from ``(seed, rank, global step)``;
- **data order**: :class:`EpochSampler` shuffles each epoch by ``(seed, epoch)`` and, on a resumed run, starts
  the interrupted epoch after the batches already trained on (:func:`resume_position`);
- **data augmentation**: each item is read under its own seed ``(seed, epoch, position)`` (:class:`SeededItems`),
  in the main process or a worker alike.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def mix_seed(*parts: Any) -> int:
    """A 63-bit seed from any number of ints/strings, the same on every machine and Python version."""
    digest = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_all(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), numpy's global generator and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def step_seed(seed: int, rank: int, epoch: int, batch_idx: int) -> int:
    """The seed of one training batch of one process."""
    return mix_seed("train", seed, rank, epoch, batch_idx)


class StepSeeds(Callback):
    """Seeds every RNG at the start of each training batch and of each validation run (see the module note)."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        seed_all(step_seed(self.seed, trainer.global_rank, trainer.current_epoch, batch_idx))

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seed_all(mix_seed("val", self.seed, trainer.global_rank, trainer.global_step, trainer.sanity_checking))


def resume_position(trainer: pl.Trainer | None) -> tuple[int, int]:
    """``(epoch, batches of it already trained)`` where training will continue; ``(0, 0)`` for a fresh run.

    Read from Lightning's restored loop progress, which is in place when ``train_dataloader()`` is called. Our
    checkpoints are written once a step is complete (``StepCheckpoint``), after validation when one ran, or at
    the end of an epoch (then the next epoch starts from its first batch).
    """
    if trainer is None or not trainer.ckpt_path:
        return 0, 0
    fit = trainer.fit_loop
    epochs = fit.epoch_progress.current
    if epochs.processed < epochs.started:  # stopped inside an epoch
        return epochs.processed, fit.epoch_loop.batch_progress.current.processed
    return epochs.processed, 0


class EpochSampler(DistributedSampler):
    """This process's share of each epoch as ``(index, item_seed)`` pairs.

    The order is a permutation drawn from ``(seed, epoch)`` (or ``0..n-1`` without ``shuffle``); each of
    ``num_replicas`` processes takes every ``num_replicas``-th item, the list padded (or with ``drop_last`` cut)
    to a multiple of it as ``DistributedSampler`` does. In epoch ``start[0]`` the first ``start[1]`` items are
    skipped: the batches a resumed run already trained on. A ``DistributedSampler``, so Lightning neither
    replaces it under DDP nor forgets to call :meth:`set_epoch`.
    """

    def __init__(self, dataset: Dataset, shuffle: bool, seed: int, rank: int = 0, num_replicas: int = 1,
                 drop_last: bool = False, start: tuple[int, int] = (0, 0)):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.start = start
        self.epoch = start[0]  # a DataLoader with workers draws indices before Lightning calls set_epoch

    def order(self, epoch: int) -> list[int]:
        """The full (all processes) order of ``epoch`` before sharding."""
        n = len(self.dataset)
        if self.shuffle:
            gen = torch.Generator().manual_seed(mix_seed("order", self.seed, epoch))
            idx = torch.randperm(n, generator=gen).tolist()
        else:
            idx = list(range(n))
        if self.drop_last:
            return idx[: self.total_size]
        pad = self.total_size - n
        return idx + (idx * math.ceil(pad / max(n, 1)))[:pad]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        mine = list(range(self.rank, self.total_size, self.num_replicas))
        skip = self.start[1] if epoch == self.start[0] else 0
        order = self.order(epoch)
        for pos in mine[skip:]:
            yield order[pos], mix_seed("item", self.seed, epoch, pos)


class SeededItems(Dataset):
    """``dataset`` read by ``(index, seed)`` keys: each item's random crops, frames and flips are drawn under its
    own seed, leaving the caller's RNG as it was."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also queue a seed for every lazy accelerator
            # (with a captured traceback each, ~60 us an item) that fork_rng(devices=[]) does not restore
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int, trainer: pl.Trainer | None,
                num_workers: int = 0, drop_last: bool = False, pin_memory: bool = False) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` with the order and augmentation of this module's note; the process's
    rank and share and the resume position come from ``trainer`` (one process, from the start, without one).
    Only the training loader resumes mid-epoch; evaluation loaders always start at their first item."""
    rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
    start = resume_position(trainer) if shuffle else (0, 0)
    sampler = EpochSampler(dataset, shuffle, seed, rank, world, drop_last=drop_last,
                           start=(start[0], start[1] * batch_size))
    return DataLoader(SeededItems(dataset), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, pin_memory=pin_memory and torch.cuda.is_available(),
                      persistent_workers=num_workers > 0)
