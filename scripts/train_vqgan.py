"""Train the TA2V video VQGAN with PyTorch Lightning.

The README seed line runs as written (``--resolution 9`` stops with a one-line hint that it means 96):

    python scripts/train_vqgan.py --embedding_dim 256 --n_codes 16384 --n_hiddens 32 --downsample 4 8 8 \
      --no_random_restart --gpus 1 --batch_size 8 --num_workers 16 --accumulate_grad_batches 6 \
      --progress_bar_refresh_rate 100 --max_steps 100000 --gradient_clip_val 1.0 --lr 6.0e-5 \
      --data_path datasets/post_URMP/ --default_root_dir path/to/save --resolution 96 --sequence_length 16 \
      --discriminator_iter_start 10000 --norm_type batch --perceptual_weight 4 --image_gan_weight 1 \
      --video_gan_weight 1 --gan_feat_weight 4

Config layers (``tav_scripts.training``): the ``--config`` preset (``configs/vqgan/<name>.yaml``) and the
``--data_config`` preset, the explicit flags, ``--set section.key=value`` (sections ``model``, ``train``,
``data``; a bare key means ``model.``); ``data.resolution``, ``data.sequence_length`` and ``data.downsample``
then follow the model. Multi-process DDP (``--strategy ddp`` or several devices) must be started as this
script: Lightning's launcher re-executes the command line once per extra process.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

import pytorch_lightning as pl

from tav.config import from_dict, to_dict
from tav.data.config import DataConfig
from tav.data.datamodule import VATDataModule
from tav.errors import InputError
from tav.training.callbacks import VideoSampleLogger, checkpoint_callbacks, run_loggers
from tav.training.trainer import TrainerOptions, build_trainer
from tav.training.vqgan_module import VQGANModule, VQGANTrainConfig, train_config_from_dict
from tav.vqgan.config import vqgan_config_from_dict
from tav_scripts import cli_common as cli
from tav_scripts import training

# seed flag -> VQGANConfig field of the same name
MODEL_FLAGS = {
    "embedding_dim": int, "n_codes": int, "n_hiddens": int, "lr": float, "image_channels": int,
    "resolution": int, "sequence_length": int, "disc_channels": int, "disc_layers": int,
    "discriminator_iter_start": int, "image_gan_weight": float, "video_gan_weight": float, "l1_weight": float,
    "l2_weight": float, "grad_weight": float, "chroma_weight": float, "gan_feat_weight": float,
    "perceptual_weight": float, "restart_thres": float,
}
TRAIN_FLAGS = ("batch_size", "num_workers", "accumulate_grad_batches", "gradient_clip_val", "seed",
               "save_every_n_steps", "sample_every_n_steps", "lr_scaling", "input_key", "lr_schedule", "warmup_steps")


class VQGANRecipe(training.Recipe):
    script, description = "train_vqgan.py", __doc__.split("\n\n")[0]
    preset_kind, default_preset, stage = "vqgan", "urmp", "vqgan"
    flag_fields = {**{k: ("model", k) for k in (*MODEL_FLAGS, "downsample", "padding_type", "disc_loss_type",
                                                 "random_restart", "grad_exponent")},
                   "norm_type": ("model", "norm"), **{k: ("train", k) for k in TRAIN_FLAGS},
                   "load_vid_len": ("data", "frames_per_file"),
                   "sample_every_n_frames": ("data", "sample_every_n_frames")}
    arch_fields = ("embedding_dim", "n_codes", "n_hiddens", "downsample", "norm", "image_channels",
                   "disc_channels", "disc_layers")
    find_unused = True  # the discriminators sit out the generator pass (and every pass before they start)
    splits = ("train", "test")
    log = logging.getLogger("train_vqgan")
    data_fixed = {"tokenizer": "none", "load_audio": False}  # the VQGAN reads video only

    def add_flags(self, p: argparse.ArgumentParser) -> None:
        m = p.add_argument_group("model (seed flags; override the --config preset)")
        for name, tp in MODEL_FLAGS.items():
            m.add_argument(f"--{name}", type=tp, default=None)
        m.add_argument("--downsample", type=int, nargs=3, default=None, metavar=("T", "H", "W"))
        m.add_argument("--norm_type", choices=["group", "batch"], default=None)
        m.add_argument("--padding_type", choices=["replicate", "constant", "reflect", "circular"], default=None)
        m.add_argument("--disc_loss_type", choices=["hinge", "vanilla"], default=None)
        m.add_argument("--grad_exponent", type=int, choices=[1, 2], default=None,
                       help="of the --grad_weight edge term: 1 = L1, 2 = squared (ours)")
        m.add_argument("--no_random_restart", dest="random_restart", action="store_const", const=False,
                       default=None)
        d = cli.add_data_flags(p)
        d.add_argument("--sample_every_n_frames", type=int, default=None)
        cli.add_flag_table(p.add_argument_group("training"), {
            "batch_size": (int, "clips per device"), "num_workers": (int, "loader processes"),
            "save_every_n_steps": (int, "periodic checkpoints"), "sample_every_n_steps": (int, "sample videos"),
            "lr_scaling": (str, "learning-rate rule", ["upstream", "none"]), "input_key": (str, "batch key"),
            "lr_schedule": (str, "per-step schedule", ["constant", "cosine"]), "warmup_steps": (int, "linear warm-up")})

    def defaults(self, args: argparse.Namespace) -> dict[str, dict]:
        tree = super().defaults(args)
        tree["train"] = {**to_dict(VQGANTrainConfig()), **tree["train"]}
        return tree

    def tie(self, tree: dict[str, dict], args: argparse.Namespace) -> None:
        model = to_dict(vqgan_config_from_dict(tree["model"], where="vqgan config"))
        for key in ("resolution", "sequence_length", "downsample"):  # the clips the model is trained on
            tree["data"][key] = model[key]

    def build(self, tree: dict[str, dict], args: argparse.Namespace) -> dict:
        return {"model": vqgan_config_from_dict(tree["model"], where="vqgan config"),
                "train": train_config_from_dict(tree["train"], where="train config"),
                "data": from_dict(DataConfig, tree["data"], where="data config")}  # --resolution 9: "typo for 96"

    def trainer_options(self, opts: TrainerOptions, sections: dict) -> TrainerOptions:
        if opts.precision.startswith("16"):
            raise InputError("--precision 16 is not supported for VQGAN training (two optimisers, one fp16 grad "
                             "scaler); use --precision bf16 or 32")
        return opts

    def fit(self, run: training.Run, args: argparse.Namespace, callbacks: list) -> Path | None:
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")  # the frozen LPIPS
        pl.seed_everything(run.train.seed, workers=True, verbose=False)
        module = VQGANModule(run.model, run.train)  # builds LPIPS: a missing VGG16 file fails here
        data = VATDataModule(run.data_path, run.data, run.train.batch_size, run.train.num_workers,
                             seed=run.train.seed)
        root = Path(run.trainer.default_root_dir)
        fps = run.data.fps / run.data.sample_every_n_frames
        callbacks = [*checkpoint_callbacks(root / "checkpoints", "val_recon_loss", run.train.save_every_n_steps),
                     VideoSampleLogger(root / "samples", run.train.sample_every_n_steps, run.train.n_sample_videos,
                                       fps), *callbacks]
        trainer = build_trainer(run.trainer, callbacks, logger=run_loggers(root), manual_optimization=True,
                                seed=run.train.seed)
        return training.fit_run(trainer, module, data, run)


RECIPE = VQGANRecipe()


def train(argv: list[str] | None = None, callbacks: list | None = None) -> Path | None:
    """Train (or with ``--dry_run`` print the resolved run); returns the best checkpoint, else ``last.ckpt``."""
    return training.train(RECIPE, argv, callbacks)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 for bad input (one line on stderr), 1 when a loss diverges."""
    return training.main(RECIPE, argv)


if __name__ == "__main__":
    sys.exit(main())
