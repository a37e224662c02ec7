"""Run-directory plumbing for the training scripts: checkpoint callbacks, sample videos, JSON-lines metrics.

A run directory holds ``config.yaml``, ``log.txt``, ``metrics.jsonl`` (one JSON object per logged step),
``checkpoints/`` (best by a validation metric, every N steps, ``last.ckpt``), ``samples/`` (mp4) and
``tb/`` when TensorBoard is installed. Nothing here knows about a particular model: the sample logger
only calls ``pl_module.input_video(batch)`` and ``pl_module.reconstruct(video)``, and ``check_finite`` (the
NaN guard of every stage) only sees a loss.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, Checkpoint, ModelCheckpoint
from pytorch_lightning.loggers import Logger, TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor

from tav.errors import NonFiniteLossError
from tav.utils.fileio import dumps_strict, temp_prefix

log = logging.getLogger(__name__)

LAST_NAME = "last.ckpt"


class LastCheckpoint(Checkpoint):
    """Keeps ``<dirpath>/last.ckpt`` current: every ``every_n_steps`` global steps (0 = never), at the end of
    every training epoch, and when ``fit`` ends normally (not after an exception: that state may be the
    bad one).

    The epoch-end save comes after end-of-epoch validation and after the ``ModelCheckpoint`` callbacks
    (Lightning runs checkpoint callbacks last, in list order), so the file records their updated state and
    a resumed run keeps the right best-k bookkeeping. Written through a temporary file and a rename, so a
    killed job never leaves a half-written file.
    """

    def __init__(self, dirpath: str | os.PathLike, every_n_steps: int = 0):
        self.dirpath = str(dirpath)
        self.every_n_steps = every_n_steps
        self.last_model_path = ""
        self._saved_step = -1

    def _save(self, trainer: pl.Trainer) -> None:
        path = Path(self.dirpath) / LAST_NAME
        tmp = path.with_name(f"{temp_prefix('last')}lastckpt.ckpt")  # a stale one is removed on restart
        self._saved_step, self.last_model_path = trainer.global_step, str(path)
        trainer.save_checkpoint(tmp, weights_only=False)  # rank 0 writes, every rank waits
        if trainer.is_global_zero:
            os.replace(tmp, path)
        trainer.strategy.barrier("last_checkpoint")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0 and step != self._saved_step:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer)  # also at an already saved step: validation may have changed the best-k state

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._saved_step:
            self._save(trainer)


def checkpoint_callbacks(dirpath: str | os.PathLike, monitor: str, save_every_n_steps: int) -> list[Callback]:
    """Best checkpoint by ``monitor`` (lower is better), one every ``save_every_n_steps`` global steps
    (kept, 0 = off), and ``last.ckpt``; all in ``dirpath``."""
    dirpath = str(dirpath)
    callbacks: list[Callback] = [
        ModelCheckpoint(dirpath=dirpath, filename=f"best-{{epoch}}-{{step}}-{{{monitor}:.4f}}", monitor=monitor,
                        mode="min", save_top_k=1),
    ]
    if save_every_n_steps > 0:
        callbacks.append(ModelCheckpoint(dirpath=dirpath, filename="{epoch}-{step}",
                                         every_n_train_steps=save_every_n_steps, save_top_k=-1))
    callbacks.append(LastCheckpoint(dirpath, every_n_steps=save_every_n_steps))
    return callbacks


def last_good_checkpoint(trainer: pl.Trainer) -> str | None:
    """Newest ``*.ckpt`` in the folders of ``trainer``'s checkpoint callbacks, else the file fit resumed from."""
    files: list[Path] = []
    for cb in trainer.checkpoint_callbacks:
        folder = getattr(cb, "dirpath", None)  # ModelCheckpoint and LastCheckpoint both have one
        if folder and Path(folder).is_dir():
            files += [f for f in Path(folder).glob("*.ckpt") if f.is_file() and not f.name.startswith(".")]
    if files:
        return str(max(files, key=lambda f: f.stat().st_mtime))
    return str(trainer.ckpt_path) if trainer.ckpt_path else None


def check_finite(trainer: pl.Trainer, loss: Tensor, what: str, step: int,
                 parts: Mapping[str, Tensor] | None = None) -> None:
    """Raise ``NonFiniteLossError`` on every rank at once when the scalar ``loss`` is NaN or infinite on any.

    One line: ``"non-finite <what> loss at global step <step> (<parts>); last good checkpoint: <file>"``;
    ``parts`` are named loss terms, of which the scalar ones are listed (left out when none are given).
    """
    bad = trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss)), all=False)
    if not bad:
        return
    terms = ", ".join(f"{k}={float(v):.4g}" for k, v in (parts or {}).items() if v.numel() == 1)
    ckpt = last_good_checkpoint(trainer)
    raise NonFiniteLossError(f"non-finite {what} loss at global step {step}{f' ({terms})' if terms else ''}; "
                             f"last good checkpoint: {ckpt or 'none saved yet'}")


