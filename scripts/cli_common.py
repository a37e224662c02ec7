"""Flag groups and entry-point plumbing shared by the scripts: Trainer flags (with the seed's Lightning 1.x
ones), ``--config`` / ``--set``, data flags, guided-diffusion's flag tables, and ``main()`` exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from tav.errors import InputError, NonFiniteLossError, NonFiniteOutputError
from tav.training.options import TrainerOptions, resolve_devices
from tav.utils.console import configure_output, wants_verbose

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_FIND_UNUSED = {"ddp": "ddp_find_unused_parameters_true", "ddp_spawn": "ddp_spawn_find_unused_parameters_true",
                "ddp_fork": "ddp_fork_find_unused_parameters_true"}


def str2bool(value: str) -> bool:
    """``True/False/1/0/yes/no`` (the seeds write ``--class_cond False``)."""
    v = str(value).strip().lower()
    if v in ("1", "true", "t", "yes", "y"):
        return True
    if v in ("0", "false", "f", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def add_verbose_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true",
                   help="also show Lightning's own output (device lines, model summary) and debug logging")


def add_trainer_flags(p: argparse.ArgumentParser) -> None:
    """Lightning's Trainer flags, the seed's Lightning 1.x ones among them; defaults are ``TrainerOptions``'."""
    d = TrainerOptions()
    g = p.add_argument_group("trainer")
    g.add_argument("--accelerator", default=d.accelerator, help="cpu | gpu | auto")
    g.add_argument("--devices", default=d.devices, help="device count, a list like 0,1, or auto")
    g.add_argument("--num_nodes", type=int, default=d.num_nodes)
    g.add_argument("--strategy", default=d.strategy, help="auto | ddp | ... (Lightning strategies)")
    g.add_argument("--precision", default=d.precision, choices=["32", "bf16", "16"], help="bf16 autocast")
    g.add_argument("--gpus", type=int, default=d.gpus, help="seed flag: N GPUs (CPU with a warning if none)")
    g.add_argument("--max_steps", type=int, default=d.max_steps)
    g.add_argument("--max_epochs", type=int, default=d.max_epochs)
    g.add_argument("--val_check_interval", type=float, default=d.val_check_interval,
                   help="epoch fraction, or batches if > 1")
    g.add_argument("--limit_val_batches", type=float, default=d.limit_val_batches)
    g.add_argument("--sync_batchnorm", action="store_true")
    g.add_argument("--progress_bar_refresh_rate", type=int, default=d.progress_bar_refresh_rate,
                   help="0 disables the progress bar")
    g.add_argument("--log_every_n_steps", type=int, default=d.log_every_n_steps)
    g.add_argument("--default_root_dir", default=d.default_root_dir, help="run folder (checkpoints, logs, samples)")
    g.add_argument("--accumulate_grad_batches", type=int, default=d.accumulate_grad_batches)
    g.add_argument("--gradient_clip_val", type=float, default=d.gradient_clip_val)
    g.add_argument("--seed", type=int, default=None, help="random seed (default: the train section's)")
    add_verbose_flag(p)


def add_flag_table(group: argparse._ArgumentGroup, table: dict[str, tuple]) -> None:
    """``--name`` for each ``name: (type, help)`` or ``name: (type, help, choices)``, default None (the value
    then comes from the config layers)."""
    for name, (tp, help, *choices) in table.items():
        group.add_argument(f"--{name}", type=tp, default=None, help=help, choices=choices[0] if choices else None)


def trainer_options(args: argparse.Namespace) -> TrainerOptions:
    names = TrainerOptions.__dataclass_fields__.keys() - {"extra"}
    return TrainerOptions(**{k: getattr(args, k) for k in names})


def add_config_flags(p: argparse.ArgumentParser, kind: str, default: str) -> None:
    p.add_argument("--config", "--preset", dest="config", default=default,
                   help=f"preset name under configs/{kind}/ or a YAML file (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set data.max_clips=64 (--dry_run lists the fields; "
                        "repeatable)")
    p.add_argument("--dry_run", "--dry-run", action="store_true", help="print the resolved config and exit")


