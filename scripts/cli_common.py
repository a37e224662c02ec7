"""Argument groups shared by the training scripts: Trainer flags (incl. the seed's Lightning 1.x ones),
data flags, ``--config`` / ``--set`` overrides and logging set-up, plus the run plumbing both scripts share
(devices and DDP strategy, ``--resume``, ``log.txt``, ``main()`` exit codes). Scripts stay thin by importing this."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch

from tav.errors import InputError
from tav.training.callbacks import best_or_last
from tav.training.trainer import TrainerOptions, resolve_devices
from tav.training.vqgan_module import NonFiniteLossError
from tav.utils.console import configure_output, wants_verbose
from tav.utils.fileio import write_text_atomic

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_FIND_UNUSED = {"ddp": "ddp_find_unused_parameters_true", "ddp_spawn": "ddp_spawn_find_unused_parameters_true",
                "ddp_fork": "ddp_fork_find_unused_parameters_true"}


def str2bool(value: str) -> bool:
    """``True/False/1/0/yes/no`` (the seeds write ``--class_cond False``)."""
    v = str(value).strip().lower()
    if v in ("1", "true", "t", "yes", "y"):
        return True
    if v in ("0", "false", "f", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def add_trainer_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("trainer")
    g.add_argument("--accelerator", default="auto", help="cpu | gpu | auto")
    g.add_argument("--devices", default="auto", help="device count, a list like 0,1, or auto")
    g.add_argument("--num_nodes", type=int, default=1)
    g.add_argument("--strategy", default="auto", help="auto | ddp | ... (Lightning strategies)")
    g.add_argument("--precision", default="32", choices=["32", "bf16", "16"], help="bf16 autocast on GPU")
    g.add_argument("--gpus", type=int, default=None, help="seed flag: N GPUs (CPU with a warning if none)")
    g.add_argument("--max_steps", type=int, default=-1)
    g.add_argument("--max_epochs", type=int, default=None)
    g.add_argument("--val_check_interval", type=float, default=1.0, help="epoch fraction, or batches if > 1")
    g.add_argument("--limit_val_batches", type=float, default=1.0)
    g.add_argument("--sync_batchnorm", action="store_true")
    g.add_argument("--progress_bar_refresh_rate", type=int, default=1, help="0 disables the progress bar")
    g.add_argument("--log_every_n_steps", type=int, default=50)
    g.add_argument("--default_root_dir", default="runs", help="run directory (checkpoints, logs, samples)")
    g.add_argument("--accumulate_grad_batches", type=int, default=1)
    g.add_argument("--gradient_clip_val", type=float, default=None)
    g.add_argument("--seed", type=int, default=1234)
    add_verbose_flag(p)


def add_verbose_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true",
                   help="also show Lightning's own output (device lines, model summary) and debug logging")


def trainer_options(args: argparse.Namespace) -> TrainerOptions:
    names = TrainerOptions.__dataclass_fields__.keys() - {"extra"}
    return TrainerOptions(**{k: getattr(args, k) for k in names})


def add_config_flags(p: argparse.ArgumentParser, kind: str, default: str) -> None:
    p.add_argument("--config", default=default, help=f"preset name under configs/{kind}/ or a YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set n_hiddens=64 (repeatable)")
    p.add_argument("--dry_run", "--dry-run", action="store_true", help="print the resolved config and exit")


def add_data_flags(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The ``data`` group with the flags both scripts take (``--data_path``, ``--data_config``,
    ``--load_vid_len``); returns the group for the script's own data flags."""
    d = p.add_argument_group("data")
    d.add_argument("--data_path", required=True, help="dataset root with train/ and test/ (VAT layout)")
    d.add_argument("--data_config", "--dataset", dest="data_config", default="urmp", help="urmp | landscape | YAML")
    d.add_argument("--load_vid_len", type=int, default=None, help="frames per pre-cut clip (URMP 90, Landscape 30)")
    return d


