"""Train the TA2V stage-2 prior, an unconditional 3D video diffusion U-Net (spec ta2v.md §5), with Lightning.

The README seed line runs as written:

    python scripts/diffusion_video_train_3d.py --num_workers 8 --gpus 1 --batch_size 1 --text_stft_cond \
      --data_path datasets/post_URMP/ --load_vid_len 30 --save_dir path/to/save --resolution 128 \
      --sequence_length 16 --diffusion_steps 4000 --noise_schedule cosine --lr 5e-5 --num_channels 128 \
      --num_res_blocks 3 --class_cond False --log_interval 50 --save_interval 5000 --image_size 128 \
      --learn_sigma True

It trains on the clips only: the model is unconditional (upstream passed the caption into the U-Net and
crashed; ``--text_stft_cond`` / ``--text_emb_model`` are accepted and have no effect). ``dims=3`` is implied.

Config precedence: ``--config`` preset (``configs/diffusion/<name>.yaml``: ``model:``, ``process:``,
``train:``) and ``--data_config`` preset, then the explicit flags (guided-diffusion's names), then
``--set section.key=value`` (sections ``model``, ``process``, ``train``, ``data``; a bare key means
``model.``). ``--resolution`` and ``--image_size`` are the same size and must agree.

Outputs in ``--save_dir`` (= ``--default_root_dir``): ``modelNNNNNN.pt`` and ``emaNNNNNN.pt`` every
``--save_interval`` steps and at the end (plain weights + config, ``tav.load_unet`` reads them),
``checkpoints/last.ckpt`` (resumable: optimiser, EMA, step; ``--resume last``), ``config.yaml``,
``log.txt`` and ``metrics.jsonl``. Without ``--max_steps`` the run goes on until killed, as upstream.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import yaml

try:  # imported as scripts.diffusion_video_train_3d (tests, demo) or run as a file
    from scripts import cli_common as cli
except ImportError:
    import cli_common as cli

from tav.checkpoint import read_checkpoint
from tav.config import apply_overrides, from_dict, load_yaml, preset_path, to_dict
from tav.data.config import DataConfig, load_data_config
from tav.data.dataset import VATDataModule
from tav.diffusion.config import UNetConfig
from tav.diffusion.schedule import ProcessConfig
from tav.errors import InputError
from tav.training.callbacks import LastCheckpoint, run_loggers
from tav.training.diffusion_module import DiffusionModule, DiffusionTrainConfig, UNetExport, train_config_from_dict
from tav.training.trainer import TrainerOptions, build_trainer

log = logging.getLogger("diffusion_video_train_3d")

SECTIONS = ("model", "process", "train", "data")
# seed / guided-diffusion flag -> (section, field)
FLAG_FIELDS = {**cli.GD_FLAG_FIELDS, "use_new_attention_order": ("model", "use_new_attention_order"),
               "sample_every_n_frames": ("data", "sample_every_n_frames")}
ARCH_FIELDS = ("in_channels", "model_channels", "out_channels", "channel_mult", "num_res_blocks",
               "attention_resolutions", "use_scale_shift_norm", "dims")  # a resumed run must match them
DEFAULT_CHANNEL_MULT = {256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                        64: (1, 2, 3, 4)}  # guided-diffusion's choice for an empty --channel_mult


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_config_flags(p, "diffusion", "urmp")
    cli.add_trainer_flags(p)
    p.add_argument("--save_dir", dest="default_root_dir", default=argparse.SUPPRESS, help="run directory")
    B = cli.str2bool
    m = p.add_argument_group("model (guided-diffusion flags; override the --config preset)")
    for name, tp in (*cli.GD_MODEL_FLAGS, ("use_new_attention_order", B)):
        m.add_argument(f"--{name}", type=tp, default=None)
    m.add_argument("--channel_mult", default=None, help='e.g. "1,1,2,3,4"; "" = by image size')
    m.add_argument("--attention_resolutions", default=None, help='e.g. "16,8" (resolutions, not factors)')
    m.add_argument("--num_heads_upsample", type=int, default=-1, help="must be -1 or --num_heads (accepted)")
    m.add_argument("--dims", type=int, default=3, help="3 (video); accepted for guided-diffusion commands")
    m.add_argument("--class_cond", type=B, default=False, help="must be False: the prior is unconditional")
    m.add_argument("--resblock_updown", type=B, default=False, help="must be False (the released layout)")
    m.add_argument("--use_fp16", type=B, default=False, help="use --precision bf16 instead")
    cli.add_process_flags(p)
    d = cli.add_data_flags(p)
    d.add_argument("--resolution", type=int, default=None, help="clip size; the same as --image_size")
    d.add_argument("--sequence_length", type=int, default=None, help="frames per clip (16)")
    d.add_argument("--sample_every_n_frames", type=int, default=None)
    d.add_argument("--text_stft_cond", action="store_true", help="seed flag; no effect (video only)")
    d.add_argument("--text_emb_model", default=None, help="seed flag; no effect (the prior is unconditional)")
    t = p.add_argument_group("training")
    for name, tp in cli.GD_TRAIN_FLAGS:
        t.add_argument(f"--{name}", type=tp, default=None)
    t.add_argument("--ema_rate", default=None, help="EMA decay (one value; default 0.9999)")
    t.add_argument("--microbatch", type=int, default=-1, help="-1 only; use --accumulate_grad_batches")
    t.add_argument("--fp16_scale_growth", type=float, default=None, help="accepted; no effect")
    t.add_argument("--resume", "--resume_checkpoint", dest="resume", default=None, metavar="PATH|last",
                   help="continue a run from a checkpoint")
    return p


@dataclass
class RunConfig:
    """Everything one training run needs, resolved from presets and flags."""

    model: UNetConfig
    process: ProcessConfig
    train: DiffusionTrainConfig
    data: DataConfig
    data_path: str
    trainer: TrainerOptions
    resume: str | None
    command: str

    def to_yaml(self) -> str:
        trainer = {k: v for k, v in to_dict(self.trainer).items() if k != "extra"}
        tree = {"command": self.command, "data_path": self.data_path, "resume": self.resume,
                "model": to_dict(self.model), "process": to_dict(self.process), "train": to_dict(self.train),
                "data": to_dict(self.data), "trainer": trainer}
        return yaml.safe_dump(tree, sort_keys=False)


def _check_unsupported(args: argparse.Namespace) -> None:
    """One-line errors for guided-diffusion settings this trainer does not implement."""
    bad = [(args.class_cond, "--class_cond True: the TA2V prior is unconditional; pass --class_cond False"),
           (args.resblock_updown, "--resblock_updown True is not supported (the released U-Net downsamples "
                                  "with strided convolutions); pass False"),
           (args.dims != 3, f"--dims {args.dims}: this script trains the 3D video U-Net; pass --dims 3"),
           (args.timestep_respacing not in ("", None), "--timestep_respacing applies at sampling time; "
                                                       "training uses every step: pass \"\""),
           (bool(args.use_kl), "--use_kl True (pure variational-bound loss) is not supported; the recipe "
                               "uses the hybrid MSE + VB loss"),
           (args.microbatch not in (-1, 0), "--microbatch: use --accumulate_grad_batches for gradient "
                                            "accumulation"),
           (args.num_heads_upsample not in (-1, args.num_heads), "--num_heads_upsample must be -1")]
    for cond, message in bad:
        if cond:
            raise InputError(message)
    if args.use_fp16:
        log.warning("--use_fp16 True: mixed precision is --precision bf16 (or 16); training in %s",
                    args.precision)


def _flag_values(args: argparse.Namespace) -> dict[str, dict]:
    """Explicit flags as ``{section: {field: value}}``."""
    out: dict[str, dict] = {s: {} for s in SECTIONS}
    for flag, (section, field) in FLAG_FIELDS.items():
        if getattr(args, flag) is not None:
            out[section][field] = getattr(args, flag)
    if args.channel_mult not in (None, ""):
        out["model"]["channel_mult"] = [int(v) for v in args.channel_mult.split(",") if v.strip()]
    if args.attention_resolutions is not None:
        out["model"]["attention_resolutions"] = [int(v) for v in args.attention_resolutions.split(",") if v.strip()]
    if args.rescale_learned_sigmas is not None:
        out["process"]["loss"] = "rescaled_mse" if args.rescale_learned_sigmas else "mse"
    if args.ema_rate is not None:
        rates = [float(v) for v in str(args.ema_rate).split(",") if v.strip()]
        if len(rates) != 1:
            raise InputError(f"--ema_rate {args.ema_rate}: give one EMA decay")
        out["train"]["ema_rate"] = rates[0]
    return out


def _sections(args: argparse.Namespace) -> dict:
    """Preset values updated with the explicit flags: ``{"model", "process", "train", "data"}``."""
    preset = load_yaml(preset_path("diffusion", args.config))
    tree = {s: dict(preset.get(s) or {}) for s in ("model", "process", "train")}
    tree["train"] = {**to_dict(DiffusionTrainConfig()), **tree["train"]}
    tree["data"] = to_dict(load_data_config(args.data_config))
    tree["data"].update(tokenizer="none", load_audio=False)  # the prior sees video only
    if args.load_vid_len is not None:
        tree["data"]["frames_per_file"] = args.load_vid_len
    for section, values in _flag_values(args).items():
        tree[section].update(values)
    if args.channel_mult == "":
        tree["model"]["channel_mult"] = list(_default_mult(tree["model"].get("image_size", 128)))
    return tree


def _default_mult(size: int) -> tuple:
    if size not in DEFAULT_CHANNEL_MULT:
        raise InputError(f"--channel_mult \"\" has no default for --image_size {size}; give it, e.g. 1,2,2")
    return DEFAULT_CHANNEL_MULT[size]


def _tie_sizes(tree: dict, args: argparse.Namespace) -> None:
    """``model.image_size`` and ``data.resolution`` are one size; ``learn_sigma`` sets ``out_channels``."""
    model, data, process = tree["model"], tree["data"], tree["process"]
    if args.image_size is not None and args.resolution is not None and args.image_size != args.resolution:
        raise InputError(f"--image_size {args.image_size} and --resolution {args.resolution} disagree: the "
                         "U-Net trains on clips of its own size; pass the same value")
    size = args.resolution if args.resolution is not None else model.get("image_size", 128)
    model["image_size"] = data["resolution"] = size
    learn = process.get("learn_sigma", True)
    model["out_channels"] = model.get("in_channels", 3) * (2 if learn else 1)
    div = 2 ** (len(model.get("channel_mult", (1,))) - 1)
    data["downsample"] = [1, div, div]


def resolve_run(args: argparse.Namespace, argv: list[str]) -> RunConfig:
    """Presets + flags + ``--set`` -> typed configs and Trainer options."""
    _check_unsupported(args)
    keyed = [s if s.split("=", 1)[0].split(".", 1)[0] in SECTIONS else f"model.{s}" for s in args.overrides]
    tree = _sections(args)
    _tie_sizes(tree, args)
    tree = apply_overrides(tree, keyed)
    model = from_dict(UNetConfig, tree["model"], where="diffusion config: model")
    process = from_dict(ProcessConfig, tree["process"], where="diffusion config: process")
    train = train_config_from_dict(tree["train"], where="diffusion config: train")
    data = from_dict(DataConfig, tree["data"], where="data config")
    if data.resolution != model.image_size:
        raise InputError(f"data.resolution {data.resolution} differs from model.image_size {model.image_size}")
    opts, resume = cli.diffusion_trainer_options(args, train)
    command = shlex.join(["scripts/diffusion_video_train_3d.py", *argv])
    return RunConfig(model, process, train, data, args.data_path, opts, resume, command)


def check_resume(run: RunConfig) -> None:
    """The resumed file must be one of our diffusion Lightning checkpoints with the same architecture."""
    ckpt = read_checkpoint(run.resume, expect="unet")
    if ckpt.format != "lightning":
        raise InputError(f"{run.resume}: a {ckpt.format} file has no training state; --resume needs "
                         "checkpoints/last.ckpt written by scripts/diffusion_video_train_3d.py")
    old = from_dict(UNetConfig, dict(ckpt.config.get("unet") or {}), where=f"{run.resume}: config.unet")
    cli.check_resumed_settings(run.resume, to_dict(old), to_dict(run.model), ARCH_FIELDS, log)
    saved_process = dict(ckpt.config.get("process") or {})
    if saved_process != to_dict(run.process):
        raise InputError(f"--resume {run.resume}: trained with process {saved_process} but this run has "
                         f"{to_dict(run.process)}; pass the same --diffusion_steps/--noise_schedule/... flags")


def train(argv: list[str] | None = None, callbacks: list | None = None) -> Path | None:
    """Run (or with ``--dry_run`` print) one training job; returns ``checkpoints/last.ckpt``.

    Raises ``InputError`` for bad flags/files and ``NonFiniteLossError`` when the loss diverges.
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
    """Build module, data and Trainer; write config.yaml (rank 0); train; return ``last.ckpt``."""
    pl.seed_everything(run.train.seed, workers=True, verbose=False)
    t = run.train
    module = DiffusionModule(run.model, run.process, t)
    data = VATDataModule(run.data_path, run.data, t.batch_size, t.num_workers)
    root = Path(run.trainer.default_root_dir)
    callbacks = [UNetExport(root, t.save_interval), LastCheckpoint(root / "checkpoints", t.save_interval),
                 *extra_callbacks]
    trainer = build_trainer(run.trainer, callbacks, logger=run_loggers(root))
    return cli.fit_run(trainer, module, data, root, run.to_yaml, run.resume)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 for bad input (one line on stderr), 1 when the loss diverges."""
    return cli.run_main("diffusion_video_train_3d", train, argv)


if __name__ == "__main__":
    sys.exit(main())
