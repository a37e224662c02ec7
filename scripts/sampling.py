"""One way to run a sampler over a dataset's test clips, for both methods (``sample_tav.py``,
``sample_motion_optim.py``).

A script describes itself as a :class:`SamplingRecipe` (its flags, how it builds its models once, how it
turns a batch of test items into videos); :func:`sample` does the rest, the same for both: parse (with
``--preset`` defaults), pick the device, build everything once, skip the samples the results folder already
holds, run the others ``--batch_size`` at a time with one seed per sample, and write each sample (its videos,
audio, caption and manifest row) atomically.

Flag defaults come from the library's config dataclasses (:func:`config_flag`), so running a script without a
flag and calling the library without that argument are the same run; ``--preset NAME`` replaces them with the
values of ``configs/sampling/NAME.yaml`` (e.g. ``ta2v_upstream``: upstream's argparse defaults), and
``--help`` shows the values that will be used.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tav.config import list_presets, load_yaml, preset_path
from tav.errors import InputError, NonFiniteOutputError
from tav.pipelines.results import ResultsFolder, SampleRecord
from tav.utils.fileio import check_writable
from tav.utils.runtime import deterministic_kernels, pick_device, precision_note, resolve_precision
from tav_scripts import cli_common as cli

PRESET_KIND = "sampling"


@dataclass
class Setup:
    """What a sampling run builds once: the test items, the results folder, the checkpoints' hashes."""

    data: Any  # indexable: item i is a dict with "video", "caption", "stem", "start" (and the conditions)
    results: ResultsFolder
    hashes: dict[str, str]  # flag -> sha256 of the checkpoint file
    n: int  # samples to draw: min(--n_sample, test clips)
    state: dict[str, Any] = field(default_factory=dict)  # the recipe's models and configs


@dataclass
class Batch:
    """What a recipe makes of a batch of B items: videos ``(3, T, H, W)`` in [-0.5, 0.5] per sample."""

    stage1: list[torch.Tensor]
    stage2: list[list[torch.Tensor]]  # per sample: one per refinement iteration (empty: no stage 2)
    audio: list[np.ndarray]  # per sample: its audio ``(N,)`` in [-1, 1], muxed into its videos
    seconds: dict[str, float]  # per stage, for the whole batch
    info: list[dict] = field(default_factory=list)  # per sample: extra manifest fields


class SamplingRecipe:
    """What makes one sampling script different."""

    name: str = ""  # script name without .py
    description: str = ""
    log: logging.Logger = logging.getLogger("tav_scripts")

    def add_flags(self, p: argparse.ArgumentParser) -> None:
        """The script's own flags (models, data, sampling settings)."""

    def check_args(self, args: argparse.Namespace) -> None:
        """One-line errors for unsupported flag values."""

    def setup(self, args: argparse.Namespace, device: torch.device) -> Setup:
        """Build the models, the test items and the results folder (all once)."""
        raise NotImplementedError

    def seeds(self, args: argparse.Namespace, indices: Sequence[int]) -> list[int]:
        """Sample ``i`` uses ``--seed + i``."""
        return [args.seed + i for i in indices]

    def generate(self, st: Setup, items: list[dict], seeds: list[int], args: argparse.Namespace) -> Batch:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------- flags
def config_flag(group: argparse._ArgumentGroup, flag: str, cls: type, name: str, help: str = "",
                **kw: Any) -> None:
    """``--flag`` whose default is the field ``name`` of the config dataclass ``cls`` (the one source of the
    default); ``--help`` shows it."""
    default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
    group.add_argument(f"--{flag}", default=default, help=f"{help} (default: %(default)s)".strip(), **kw)


def config_from_args(cls: type, table: dict[str, str], args: argparse.Namespace, **fixed: Any):
    """``cls`` built from the flags of ``table`` (flag dest -> field) plus ``fixed`` fields."""
    return cls(**{name: getattr(args, flag) for flag, name in table.items()}, **fixed)


def add_accepted(group: argparse._ArgumentGroup, names: Sequence[str], help: str, **kw: Any) -> None:
    """Flags of the upstream command lines that tav takes and ignores (or only checks): ``--name`` each."""
    default = kw.pop("default", None)
    for name in names:
        group.add_argument(f"--{name}", default=default, help=help, **kw)


def check_flags_match(args: argparse.Namespace, table: dict[str, str], config: Any, path: str) -> None:
    """Seed-line flags that describe a checkpoint (``table``: flag dest -> config field) must agree with the
    file's ``config``: the architecture comes from the checkpoint; a disagreeing flag is a one-line error."""
    for flag, name in table.items():
        given, stored = getattr(args, flag), getattr(config, name)
        if given is not None and given != stored:
            raise InputError(f"--{flag} {given}: {path} has {name}={stored}; the architecture comes from the "
                             "checkpoint, drop the flag or pass the right file")