def add_data_flags(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The ``data`` group every training script takes; returns it for the script's own data flags."""
    d = p.add_argument_group("data")
    d.add_argument("--data_path", required=True, help="dataset root with train/ and test/ (VAT layout)")
    d.add_argument("--data_config", "--dataset", dest="data_config", default="urmp", help="urmp | landscape | YAML")
    d.add_argument("--load_vid_len", type=int, default=None, help="frames per pre-cut clip (URMP 90, Landscape 30)")
    return d


def resolve_devices_and_strategy(opts: TrainerOptions, find_unused: bool) -> tuple[TrainerOptions, int]:
    """Apply the seed's ``--gpus`` once (recorded as accelerator/devices) and pick the strategy: DDP when more
    than one process. ``find_unused`` turns the DDP strategies into their ``*_find_unused_parameters_true``
    variants. Returns the updated options and the world size (processes per node x nodes)."""
    accelerator, devices = resolve_devices(opts)
    if isinstance(devices, list):
        n, devices = len(devices), ",".join(map(str, devices))
    elif isinstance(devices, int):
        n, devices = devices, str(devices)
    else:  # "auto" / "-1": every visible GPU, else one CPU process
        n = torch.cuda.device_count() if accelerator in ("gpu", "cuda", "auto") else 1
    opts.accelerator, opts.devices, opts.gpus = accelerator, devices, None
    world = max(n, 1) * opts.num_nodes
    if opts.strategy == "auto" and world > 1:
        opts.strategy = "ddp"
    if find_unused:
        opts.strategy = _FIND_UNUSED.get(opts.strategy, opts.strategy)
    return opts, world


def command_main(name: str, body: Callable[[list[str] | None], Path | None], argv: list[str] | None,
                 result: str, report_hint: bool = False) -> int:
    """A script's ``main()``: quiet third-party output (``--verbose`` brings it back), run ``body(argv)`` and
    log ``<result>: <path>``. Exit codes: 0, 2 for an ``InputError`` and 1 for a ``NonFiniteLossError`` or
    ``NonFiniteOutputError``, each printed as one line ``<name>: error: ...`` on stderr."""
    configure_output(wants_verbose(argv))
    try:
        path = body(argv)
    except (InputError, NonFiniteLossError, NonFiniteOutputError) as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, InputError) else 1
    if path is not None:
        logging.getLogger(name).info("%s: %s", result, path)
        if report_hint:
            logging.getLogger(name).info("HTML report: %s", report_command(path))
    return 0


def report_command(results: Path) -> str:
    """The one-line command that writes the HTML report of ``results`` (``tools/report.py``)."""
    import shlex

    return f"python tools/report.py {shlex.quote(str(results))} --out {shlex.quote(str(Path(results) / 'report'))}"


# ------------------------------------------------------------------- guided-diffusion's flags (3 scripts)
# flag -> (section, field) for the diffusion training scripts (the TA2V prior and the three TIA2V U-Nets)
GD_FLAG_FIELDS = {
    "image_size": ("model", "image_size"), "num_channels": ("model", "model_channels"),
    "num_res_blocks": ("model", "num_res_blocks"), "num_heads": ("model", "num_heads"),
    "num_head_channels": ("model", "num_head_channels"), "dropout": ("model", "dropout"),
    "use_scale_shift_norm": ("model", "use_scale_shift_norm"), "use_checkpoint": ("model", "gradient_checkpointing"),
    "diffusion_steps": ("process", "steps"), "noise_schedule": ("process", "noise_schedule"),
    "learn_sigma": ("process", "learn_sigma"), "predict_xstart": ("process", "predict_xstart"),
    "rescale_timesteps": ("process", "rescale_timesteps"), "max_t": ("process", "max_t"),
    "batch_size": ("train", "batch_size"), "num_workers": ("train", "num_workers"), "lr": ("train", "lr"),
    "weight_decay": ("train", "weight_decay"), "log_interval": ("train", "log_interval"),
    "save_interval": ("train", "save_interval"), "lr_anneal_steps": ("train", "lr_anneal_steps"),
    "seed": ("train", "seed"),
    "resolution": ("data", "resolution"), "sequence_length": ("data", "sequence_length"),
    "load_vid_len": ("data", "frames_per_file"),
}
GD_MODEL_FLAGS = (("image_size", int), ("num_channels", int), ("num_res_blocks", int), ("num_heads", int),
                  ("num_head_channels", int), ("dropout", float), ("use_scale_shift_norm", str2bool),
                  ("use_checkpoint", str2bool))
GD_TRAIN_FLAGS = (("batch_size", int), ("num_workers", int), ("lr", float), ("weight_decay", float),
                  ("log_interval", int), ("save_interval", int), ("lr_anneal_steps", int))