def best_or_last(dirpath: str | os.PathLike, trainer: pl.Trainer) -> Path | None:
    """The best checkpoint of this fit if one was saved, else ``last.ckpt``, else None."""
    best = getattr(trainer.checkpoint_callback, "best_model_path", "")  # LastCheckpoint alone has none
    if best and Path(best).is_file():
        return Path(best)
    last = Path(dirpath) / LAST_NAME
    return last if last.is_file() else None


class VideoSampleLogger(Callback):
    """Every ``every_n_steps`` global steps, on rank 0: the first ``n_videos`` training clips next to their
    eval-mode reconstructions (real | recon side by side, clips stacked vertically).

    Written to ``<out_dir>/step_<step>.mp4`` and, when a ``TensorBoardLogger`` is in use, logged as a
    video (TensorBoard needs ``moviepy`` for that). Needs ``pl_module.input_video`` and ``reconstruct``.
    """

    def __init__(self, out_dir: str | os.PathLike, every_n_steps: int, n_videos: int = 4, fps: float = 30.0):
        self.out_dir, self.every_n_steps = Path(out_dir), every_n_steps
        self.n_videos, self.fps = n_videos, fps
        self._last_step = -1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if (self.every_n_steps <= 0 or step == 0 or step % self.every_n_steps or step == self._last_step
                or not trainer.is_global_zero):
            return
        self._last_step = step
        video = pl_module.input_video(batch)[: self.n_videos]
        pairs = torch.cat([video.float().clamp(-0.5, 0.5), pl_module.reconstruct(video)], dim=-1)  # (n,C,T,H,2W)
        self._write(pairs, step, trainer)

    def _write(self, pairs: torch.Tensor, step: int, trainer: pl.Trainer) -> None:
        from tav.data.video import to_uint8, write_video

        clips = to_uint8(pairs.cpu())  # (n, T, H, 2W, 3)
        n, t, h, w, c = clips.shape
        grid = clips.permute(1, 0, 2, 3, 4).reshape(t, n * h, w, c)  # clips stacked vertically
        path = write_video(self.out_dir / f"step_{step:07d}.mp4", grid.numpy(), self.fps)
        log.info("samples (real | recon) at step %d: %s", step, path)
        for lg in trainer.loggers:
            if isinstance(lg, TensorBoardLogger):
                lg.experiment.add_video("samples/real_recon", clips.permute(0, 1, 4, 2, 3), step,
                                        fps=max(1, round(self.fps)))


class JsonlLogger(Logger):
    """Appends ``{"step": N, "time": unix seconds, <metric>: float, ...}`` lines to ``path`` (rank 0 only)."""

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self.path = Path(path)

    @property
    def name(self) -> str:
        return "jsonl"

    @property
    def version(self) -> int:
        return 0

    @property
    def save_dir(self) -> str:
        return str(self.path.parent)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = {"step": step, "time": round(time.time(), 3)}
        row.update({k: float(v) for k, v in metrics.items()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(dumps_strict(row) + "\n")

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the resolved config is written to config.yaml by the script


def run_loggers(root: str | os.PathLike) -> list[Logger]:
    """``metrics.jsonl`` in ``root``, plus a TensorBoard logger in ``root/tb`` when TensorBoard is installed."""
    loggers: list[Logger] = [JsonlLogger(Path(root) / "metrics.jsonl")]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        loggers.append(TensorBoardLogger(save_dir=str(root), name="tb", version=""))
    return loggers


class PeriodicExport(Callback):
    """Every ``every_n_steps`` optimiser steps (0: never) and when training ends, rank 0 calls
    ``export(module, step)`` once per step: the plain weight files a later stage loads (written atomically by
    ``export``)."""

    def __init__(self, every_n_steps: int, export: Callable[[pl.LightningModule, int], None]):
        self.every_n_steps, self._export = every_n_steps, export
        self._done = -1

    def export(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        step = trainer.global_step
        if step == self._done or not trainer.is_global_zero:
            return
        self._done = step
        self._export(module, step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0:
            self.export(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step > 0:
            self.export(trainer, pl_module)
