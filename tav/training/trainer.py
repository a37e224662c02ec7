"""Build a Lightning 2 ``Trainer`` from typed options, including the seed READMEs' Lightning 1.x flags.

The seed command lines use ``--gpus``, ``--progress_bar_refresh_rate``, ``--sync_batchnorm``,
``--val_check_interval``, ``--max_steps`` and ``--default_root_dir`` (Lightning 1.5). They are mapped here,
in one place, onto Trainer 2.x arguments. ``--accumulate_grad_batches`` and ``--gradient_clip_val`` are
handled by the modules that use manual optimisation (the VQGAN) and by the Trainer otherwise.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, TQDMProgressBar
from pytorch_lightning.plugins.io import TorchCheckpointIO

from tav.errors import InputError
from tav.training.determinism import StepSeeds
from tav.training.options import TrainerOptions, resolve_devices
from tav.utils.fileio import save_torch_atomic
from tav.utils.runtime import lightning_precision


def _val_interval(value: float) -> float | int:
    if value > 1.0:
        if value != int(value):
            raise InputError(f"--val_check_interval {value}: a fraction <= 1.0 or a whole number of batches")
        return int(value)
    return float(value)


def build_trainer(opts: TrainerOptions, callbacks: list[Callback] | None = None, logger=None,
                  manual_optimization: bool = False, seed: int | None = None) -> pl.Trainer:
    """A ``pl.Trainer`` for ``opts``. With ``manual_optimization`` the module clips and accumulates itself; with
    ``seed`` every training batch and validation run is seeded by position (``StepSeeds``), so a resumed run
    draws the numbers of the uninterrupted one."""
    accelerator, devices = resolve_devices(opts)
    callbacks = list(callbacks or [])
    if seed is not None:
        callbacks.insert(0, StepSeeds(seed))
    if opts.progress_bar_refresh_rate > 0:
        callbacks.append(TQDMProgressBar(refresh_rate=opts.progress_bar_refresh_rate))
    kwargs = dict(
        accelerator=accelerator, devices=devices, num_nodes=opts.num_nodes, strategy=opts.strategy,
        precision=lightning_precision(opts.precision, accelerator), max_steps=opts.max_steps,
        max_epochs=opts.max_epochs, val_check_interval=_val_interval(opts.val_check_interval),
        limit_val_batches=opts.limit_val_batches, sync_batchnorm=opts.sync_batchnorm,
        enable_progress_bar=opts.progress_bar_refresh_rate > 0, log_every_n_steps=opts.log_every_n_steps,
        default_root_dir=opts.default_root_dir, callbacks=callbacks, logger=logger,
        enable_model_summary=opts.verbose,
    )
    if isinstance(kwargs["val_check_interval"], int):  # every N training batches, across epoch boundaries
        kwargs["check_val_every_n_epoch"] = None
    if not manual_optimization:
        kwargs.update(accumulate_grad_batches=opts.accumulate_grad_batches,
                      gradient_clip_val=opts.gradient_clip_val)
    kwargs.update(opts.extra)
    kwargs.setdefault("plugins", [AtomicCheckpointIO()])
    return pl.Trainer(**kwargs)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer through ``tav.utils.fileio.save_torch_atomic``: the temp file in the destination
    folder, fsynced, then renamed, so a killed save never leaves a truncated file under a checkpoint's name
    (Lightning's own writer goes through the system temp folder, a copy when that is another filesystem)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        save_torch_atomic(checkpoint, path)


def logs_this_step(module: pl.LightningModule) -> bool:
    """Whether Lightning writes this training step's on-step metrics to the loggers: every ``log_every_n_steps``
    optimiser steps (its own test, ``should_update_logs``, which its learning-rate and throughput monitors use too)
    or on a ``fast_dev_run``. The training modules log (and compute what they only log) when this is true, so
    the written rows are the same and the other steps skip ``self.log``'s per-call work: 5-10 ms of the demo
    GPT's 85-ms step (AMD Zen 4, 2 threads). Always true outside a fit loop or where Lightning has no
    such test."""
    trainer = module.trainer
    try:
        return bool(trainer._logger_connector.should_update_logs or trainer.fast_dev_run)
    except (AttributeError, NotImplementedError):
        return True


def shows_progress(module: pl.LightningModule) -> bool:
    """Whether a progress bar shows the ``prog_bar`` metrics, which are then logged at every step."""
    return module.trainer.progress_bar_callback is not None
