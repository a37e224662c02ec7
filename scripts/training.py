"""One way to build a training run, for every training script.

A script describes itself as a :class:`Recipe` (its flags, its config sections, how sizes tie together, how
to fit); :func:`train` does the rest, the same for all:

1. parse the command line (the seed's flags, Lightning's, ``--config``, ``--set``, ``--resume``, ...);
2. layer the config: the dataclasses' defaults, then the ``--config`` preset or YAML file, then the explicit
   flags, then ``--set section.key=value`` (a bare key means the recipe's first section), then the values
   that follow from others (``Recipe.tie``);
3. type every section (unknown keys and wrong types are one-line errors) and build the Trainer options;
4. ``--dry_run``: print the resolved run as YAML and stop;
5. ``--resume``: check the checkpoint is this stage's, with the same architecture;
6. fit: ``config.yaml`` (with the command line) and ``log.txt`` in the run folder, then ``Trainer.fit``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml

from tav.checkpoint import read_checkpoint
from tav.config import apply_overrides, load_yaml, preset_path, to_dict
from tav.data.config import load_data_config
from tav.data.dataset import list_stems
from tav.errors import InputError
from tav.training.callbacks import best_or_last
from tav.training.resume import check_no_earlier_run, newest_checkpoint, prepare_resume, start_fresh
from tav.training.trainer import TrainerOptions
from tav.utils.fileio import check_writable, remove_stale_temps, write_text_atomic
from tav_scripts import cli_common as cli


@dataclass
class Run:
    """A resolved training run: typed config sections, the data, how to run, what to resume."""

    sections: dict[str, Any]  # section name -> its config dataclass, e.g. model, train, data
    data_path: str
    trainer: TrainerOptions
    resume: str | None
    command: str
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in config.yaml (e.g. the frozen VQGAN)

    def __getattr__(self, name: str) -> Any:  # run.model, run.train, run.data, run.process
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(name)

    def to_yaml(self) -> str:
        tree = {"command": self.command, "data_path": self.data_path, "resume": self.resume, **self.extra,
                **{name: to_dict(cfg) for name, cfg in self.sections.items()},
                "trainer": {k: v for k, v in to_dict(self.trainer).items() if k != "extra"}}
        return yaml.safe_dump(tree, sort_keys=False)


class Recipe:
    """What makes one training script different; the defaults below fit the common case."""

    script: str = ""  # file name under scripts/, e.g. "train_vqgan.py"
    description: str = ""
    preset_kind: str = ""  # presets live in configs/<preset_kind>/
    default_preset: str = ""
    sections: tuple[str, ...] = ("model", "train", "data")
    flag_fields: dict[str, tuple[str, str]] = {}  # flag dest -> (section, field), copied when given
    arch_fields: tuple[str, ...] = ()  # model fields that shape the state dict: a resumed run must match
    stage: str = ""  # checkpoint stage that --resume expects (tav.checkpoint)
    find_unused: bool = False  # DDP looks for parameters without gradients (the VQGAN's discriminators)
    splits: tuple[str, ...] = ("train",)  # dataset splits the run reads (checked before any model is built)
    log: logging.Logger = logging.getLogger("tav_scripts")

    @property
    def name(self) -> str:
        return self.script.removesuffix(".py")

    # --------------------------------------------------------------------------------- the command line
    def add_flags(self, p: argparse.ArgumentParser) -> None:
        """The script's own flags (model, data and training groups)."""

    def check_args(self, args: argparse.Namespace) -> None:
        """One-line errors for flag values the script does not support."""

    # --------------------------------------------------------------------------------- the config layers
    data_fixed: dict[str, Any] = {}  # data fields the stage decides (e.g. no audio for the VQGAN)
    data_is_vat: bool = True  # the data section is a DataConfig (from --data_config) layered under the preset

    def defaults(self, args: argparse.Namespace) -> dict[str, dict]:
        """Layers 1-2: the ``--data_config`` preset, then the ``--config`` preset's sections (its ``data:`` too),
        then ``data_fixed``; the dataclasses' defaults fill the rest when the sections are typed."""
        preset = load_yaml(preset_path(self.preset_kind, args.config))
        tree = {s: dict(preset.get(s) or {}) for s in self.sections}
        if "data" in tree and self.data_is_vat:
            tree["data"] = {**to_dict(load_data_config(args.data_config)), **tree["data"], **self.data_fixed}
        return tree

    def flag_values(self, args: argparse.Namespace) -> dict[str, dict]:
        """Layer 3: the flags given on the command line, as ``{section: {field: value}}``."""
        out: dict[str, dict] = {s: {} for s in self.sections}
        for flag, (section, key) in self.flag_fields.items():
            if getattr(args, flag, None) is not None:
                out[section][key] = getattr(args, flag)
        return out

    def tie(self, tree: dict[str, dict], args: argparse.Namespace) -> None:
        """Layer 5: values that follow from others (one clip size for model and data, ...), in place."""

    def build(self, tree: dict[str, dict], args: argparse.Namespace) -> dict[str, Any]:
        """Type every section; returns ``{section: dataclass}`` in ``sections`` order."""
        raise NotImplementedError

    def trainer_options(self, opts: TrainerOptions, sections: dict[str, Any]) -> TrainerOptions:
        """Recipe-specific Trainer settings (steps, logging interval, validation)."""
        return opts

    def extra(self, args: argparse.Namespace, sections: dict[str, Any], world_size: int) -> dict[str, Any]:
        """Other things the run needs and records in ``config.yaml`` (``world_size``: processes in all)."""
        return {}

    # --------------------------------------------------------------------------------- resume and fit
    def saved_model_config(self, ckpt) -> dict:
        """The model config recorded in a resumed checkpoint (compared with this run's)."""
        return dict(ckpt.config)

    def check_resume(self, run: Run) -> None:
        """The ``--resume`` file must be this stage's Lightning checkpoint, with the same architecture."""
        ckpt = read_checkpoint(run.resume, expect=self.stage)
        if ckpt.format != "lightning":
            raise InputError(f"{run.resume}: a {ckpt.format} file has no training state; --resume needs a "
                             f"checkpoint written by scripts/{self.script}")
        check_resumed_settings(run.resume, self.saved_model_config(ckpt), to_dict(run.model), self.arch_fields,
                               self.log)

    def fit(self, run: Run, args: argparse.Namespace, callbacks: list) -> Path | None:
        """Build module, data and Trainer and train; returns the checkpoint to use afterwards."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------------- the driver
def build_parser(recipe: Recipe, argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The recipe's parser; the help of every flag that sets a config field shows the value the run will use
    without it (from the ``--config`` preset named in ``argv``, else the default preset)."""
    p = argparse.ArgumentParser(prog=recipe.script, description=recipe.description)
    cli.add_config_flags(p, recipe.preset_kind, recipe.default_preset)
    cli.add_trainer_flags(p)
    recipe.add_flags(p)
    p.add_argument("--resume", "--resume_checkpoint", dest="resume", default=None, metavar="PATH|last",
                   help="continue a run from a checkpoint (last: <run folder>/checkpoints/last.ckpt)")
    _show_preset_values(p, recipe, argv)
    return p


