"""Train the TA2V text -> video-token GPT on a frozen VQGAN with PyTorch Lightning.

The README seed line runs as written:

    python scripts/train_text_transformer.py --num_workers 4 --val_check_interval 0.5 \
      --progress_bar_refresh_rate 100 --gpus 1 --sync_batchnorm --batch_size 8 --first_stage_key video \
      --cond1_stage_key text --text_stft_cond --text_emb_model bert --vqvae path/to/video/vqgan \
      --data_path datasets/post_URMP/ --load_vid_len 30 --default_root_dir path/to/save --base_lr 4.5e-05 \
      --first_stage_vocab_size 16384 --block_size 1024 --n_layer 12 --n_head 8 --n_embd 512 --resolution 96 \
      --sequence_length 16 --text_seq_len 12 --max_steps 500000 --embd_pdrop 0.2 --resid_pdrop 0.2 --attn_pdrop 0.2

The ``--vqvae`` file fixes the codebook size, the code grid and the clip size (explicit values that disagree are
one-line errors); the GPT checkpoints reference it by sha256 instead of copying it. ``--precompute_tokens``
encodes each split once into a token cache. Config layers, flags and the run folder: docs/training.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pytorch_lightning as pl

from tav.config import from_dict, to_dict
from tav.data.config import DataConfig, data_record
from tav.data.datamodule import VATDataModule
from tav.data.token_cache import TokenDataModule
from tav.errors import InputError
from tav.gpt.config import gpt_config_from_dict, gpt_preset
from tav.gpt.load import check_vqgan_compat, file_sha256
from tav.training.callbacks import checkpoint_callbacks, run_loggers
from tav.training.gpt_module import GPTModule, GPTTrainConfig, effective_lr, train_config_from_dict
from tav.training.trainer import TrainerOptions, build_trainer
from tav.utils.paths import ckpt_dir
from tav.vqgan.load import load_vqgan
from tav_scripts import cli_common as cli
from tav_scripts import training

# seed flag -> GPTConfig field of the same name
MODEL_FLAGS = {"block_size": int, "n_layer": int, "n_head": int, "n_embd": int, "text_seq_len": int,
               "embd_pdrop": float, "resid_pdrop": float, "attn_pdrop": float, "text_vocab_offset": int}
TRAIN_FLAGS = ("batch_size", "num_workers", "base_lr", "lr_scaling", "weight_decay", "lr_schedule", "warmup_steps",
               "max_steps", "first_stage_key", "cond_key", "precompute_tokens", "token_cache_dir", "token_stride",
               "save_every_n_steps", "seed")


class GPTRecipe(training.Recipe):
    script, description = "train_text_transformer.py", __doc__.split("\n\n")[0]
    preset_kind, default_preset, stage = "gpt", "urmp", "gpt"
    flag_fields = {**{k: ("model", k) for k in MODEL_FLAGS}, "first_stage_vocab_size": ("model", "n_codes"),
                   "text_emb_model": ("model", "text_mode"), **{k: ("train", k) for k in TRAIN_FLAGS},
                   "load_vid_len": ("data", "frames_per_file"), "resolution": ("data", "resolution"),
                   "sequence_length": ("data", "sequence_length")}
    arch_fields = ("text_mode", "text_vocab_size", "text_vocab_offset", "text_seq_len", "clip_dim", "n_codes",
                   "latent_shape", "block_size", "n_layer", "n_head", "n_embd")
    splits = ("train", "test")
    log = logging.getLogger("train_text_transformer")
    data_fixed = {"load_audio": False}  # audio never enters the GPT

    def __init__(self) -> None:
        self.vqgan = None  # the frozen VQGAN, loaded while the config is resolved

    def add_flags(self, p: argparse.ArgumentParser) -> None:
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
        cli.add_flag_table(p.add_argument_group("training"), {
            "batch_size": (int, "clips per device"), "num_workers": (int, "loader processes"),
            "base_lr": (float, "lr = accumulate * gpus * batch * base_lr (lr_scaling upstream)"),
            "lr_scaling": (str, "learning-rate rule", ["upstream", "none"]),
            "lr_schedule": (str, "schedule", ["cosine_steps", "constant", "cosine_epochs"]),
            "warmup_steps": (int, "linear warm-up"), "weight_decay": (float, "on Linear weights only"),
            "save_every_n_steps": (int, "periodic checkpoints")})

    def defaults(self, args: argparse.Namespace) -> dict[str, dict]:
        tree = super().defaults(args)
        tree["model"] = to_dict(gpt_preset(args.config))
        tree["train"] = {**to_dict(GPTTrainConfig()), **tree["train"]}
        return tree

    def tie(self, tree: dict[str, dict], args: argparse.Namespace) -> None:
        """Codebook size, code grid and clip size come from the ``--vqvae`` file; explicit values that
        disagree with it are one-line errors."""
        _check_text_mode(tree["model"].get("text_mode", "bert"))
        self.vqgan = load_vqgan(args.vqvae)  # a wrong-stage or broken file is a one-line InputError here
        vcfg = self.vqgan.cfg
        checks = [("first_stage_vocab_size", "model.n_codes", tree["model"], "n_codes", vcfg.n_codes),
                  ("resolution", "data.resolution", tree["data"], "resolution", vcfg.resolution),
                  ("sequence_length", "data.sequence_length", tree["data"], "sequence_length", vcfg.sequence_length)]
        for flag, key, section, field, theirs in checks:
            if training.explicit(args, flag, key, self.sections) and section[field] != theirs:
                raise InputError(f"--{flag} {section[field]} disagrees with --vqvae {args.vqvae}, which has "
                                 f"{field} {theirs}; pass {theirs} or the VQGAN trained for this setting")
            section[field] = theirs
        tree["model"].update(latent_shape=list(vcfg.latent_shape), vqgan_hash=file_sha256(args.vqvae))
        tree["data"].update(downsample=list(vcfg.downsample), text_seq_len=tree["model"]["text_seq_len"],
                            tokenizer=tree["model"]["text_mode"])

    def build(self, tree: dict[str, dict], args: argparse.Namespace) -> dict:
        return {"model": gpt_config_from_dict(tree["model"], where="gpt config"),
                "train": train_config_from_dict(tree["train"], where="train config"),
                "data": from_dict(DataConfig, tree["data"], where="data config")}

    def trainer_options(self, opts: TrainerOptions, sections: dict) -> TrainerOptions:
        opts.max_steps = sections["train"].max_steps
        return opts

    def extra(self, args: argparse.Namespace, sections: dict, world_size: int) -> dict:
        t = sections["train"]
        lr = effective_lr(t.base_lr, t.lr_scaling, args.accumulate_grad_batches, world_size, t.batch_size)
        return {"vqgan_path": args.vqvae, "world_size": world_size, "effective_lr": lr}

    def check_resume(self, run: training.Run) -> None:
        """Also: the resumed GPT was trained on this VQGAN."""
        from tav.checkpoint import read_checkpoint

        saved = gpt_config_from_dict(read_checkpoint(run.resume, expect="gpt").config, where=f"{run.resume}: config")
        try:
            check_vqgan_compat(saved, self.vqgan, run.extra["vqgan_path"])
        except InputError as err:
            raise InputError(f"--resume {run.resume}: {err}") from None
        super().check_resume(run)

    def fit(self, run: training.Run, args: argparse.Namespace, callbacks: list) -> Path | None:
        pl.seed_everything(run.train.seed, workers=True, verbose=False)
        t, root = run.train, Path(run.trainer.default_root_dir)
        if t.precompute_tokens:
            module = GPTModule(run.model, t, None, run.extra["vqgan_path"], data=data_record(run.data))
            cache = Path(t.token_cache_dir or root / "token_cache")
            data = TokenDataModule(run.data_path, run.data, self.vqgan, run.model.vqgan_hash, cache, t.batch_size,
                                   t.num_workers, t.token_stride, seed=t.seed)
        else:
            module = GPTModule(run.model, t, self.vqgan, run.extra["vqgan_path"], data=data_record(run.data))
            data = VATDataModule(run.data_path, run.data, t.batch_size, t.num_workers, seed=t.seed)
        callbacks = [*checkpoint_callbacks(root / "checkpoints", "val_text_loss", t.save_every_n_steps), *callbacks]
        trainer = build_trainer(run.trainer, callbacks, logger=run_loggers(root), seed=t.seed)
        return training.fit_run(trainer, module, data, run)


def _check_text_mode(mode: str) -> None:
    """tav trains the BERT word-piece prefix only; say so (and that the CLIP weights are missing, if they are)."""
    if mode != "clip":
        return
    weights = ckpt_dir() / "ViT-B-32.pt"
    missing = "" if weights.is_file() else f"; it would also need the OpenAI CLIP weights {weights}, which are missing"
    raise InputError(f"--text_emb_model clip: tav trains the BERT word-piece prefix only (the released setting)"
                     f"{missing}; use --text_emb_model bert")


def train(argv: list[str] | None = None, callbacks: list | None = None) -> Path | None:
    """Train (or with ``--dry_run`` print the resolved run); returns the best checkpoint, else ``last.ckpt``."""
    return training.train(GPTRecipe(), argv, callbacks)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 for bad input (one line on stderr), 1 when the loss diverges."""
    return training.main(GPTRecipe(), argv)


if __name__ == "__main__":
    sys.exit(main())