def resolve_devices_and_strategy(opts: TrainerOptions, find_unused: bool) -> tuple[TrainerOptions, int]:
    """Apply the seed's ``--gpus`` once (recorded as accelerator/devices) and pick the strategy: DDP when more
    than one process. ``find_unused`` turns the DDP strategies into their ``*_find_unused_parameters_true``
    variants (the VQGAN needs it: its discriminators sit out the generator pass). Returns the updated
    options and the world size (processes per node x nodes)."""
    accelerator, devices = resolve_devices(opts)
    if isinstance(devices, list):
        n, devices = len(devices), ",".join(map(str, devices))
    elif isinstance(devices, int):
        n, devices = devices, str(devices)
    else:  # "auto" / "-1": every visible GPU, else one CPU process
        n = torch.cuda.device_count() if accelerator in ("gpu", "cuda", "auto") else 1
    opts.accelerator, opts.devices, opts.gpus = accelerator, devices, None
    world = max(n, 1) * opts.num_nodes
    if opts.strategy == "auto" and world > 1:
        opts.strategy = "ddp"
    if find_unused:
        opts.strategy = _FIND_UNUSED.get(opts.strategy, opts.strategy)
    return opts, world


def resume_path(value: str | None, root: Path) -> str | None:
    """``--resume`` -> a checkpoint path: ``last`` means ``<root>/checkpoints/last.ckpt``; ``None`` stays
    ``None``; a missing file is a one-line ``InputError``."""
    if value is None:
        return None
    path = root / "checkpoints" / "last.ckpt" if value == "last" else Path(value)
    if not path.is_file():
        raise InputError(f"--resume {value}: {path} does not exist")
    return str(path)


def check_resumed_settings(resume: str, old: dict, now: dict, arch_fields: Iterable[str],
                           logger: logging.Logger) -> None:
    """Compare the model config ``old`` of the ``--resume`` checkpoint with this run's ``now``: a difference in
    ``arch_fields`` (fields that shape the state dict) is a one-line ``InputError`` naming the first of them
    in ``arch_fields`` order; other changed settings are one warning on ``logger``."""
    arch = [k for k in arch_fields if old.get(k) != now[k]]
    if arch:
        raise InputError(f"--resume {resume}: trained with {arch[0]}={old.get(arch[0])!r} but this run has "
                         f"{arch[0]}={now[arch[0]]!r}; pass the same model settings")
    changed = [k for k in now if old.get(k) != now[k]]
    if changed:
        logger.warning("resuming with changed settings: %s", ", ".join(f"{k}: {old.get(k)!r} -> {now[k]!r}"
                                                                          for k in changed))


@contextlib.contextmanager
def run_log(root: Path, main_process: bool) -> Iterator[None]:
    """Log to ``<root>/log.txt`` on the main process (rank 0) while the block runs; on the other ranks the
    root logger is set to warnings only (and stays so)."""
    if not main_process:
        logging.getLogger().setLevel(logging.WARNING)
        yield
        return
    handler = logging.FileHandler(root / "log.txt", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def fit_run(trainer: pl.Trainer, module: pl.LightningModule, data: pl.LightningDataModule, root: Path,
            config_yaml: Callable[[], str], resume: str | None) -> Path | None:
    """Train with ``trainer``: rank 0 first writes ``config_yaml()`` to ``<root>/config.yaml``; ``log.txt`` as
    in :func:`run_log`; ``resume`` continues from that checkpoint. Returns the best checkpoint under
    ``<root>/checkpoints``, else ``last.ckpt`` (``best_or_last``)."""
    if trainer.is_global_zero:
        write_text_atomic(root / "config.yaml", config_yaml())
    with run_log(root, trainer.is_global_zero):
        trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
    return best_or_last(root / "checkpoints", trainer)


def run_main(name: str, train_fn: Callable[[list[str] | None], Path | None], argv: list[str] | None) -> int:
    """A script's ``main()``: set up logging and run ``train_fn(argv)``. Returns the exit code: 0 (the
    checkpoint, if any, is logged), 2 for an ``InputError`` and 1 for a ``NonFiniteLossError``, each
    printed as one line ``<name>: error: ...`` on stderr."""
    configure_output(wants_verbose(argv))
    try:
        path = train_fn(argv)
    except (InputError, NonFiniteLossError) as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, InputError) else 1
    if path is not None:
        logging.getLogger(name).info("checkpoint: %s", path)
    return 0