def _show_preset_values(p: argparse.ArgumentParser, recipe: Recipe, argv: list[str] | None) -> None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", "--preset", dest="config", default=recipe.default_preset)
    pre.add_argument("--data_config", "--dataset", dest="data_config", default="urmp")
    known, _ = pre.parse_known_args(argv)
    try:
        tree = recipe.defaults(known)
    except InputError:
        return  # a missing or broken preset is reported by the run itself, in one line
    for action in p._actions:
        section, key = recipe.flag_fields.get(action.dest, (None, None))
        if action.default is None and key in tree.get(section, {}):
            value = str(tree[section][key]).replace("%", "%%")
            action.help = f"{action.help or ''} [{known.config}: {value}]".strip()


def route_overrides(overrides: list[str], sections: tuple[str, ...]) -> list[str]:
    """``--set`` items with a section prefix; a bare ``key=value`` goes to the first section (the model)."""
    return [s if s.split("=", 1)[0].split(".", 1)[0] in sections else f"{sections[0]}.{s}" for s in overrides]


def explicit(args: argparse.Namespace, flag: str | None, key: str, sections: tuple[str, ...]) -> bool:
    """Whether ``key`` (``section.field``) was given on the command line, by ``--flag`` or by ``--set``."""
    sets = {s.split("=", 1)[0] for s in route_overrides(args.overrides, sections)}
    return (flag is not None and getattr(args, flag, None) is not None) or key in sets


