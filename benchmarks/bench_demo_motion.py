"""The demo's TIA2V motion model under training variants and sampling starts: does it follow the sound?

    python benchmarks/bench_demo_motion.py --out /tmp/bm --n_test 64 --skips 700 500 300 0 \\
        --variant demo= --variant whole:350="--max_t 0" --variant whole:1500="--max_t 0" \\
        --variant whole_one_t:1000="--max_t 0 --per_frame_t False" --json /tmp/bm.json

``<out>/base`` is the demo's own ``data`` and ``tia2v`` stages (``scripts/demo.py``, the demo's seed and 64 training
clips, ``--n_test`` test clips): its tiny CLIP-L and BEATs stand-ins, content model, condition cache and motion
model (the ``demo`` variant: ``scripts/demo_tia2v.py``'s recipe, along the sampler's path, 1000 steps; the demo's
recipe before it, which kept the shape still, is ``--copy_init 0 --copy_path False --set data.moving_windows=0 --set
temporal_dropout=0.1`` at 350 steps; the demo trains it in its second lane, on half the threads). Every other
``--variant NAME[:STEPS]=FLAGS`` trains the demo's motion model (``train_temp.py``, from the same content model) for
STEPS steps (default: the demo's) with FLAGS appended, in ``<out>/<NAME>_<STEPS>``, in this process on every thread.
Each model is sampled as the demo samples it (``sample_motion_optim.py``, ``ddim50`` from copies of the given
frame), once per ``--skips`` value (the SDEdit start ``t = 999 - skip``), without SHR, and judged: colour on every
frame, ``onset_f1`` and its chance level ``onset_f1_chance`` (each clip's motion against the
other clips' sound), the share of clips that move and of windows with a note start that move; and ``audio_gain``,
how much the model relies on its sound there (``tav.tia2v.reliance``: from copies of the given frame at the start t,
the share of the error on frames that change that the clip's own sound removes against another clip's; 4 windows of
each test clip; 0 for a model deaf to its sound).
``--with_shr`` also runs the demo's SHR model after each motion sample (as ``make demo`` does) and judges its
clips too (the ``shr_*`` columns). ``--sample_args`` adds sampling flags to every row (e.g. ``--audio_cfg_scale
3`` for a variant trained with ``--audio_dropout``); each setting samples into its own folder. Finished runs are
reused. Prints a markdown table and writes the rows with ``--json``.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Sequence
from pathlib import Path

import numpy as np

FIGURES = ("colour_frame_acc", "onset_f1", "onset_f1_chance", "moved", "onset_windows_moved", "audio_gain")
SHR_FIGURES = ("shr_colour_frame_acc", "shr_onset_f1", "shr_onset_f1_chance")
RELIANCE_WINDOWS = 4  # windows per test clip (crop seeds 0..3) for the audio reliance


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="work folder (finished runs there are reused)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME[:STEPS]=FLAGS",
                   help="train_temp.py flags added to the demo's motion training (repeatable; 'demo=' is the demo's "
                        "own model; default: demo=)")
    p.add_argument("--skips", type=int, nargs="+", default=[700], help="sampling starts, steps skipped of 1000")
    p.add_argument("--n_test", type=int, default=64, help="test clips (the first 16 are the demo's)")
    p.add_argument("--demo_args", default="", help="extra scripts/demo.py flags for the base run (tests: fewer steps)")
    p.add_argument("--sample_args", default="", help="extra sample_motion_optim.py flags for every variant's sampling "
                   "(e.g. --audio_cfg_scale 3)")
    p.add_argument("--with_shr", action="store_true", help="also refine with the demo's SHR model and judge that")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def parse_variant(text: str) -> tuple[str, int | None, str]:
    """``NAME[:STEPS]=FLAGS`` -> (name, steps or None, flags); a malformed one is a one-line ``SystemExit``."""
    name, eq, flags = text.partition("=")
    name, _, steps = name.partition(":")
    if not eq or not name or (steps and not steps.isdigit()):
        raise SystemExit(f"--variant {text!r}: write NAME=FLAGS or NAME:STEPS=FLAGS (e.g. whole:1500=\"--max_t 0\")")
    return name, int(steps) if steps else None, flags


def base_run(out: Path, n_test: int, extra: list[str]):
    """The demo's data and tia2v stages in ``out`` (reused when finished); returns the demo's run object."""
    from tav_scripts import demo

    return demo.main(["--out", str(out), "--ckpt_dir", str(out / "ckpts"), "--stages", "data", "tia2v",
                      "--n_test", str(n_test), "--n_sample", str(n_test), *extra])


def train_variant(run, root: Path, steps: int | None, flags: str) -> Path:
    """The demo's motion model trained with ``flags`` into ``root`` (reused when it holds an export)."""
    import copy

    from tav_scripts import demo_tia2v

    vrun = copy.copy(run)
    vrun.args = copy.copy(run.args)
    if steps is not None:
        vrun.args.tia2v_motion_steps = steps
    enc = demo_tia2v.tiny_encoders(Path(run.args.ckpt_dir))
    argv = demo_tia2v.motion_argv(vrun, enc, run.state["tia2v_models"]["content"], root) + shlex.split(flags)
    return demo_tia2v._train("motion", root, argv)


