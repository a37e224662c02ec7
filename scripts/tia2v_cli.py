"""Shared command line of the three TIA2V training scripts (``train_content.py``, ``train_temp.py``,
``train_diffusion_3d_withtext.py``): flags, config resolution, the condition cache and the Lightning run.

Config layers (``tav_scripts.training``): the ``--config`` preset (``configs/tia2v/<name>.yaml``: ``model:``,
``process:``, ``train:``) and the ``--data_config`` preset, the seed / guided-diffusion flags, ``--set
section.key=value`` (sections ``model``, ``process``, ``train``, ``data``; a bare key means ``model.``).

Conditions (CLIP-L text states, CLIP-L image embeddings of every frame, BEATs tokens per frame) are computed
once per clip into ``--cache_dir`` (default ``<data_path>/tia2v_cache``) before training, on the training
device, and read by the DataLoader workers; no encoder runs in a worker or in the training step.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytorch_lightning as pl
import torch

from tav.config import from_dict, to_dict
from tav.data.config import DataConfig, data_record
from tav.diffusion.schedule import ProcessConfig
from tav.errors import InputError
from tav.tia2v.config import tia2v_config_from_dict
from tav.tia2v.datamodule import ConditionSpec, TIA2VDataModule
from tav.tia2v.load import STAGES, TIA2V_PROCESS, read_tia2v_checkpoint
from tav.training.callbacks import StepCheckpoint, run_loggers
from tav.training.diffusion_module import UNetExport
from tav.training.tia2v_module import TIA2VModule, TIA2VTrainConfig, tia2v_train_config
from tav.training.trainer import TrainerOptions, build_trainer
from tav_scripts import cli_common as cli
from tav_scripts import training

SCRIPTS = {"content": "train_content.py", "motion": "train_temp.py", "shr": "train_diffusion_3d_withtext.py"}


class TIA2VRecipe(training.Recipe):
    """One of the three TIA2V U-Nets (``part``: content, motion or shr)."""

    preset_kind, sections = "tia2v", ("model", "process", "train", "data")
    flag_fields = {**cli.GD_FLAG_FIELDS, "in_channels": ("model", "in_channels"),
                   "transformer_depth": ("model", "transformer_depth"), "context_dim": ("model", "context_dim"),
                   "per_frame_t": ("train", "per_frame_t"), "freeze_spatial": ("train", "freeze_spatial"),
                   "audio_dropout": ("train", "audio_dropout"), "copy_init": ("train", "copy_init"),
                   "copy_path": ("train", "copy_path")}
    arch_fields = ("part", "in_channels", "model_channels", "out_channels", "channel_mult", "num_res_blocks",
                   "attention_resolutions", "context_dim", "num_frames")
    log = logging.getLogger("tia2v_train")
    data_fixed = {"tokenizer": "none", "load_audio": False}  # conditions come from the cache

    def __init__(self, part: str) -> None:
        self.part, self.script, self.default_preset = part, SCRIPTS[part], part
        self.description, self.stage = f"Train the TIA2V {part} U-Net", STAGES[part]

    def add_flags(self, p: argparse.ArgumentParser) -> None:
        B = cli.str2bool
        groups = cli.add_diffusion_flags(p, extra_model=(("in_channels", int), ("transformer_depth", int),
                                                         ("context_dim", int)))
        m, d, t = groups["model"], groups["data"], groups["train"]
        m.add_argument("--use_spatial_transformer", type=B, default=True, help="must be True (accepted)")
        m.add_argument("--use_temporal_transformer", type=B, default=None, help="accepted; the part decides")
        d.add_argument("--text_emb_model", default="clip", choices=["clip"], help="CLIP ViT-L/14 text states")
        d.add_argument("--audio_emb_model", default="beats", choices=["beats", "STFT", "wav2clip", "audioclip"],
                       help="beats (the motion model's audio); others are accepted only where audio is unused")
        d.add_argument("--cache_dir", default=None, help="condition cache (default <data_path>/tia2v_cache)")
        d.add_argument("--clip_l_ckpt", default=None, help="CLIP ViT-L/14 folder (saved_ckpts/clip-vit-large-patch14)")
        d.add_argument("--beats_ckpt", default=None, help="BEATs file (saved_ckpts/BEATs_iter3_plus_AS20K.pt)")
        d.add_argument("--beats_mode", choices=["fixed", "compat"], default="fixed",
                       help="BEATs input: fixed (16 kHz window per frame) or compat (upstream's per-frame rows)")
        d.add_argument("--condition_batch", type=int, default=16, help="frames per encoder batch when caching")
        t.add_argument("--per_frame_t", type=B, default=None, help="independent timestep per frame (upstream)")
        if self.part == "motion":
            t.add_argument("--model_path", default="", help="content checkpoint to initialise from (by name)")
            t.add_argument("--freeze_spatial", type=B, default=None, help="train only the new temporal tensors")
            t.add_argument("--audio_dropout", type=float, default=None,
                           help="share of clips trained with null audio tokens, so that sampling can use "
                                "--audio_cfg_scale (ours; default 0)")
            t.add_argument("--copy_init", type=float, default=None,
                           help="share of clips trained as --motion_init first starts sampling: frames 1.. noised "
                                "from copies of frame 0 at the top trained step, so the model learns to move them "
                                "from the sound (ours; default 0; needs --set first_frame=clean)")
            t.add_argument("--copy_path", type=B, default=None,
                           help="with --copy_init: train those clips at their own t on the path DDIM takes from the "
                                "copies (the copy's share of the input fading from 1 at the top step to 0 at t = 0), "
                                "not all at the top step (ours; default False)")
            t.add_argument("--remap_shifted", action="store_true",
                           help="also transfer the content modules whose index moved (12 tensors upstream drops)")

    def check_args(self, args: argparse.Namespace) -> None:
        cli.check_diffusion_flags(args, self.log)
        if not args.use_spatial_transformer:
            raise InputError("--use_spatial_transformer False is not a TIA2V architecture")
        if self.part == "motion" and args.audio_emb_model != "beats":
            raise InputError(f"--audio_emb_model {args.audio_emb_model}: the motion model is conditioned on BEATs; "
                             "pass beats")

    def defaults(self, args: argparse.Namespace) -> dict[str, dict]:
        tree = super().defaults(args)
        tree["process"] = {**TIA2V_PROCESS, **tree["process"]}
        tree["train"] = {**to_dict(TIA2VTrainConfig()), **tree["train"]}
        return tree

    def flag_values(self, args: argparse.Namespace) -> dict[str, dict]:
        return cli.diffusion_flag_values(args, super().flag_values(args))

    def tie(self, tree: dict[str, dict], args: argparse.Namespace) -> None:
        training.tie_unet_sizes(tree, args, self.sections, default_size=64, frames_from_model=True)

    def build(self, tree: dict[str, dict], args: argparse.Namespace) -> dict:
        model = tia2v_config_from_dict(tree["model"], where="tia2v config: model")
        if model.part != self.part:
            raise InputError(f"--config {args.config} describes a {model.part} U-Net; {self.script} trains the "
                             f"{self.part} U-Net: pass --config {self.part} (or a {self.part} YAML)")
        return {"model": model, "process": from_dict(ProcessConfig, tree["process"], where="tia2v config: process"),
                "train": tia2v_train_config(tree["train"], where="tia2v config: train"),
                "data": from_dict(DataConfig, tree["data"], where="data config")}

    def trainer_options(self, opts: TrainerOptions, sections: dict) -> TrainerOptions:
        return cli.diffusion_trainer_options(opts, sections["train"])

    def extra(self, args: argparse.Namespace, sections: dict, world_size: int) -> dict:
        init_from = getattr(args, "model_path", "") or None
        if init_from and not Path(init_from).is_file():
            raise InputError(f"--model_path {init_from}: no such file; pass the content model checkpoint")
        return {"cache_dir": args.cache_dir or str(Path(args.data_path) / "tia2v_cache"), "init_from": init_from}

    def saved_model_config(self, ckpt) -> dict:
        return dict(ckpt.config.get("unet") or {})

    def fit(self, run: training.Run, args: argparse.Namespace, callbacks: list) -> Path | None:
        """Build module, data and Trainer; train (the condition cache is built in ``prepare_data``, once per
        node); return ``last.ckpt``."""
        pl.seed_everything(run.train.seed, workers=True, verbose=False)
        t, root = run.train, Path(run.trainer.default_root_dir)
        conditions = condition_spec(args, run.trainer.accelerator, self.part)
        data = TIA2VDataModule(run.data_path, run.data, run.extra["cache_dir"], conditions, t.batch_size,
                               t.num_workers, seed=t.seed)
        module = TIA2VModule(run.model, run.process, t,
                             beats_mode=conditions.beats_mode if conditions.need_audio else None,
                             data=data_record(run.data))
        init_from = run.extra["init_from"]
        if init_from and not run.resume:
            _, _, content_sd = read_tia2v_checkpoint(init_from, "content")
            report = module.initialise_from_content(content_sd, remap_shifted=getattr(args, "remap_shifted", False))
            self.log.info("initialised from %s: %d tensors copied, %d fresh, %d content tensors unused", init_from,
                          len(report["copied"]), len(report["fresh"]), len(report["unused"]))
        callbacks = [UNetExport(root, t.save_interval), StepCheckpoint(root / "checkpoints", t.save_interval),
                     *callbacks]
        trainer = build_trainer(run.trainer, callbacks, logger=run_loggers(root), seed=t.seed)
        return training.fit_run(trainer, module, data, run)


def condition_spec(args: argparse.Namespace, accelerator: str, part: str) -> ConditionSpec:
    """The encoders of the condition cache, on the training accelerator (one GPU per rank, else CPU)."""
    gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    device = f"cuda:{torch.cuda.current_device()}" if gpu else "cpu"
    return ConditionSpec(args.clip_l_ckpt, args.beats_ckpt, args.beats_mode, device, args.condition_batch,
                         need_audio=part == "motion")


def train(part: str, argv: list[str] | None = None, callbacks: list | None = None) -> Path | None:
    """Train the ``part`` U-Net (or with ``--dry_run`` print the resolved run); returns ``last.ckpt``."""
    return training.train(TIA2VRecipe(part), argv, callbacks)


def main(part: str, argv: list[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 for bad input (one line on stderr), 1 when the loss diverges."""
    return training.main(TIA2VRecipe(part), argv)