def resolve(recipe: Recipe, args: argparse.Namespace, argv: list[str]) -> Run:
    """The config layers -> a typed :class:`Run`; bad values raise one-line ``InputError`` s."""
    recipe.check_args(args)
    tree = recipe.defaults(args)
    for section, values in recipe.flag_values(args).items():
        tree[section].update(values)
    tree = apply_overrides(tree, route_overrides(args.overrides, recipe.sections))
    recipe.tie(tree, args)
    sections = recipe.build(tree, args)
    opts = recipe.trainer_options(cli.trainer_options(args), sections)
    opts, world = cli.resolve_devices_and_strategy(opts, find_unused=recipe.find_unused)
    for split in recipe.splits:
        list_stems(Path(args.data_path) / split)  # a missing dataset fails here, not after model set-up
    check_writable(opts.default_root_dir, "--default_root_dir")  # before any data or model is read
    resume = resume_path(args.resume, Path(opts.default_root_dir))
    if resume is None:
        check_no_earlier_run(opts.default_root_dir)  # before any work
    command = shlex.join([f"scripts/{recipe.script}", *argv])
    return Run(sections, args.data_path, opts, resume, command, recipe.extra(args, sections, world))


def train(recipe: Recipe, argv: list[str] | None = None, callbacks: list | None = None) -> Path | None:
    """Run (or with ``--dry_run`` print) one training job; returns the checkpoint to use (best, else last).

    Raises ``InputError`` for bad flags/files and ``NonFiniteLossError`` when a loss diverges. Usable in-process
    for single-process runs (the demo, the tests); ``callbacks`` are added to the Trainer's.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(recipe, argv).parse_args(argv)
    run = resolve(recipe, args, argv)
    if args.dry_run:
        print(run.to_yaml(), end="")
        return None
    if run.resume:
        recipe.check_resume(run)
    return recipe.fit(run, args, list(callbacks or []))


def main(recipe: Recipe, argv: list[str] | None = None) -> int:
    """A training script's ``main()``: 0 on success, 2 for bad input, 1 when a loss diverges."""
    return cli.command_main(recipe.name, lambda a: train(recipe, a), argv, "checkpoint")


# ------------------------------------------------------------------------------------------- helpers
def tie_unet_sizes(tree: dict[str, dict], args: argparse.Namespace, sections: tuple[str, ...], default_size: int,
              frames_from_model: bool = False) -> None:
    """One frame size (``model.image_size`` = ``data.resolution``; the TA2V prior's ``train.crop_size`` windows, if
    any, fit in it), ``out_channels`` from ``learn_sigma``, the data's downsampling from the U-Net's depth; with
    ``frames_from_model`` one clip length too (``model.num_frames`` = ``data.sequence_length``). The TA2V prior's
    and the TIA2V U-Nets' ``Recipe.tie``."""
    model, data = tree["model"], tree["data"]
    image = explicit(args, "image_size", "model.image_size", sections)
    res = explicit(args, "resolution", "data.resolution", sections)
    if image and res and model["image_size"] != data["resolution"]:
        raise InputError(f"--image_size {model['image_size']} and --resolution {data['resolution']} disagree: "
                         "the U-Net trains on clips of its own size; pass the same value")
    size = data["resolution"] if res else model.get("image_size", default_size)
    model["image_size"] = data["resolution"] = size
    div = 2 ** (len(model.get("channel_mult", (1,))) - 1)
    crop = int(tree.get("train", {}).get("crop_size") or 0)  # the TA2V prior's training windows, if any
    if crop and (crop > size or crop % div):
        raise InputError(f"train.crop_size={crop}: use a multiple of the U-Net's downsampling ({div}) no larger than "
                         f"data.resolution ({size}), or 0 for whole frames")
    if frames_from_model:
        if not explicit(args, "sequence_length", "data.sequence_length", sections):
            data["sequence_length"] = model.get("num_frames", 16)
        model["num_frames"] = data["sequence_length"]
    model["out_channels"] = model.get("in_channels", 3) * (2 if tree["process"].get("learn_sigma", True) else 1)
    data["downsample"] = [1, div, div]


