"""Shared command line of the three TIA2V training scripts (``train_content.py``, ``train_temp.py``,
``train_diffusion_3d_withtext.py``): flags, config resolution, the condition cache and the Lightning run.

Config precedence: the ``--config`` preset (``configs/tia2v/<name>.yaml``: ``model:``, ``process:``,
``train:``) and the ``--data_config`` preset, then the seed / guided-diffusion flags, then ``--set
section.key=value`` (sections ``model``, ``process``, ``train``, ``data``; a bare key means ``model.``).

Conditions (CLIP-L text states, CLIP-L image embeddings of every frame, BEATs tokens per frame) are computed
once per clip into ``--cache_dir`` (default ``<data_path>/tia2v_cache``) before training, on the training
device, and read by the DataLoader workers; no encoder runs in a worker or in the training step.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml

try:  # imported as scripts.tia2v_cli (tests, demo) or run as a file
    from scripts import cli_common as cli
except ImportError:
    import cli_common as cli

from tav.checkpoint import read_checkpoint
from tav.config import apply_overrides, from_dict, load_yaml, preset_path, to_dict
from tav.data.config import DataConfig, load_data_config
from tav.diffusion.schedule import ProcessConfig
from tav.errors import InputError
from tav.tia2v.config import TIA2VUNetConfig, tia2v_config_from_dict
from tav.tia2v.datamodule import ConditionSpec, TIA2VDataModule
from tav.tia2v.load import STAGES, TIA2V_PROCESS, read_tia2v_checkpoint
from tav.training.callbacks import LastCheckpoint, run_loggers
from tav.training.diffusion_module import UNetExport
from tav.training.tia2v_module import TIA2VModule, TIA2VTrainConfig, tia2v_train_config
from tav.training.trainer import TrainerOptions, build_trainer

log = logging.getLogger("tia2v_train")

SECTIONS = ("model", "process", "train", "data")
SCRIPTS = {"content": "train_content.py", "motion": "train_temp.py", "shr": "train_diffusion_3d_withtext.py"}
FLAG_FIELDS = {**cli.GD_FLAG_FIELDS, "in_channels": ("model", "in_channels"),
               "transformer_depth": ("model", "transformer_depth"), "context_dim": ("model", "context_dim"),
               "per_frame_t": ("train", "per_frame_t"), "freeze_spatial": ("train", "freeze_spatial")}
ARCH_FIELDS = ("part", "in_channels", "model_channels", "out_channels", "channel_mult", "num_res_blocks",
               "attention_resolutions", "context_dim", "num_frames")


def build_parser(part: str) -> argparse.ArgumentParser:
    """The flags of ``SCRIPTS[part]``: the seed's, guided-diffusion's and ours."""
    p = argparse.ArgumentParser(prog=SCRIPTS[part], description=f"Train the TIA2V {part} U-Net")
    cli.add_config_flags(p, "tia2v", part)
    cli.add_trainer_flags(p)
    p.add_argument("--save_dir", dest="default_root_dir", default=argparse.SUPPRESS, help="run directory")
    B = cli.str2bool
    m = p.add_argument_group("model (guided-diffusion flags; override the --config preset)")
    for name, tp in (*cli.GD_MODEL_FLAGS, ("in_channels", int), ("transformer_depth", int), ("context_dim", int)):
        m.add_argument(f"--{name}", type=tp, default=None)
    m.add_argument("--channel_mult", default=None, help='e.g. "1,2,3"')
    m.add_argument("--attention_resolutions", default=None, help='e.g. "16,8" (resolutions)')
    m.add_argument("--class_cond", type=B, default=False, help="must be False")
    m.add_argument("--use_fp16", type=B, default=False, help="use --precision bf16 instead")
    m.add_argument("--use_spatial_transformer", type=B, default=True, help="must be True (accepted)")
    m.add_argument("--use_temporal_transformer", type=B, default=None, help="accepted; the part decides")
    cli.add_process_flags(p)
    _add_data_flags(p, part)
    t = p.add_argument_group("training")
    for name, tp in cli.GD_TRAIN_FLAGS:
        t.add_argument(f"--{name}", type=tp, default=None)
    t.add_argument("--ema_rate", type=float, default=None, help="EMA decay (default 0.9999)")
    t.add_argument("--per_frame_t", type=B, default=None, help="independent timestep per frame (upstream)")
    t.add_argument("--resume", "--resume_checkpoint", dest="resume", default=None, metavar="PATH|last",
                   help="continue a run from its checkpoints/last.ckpt")
    if part == "motion":
        t.add_argument("--model_path", default="", help="content checkpoint to initialise from (by name)")
        t.add_argument("--freeze_spatial", type=B, default=None, help="train only the new temporal tensors")
        t.add_argument("--remap_shifted", action="store_true",
                       help="also transfer the content modules whose index moved (12 tensors upstream drops)")
    return p


def _add_data_flags(p: argparse.ArgumentParser, part: str) -> None:
    d = cli.add_data_flags(p)
    d.add_argument("--resolution", type=int, default=None, help="frame size; the same as --image_size")
    d.add_argument("--sequence_length", type=int, default=None, help="frames per clip (16)")
    d.add_argument("--text_stft_cond", action="store_true", help="seed flag (text-audio-video data); always on")
    d.add_argument("--text_emb_model", default="clip", choices=["clip"], help="CLIP ViT-L/14 text states")
    d.add_argument("--audio_emb_model", default="beats", choices=["beats", "STFT", "wav2clip", "audioclip"],
                   help="beats (the motion model's audio); others are accepted only where audio is unused")
    d.add_argument("--cache_dir", default=None, help="condition cache (default <data_path>/tia2v_cache)")
    d.add_argument("--clip_l_ckpt", default=None, help="CLIP ViT-L/14 folder (saved_ckpts/clip-vit-large-patch14)")
    d.add_argument("--beats_ckpt", default=None, help="BEATs file (saved_ckpts/BEATs_iter3_plus_AS20K.pt)")
    d.add_argument("--beats_mode", choices=["fixed", "compat"], default="fixed",
                   help="BEATs input: fixed (16 kHz window per frame) or compat (upstream's per-frame rows)")
    d.add_argument("--condition_batch", type=int, default=16, help="frames per encoder batch when caching")


@dataclass
class RunConfig:
    """Everything one TIA2V training run needs, resolved from presets and flags."""

    model: TIA2VUNetConfig
    process: ProcessConfig
    train: TIA2VTrainConfig
    data: DataConfig
    data_path: str
    cache_dir: str
    trainer: TrainerOptions
    resume: str | None
    init_from: str | None
    command: str

    def to_yaml(self) -> str:
        trainer = {k: v for k, v in to_dict(self.trainer).items() if k != "extra"}
        tree = {"command": self.command, "data_path": self.data_path, "cache_dir": self.cache_dir,
                "resume": self.resume, "init_from": self.init_from, "model": to_dict(self.model),
                "process": to_dict(self.process), "train": to_dict(self.train), "data": to_dict(self.data),
                "trainer": trainer}
        return yaml.safe_dump(tree, sort_keys=False)


def _check_unsupported(args: argparse.Namespace, part: str) -> None:
    bad = [(args.class_cond, "--class_cond True: TIA2V conditions on text, image and audio; pass False"),
           (args.timestep_respacing not in ("", None), "--timestep_respacing applies at sampling time; pass \"\""),
           (bool(args.use_kl), "--use_kl True is not supported; the recipe uses MSE + VB (rescaled_mse)"),
           (not args.use_spatial_transformer, "--use_spatial_transformer False is not a TIA2V architecture"),
           (part == "motion" and args.audio_emb_model != "beats",
            f"--audio_emb_model {args.audio_emb_model}: the motion model is conditioned on BEATs; pass beats")]
    for cond, message in bad:
        if cond:
            raise InputError(message)
    if args.use_fp16:
        log.warning("--use_fp16 True: mixed precision is --precision bf16; training in %s", args.precision)


def _sections(args: argparse.Namespace) -> dict:
    """Preset values updated with the explicit flags."""
    preset = load_yaml(preset_path("tia2v", args.config))
    tree = {s: dict(preset.get(s) or {}) for s in ("model", "process", "train")}
    tree["process"] = {**TIA2V_PROCESS, **tree["process"]}
    tree["train"] = {**to_dict(TIA2VTrainConfig()), **tree["train"]}
    tree["data"] = to_dict(load_data_config(args.data_config))
    tree["data"].update(tokenizer="none", load_audio=False)
    if args.load_vid_len is not None:
        tree["data"]["frames_per_file"] = args.load_vid_len
    for flag, (section, field) in FLAG_FIELDS.items():
        if getattr(args, flag, None) is not None:
            tree[section][field] = getattr(args, flag)
    for flag in ("channel_mult", "attention_resolutions"):
        if getattr(args, flag) not in (None, ""):
            tree["model"][flag] = [int(v) for v in getattr(args, flag).split(",") if v.strip()]
    if args.rescale_learned_sigmas is not None:
        tree["process"]["loss"] = "rescaled_mse" if args.rescale_learned_sigmas else "mse"
    if args.ema_rate is not None:
        tree["train"]["ema_rate"] = args.ema_rate
    return tree


def _tie_sizes(tree: dict, args: argparse.Namespace) -> None:
    """One frame size (model.image_size = data.resolution), one clip length (model.num_frames =
    data.sequence_length), and ``out_channels`` from ``learn_sigma``."""
    model, data = tree["model"], tree["data"]
    if args.image_size is not None and args.resolution is not None and args.image_size != args.resolution:
        raise InputError(f"--image_size {args.image_size} and --resolution {args.resolution} disagree; pass "
                         "the same value")
    size = args.resolution if args.resolution is not None else model.get("image_size", 64)
    model["image_size"] = data["resolution"] = size
    if args.sequence_length is None:
        data["sequence_length"] = model.get("num_frames", 16)
    model["num_frames"] = data["sequence_length"]
    model["out_channels"] = model.get("in_channels", 3) * (2 if tree["process"].get("learn_sigma", True) else 1)
    div = 2 ** (len(model.get("channel_mult", (1,))) - 1)
    data["downsample"] = [1, div, div]


def resolve_run(args: argparse.Namespace, argv: list[str], part: str) -> RunConfig:
    """Presets + flags + ``--set`` -> typed configs and Trainer options."""
    _check_unsupported(args, part)
    keyed = [s if s.split("=", 1)[0].split(".", 1)[0] in SECTIONS else f"model.{s}" for s in args.overrides]
    tree = _sections(args)
    _tie_sizes(tree, args)
    tree = apply_overrides(tree, keyed)
    model = tia2v_config_from_dict(tree["model"], where="tia2v config: model")
    if model.part != part:
        raise InputError(f"--config {args.config} describes a {model.part} U-Net; {SCRIPTS[part]} trains the "
                         f"{part} U-Net: pass --config {part} (or a {part} YAML)")
    process = from_dict(ProcessConfig, tree["process"], where="tia2v config: process")
    train = tia2v_train_config(tree["train"], where="tia2v config: train")
    data = from_dict(DataConfig, tree["data"], where="data config")
    opts, resume = cli.diffusion_trainer_options(args, train)
    init_from = getattr(args, "model_path", "") or None
    if init_from and not Path(init_from).is_file():
        raise InputError(f"--model_path {init_from}: no such file; pass the content model checkpoint")
    cache_dir = args.cache_dir or str(Path(args.data_path) / "tia2v_cache")
    command = shlex.join([f"scripts/{SCRIPTS[part]}", *argv])
    return RunConfig(model, process, train, data, args.data_path, cache_dir, opts, resume, init_from, command)


def condition_spec(args: argparse.Namespace, accelerator: str, part: str) -> ConditionSpec:
    """The encoders of the condition cache, on the training accelerator (one GPU per rank, else CPU)."""
    gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    device = f"cuda:{torch.cuda.current_device()}" if gpu else "cpu"
    return ConditionSpec(args.clip_l_ckpt, args.beats_ckpt, args.beats_mode, device, args.condition_batch,
                         need_audio=part == "motion")


def check_resume(run: RunConfig) -> None:
    """The resumed file must be our Lightning checkpoint of the same part and architecture."""
    ckpt = read_checkpoint(run.resume, expect=STAGES[run.model.part])
    if ckpt.format != "lightning":
        raise InputError(f"{run.resume}: a {ckpt.format} file has no training state; --resume needs "
                         f"checkpoints/last.ckpt written by {SCRIPTS[run.model.part]}")
    old = dict(ckpt.config.get("unet") or {})
    cli.check_resumed_settings(run.resume, old, to_dict(run.model), ARCH_FIELDS, log)


def train(part: str, argv: list[str] | None = None, callbacks: list | None = None) -> Path | None:
    """Run (or with ``--dry_run`` print) one training job; returns ``checkpoints/last.ckpt``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(part).parse_args(argv)
    run = resolve_run(args, argv, part)
    if args.dry_run:
        print(run.to_yaml(), end="")
        return None
    if run.resume:
        check_resume(run)
    conditions = condition_spec(args, run.trainer.accelerator, part)
    return fit(run, conditions, getattr(args, "remap_shifted", False), callbacks or [])


