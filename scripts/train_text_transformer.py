"""Train the TA2V text -> video-token GPT (spec ta2v.md §4) on a frozen VQGAN with PyTorch Lightning.

The README seed line runs as written:

    python scripts/train_text_transformer.py --num_workers 4 --val_check_interval 0.5 \
      --progress_bar_refresh_rate 100 --gpus 1 --sync_batchnorm --batch_size 8 --first_stage_key video \
      --cond1_stage_key text --text_stft_cond --text_emb_model bert --vqvae path/to/video/vqgan \
      --data_path datasets/post_URMP/ --load_vid_len 30 --default_root_dir path/to/save --base_lr 4.5e-05 \
      --first_stage_vocab_size 16384 --block_size 1024 --n_layer 12 --n_head 8 --n_embd 512 --resolution 96 \
      --sequence_length 16 --text_seq_len 12 --max_steps 500000 --embd_pdrop 0.2 --resid_pdrop 0.2 --attn_pdrop 0.2

Config precedence: ``--config`` preset (``configs/gpt/<name>.yaml``: ``model:`` and ``train:``) and
``--data_config`` preset, then the explicit flags, then ``--set section.key=value`` (sections ``model``,
``train``, ``data``; a bare key means ``model.``). The ``--vqvae`` file then fixes ``model.n_codes``,
``model.latent_shape``, ``model.vqgan_hash`` (its sha256) and the clip size (``data.resolution``,
``data.sequence_length``); explicit values that disagree with it are one-line errors. The VQGAN is
referenced, not copied into the GPT checkpoints. The resolved config and the command line go to
``<default_root_dir>/config.yaml`` before step 0; ``--dry_run`` prints them (with the effective lr).

Flags with no effect here, accepted for the seed line: ``--text_stft_cond`` (the text-audio-video data is
the only dataset), ``--sync_batchnorm`` (the GPT has no BatchNorm; the frozen VQGAN stays in eval mode).
``--text_emb_model clip`` parses but stops with a one-line error: CLIP text features need the OpenAI
ViT-B/32 weights (``saved_ckpts/ViT-B-32.pt``), and tav does not train that mode (spec §4.3).

``--precompute_tokens`` encodes each split once into ``<token_cache_dir>/tokens-<split>-<key>.pt`` (every
window start of the training clips, ``--token_stride`` apart; keyed by the VQGAN hash; reused by later
runs) instead of encoding every batch (``tav.data.token_cache``).
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

try:  # imported as scripts.train_text_transformer (tests, demo) or run as a file
    from scripts import cli_common as cli
except ImportError:
    import cli_common as cli

from tav.checkpoint import read_checkpoint
from tav.config import apply_overrides, from_dict, load_yaml, preset_path, to_dict
from tav.data.config import DataConfig, load_data_config
from tav.data.dataset import VATDataModule, list_stems
from tav.data.token_cache import TokenDataModule
from tav.errors import InputError
from tav.gpt.config import GPTConfig, gpt_config_from_dict, gpt_preset
from tav.gpt.load import check_vqgan_compat, file_sha256
from tav.training.callbacks import checkpoint_callbacks, run_loggers
from tav.training.gpt_module import GPTModule, GPTTrainConfig, effective_lr, train_config_from_dict
from tav.training.trainer import TrainerOptions, build_trainer
from tav.utils.paths import ckpt_dir
from tav.vqgan.load import load_vqgan
from tav.vqgan.model import VQGAN

log = logging.getLogger("train_text_transformer")

# seed flag -> GPTConfig field of the same name
MODEL_FLAGS = {"block_size": int, "n_layer": int, "n_head": int, "n_embd": int, "text_seq_len": int,
               "embd_pdrop": float, "resid_pdrop": float, "attn_pdrop": float, "text_vocab_offset": int}
TRAIN_FLAGS = ("batch_size", "num_workers", "base_lr", "lr_scaling", "weight_decay", "lr_schedule", "warmup_steps",
               "max_steps", "first_stage_key", "cond_key", "precompute_tokens", "token_cache_dir", "token_stride",
               "save_every_n_steps", "seed")
ARCH_FIELDS = ("text_mode", "text_vocab_size", "text_vocab_offset", "text_seq_len", "clip_dim", "n_codes",
               "latent_shape", "block_size", "n_layer", "n_head", "n_embd")  # a resumed run must match them
CLIP_WEIGHTS = "ViT-B-32.pt"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_config_flags(p, "gpt", "urmp")
    cli.add_trainer_flags(p)
    p.set_defaults(max_steps=None)  # None: the preset's train.max_steps
    m = p.add_argument_group("model (seed flags; override the --config preset)")
    for name, tp in MODEL_FLAGS.items():
        m.add_argument(f"--{name}", type=tp, default=None)
    m.add_argument("--first_stage_vocab_size", type=int, default=None, help="VQGAN codebook size (checked)")
    m.add_argument("--text_emb_model", choices=["bert", "clip"], default=None, help="caption prefix (bert)")
    v = p.add_argument_group("first stage (frozen VQGAN)")
    v.add_argument("--vqvae", required=True, help="VQGAN checkpoint (tav, Lightning or upstream .ckpt)")
    v.add_argument("--first_stage_key", default=None, help="batch key of the clips (video)")
    v.add_argument("--cond1_stage_key", dest="cond_key", default=None, help="batch key of the caption ids (text)")
    v.add_argument("--precompute_tokens", action="store_true", default=None, help="encode each split once")
    v.add_argument("--token_cache_dir", default=None, help="token cache folder (<default_root_dir>/token_cache)")
    v.add_argument("--token_stride", type=int, default=None, help="cache every N-th window start (1)")
    d = cli.add_data_flags(p)
    d.add_argument("--resolution", type=int, default=None, help="clip size; must be the VQGAN's")
    d.add_argument("--sequence_length", type=int, default=None, help="frames per clip; must be the VQGAN's")
    d.add_argument("--text_stft_cond", action="store_true", help="seed flag: text-audio-video data (always)")
    t = p.add_argument_group("training")
    t.add_argument("--batch_size", type=int, default=None, help="clips per device (default 8)")
    t.add_argument("--num_workers", type=int, default=None)
    t.add_argument("--base_lr", type=float, default=None, help="lr = accumulate * gpus * batch * base_lr")
    t.add_argument("--lr_scaling", choices=["upstream", "none"], default=None)
    t.add_argument("--lr_schedule", choices=["cosine_steps", "constant", "cosine_epochs"], default=None)
    t.add_argument("--warmup_steps", type=int, default=None)
    t.add_argument("--weight_decay", type=float, default=None, help="on Linear weights only")
    t.add_argument("--save_every_n_steps", type=int, default=None, help="periodic checkpoints (default 20000)")
    t.add_argument("--resume", default=None, metavar="PATH|last", help="continue a run from a checkpoint")
    return p


@dataclass
class RunConfig:
    """Everything one training run needs, resolved from presets, flags and the VQGAN file."""

    model: GPTConfig
    train: GPTTrainConfig
    data: DataConfig
    data_path: str
    vqgan_path: str
    trainer: TrainerOptions
    world_size: int
    resume: str | None
    command: str

    @property
    def lr(self) -> float:
        t = self.train
        return effective_lr(t.base_lr, t.lr_scaling, self.trainer.accumulate_grad_batches, self.world_size,
                            t.batch_size)

    @property
    def token_cache_dir(self) -> Path:
        return Path(self.train.token_cache_dir or Path(self.trainer.default_root_dir) / "token_cache")

    def to_yaml(self) -> str:
        trainer = {k: v for k, v in to_dict(self.trainer).items() if k != "extra"}
        tree = {"command": self.command, "data_path": self.data_path, "vqgan_path": self.vqgan_path,
                "resume": self.resume, "world_size": self.world_size, "effective_lr": self.lr,
                "model": to_dict(self.model), "train": to_dict(self.train), "data": to_dict(self.data),
                "trainer": trainer}
        return yaml.safe_dump(tree, sort_keys=False)


def _sections(args: argparse.Namespace) -> dict:
    """Preset values updated with the explicit flags: ``{"model": ..., "train": ..., "data": ...}``."""
    model = to_dict(gpt_preset(args.config))
    model.update({k: getattr(args, k) for k in MODEL_FLAGS if getattr(args, k) is not None})
    model.update({k: v for k, v in {"n_codes": args.first_stage_vocab_size,
                                    "text_mode": args.text_emb_model}.items() if v is not None})
    train = to_dict(GPTTrainConfig())
    train.update(load_yaml(preset_path("gpt", args.config)).get("train") or {})
    train.update({k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None})
    data = to_dict(load_data_config(args.data_config))
    data["load_audio"] = False  # audio never enters the GPT (spec §4.2)
    data.update({k: v for k, v in {"frames_per_file": args.load_vid_len, "resolution": args.resolution,
                                   "sequence_length": args.sequence_length}.items() if v is not None})
    return {"model": model, "train": train, "data": data}


def _explicit(args: argparse.Namespace, flag: str, key: str) -> bool:
    """True when ``key`` (``section.field``) was given by ``--flag`` or ``--set``."""
    sets = {s.split("=", 1)[0] for s in args.overrides}
    bare = key.split(".", 1)[1] if key.startswith("model.") else None
    return getattr(args, flag) is not None or key in sets or (bare is not None and bare in sets)


def _follow_vqgan(tree: dict, args: argparse.Namespace, vqgan: VQGAN, vqgan_hash: str) -> None:
    """Take codebook size, code grid and clip size from the VQGAN; explicit disagreeing values raise."""
    vcfg, where = vqgan.cfg, args.vqvae
    checks = [("first_stage_vocab_size", "model.n_codes", tree["model"], "n_codes", vcfg.n_codes),
              ("resolution", "data.resolution", tree["data"], "resolution", vcfg.resolution),
              ("sequence_length", "data.sequence_length", tree["data"], "sequence_length", vcfg.sequence_length)]
    for flag, key, section, field, theirs in checks:
        if _explicit(args, flag, key) and section[field] != theirs:
            raise InputError(f"--{flag} {section[field]} disagrees with --vqvae {where}, which has {field} "
                             f"{theirs}; pass {theirs} or the VQGAN trained for this setting")
        section[field] = theirs
    tree["model"].update(latent_shape=list(vcfg.latent_shape), vqgan_hash=vqgan_hash)
    tree["data"].update(downsample=list(vcfg.downsample), text_seq_len=tree["model"]["text_seq_len"],
                        tokenizer=tree["model"]["text_mode"])


def _check_text_mode(mode: str) -> None:
    if mode != "clip":
        return
    weights = ckpt_dir() / CLIP_WEIGHTS
    if not weights.is_file():
        raise InputError(f"--text_emb_model clip: CLIP text features need the OpenAI CLIP ViT-B/32 weights {weights}, "
                         "which are missing; use --text_emb_model bert (the released setting)")
    raise InputError("--text_emb_model clip: tav does not train the CLIP-feature GPT (spec ta2v.md §4.3); "
                     "use --text_emb_model bert (the released setting)")


def resolve_run(args: argparse.Namespace, argv: list[str]) -> tuple[RunConfig, VQGAN]:
    """Presets + flags + ``--set`` + the VQGAN file -> typed configs and the frozen VQGAN (eval, CPU)."""
    keyed = [s if s.split("=", 1)[0].split(".", 1)[0] in ("model", "train", "data") else f"model.{s}"
             for s in args.overrides]
    tree = apply_overrides(_sections(args), keyed)
    _check_text_mode(tree["model"].get("text_mode", "bert"))
    vqgan = load_vqgan(args.vqvae)  # a wrong-stage or broken file is a one-line InputError here
    _follow_vqgan(tree, args, vqgan, file_sha256(args.vqvae))
    model = gpt_config_from_dict(tree["model"], where="gpt config")
    data = from_dict(DataConfig, tree["data"], where="data config")
    train = train_config_from_dict(tree["train"], where="train config")
    opts = cli.trainer_options(args)
    opts.max_steps = train.max_steps
    opts, world = cli.resolve_devices_and_strategy(opts, find_unused=False)
    for split in ("train", "test"):
        list_stems(Path(args.data_path) / split)  # a missing dataset fails here, not after model set-up
    resume = cli.resume_path(args.resume, Path(opts.default_root_dir))
    command = shlex.join(["scripts/train_text_transformer.py", *argv])
    return RunConfig(model, train, data, args.data_path, args.vqvae, opts, world, resume, command), vqgan


def check_resume(run: RunConfig, vqgan: VQGAN) -> None:
    """The resumed file must be one of our GPT Lightning checkpoints, same architecture, same VQGAN."""
    ckpt = read_checkpoint(run.resume, expect="gpt")
    if ckpt.format != "lightning":
        raise InputError(f"{run.resume}: a {ckpt.format} file has no training state; --resume needs a checkpoint "
                         "written by scripts/train_text_transformer.py")
    saved = gpt_config_from_dict(ckpt.config, where=f"{run.resume}: config")
    try:
        check_vqgan_compat(saved, vqgan, run.vqgan_path)
    except InputError as err:
        raise InputError(f"--resume {run.resume}: {err}") from None
    cli.check_resumed_settings(run.resume, to_dict(saved), to_dict(run.model), ARCH_FIELDS, log)


def train(argv: list[str] | None = None, callbacks: list | None = None) -> Path | None:
    """Run (or with ``--dry_run`` print) one training job; returns the best checkpoint, else ``last.ckpt``.

    Raises ``InputError`` for bad flags/files and ``NonFiniteLossError`` when the loss diverges. Usable
    in-process for single-process runs (``scripts/demo.py``); ``callbacks`` are added to the Trainer's.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    run, vqgan = resolve_run(args, argv)
    if args.dry_run:
        print(run.to_yaml(), end="")
        return None
    if run.resume:
        check_resume(run, vqgan)
    return fit(run, vqgan, callbacks or [])