# guided-diffusion flag -> (section, field), shared by the diffusion training scripts (TA2V prior, TIA2V U-Nets)
GD_FLAG_FIELDS = {
    "image_size": ("model", "image_size"), "num_channels": ("model", "model_channels"),
    "num_res_blocks": ("model", "num_res_blocks"), "num_heads": ("model", "num_heads"),
    "num_head_channels": ("model", "num_head_channels"), "dropout": ("model", "dropout"),
    "use_scale_shift_norm": ("model", "use_scale_shift_norm"), "use_checkpoint": ("model", "gradient_checkpointing"),
    "diffusion_steps": ("process", "steps"), "noise_schedule": ("process", "noise_schedule"),
    "learn_sigma": ("process", "learn_sigma"), "predict_xstart": ("process", "predict_xstart"),
    "rescale_timesteps": ("process", "rescale_timesteps"),
    "batch_size": ("train", "batch_size"), "num_workers": ("train", "num_workers"), "lr": ("train", "lr"),
    "weight_decay": ("train", "weight_decay"), "log_interval": ("train", "log_interval"),
    "save_interval": ("train", "save_interval"), "lr_anneal_steps": ("train", "lr_anneal_steps"),
    "resolution": ("data", "resolution"), "sequence_length": ("data", "sequence_length"),
}
GD_MODEL_FLAGS = (("image_size", int), ("num_channels", int), ("num_res_blocks", int), ("num_heads", int),
                  ("num_head_channels", int), ("dropout", float), ("use_scale_shift_norm", str2bool),
                  ("use_checkpoint", str2bool))
GD_TRAIN_FLAGS = (("batch_size", int), ("num_workers", int), ("lr", float), ("weight_decay", float),
                  ("log_interval", int), ("save_interval", int), ("lr_anneal_steps", int))


def add_process_flags(p: argparse.ArgumentParser) -> None:
    """guided-diffusion's process flags (values override the preset's ``process:`` section)."""
    q = p.add_argument_group("diffusion process")
    q.add_argument("--diffusion_steps", type=int, default=None)
    q.add_argument("--noise_schedule", choices=["cosine", "linear"], default=None)
    for name in ("learn_sigma", "predict_xstart", "rescale_timesteps", "rescale_learned_sigmas", "use_kl"):
        q.add_argument(f"--{name}", type=str2bool, default=None)
    q.add_argument("--timestep_respacing", default="", help='training uses all steps: must be ""')
    q.add_argument("--schedule_sampler", choices=["uniform"], default="uniform")


def run_samples(n: int, is_done: Callable[[int], bool], batch_size: int,
                run_batch: Callable[[list[int]], None], where: Path, logger: logging.Logger) -> None:
    """Run ``run_batch`` over the samples ``0..n-1`` not yet done, ``batch_size`` at a time, with a bar."""
    from tqdm import tqdm

    todo = [i for i in range(n) if not is_done(i)]
    logger.info("%s: %d of %d samples to do", where, len(todo), n)
    with tqdm(total=n, initial=n - len(todo), desc="samples", unit="video") as bar:
        for k in range(0, len(todo), batch_size):
            batch: Sequence[int] = todo[k: k + batch_size]
            run_batch(list(batch))
            bar.update(len(batch))


def sample_main(name: str, sample_fn: Callable[[list[str] | None], Path], argv: list[str] | None) -> int:
    """A sampling script's ``main()``: 0 on success (the results folder is logged), 2 for an ``InputError``
    (one line ``<name>: error: ...`` on stderr)."""
    configure_output(wants_verbose(argv))
    try:
        root = sample_fn(argv)
    except InputError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
    logging.getLogger(name).info("results in %s", root)
    return 0


def diffusion_trainer_options(args: argparse.Namespace, train) -> tuple[TrainerOptions, str | None]:
    """Trainer options of a diffusion training run (``train``: a ``DiffusionTrainConfig``): steps from
    ``--max_steps`` or the config, logging every ``log_interval``, no validation, devices and DDP strategy.
    Also checks that ``--data_path`` has a train split and resolves ``--resume``; returns (options, resume)."""
    from tav.data.dataset import list_stems

    opts = trainer_options(args)
    if opts.max_steps == -1:
        opts.max_steps = train.lr_anneal_steps or train.max_steps
    opts.log_every_n_steps, opts.limit_val_batches = train.log_interval, 0
    opts.accumulate_grad_batches = max(opts.accumulate_grad_batches, 1)
    opts, _ = resolve_devices_and_strategy(opts, find_unused=False)
    list_stems(Path(args.data_path) / "train")  # a missing dataset fails here, not after model set-up
    return opts, resume_path(args.resume, Path(opts.default_root_dir))