def int_list(value: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]`` (guided-diffusion's ``--channel_mult`` / ``--attention_resolutions``)."""
    try:
        return [int(v) for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None


def add_diffusion_flags(p: argparse.ArgumentParser, extra_model: tuple = ()) -> dict[str, argparse._ArgumentGroup]:
    """guided-diffusion's model, process, data and training flags (values override the preset); returns the
    groups by name for the script's own additions."""
    B = str2bool
    p.add_argument("--save_dir", dest="default_root_dir", default=argparse.SUPPRESS, help="run folder")
    m = p.add_argument_group("model (guided-diffusion flags; override the --config preset)")
    for name, tp in (*GD_MODEL_FLAGS, *extra_model):
        m.add_argument(f"--{name}", type=tp, default=None)
    m.add_argument("--channel_mult", type=lambda v: int_list(v) if v.strip() else "", default=None,
                   help='e.g. "1,1,2,3,4"; "" = by image size')
    m.add_argument("--attention_resolutions", type=int_list, default=None, help='e.g. "16,8" (resolutions)')
    m.add_argument("--class_cond", type=B, default=False, help="must be False")
    m.add_argument("--use_fp16", type=B, default=False, help="use --precision bf16 instead")
    q = p.add_argument_group("diffusion process")
    q.add_argument("--diffusion_steps", type=int, default=None)
    q.add_argument("--noise_schedule", choices=["cosine", "linear"], default=None)
    for name in ("learn_sigma", "predict_xstart", "rescale_timesteps", "rescale_learned_sigmas", "use_kl"):
        q.add_argument(f"--{name}", type=B, default=None)
    q.add_argument("--timestep_respacing", default="", help='training uses all steps: must be ""')
    q.add_argument("--schedule_sampler", choices=["uniform"], default="uniform")
    q.add_argument("--max_t", type=int, default=None,
                   help="train on timesteps t < MAX_T only, for a model sampled only from an SDEdit start below it "
                        "(recorded; samplers refuse to start higher); 0: the whole chain")
    d = add_data_flags(p)
    d.add_argument("--resolution", type=int, default=None, help="frame size; the same as --image_size")
    d.add_argument("--sequence_length", type=int, default=None, help="frames per clip")
    d.add_argument("--text_stft_cond", action="store_true", help="seed flag (text-audio-video data); always on")
    t = p.add_argument_group("training")
    for name, tp in GD_TRAIN_FLAGS:
        t.add_argument(f"--{name}", type=tp, default=None)
    t.add_argument("--ema_rate", default=None, help="EMA decay (one value; guided-diffusion took a comma list)")
    return {"model": m, "process": q, "data": d, "train": t}


def diffusion_flag_values(args: argparse.Namespace, values: dict[str, dict]) -> dict[str, dict]:
    """The guided-diffusion flags that are not a plain copy, added to ``values`` (``{section: {...}}``)."""
    if args.channel_mult not in (None, ""):
        values["model"]["channel_mult"] = args.channel_mult
    if args.attention_resolutions is not None:
        values["model"]["attention_resolutions"] = args.attention_resolutions
    if args.rescale_learned_sigmas is not None:
        values["process"]["loss"] = "rescaled_mse" if args.rescale_learned_sigmas else "mse"
    if args.ema_rate is not None:
        try:
            rates = [float(v) for v in str(args.ema_rate).split(",") if v.strip()]
        except ValueError:
            rates = []
        if len(rates) != 1:
            raise InputError(f"--ema_rate {args.ema_rate}: give one EMA decay, e.g. 0.9999")
        values["train"]["ema_rate"] = rates[0]
    return values


def check_diffusion_flags(args: argparse.Namespace, log: logging.Logger) -> None:
    """One-line errors for guided-diffusion settings no diffusion trainer here implements."""
    bad = [(args.class_cond, "--class_cond True: the TA2V prior is unconditional and the TIA2V U-Nets condition on "
                             "text, image and audio, not classes; pass --class_cond False"),
           (args.timestep_respacing not in ("", None), "--timestep_respacing applies at sampling time; "
                                                       "training uses every step: pass \"\""),
           (bool(args.use_kl), "--use_kl True (pure variational-bound loss) is not supported; the recipe "
                               "uses the hybrid MSE + VB loss")]
    for cond, message in bad:
        if cond:
            raise InputError(message)
    if args.use_fp16:
        log.warning("--use_fp16 True: mixed precision is --precision bf16 (or 16); training in %s", args.precision)


def diffusion_trainer_options(opts: TrainerOptions, train) -> TrainerOptions:
    """Trainer options of a diffusion run (``train``: its train section): steps from ``--max_steps`` or the
    config, logging every ``log_interval``, no validation."""
    if opts.max_steps == -1:
        opts.max_steps = train.lr_anneal_steps or train.max_steps
    opts.log_every_n_steps, opts.limit_val_batches = train.log_interval, 0
    opts.accumulate_grad_batches = max(opts.accumulate_grad_batches, 1)
    return opts
