"""Argument groups shared by the training scripts: Trainer flags (incl. the seed's Lightning 1.x ones),
data flags, ``--config`` / ``--set`` overrides and logging set-up. Scripts stay thin by importing this."""

from __future__ import annotations

import argparse
import logging
import sys

from tav.training.trainer import TrainerOptions


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


def trainer_options(args: argparse.Namespace) -> TrainerOptions:
    names = TrainerOptions.__dataclass_fields__.keys() - {"extra"}
    return TrainerOptions(**{k: getattr(args, k) for k in names})


def add_config_flags(p: argparse.ArgumentParser, kind: str, default: str) -> None:
    p.add_argument("--config", default=default, help=f"preset name under configs/{kind}/ or a YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set n_hiddens=64 (repeatable)")
    p.add_argument("--dry_run", "--dry-run", action="store_true", help="print the resolved config and exit")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