def add_common_flags(p: argparse.ArgumentParser, n_flag: tuple[str, ...], n_default: int, batch_default: int,
                     run_suffix: str) -> argparse._ArgumentGroup:
    """Flags both samplers take (results folder, counts, seeds, device, presets); returns the group."""
    p.add_argument("--preset", default=None, choices=list_presets(PRESET_KIND),
                   help="replace the defaults with a named preset (configs/sampling/), e.g. the upstream "
                        "script's argparse defaults")
    cli.add_verbose_flag(p)
    d = p.add_argument_group("data and outputs")
    d.add_argument("--save", default="./results/", help="results root (default: %(default)s)")
    d.add_argument("--run", default="0", help=f"run id: <save>/<run>_{run_suffix}_<dataset>")
    d.add_argument(*n_flag, dest="n_sample", type=int, default=n_default,
                   help="samples = min(this, test clips) (default: %(default)s)")
    d.add_argument("--batch_size", type=int, default=batch_default, help="clips per batch (default: %(default)s)")
    d.add_argument("--seed", type=int, default=404, help="sample i uses seed + i (default: %(default)s)")
    d.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 | mps")
    d.add_argument("--progress", type=cli.str2bool, default=True, help="per-step bars")
    d.add_argument("--shard", default=None, help="i/n: this process makes samples i, i+n, ... into the same folder "
                   "(default: torchrun's RANK/WORLD_SIZE, else 0/1)")
    d.add_argument("--lossless_video", type=cli.str2bool, default=False,
                   help="write the result mp4s bit-exact (H.264 RGB, crf 0) so that the metrics score the sampler's "
                        "frames, not the codec's; most browsers cannot play them (default: %(default)s: H.264 crf 17)")
    d.add_argument("--overwrite", action="store_true", help="replace the samples of a results folder made with "
                   "other checkpoints or settings (default: stop and say what differs)")
    return d


def resolve_shard(value: str | None) -> tuple[int, int]:
    """``--shard i/n`` as ``(i, n)``; without it torchrun's ``RANK`` / ``WORLD_SIZE``, else ``(0, 1)``."""
    import os

    if value is None:
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        return 0, 1
    try:
        i, n = (int(x) for x in str(value).split("/"))
    except ValueError:
        raise InputError(f"--shard {value}: write it as i/n, e.g. 0/2") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {value}: need 0 <= i < n")
    return i, n


def shard_device(name: str) -> torch.device:
    """``--device``; ``auto`` under torchrun on a CUDA machine is the process's own GPU (``LOCAL_RANK``)."""
    import os

    if name == "auto" and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}")
    return pick_device(name)


def build_parser(recipe: SamplingRecipe, argv: list[str] | None) -> argparse.ArgumentParser:
    """The recipe's parser, with ``--preset``'s values as defaults when the command line names one."""
    p = argparse.ArgumentParser(prog=f"{recipe.name}.py", description=recipe.description)
    recipe.add_flags(p)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.preset:
        values = load_yaml(preset_path(PRESET_KIND, known.preset))
        unknown = sorted(set(values) - {a.dest for a in p._actions})
        if unknown:
            raise InputError(f"{preset_path(PRESET_KIND, known.preset)}: unknown flag(s) {unknown}")
        p.set_defaults(**values)
    return p


# ------------------------------------------------------------------------------------------- the driver
def sample(recipe: SamplingRecipe, argv: list[str] | None = None) -> Path:
    """Run the sampler; returns the results folder. Raises ``InputError`` for bad flags/files."""
    parser = build_parser(recipe, argv)
    args = parser.parse_args(argv)
    for flag, value in (("--n_sample", args.n_sample), ("--batch_size", args.batch_size)):
        if value < 1:
            raise InputError(f"{flag} {value}: must be >= 1")
    recipe.check_args(args)
    check_writable(args.save, "--save")  # before any model loads
    shard = resolve_shard(args.shard)
    device = shard_device(args.device)
    deterministic_kernels(device)
    if getattr(args, "precision", None) is not None:  # recorded as run (fp32 or bf16), not as asked (auto)
        recipe.log.info("precision: %s", precision_note(args.precision, device))
        args.precision = resolve_precision(args.precision, device)
    st = recipe.setup(args, device)
    st.results.set_shard(*shard)

    settings = run_settings(args)
    if args.overwrite:
        st.results.clear()
    else:
        check_same_recipe(st.results, settings, st.hashes, {k: parser.get_default(k) for k in settings})

    def run_batch(indices: list[int]) -> None:
        items = [st.data[i] for i in indices]
        seeds = recipe.seeds(args, indices)
        out = recipe.generate(st, items, seeds, args)
        for b, (i, it) in enumerate(zip(indices, items, strict=True)):
            check_output(i, it["stem"], {"stage 1": out.stage1[b], **{f"stage 2 ({k})" if len(out.stage2[b]) > 1
                                         else "stage 2": v for k, v in enumerate(out.stage2[b])}})
            info = {"seed": seeds[b], "start": int(it["start"]), "checkpoints": st.hashes, "settings": settings,
                    "batch": len(indices),
                    "seconds": {k: v / len(indices) for k, v in out.seconds.items()},
                    **(out.info[b] if out.info else {})}
            st.results.write(SampleRecord(i, it["stem"], it["caption"], it["video"], out.stage1[b].cpu(),
                                          [v.cpu() for v in out.stage2[b]], out.audio[b], info))

    run_samples(st.n, lambda i: st.results.is_done(i, str(st.data.stems[i])), args.batch_size, run_batch,
                st.results.root, recipe.log, shard)
    st.results.finish()
    return st.results.root


