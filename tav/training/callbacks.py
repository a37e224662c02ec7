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
import shutil
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
from tav.training.resume import newest_checkpoint
from tav.utils.fileio import dumps_strict, temp_prefix

log = logging.getLogger(__name__)

LAST_NAME = "last.ckpt"
EPOCH_SAVE_MIN_SECONDS = 60.0  # an epoch's end writes last.ckpt only this long after the previous save


class StepCheckpoint(Checkpoint):
    """``<dirpath>/last.ckpt`` every ``every_n_steps`` optimiser steps (0: none inside epochs), after a training
    epoch and when ``fit`` ends normally (not after an exception: that state may be the bad one); with ``keep``,
    each ``every_n_steps`` file also stays as ``epoch=E-step=S.ckpt`` (``last.ckpt`` is then a hard link to it).
    An epoch's end saves only when ``epoch_min_seconds`` have passed since this process's previous save (0: every
    epoch): short epochs (the demo's GPT has 4 steps, with a 100 MB checkpoint) would otherwise spend a fifth of
    the run writing files. Any checkpoint is an exact resume point, so which ones were written never changes the
    result of a resumed run.

    A checkpoint is written once everything of its step is done (the metrics rows, the validation and the
    best-checkpoint update that follow it, the end of the epoch): at the end of validation when one runs at that
    step, else at the start of the next batch, or when training ends. Resuming from it continues with the next
    batch and never repeats or skips a validation, so a resumed run ends as the uninterrupted one
    (``docs/faults.md``). Every checkpoint written while this callback is active also records the length
    ``metrics.jsonl`` had then (``tav_resume.metrics_bytes``), so a resumed run drops the rows written after it,
    and whether gradients of a gradient-accumulation window were pending (``tav_resume.pending_grads``: Lightning
    does not save them, so ``--resume last`` passes over such a file).
    Files are written through the trainer's atomic ``CheckpointIO``.
    """

    def __init__(self, dirpath: str | os.PathLike, every_n_steps: int = 0, keep: bool = False,
                 epoch_min_seconds: float = EPOCH_SAVE_MIN_SECONDS):
        self.dirpath = str(dirpath)
        self.every_n_steps, self.keep, self.epoch_min_seconds = every_n_steps, keep, epoch_min_seconds
        self._saved_at = time.monotonic()  # the run's start counts as a save
        self.last_model_path = ""
        self._saved_step, self._pending, self._keep_pending = -1, None, False
        self._next_batch = False  # the save in progress is at the start of the following batch
        self._prev_last_batch = False  # whether the batch before that one ended its epoch

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._prev_last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0 and step != self._saved_step:
            self._pending, self._keep_pending = step, self.keep

    def state_dict(self) -> dict[str, Any]:
        return {"saved_step": self._saved_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved_step = int(state_dict.get("saved_step", -1))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Resumed from a checkpoint written before this step's own one (a best one, after validation): write it
        at the first batch, as the uninterrupted run did."""
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0 and step != self._saved_step:
            self._pending, self._keep_pending = step, self.keep

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self._pending == trainer.global_step and not self._epoch_over(trainer):
            self._save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        due = self._pending is not None or time.monotonic() - self._saved_at >= self.epoch_min_seconds
        if not trainer.strategy.broadcast(due):  # rank 0's clock decides for all: the save ends in a barrier
            return
        self._pending = trainer.global_step  # saved at the next batch (the epoch's end is then all done)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._pending is not None:
            self._save(trainer, next_batch=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._saved_step or self._pending is not None:
            self._save(trainer)

    @staticmethod
    def _epoch_over(trainer: pl.Trainer) -> bool:
        """Whether this validation is the last thing of the epoch (its end is saved at the next batch)."""
        return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint["tav_resume"] = {"metrics_bytes": _metrics_bytes(trainer),
                                    "pending_grads": not self._next_batch and _grads_pending(trainer, pl_module)}
        if self._next_batch:
            _as_saved_after_previous_batch(trainer, checkpoint, self._prev_last_batch)

    def _save(self, trainer: pl.Trainer, next_batch: bool = False) -> None:
        folder, step = Path(self.dirpath), trainer.global_step
        last = folder / LAST_NAME
        target = folder / f"epoch={trainer.current_epoch}-step={step}.ckpt" if self._keep_pending else last
        if next_batch and target != last and trainer.fit_loop.epoch_loop.batch_progress.current.ready == 1:
            target = folder / f"epoch={trainer.current_epoch - 1}-step={step}.ckpt"  # the step ended an epoch
        self._next_batch, before, self._saved_step = next_batch, self._saved_step, step  # recorded in the file
        try:
            trainer.save_checkpoint(target, weights_only=False)  # rank 0 writes, every rank waits
        except BaseException:
            self._saved_step = before
            raise
        finally:
            self._next_batch = False
        if trainer.is_global_zero and target != last:
            link_atomic(target, last)
        trainer.strategy.barrier("step_checkpoint")
        self._pending, self._keep_pending, self.last_model_path = None, False, str(last)
        self._saved_at = time.monotonic()


def _as_saved_after_previous_batch(trainer: pl.Trainer, checkpoint: dict, prev_last_batch: bool) -> None:
    """Make a checkpoint written at the start of batch ``k`` restore as one written right after batch ``k - 1``
    and its validation, the state Lightning knows how to restart from (Lightning 2.x loop internals; the
    equivalence is tested in ``tests/test_resume.py``): batch ``k`` not yet "ready", ``k - 1``'s last-batch flag
    (none for ``k = 0``: the new epoch has begun), and, when Lightning will take the validation after ``k - 1``
    as the one the checkpoint was written in (it then skips it and counts that step again), its logger step
    counter one lower."""
    loop = trainer.fit_loop.epoch_loop
    progress, saved = loop.batch_progress, checkpoint["loops"]["fit_loop"]
    prev_last_batch = prev_last_batch and progress.current.ready > 1  # batch 0 of an epoch: a fresh epoch
    for which in ("current", "total"):
        saved["epoch_loop.batch_progress"][which]["ready"] -= 1
    saved["epoch_loop.batch_progress"]["is_last_batch"] = prev_last_batch
    now_last = progress.is_last_batch
    progress.current.ready, progress.total.ready, progress.is_last_batch = (
        progress.current.ready - 1, progress.total.ready - 1, prev_last_batch)
    try:
        counted_again = loop._should_check_val_fx(trainer.fit_loop._data_fetcher) and not loop._should_accumulate()
    finally:
        progress.current.ready, progress.total.ready, progress.is_last_batch = (
            progress.current.ready + 1, progress.total.ready + 1, now_last)
    if counted_again:
        saved["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1


def _grads_pending(trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
    """Whether the batch just trained was accumulated without an optimiser step (its gradients, which checkpoints
    do not hold, wait for the next batch): the module's ``grads_pending`` under manual optimisation, else
    Lightning's accumulation schedule."""
    if not pl_module.automatic_optimization:
        return bool(getattr(pl_module, "grads_pending", False))
    return trainer.accumulate_grad_batches > 1 and trainer.fit_loop.epoch_loop._should_accumulate()


def _metrics_bytes(trainer: pl.Trainer) -> int | None:
    """Size of the run's ``metrics.jsonl`` now (None without a ``JsonlLogger``)."""
    for lg in trainer.loggers:
        if isinstance(lg, JsonlLogger):
            return lg.path.stat().st_size if lg.path.is_file() else 0
    return None


def link_atomic(src: Path, dst: Path) -> None:
    """Make ``dst`` name the same file as ``src`` (a hard link; a copy where links are not supported), replacing
    ``dst`` in one rename."""
    tmp = dst.with_name(f"{temp_prefix(dst.stem)}link{dst.suffix}")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class BestCheckpoint(ModelCheckpoint):
    """Lightning's top-k checkpoint, saved after validation (never at an epoch's end, a state Lightning does not
    restart from correctly), which also replaces the file a run was resumed from once a better one is found (the
    run that was never interrupted would have done so) and restores its last score, as that run has it."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.current_score = state_dict.get("current_score", self.current_score)  # Lightning leaves it out

    def _should_remove_checkpoint(self, trainer: pl.Trainer, previous: str, current: str) -> bool:
        return previous != current and Path(self.dirpath).absolute() in Path(previous).absolute().parents


def checkpoint_callbacks(dirpath: str | os.PathLike, monitor: str, save_every_n_steps: int,
                         epoch_min_seconds: float = EPOCH_SAVE_MIN_SECONDS) -> list[Callback]:
    """Best checkpoint by ``monitor`` (lower is better), one every ``save_every_n_steps`` global steps
    (kept, 0 = off), and ``last.ckpt`` (see ``StepCheckpoint``); all in ``dirpath``."""
    dirpath = str(dirpath)
    return [BestCheckpoint(dirpath=dirpath, filename=f"best-{{epoch}}-{{step}}-{{{monitor}:.4f}}", monitor=monitor,
                           mode="min", save_top_k=1, save_on_train_epoch_end=False),
            StepCheckpoint(dirpath, every_n_steps=save_every_n_steps, keep=save_every_n_steps > 0,
                           epoch_min_seconds=epoch_min_seconds)]


def last_good_checkpoint(trainer: pl.Trainer) -> str | None:
    """The newest exact resume point in the folders of ``trainer``'s checkpoint callbacks (what ``--resume last``
    takes), else the file fit resumed from."""
    for cb in trainer.checkpoint_callbacks:
        folder = getattr(cb, "dirpath", None)  # ModelCheckpoint and StepCheckpoint both have one
        newest = newest_checkpoint(Path(folder)) if folder else None
        if newest is not None:
            return str(newest)
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
    best = getattr(trainer.checkpoint_callback, "best_model_path", "")  # StepCheckpoint alone has none
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