def sample_and_judge(run, motion: Path, skip: int, save: Path, extra: Sequence[str] = (), shr: bool = False) -> dict:
    """``sample_motion_optim.py`` as the demo runs it, from ``t = 999 - skip``, with the demo's SHR model after
    it when ``shr`` (else none); the judges of the motion model's clips (and of the SHR clips: ``shr_*``)."""
    from tav.metrics.synthetic import summarize
    from tav.metrics.synthetic_folders import judge_item, results_items
    from tav_scripts import demo_tia2v, sample_motion_optim

    enc = demo_tia2v.tiny_encoders(Path(run.args.ckpt_dir))
    folder = save / f"{demo_tia2v.DEMO_RUN}_tacm_urmp"
    command = demo_tia2v.sample_command(run, enc, {**run.state["tia2v_models"], "motion": motion})
    # the sampler resumes: samples already in the folder are kept
    if sample_motion_optim.main([*command[1:], *([] if shr else ["--skip_shr"]), "--skip_timesteps", str(skip),
                                 "--save", str(save), *extra]):
        raise SystemExit(f"sample_motion_optim.py failed for {motion} from skip {skip} (its error is above)")
    items, _ = results_items(folder)
    verdicts = [judge_item(it)[0] for it in items["fake_stage1"]]
    s = summarize(verdicts)
    onset_windows = [v for v in verdicts if v.onsets]
    judged = {"n": len(verdicts), "colour_frame_acc": s["colour_frame_acc"], "onset_f1": s["onset_f1"],
              "onset_f1_chance": s.get("onset_f1_chance"),
              "moved": float(np.mean([len(v.events) > 0 for v in verdicts])),
              "onset_windows_moved": float(np.mean([len(v.events) > 0 for v in onset_windows])) if onset_windows
              else None, "windows_with_onset": len(onset_windows) / max(len(verdicts), 1)}
    if shr:
        r = summarize([judge_item(it)[0] for it in items["fake_stage2"]])
        judged.update(shr_colour_frame_acc=r["colour_frame_acc"], shr_onset_f1=r["onset_f1"],
                      shr_onset_f1_chance=r.get("onset_f1_chance"))
    return judged


