"""Train the joint audio-video-text encoder on a VAT dataset: a guide for ``sample_tav.py`` and a scorer for the
metric tools in domains where AudioCLIP and CLIP are weak or unavailable.

    python scripts/train_joint_encoder.py --data_path datasets/demo --default_root_dir runs/joint [--config demo]

Frames, the audio window centred on each frame and the captions are embedded by three small towers
(``tav.encoders.joint``) and trained with InfoNCE (``tav.training.joint_module``). The run folder gets
``joint_encoder.pt`` (use it as ``--joint_ckpt``), ``checkpoints/last.ckpt`` (``--resume last``),
``retrieval.json`` (R@1 on the first 16 test clips), ``config.yaml``, ``log.txt`` and ``metrics.jsonl``.
Config layers and common flags: docs/training.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pytorch_lightning as pl

from tav.config import from_dict, to_dict
from tav.data.frame_audio import FrameAudioConfig, FrameAudioDataModule, clip_items
from tav.encoders.joint import JointConfig, load_joint
from tav.metrics.retrieval import retrieval_r1
from tav.training.callbacks import PeriodicExport, StepCheckpoint, run_loggers
from tav.training.joint_module import JointModule, JointTrainConfig, joint_train_config
from tav.training.trainer import TrainerOptions, build_trainer
from tav.utils.fileio import dumps_strict, write_text_atomic
from tav_scripts import cli_common as cli
from tav_scripts import training

EXPORT = "joint_encoder.pt"


class JointRecipe(training.Recipe):
    script, description = "train_joint_encoder.py", __doc__.split("\n\n")[0]
    preset_kind, default_preset, stage = "joint", "default", "joint"
    flag_fields = {"dim": ("model", "dim"), "image_size": ("model", "image_size"),
                   **{k: ("train", k) for k in ("batch_size", "num_workers", "lr", "save_interval", "max_steps",
                                                "seed")},
                   "frames_per_item": ("data", "frames_per_item"), "window_s": ("data", "window_s")}
    arch_fields = ("dim", "image_size", "width", "n_mels", "audio_width", "time_bins", "text_buckets", "text_width")
    splits, data_is_vat = ("train", "test"), False
    log = logging.getLogger("train_joint_encoder")

    def add_flags(self, p: argparse.ArgumentParser) -> None:
        p.set_defaults(max_steps=None)  # None: the preset's train.max_steps
        p.add_argument("--data_path", required=True, help="VAT dataset root with train/ and test/")
        p.add_argument("--save_dir", dest="default_root_dir", default=argparse.SUPPRESS, help="run folder")
        cli.add_flag_table(p.add_argument_group("model"), {"dim": (int, "joint width"),
                                                           "image_size": (int, "frame size")})
        cli.add_flag_table(p.add_argument_group("training"), {
            "batch_size": (int, "clips per step"), "num_workers": (int, "loader processes"),
            "lr": (float, "AdamW learning rate"), "save_interval": (int, "export + checkpoint every N steps"),
            "frames_per_item": (int, "frames of one clip per step"),
            "window_s": (float, "seconds of audio per frame")})

    def defaults(self, args: argparse.Namespace) -> dict[str, dict]:
        tree = super().defaults(args)
        tree["train"] = {**to_dict(JointTrainConfig()), **tree["train"]}
        return tree

    def tie(self, tree: dict[str, dict], args: argparse.Namespace) -> None:
        model = to_dict(from_dict(JointConfig, tree["model"], where="joint config: model"))
        for key in ("image_size", "audio_rate", "text_len"):  # the items are what the encoder takes
            tree["data"][key] = model[key]

    def build(self, tree: dict[str, dict], args: argparse.Namespace) -> dict:
        return {"model": from_dict(JointConfig, tree["model"], where="joint config: model"),
                "train": joint_train_config(tree["train"], where="joint config: train"),
                "data": from_dict(FrameAudioConfig, tree["data"], where="joint config: data")}

    def trainer_options(self, opts: TrainerOptions, sections: dict) -> TrainerOptions:
        t = sections["train"]
        opts.max_steps, opts.log_every_n_steps = t.max_steps, t.log_interval
        opts.val_check_interval = float(max(t.max_steps, 1)) if t.max_steps > 1 else 1.0  # validate at the end
        return opts

    def fit(self, run: training.Run, args: argparse.Namespace, callbacks: list) -> Path | None:
        pl.seed_everything(run.train.seed, workers=True, verbose=False)
        t, root = run.train, Path(run.trainer.default_root_dir)
        module = JointModule(run.model, t)
        data = FrameAudioDataModule(run.data_path, run.data, t.batch_size, t.num_workers, seed=t.seed)
        export = root / EXPORT
        callbacks = [PeriodicExport(t.save_interval, lambda m, step: m.export(export)),
                     StepCheckpoint(root / "checkpoints", t.save_interval), *callbacks]
        trainer = build_trainer(run.trainer, callbacks, logger=run_loggers(root), seed=t.seed)
        training.fit_run(trainer, module, data, run)
        if trainer.is_global_zero and export.is_file():
            scores = retrieval_r1(load_joint(export), clip_items(run.data_path, "test", run.data, n=16))
            write_text_atomic(root / "retrieval.json", dumps_strict(scores, indent=2) + "\n")
            self.log.info("retrieval R@1 among %d test clips: audio->frame %.3f, caption->frame %.3f",
                          scores["candidates"], scores["audio_to_frame"], scores["caption_to_frame"])
        return export


def train(argv: list[str] | None = None, callbacks: list | None = None) -> Path | None:
    """Train (or with ``--dry_run`` print the resolved run); returns ``joint_encoder.pt``."""
    return training.train(JointRecipe(), argv, callbacks)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 for bad input (one line on stderr), 1 when the loss diverges."""
    return training.main(JointRecipe(), argv)


if __name__ == "__main__":
    sys.exit(main())