def resume_path(value: str | None, root: Path) -> str | None:
    """``--resume`` -> a checkpoint path: ``last`` means the newest checkpoint of ``<root>/checkpoints``
    (normally ``last.ckpt``); ``None`` stays ``None``; a missing, unreadable or non-finite file is a one-line
    ``InputError`` (a run never continues from NaN weights)."""
    from tav.checkpoint import check_finite, safe_load, state_dict_of

    if value is None:
        return None
    if value == "last":
        path = newest_checkpoint(root / "checkpoints")
        if path is None:
            raise InputError(f"--resume last: no checkpoint in {root / 'checkpoints'}; run without --resume to "
                             "start (an attempt stopped before its first checkpoint starts over)")
    else:
        path = Path(value)
    if not path.is_file():
        raise InputError(f"--resume {value}: {path} does not exist")
    state = state_dict_of(safe_load(path)) or {}
    try:
        check_finite(state, f"--resume {path}")
    except InputError as err:
        raise InputError(f"{err}; resume from an earlier checkpoint instead") from None
    return str(path)


def check_resumed_settings(resume: str, old: dict, now: dict, arch_fields: tuple[str, ...],
                           logger: logging.Logger) -> None:
    """Compare the model config ``old`` of the ``--resume`` checkpoint with this run's ``now``: a difference in
    ``arch_fields`` is a one-line ``InputError`` naming the first of them; other changes are one warning."""
    arch = [k for k in arch_fields if old.get(k) != now[k]]
    if arch:
        raise InputError(f"--resume {resume}: trained with {arch[0]}={old.get(arch[0])!r} but this run has "
                         f"{arch[0]}={now[arch[0]]!r}; pass the same model settings")
    changed = [k for k in now if old.get(k) != now[k]]
    if changed:
        logger.warning("resuming with changed settings: %s", ", ".join(f"{k}: {old.get(k)!r} -> {now[k]!r}"
                                                                          for k in changed))


@contextlib.contextmanager
def run_log(root: Path, main_process: bool) -> Iterator[None]:
    """Log to ``<root>/log.txt`` on the main process (rank 0) while the block runs; on the other ranks the
    root logger is set to warnings only (and stays so)."""
    if not main_process:
        logging.getLogger().setLevel(logging.WARNING)
        yield
        return
    handler = logging.FileHandler(root / "log.txt", encoding="utf-8")
    handler.setFormatter(logging.Formatter(cli.LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    try:
        yield
    except BaseException as err:  # what stopped the run goes into its log too (the console shows it already)
        text = str(err).splitlines()[0] if str(err) else ""
        handler.emit(logging.LogRecord("tav_scripts", logging.ERROR, __file__, 0,
                                       f"run stopped: {type(err).__name__}: {text}", None, None))
        raise
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def fit_run(trainer: pl.Trainer, module: pl.LightningModule, data: pl.LightningDataModule, run: Run) -> Path | None:
    """Train: rank 0 first writes ``<root>/config.yaml``; ``log.txt`` as in :func:`run_log`; ``run.resume``
    continues from that checkpoint once what the interrupted attempt wrote after it is set aside
    (``tav.training.resume.prepare_resume``). Returns the best checkpoint under ``<root>/checkpoints``, else last."""
    root = Path(run.trainer.default_root_dir)
    if trainer.is_global_zero:
        remove_stale_temps(root)  # temp files of a killed run of this folder
        write_text_atomic(root / "config.yaml", run.to_yaml())
    with run_log(root, trainer.is_global_zero):
        if trainer.is_global_zero:
            done = prepare_resume(root, run.resume) if run.resume else start_fresh(root)
            for line in done:
                logging.getLogger("tav_scripts").info("%s", line)
        trainer.fit(module, datamodule=data, ckpt_path=run.resume, weights_only=True)
    return best_or_last(root / "checkpoints", trainer)