def fit(run: RunConfig, vqgan: VQGAN, extra_callbacks: list) -> Path | None:
    """Build module, data and Trainer; write config.yaml (rank 0); train; return a checkpoint."""
    pl.seed_everything(run.train.seed, workers=True, verbose=False)
    t = run.train
    if t.precompute_tokens:
        module = GPTModule(run.model, t, None, run.vqgan_path)
        data = TokenDataModule(run.data_path, run.data, vqgan, run.model.vqgan_hash, run.token_cache_dir,
                               t.batch_size, t.num_workers, t.token_stride)
    else:
        module = GPTModule(run.model, t, vqgan, run.vqgan_path)
        data = VATDataModule(run.data_path, run.data, t.batch_size, t.num_workers)
    root = Path(run.trainer.default_root_dir)
    callbacks = [*checkpoint_callbacks(root / "checkpoints", "val_text_loss", t.save_every_n_steps),
                 *extra_callbacks]
    trainer = build_trainer(run.trainer, callbacks, logger=run_loggers(root))
    return cli.fit_run(trainer, module, data, root, run.to_yaml, run.resume)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 for bad input (one line on stderr), 1 when the loss diverges."""
    return cli.run_main("train_text_transformer", train, argv)


if __name__ == "__main__":
    sys.exit(main())