def fit(run: RunConfig, conditions: ConditionSpec, remap_shifted: bool, extra_callbacks: list) -> Path | None:
    """Build module, data and Trainer; train (the condition cache is built in ``prepare_data``, once per
    node); return ``last.ckpt``."""
    pl.seed_everything(run.train.seed, workers=True, verbose=False)
    t = run.train
    data = TIA2VDataModule(run.data_path, run.data, run.cache_dir, conditions, t.batch_size, t.num_workers)
    module = TIA2VModule(run.model, run.process, t, beats_mode=conditions.beats_mode if conditions.need_audio else None)
    if run.init_from and not run.resume:
        _, _, content_sd = read_tia2v_checkpoint(run.init_from, "content")
        report = module.initialise_from_content(content_sd, remap_shifted=remap_shifted)
        log.info("initialised from %s: %d tensors copied, %d fresh, %d content tensors unused", run.init_from,
                 len(report["copied"]), len(report["fresh"]), len(report["unused"]))
    root = Path(run.trainer.default_root_dir)
    callbacks = [UNetExport(root, t.save_interval), LastCheckpoint(root / "checkpoints", t.save_interval),
                 *extra_callbacks]
    trainer = build_trainer(run.trainer, callbacks, logger=run_loggers(root))
    return cli.fit_run(trainer, module, data, root, run.to_yaml, run.resume)


def main(part: str, argv: list[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 for bad input (one line on stderr), 1 when the loss diverges."""
    return cli.run_main(SCRIPTS[part].removesuffix(".py"), lambda a: train(part, a), argv)


if __name__ == "__main__":  # pragma: no cover - use the three scripts
    sys.exit(main("content"))
