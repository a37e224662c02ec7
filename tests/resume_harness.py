"""A tiny Lightning run wired like the training scripts, killed at chosen hooks and resumed: the shared harness of
``tests/test_resume.py`` (and of ``benchmarks/bench_faults.py`` 's in-process sweep).

A kill is simulated by raising :class:`SimulatedKill` from a checkpoint-ordered callback (after every saving
callback of that hook); nothing of the run is finished or flushed afterwards, as with ``kill -9``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint
from torch import nn

from tav.training.callbacks import checkpoint_callbacks, run_loggers
from tav.training.determinism import make_loader
from tav.training.resume import newest_checkpoint, prepare_resume, start_fresh
from tav.training.trainer import TrainerOptions, build_trainer

HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_validation_start", "on_validation_end",
         "on_train_epoch_end")


class SimulatedKill(BaseException):
    """Stands for SIGKILL: not an ``Exception``, so nothing on the way up handles it."""


class KillAt(Checkpoint):
    """Raise :class:`SimulatedKill` at ``hook`` when the global step is ``step`` (not during the sanity check)."""

    def __init__(self, hook: str, step: int):
        self.hook, self.step = hook, step

    def _at(self, trainer: pl.Trainer, hook: str) -> None:
        if hook == self.hook and trainer.global_step == self.step and not trainer.sanity_checking:
            raise SimulatedKill(f"{hook} at step {self.step}")


for _hook in HOOKS:
    setattr(KillAt, _hook, (lambda h: lambda self, trainer, *a: self._at(trainer, h))(_hook))


class NoisyItems(torch.utils.data.Dataset):
    """11 items with a random augmentation drawn from torch's global RNG (as the VAT random crop is)."""

    def __len__(self) -> int:
        return 11

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.full((4,), float(i)) + torch.rand(4)


class NoisyData(pl.LightningDataModule):
    def __init__(self, workers: int = 0):
        super().__init__()
        self.workers = workers

    def train_dataloader(self):
        return make_loader(NoisyItems(), 2, shuffle=True, seed=3, trainer=self.trainer, drop_last=True,
                           num_workers=self.workers)

    def val_dataloader(self):
        return make_loader(NoisyItems(), 4, shuffle=False, seed=3, trainer=self.trainer, num_workers=self.workers)


class NoisyModel(pl.LightningModule):
    """Dropout, input noise and a noisy validation metric: every source of randomness a training step has."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        loss = (self.net(batch + torch.randn_like(batch) * 0.1) ** 2).mean()
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", (self.net(batch) ** 2).mean() + torch.rand(()))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=0.05)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / 40)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def fit(root: Path, kill: tuple[str, int] | None = None, resume: bool = False, accumulate: int = 1,
        val: int | float = 3, every: int = 4, max_steps: int = 17, epoch_min_seconds: float = 0.0) -> dict | None:
    """One attempt in ``root`` (``resume``: from its newest checkpoint, as ``--resume last``); returns the final
    state dict, or None when killed. ``epoch_min_seconds`` 0: ``last.ckpt`` at every epoch's end."""
    pl.seed_everything(0, verbose=False)
    callbacks = checkpoint_callbacks(root / "checkpoints", "val_loss", every, epoch_min_seconds)
    if kill:
        callbacks.append(KillAt(*kill))
    opts = TrainerOptions(accelerator="cpu", devices="1", max_steps=max_steps, val_check_interval=val,
                          log_every_n_steps=1, default_root_dir=str(root), progress_bar_refresh_rate=0,
                          accumulate_grad_batches=accumulate)
    trainer = build_trainer(opts, callbacks, logger=run_loggers(root)[:1], seed=11)
    ckpt = newest_checkpoint(root / "checkpoints") if resume else None
    prepare_resume(root, ckpt) if ckpt else start_fresh(root)
    try:
        trainer.fit(NoisyModel(), datamodule=NoisyData(), ckpt_path=ckpt, weights_only=True)
    except SimulatedKill:
        return None
    return trainer.lightning_module.state_dict()


def snapshot(root: Path) -> tuple[dict, list[dict]]:
    """``({checkpoint name: (global step, state dict)}, metrics rows without their wall-clock time)``."""
    files = {}
    for f in sorted((root / "checkpoints").glob("*.ckpt")):
        ckpt = torch.load(f, weights_only=False)
        files[f.name] = (ckpt["global_step"], ckpt["state_dict"])
    rows = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("time")
    return files, rows


def differences(a: tuple[dict, list[dict]], b: tuple[dict, list[dict]]) -> list[str]:
    """What differs between two snapshots (empty: the same files, weights bitwise, and rows)."""
    (fa, ra), (fb, rb) = a, b
    out = []
    if set(fa) != set(fb):
        out.append(f"files only in one: {sorted(set(fa) ^ set(fb))}")
    for name in sorted(set(fa) & set(fb)):
        (sa, wa), (sb, wb) = fa[name], fb[name]
        if sa != sb or wa.keys() != wb.keys() or any(not torch.equal(wa[k], wb[k]) for k in wa):
            out.append(f"{name} differs")
    if ra != rb:
        first = next(i for i, (x, y) in enumerate(itertools.zip_longest(ra, rb)) if x != y)
        out.append(f"metrics rows differ from row {first}: {ra[first:first + 1]} vs {rb[first:first + 1]}")
    return out


def kill_and_resume(root: Path, kill: tuple[str, int], **kw) -> dict | None:
    """Run ``root`` killed at ``kill``, then resume it until it finishes; the final state dict (None when the
    kill point was never reached)."""
    if fit(root, kill=kill, **kw) is not None:
        return None
    return fit(root, resume=True, **kw)