def reliance_batch(motion: Path, data_root: Path, cache_dir: Path, windows: int = RELIANCE_WINDOWS) -> dict:
    """``windows`` seeded windows of every test clip (crop seeds 0, 1, ...), stacked as the
    motion model's batch (``tav.tia2v.reliance.audio_reliance``), under the data config of ``motion``'s run."""
    from dataclasses import replace

    import torch
    import yaml

    from tav.config import from_dict
    from tav.data.config import DataConfig
    from tav.tia2v.data import TIA2VDataset
    from tav.tia2v.reliance import BATCH_KEYS

    config = yaml.safe_load((motion.parent / "config.yaml").read_text(encoding="utf-8"))
    data = from_dict(DataConfig, config["data"], "data")
    items = [item for seed in range(windows) for item in
             TIA2VDataset(data_root, "test", replace(data, crop_seed=seed), cache_dir, train=False)]
    return {k: torch.stack([item[k] for item in items]) for k in BATCH_KEYS}


def audio_gain(motion: Path, batch: dict, t: int) -> float | None:
    """How much of the error on the frames that change the right sound removes, from copies of frame 0 at
    ``t`` (where the sampler starts): ``Reliance.gain`` of ``tav.tia2v.reliance``."""
    from tav.tia2v.load import load_tia2v_unet
    from tav.tia2v.reliance import audio_reliance

    return audio_reliance(load_tia2v_unet(motion, "motion"), batch, [t], start="first")[0].gain


def learned_max_t(motion: Path) -> int:
    """``process.max_t`` of the training run that exported ``motion`` (0: the whole chain)."""
    import yaml

    config = yaml.safe_load((motion.parent / "config.yaml").read_text(encoding="utf-8"))
    return int((config.get("process") or {}).get("max_t") or 0)


def markdown(rows: list[dict]) -> str:
    figures = FIGURES + (SHR_FIGURES if any(SHR_FIGURES[0] in r for r in rows) else ())
    head = "| variant | steps | flags | start | " + " | ".join(figures) + " |"
    lines = [head, "|---" * (4 + len(figures)) + "|"]
    for r in rows:
        cells = ["-" if r.get(k) is None else f"{r[k]:.2f}" for k in figures]
        lines.append(f"| {r['variant']} | {r['steps']} | `{r['flags']}` | t = {999 - r['skip']} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    variants = [parse_variant(v) for v in args.variant or ["demo="]]
    run = base_run(args.out / "base", args.n_test, shlex.split(args.demo_args))
    rows, batch = [], None
    for name, steps, flags in variants:
        if name == "demo" and not flags and steps is None:
            motion, steps = run.state["tia2v_models"]["motion"], run.args.tia2v_motion_steps
        else:
            steps = steps or run.args.tia2v_motion_steps
            motion = train_variant(run, args.out / f"{name}_{steps}", steps, flags)
        max_t = learned_max_t(motion)
        for skip in args.skips:
            if max_t and 999 - skip >= max_t:
                print(f"  {name}: learned t < {max_t} only, not sampled from t = {999 - skip}")
                continue
            tag = re.sub(r"[^A-Za-z0-9.]+", "_", args.sample_args + (" shr" if args.with_shr else "")).strip("_")
            judged = sample_and_judge(run, motion, skip, motion.parent / f"skip{skip}{'_' + tag if tag else ''}",
                                      shlex.split(args.sample_args), args.with_shr)
            batch = batch or reliance_batch(motion, run.state["data_root"], run.out / "tia2v_cache")
            judged["audio_gain"] = audio_gain(motion, batch, 999 - skip)
            rows.append({"variant": name, "steps": steps, "flags": flags, "skip": skip, "sample_args": args.sample_args,
                         **judged})
            print(f"  {name} ({steps} steps) from t = {999 - skip}: " + ", ".join(
                f"{k} {judged[k]:.3f}" for k in FIGURES + SHR_FIGURES if judged.get(k) is not None), flush=True)
    print(markdown(rows))
    record = {"n_test": args.n_test, "rows": rows}
    if args.json is not None:
        from tav.utils.fileio import dumps_strict, write_text_atomic

        write_text_atomic(args.json, dumps_strict(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    main()
