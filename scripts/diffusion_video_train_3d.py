"""Train the TA2V stage-2 prior, an unconditional 3D video diffusion U-Net, with PyTorch Lightning.

The README seed line runs as written:

    python scripts/diffusion_video_train_3d.py --num_workers 8 --gpus 1 --batch_size 1 --text_stft_cond \
      --data_path datasets/post_URMP/ --load_vid_len 30 --save_dir path/to/save --resolution 128 \
      --sequence_length 16 --diffusion_steps 4000 --noise_schedule cosine --lr 5e-5 --num_channels 128 \
      --num_res_blocks 3 --class_cond False --log_interval 50 --save_interval 5000 --image_size 128 \
      --learn_sigma True

It trains on the clips only (``--text_stft_cond`` / ``--text_emb_model`` are accepted and have no effect).
Config layers, flags and the files of the run folder: docs/training.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pytorch_lightning as pl

from tav.config import from_dict, to_dict
from tav.data.config import DataConfig
from tav.data.datamodule import VATDataModule
from tav.diffusion.config import UNetConfig
from tav.diffusion.schedule import ProcessConfig
from tav.errors import InputError
from tav.training.callbacks import StepCheckpoint, run_loggers
from tav.training.diffusion_module import DiffusionModule, DiffusionTrainConfig, UNetExport, train_config_from_dict
from tav.training.trainer import TrainerOptions, build_trainer
from tav_scripts import cli_common as cli
from tav_scripts import training

DEFAULT_CHANNEL_MULT = {256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                        64: (1, 2, 3, 4)}  # guided-diffusion's choice for an empty --channel_mult


class DiffusionRecipe(training.Recipe):
    script, description = "diffusion_video_train_3d.py", __doc__.split("\n\n")[0]
    preset_kind, default_preset, stage = "diffusion", "urmp", "unet"
    sections = ("model", "process", "train", "data")
    flag_fields = {**cli.GD_FLAG_FIELDS, "use_new_attention_order": ("model", "use_new_attention_order"),
                   "sample_every_n_frames": ("data", "sample_every_n_frames")}
    arch_fields = ("in_channels", "model_channels", "out_channels", "channel_mult", "num_res_blocks",
                   "attention_resolutions", "use_scale_shift_norm", "dims")
    log = logging.getLogger("diffusion_video_train_3d")
    data_fixed = {"tokenizer": "none", "load_audio": False}  # the prior sees video only

    def add_flags(self, p: argparse.ArgumentParser) -> None:
        groups = cli.add_diffusion_flags(p, extra_model=(("use_new_attention_order", cli.str2bool),))
        m, d, t = groups["model"], groups["data"], groups["train"]
        m.add_argument("--num_heads_upsample", type=int, default=-1, help="must be -1 or --num_heads (accepted)")
        m.add_argument("--dims", type=int, default=3, help="3 (video); accepted for guided-diffusion commands")
        m.add_argument("--resblock_updown", type=cli.str2bool, default=False, help="must be False (released layout)")
        d.add_argument("--sample_every_n_frames", type=int, default=None)
        d.add_argument("--text_emb_model", default=None, help="seed flag; no effect (the prior is unconditional)")
        t.add_argument("--microbatch", type=int, default=-1, help="-1 only; use --accumulate_grad_batches")
        t.add_argument("--fp16_scale_growth", type=float, default=None, help="accepted; no effect")

    def check_args(self, args: argparse.Namespace) -> None:
        cli.check_diffusion_flags(args, self.log)
        bad = [(args.resblock_updown, "--resblock_updown True is not supported (the released U-Net downsamples "
                                      "with strided convolutions); pass False"),
               (args.dims != 3, f"--dims {args.dims}: this script trains the 3D video U-Net; pass --dims 3"),
               (args.microbatch not in (-1, 0), "--microbatch: use --accumulate_grad_batches for gradient "
                                                "accumulation"),
               (args.num_heads_upsample not in (-1, args.num_heads), "--num_heads_upsample must be -1")]
        for cond, message in bad:
            if cond:
                raise InputError(message)

    def defaults(self, args: argparse.Namespace) -> dict[str, dict]:
        tree = super().defaults(args)
        tree["train"] = {**to_dict(DiffusionTrainConfig()), **tree["train"]}
        return tree

    def flag_values(self, args: argparse.Namespace) -> dict[str, dict]:
        values = cli.diffusion_flag_values(args, super().flag_values(args))
        if args.channel_mult == "":
            size = args.image_size or args.resolution or 128
            if size not in DEFAULT_CHANNEL_MULT:
                raise InputError(f"--channel_mult \"\" has no default for --image_size {size}; give it, e.g. 1,2,2")
            values["model"]["channel_mult"] = list(DEFAULT_CHANNEL_MULT[size])
        return values

    def tie(self, tree: dict[str, dict], args: argparse.Namespace) -> None:
        training.tie_unet_sizes(tree, args, self.sections, default_size=128)

    def build(self, tree: dict[str, dict], args: argparse.Namespace) -> dict:
        sections = {"model": from_dict(UNetConfig, tree["model"], where="diffusion config: model"),
                    "process": from_dict(ProcessConfig, tree["process"], where="diffusion config: process"),
                    "train": train_config_from_dict(tree["train"], where="diffusion config: train"),
                    "data": from_dict(DataConfig, tree["data"], where="data config")}
        if sections["data"].resolution != sections["model"].image_size:
            raise InputError(f"data.resolution {sections['data'].resolution} differs from model.image_size "
                             f"{sections['model'].image_size}")
        return sections

    def trainer_options(self, opts: TrainerOptions, sections: dict) -> TrainerOptions:
        return cli.diffusion_trainer_options(opts, sections["train"])

    def saved_model_config(self, ckpt) -> dict:
        return to_dict(from_dict(UNetConfig, dict(ckpt.config.get("unet") or {}), where="resumed config.unet"))

    def check_resume(self, run: training.Run) -> None:
        """Also: the same diffusion process."""
        super().check_resume(run)
        from tav.checkpoint import read_checkpoint

        saved = dict(read_checkpoint(run.resume, expect=self.stage).config.get("process") or {})
        if saved != to_dict(run.process):
            raise InputError(f"--resume {run.resume}: trained with process {saved} but this run has "
                             f"{to_dict(run.process)}; pass the same --diffusion_steps/--noise_schedule/... flags")

    def fit(self, run: training.Run, args: argparse.Namespace, callbacks: list) -> Path | None:
        pl.seed_everything(run.train.seed, workers=True, verbose=False)
        t, root = run.train, Path(run.trainer.default_root_dir)
        module = DiffusionModule(run.model, run.process, t)
        data = VATDataModule(run.data_path, run.data, t.batch_size, t.num_workers, seed=t.seed)
        callbacks = [UNetExport(root, t.save_interval), StepCheckpoint(root / "checkpoints", t.save_interval),
                     *callbacks]
        trainer = build_trainer(run.trainer, callbacks, logger=run_loggers(root), seed=t.seed)
        return training.fit_run(trainer, module, data, run)


def train(argv: list[str] | None = None, callbacks: list | None = None) -> Path | None:
    """Train (or with ``--dry_run`` print the resolved run); returns ``checkpoints/last.ckpt``."""
    return training.train(DiffusionRecipe(), argv, callbacks)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 for bad input (one line on stderr), 1 when the loss diverges."""
    return training.main(DiffusionRecipe(), argv)


if __name__ == "__main__":
    sys.exit(main())
