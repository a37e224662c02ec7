"""Train the TA2V video VQGAN (spec ta2v.md §3) with PyTorch Lightning.

The README seed line runs as written (``--resolution 9`` stops with a one-line hint that it means 96):

    python scripts/train_vqgan.py --embedding_dim 256 --n_codes 16384 --n_hiddens 32 --downsample 4 8 8 \
      --no_random_restart --gpus 1 --batch_size 8 --num_workers 16 --accumulate_grad_batches 6 \
      --progress_bar_refresh_rate 100 --max_steps 100000 --gradient_clip_val 1.0 --lr 6.0e-5 \
      --data_path datasets/post_URMP/ --default_root_dir path/to/save --resolution 96 --sequence_length 16 \
      --discriminator_iter_start 10000 --norm_type batch --perceptual_weight 4 --image_gan_weight 1 \
      --video_gan_weight 1 --gan_feat_weight 4

Config precedence: ``--config`` preset (``configs/vqgan/<name>.yaml``) and ``--data_config`` preset, then
the explicit flags, then ``--set section.key=value`` (sections ``model``, ``train``, ``data``; a bare key
means ``model.``). ``data.resolution``, ``data.sequence_length`` and ``data.downsample`` follow the model.
The resolved config and command line go to ``<default_root_dir>/config.yaml`` before step 0.

Multi-process DDP (``--strategy ddp`` or several devices) must be started as this script: Lightning's
launcher re-executes the command line once per extra process.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import yaml

try:  # imported as scripts.train_vqgan (tests, demo) or run as a file (scripts/ is then on sys.path)
    from scripts import cli_common as cli
except ImportError:
    import cli_common as cli

from tav.checkpoint import read_checkpoint
from tav.config import apply_overrides, from_dict, to_dict
from tav.data.config import DataConfig, load_data_config
from tav.data.dataset import VATDataModule, list_stems
from tav.errors import InputError
from tav.training.callbacks import VideoSampleLogger, checkpoint_callbacks, run_loggers
from tav.training.trainer import TrainerOptions, build_trainer
from tav.training.vqgan_module import VQGANModule, VQGANTrainConfig, train_config_from_dict
from tav.vqgan.config import VQGANConfig, vqgan_config_from_dict, vqgan_preset

log = logging.getLogger("train_vqgan")

# seed flag -> VQGANConfig field
MODEL_FLAGS = {
    "embedding_dim": int, "n_codes": int, "n_hiddens": int, "lr": float, "image_channels": int,
    "resolution": int, "sequence_length": int, "disc_channels": int, "disc_layers": int,
    "discriminator_iter_start": int, "image_gan_weight": float, "video_gan_weight": float, "l1_weight": float,
    "gan_feat_weight": float, "perceptual_weight": float, "restart_thres": float,
}
TRAIN_FLAGS = ("batch_size", "num_workers", "accumulate_grad_batches", "gradient_clip_val", "seed",
               "save_every_n_steps", "sample_every_n_steps", "lr_scaling", "input_key")
ARCH_FIELDS = ("embedding_dim", "n_codes", "n_hiddens", "downsample", "norm", "image_channels", "disc_channels",
               "disc_layers")  # fields that shape the state dict: a resumed run must match them


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_config_flags(p, "vqgan", "urmp")
    cli.add_trainer_flags(p)
    m = p.add_argument_group("model (seed flags; override the --config preset)")
    for name, tp in MODEL_FLAGS.items():
        m.add_argument(f"--{name}", type=tp, default=None)
    m.add_argument("--downsample", type=int, nargs=3, default=None, metavar=("T", "H", "W"))
    m.add_argument("--norm_type", choices=["group", "batch"], default=None)
    m.add_argument("--padding_type", choices=["replicate", "constant", "reflect", "circular"], default=None)
    m.add_argument("--disc_loss_type", choices=["hinge", "vanilla"], default=None)
    m.add_argument("--no_random_restart", dest="random_restart", action="store_const", const=False, default=None)
    d = cli.add_data_flags(p)
    d.add_argument("--sample_every_n_frames", type=int, default=None)
    t = p.add_argument_group("training")
    t.add_argument("--batch_size", type=int, default=None, help="clips per device (default 8)")
    t.add_argument("--num_workers", type=int, default=None)
    t.add_argument("--save_every_n_steps", type=int, default=None, help="periodic checkpoints (default 3000)")
    t.add_argument("--sample_every_n_steps", type=int, default=None, help="sample videos (default 1500)")
    t.add_argument("--lr_scaling", choices=["upstream", "none"], default=None)
    t.add_argument("--input_key", default=None, help="batch key of the clips (default video)")
    t.add_argument("--resume", default=None, metavar="PATH|last", help="continue a run from a checkpoint")
    return p


@dataclass
class RunConfig:
    """Everything one training run needs, resolved from presets and flags."""

    model: VQGANConfig
    train: VQGANTrainConfig
    data: DataConfig
    data_path: str
    trainer: TrainerOptions
    resume: str | None
    command: str

    def to_yaml(self) -> str:
        trainer = {k: v for k, v in to_dict(self.trainer).items() if k != "extra"}
        tree = {"command": self.command, "data_path": self.data_path, "resume": self.resume,
                "model": to_dict(self.model), "train": to_dict(self.train), "data": to_dict(self.data),
                "trainer": trainer}
        return yaml.safe_dump(tree, sort_keys=False)


def _sections(args: argparse.Namespace) -> dict:
    """Preset values updated with the explicit flags: ``{"model": ..., "train": ..., "data": ...}``."""
    model = to_dict(vqgan_preset(args.config))
    flags = {k: getattr(args, k) for k in (*MODEL_FLAGS, "downsample", "padding_type", "disc_loss_type",
                                           "random_restart")}
    flags["norm"] = args.norm_type
    model.update({k: v for k, v in flags.items() if v is not None})
    train = to_dict(VQGANTrainConfig())
    train.update({k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None})
    data = to_dict(load_data_config(args.data_config))
    data["tokenizer"], data["load_audio"] = "none", False  # the VQGAN reads video only
    data.update({k: v for k, v in {"frames_per_file": args.load_vid_len,
                                   "sample_every_n_frames": args.sample_every_n_frames}.items() if v is not None})
    return {"model": model, "train": train, "data": data}


def _apply_sets(tree: dict, sets: list[str]) -> dict:
    keyed = [s if s.split("=", 1)[0].split(".", 1)[0] in tree else f"model.{s}" for s in sets]
    return apply_overrides(tree, keyed)


def resolve_run(args: argparse.Namespace, argv: list[str]) -> RunConfig:
    """Presets + flags + ``--set`` -> typed configs; bad values raise one-line ``InputError`` s."""
    tree = _apply_sets(_sections(args), args.overrides)
    model = vqgan_config_from_dict(tree["model"], where="vqgan config")
    for key in ("resolution", "sequence_length", "downsample"):  # the clips the model is trained on
        tree["data"][key] = tree["model"][key]
    data = from_dict(DataConfig, tree["data"], where="data config")  # --resolution 9: "typo for 96"
    train = train_config_from_dict(tree["train"], where="train config")
    opts = cli.trainer_options(args)
    if opts.precision.startswith("16"):
        raise InputError("--precision 16 is not supported for VQGAN training (two optimisers, one fp16 grad "
                         "scaler); use --precision bf16 or 32")
    # DDP must look for unused parameters: the discriminators sit out the generator pass (and every pass
    # before ``discriminator_iter_start``)
    opts, _ = cli.resolve_devices_and_strategy(opts, find_unused=True)
    for split in ("train", "test"):
        list_stems(Path(args.data_path) / split)  # a missing dataset fails here, not after model set-up
    resume = cli.resume_path(args.resume, Path(opts.default_root_dir))
    command = shlex.join(["scripts/train_vqgan.py", *argv])
    return RunConfig(model, train, data, args.data_path, opts, resume, command)


def check_resume(run: RunConfig) -> None:
    """The resumed file must be one of our Lightning checkpoints with the same architecture."""
    ckpt = read_checkpoint(run.resume, expect="vqgan")
    if ckpt.format != "lightning":
        raise InputError(f"{run.resume}: a {ckpt.format} file has no training state; --resume needs a checkpoint "
                         "written by scripts/train_vqgan.py")
    cli.check_resumed_settings(run.resume, ckpt.config, to_dict(run.model), ARCH_FIELDS, log)


def train(argv: list[str] | None = None, callbacks: list | None = None) -> Path | None:
    """Run (or with ``--dry_run`` print) one training job; returns the best checkpoint, else ``last.ckpt``.

    Raises ``InputError`` for bad flags/files and ``NonFiniteLossError`` when a loss diverges. Usable
    in-process for single-process runs (``scripts/demo.py``); ``callbacks`` are added to the Trainer's.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    run = resolve_run(args, argv)
    if args.dry_run:
        print(run.to_yaml(), end="")
        return None
    if run.resume:
        check_resume(run)
    return fit(run, callbacks or [])


def fit(run: RunConfig, extra_callbacks: list) -> Path | None:
    """Build module, data and Trainer; write config.yaml and log.txt (rank 0); train; return a checkpoint."""
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")  # the frozen LPIPS
    pl.seed_everything(run.train.seed, workers=True, verbose=False)
    module = VQGANModule(run.model, run.train)  # builds LPIPS: a missing VGG16 file fails here
    data = VATDataModule(run.data_path, run.data, run.train.batch_size, run.train.num_workers)
    root = Path(run.trainer.default_root_dir)
    fps = run.data.fps / run.data.sample_every_n_frames
    callbacks = [*checkpoint_callbacks(root / "checkpoints", "val_recon_loss", run.train.save_every_n_steps),
                 VideoSampleLogger(root / "samples", run.train.sample_every_n_steps, run.train.n_sample_videos, fps),
                 *extra_callbacks]
    trainer = build_trainer(run.trainer, callbacks, logger=run_loggers(root), manual_optimization=True)
    return cli.fit_run(trainer, module, data, root, run.to_yaml, run.resume)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 for bad input (one line on stderr), 1 when a loss diverges."""
    return cli.run_main("train_vqgan", train, argv)


if __name__ == "__main__":
    sys.exit(main())