def check_output(index: int, stem: str, videos: dict[str, torch.Tensor]) -> None:
    """Stop with ``NonFiniteOutputError`` (one line, nothing of the sample written) when a video of sample
    ``index`` holds NaN or infinite values: clamping them would write black or white frames that look like
    results."""
    for name, video in videos.items():
        if not torch.isfinite(video).all():
            raise NonFiniteOutputError(f"sample {index} ({stem}): the {name} output holds NaN or inf values; nothing "
                                       "of it was written. Check the checkpoints (a diverged run?), or try "
                                       "--precision 32")


NOT_SETTINGS = ("progress", "verbose", "shard", "device", "preset", "save", "overwrite",  # do not change the samples
                "guidance_checkpointing")
SAME_OUTPUTS = ("batch_size", "n_sample", "num_samples")  # recorded, but a re-run may change them (same videos)


def check_same_recipe(results: ResultsFolder, settings: dict, hashes: dict, defaults: dict | None = None) -> None:
    """Stop with one line when the folder's finished samples were made with other checkpoints or settings
    (a re-run would keep them beside new ones): ``--overwrite`` replaces them, a new ``--run`` keeps both.
    A flag the folder's rows do not record (added since they were made) counts as unchanged while it is at its
    ``defaults`` value: a new flag's default is the behaviour from before it existed."""
    defaults = defaults or {}
    for row in results.rows.values():
        old_hashes = row.get("checkpoints") or {}
        diff = [k for k in sorted(set(old_hashes) | set(hashes)) if old_hashes.get(k) != hashes.get(k)]
        what = f"checkpoint {diff[0]} (sha256 {str(old_hashes.get(diff[0]))[:12]} then, " \
               f"{str(hashes.get(diff[0]))[:12]} now)" if diff else None
        old = row.get("settings")
        if what is None and old is not None:
            keys = sorted(k for k in set(old) | set(settings)  # checkpoint paths: their hashes were compared
                          if k not in SAME_OUTPUTS and k not in hashes)
            changed = [k for k in keys if old.get(k) != settings.get(k)
                       and not (k not in old and k in defaults and settings.get(k) == defaults[k])]
            what = f"--{changed[0]} ({old.get(changed[0])!r} then, {settings.get(changed[0])!r} now)" if changed \
                else None
        if what is not None:
            raise InputError(f"{results.root}: sample {row['id']} was made with another {what}; pass --overwrite to "
                             "replace the folder's samples, or a new --run to keep both")


def run_settings(args: argparse.Namespace) -> dict:
    """The flags recorded in every manifest row (``settings``): those with plain values, but the ones that do not
    change the samples (``NOT_SETTINGS``)."""
    return {k: v for k, v in sorted(vars(args).items())
            if k not in NOT_SETTINGS and (v is None or isinstance(v, (bool, int, float, str)))}


def main(recipe: SamplingRecipe, argv: list[str] | None = None) -> int:
    """A sampling script's ``main()``: 0 on success (the results folder is logged, with the command that makes
    its HTML report), 2 for bad input."""
    return cli.command_main(recipe.name, lambda a: sample(recipe, a), argv, "results in", report_hint=True)


def run_samples(n: int, is_done: Callable[[int], bool], batch_size: int,
                run_batch: Callable[[list[int]], None], where: Path, logger: logging.Logger,
                shard: tuple[int, int] = (0, 1)) -> None:
    """Run ``run_batch`` over this shard's samples of ``0..n-1`` (``i % n_shards == shard index``) not yet done,
    ``batch_size`` at a time, with a bar."""
    from tqdm import tqdm

    mine = [i for i in range(n) if i % shard[1] == shard[0]]
    todo = [i for i in mine if not is_done(i)]
    part = f" (shard {shard[0]}/{shard[1]}: {len(mine)} of them)" if shard[1] > 1 else ""
    logger.info("%s: %d of %d samples to do%s", where, len(todo), n, part)
    with tqdm(total=len(mine), initial=len(mine) - len(todo), desc="samples", unit="video") as bar:
        for k in range(0, len(todo), batch_size):
            batch = todo[k: k + batch_size]
            run_batch(list(batch))
            bar.update(len(batch))
