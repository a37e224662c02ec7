"""Quality tables of the TA2V sampler on the demo test set, measured by the synthetic-domain judges.

    python benchmarks/bench_quality.py [--ckpt_dir saved_ckpts/demo] [--data results/demo/data] [--n 16]
                                       [--json OUT.json] [--md OUT.md] [--tables ablation steps precision starts]
                                       [--split test|train] [--starts SKIP ...]

Needs the demo's checkpoints (``make demo`` leaves them in ``saved_ckpts/demo/``: VQGAN, GPT, diffusion prior,
the joint encoder) and its dataset. Every row runs ``scripts/sample_tav.py`` on the first ``--n`` test clips (or
training clips with ``--split train``, where the demo's sampling settings are chosen)
(per-sample seeds 0..n-1, so every row starts from the same stage-1 clips) and judges the results with
``tools/synthetic_judge.py``'s judges. Values are means with a 95% confidence interval (1.96 standard errors
over the clips); ``s/video`` is the stage-2 time per video. Below each table, its rows minus a reference row
(``PAIRED_REFS``: stage 1, the unguided chain, DDPM 100, fp32), clip by clip: rows share the per-sample seeds, so
the spread between clips that two rows share cancels, and a difference resolves where the rows' own intervals
overlap. ``--data`` may name a demo dataset with more test clips (``make_demo_dataset.py --n_test 64``: the
first 16 are the demo's) for ``--n`` up to its size.

Tables:
- ``ablation``: real / real judged against rotated captions (a control) / stage 1 / stage 2 without guidance /
  + audio / + direction / + text (each term alone) / all terms (the joint encoder), and all terms with
  AudioCLIP-architecture random weights (the control);
- ``steps``: respaced DDPM 25 / 50 / 100 / 200 and DDIM 10 / 25 / 50, all terms, the SDEdit start at the same
  point of each chain as the demo's (``--skip_timesteps`` 95 of 100: the last twentieth is run; at least one
  step), and with ``--upstream_steps 4000`` the unrespaced chain upstream sampled;
- ``precision``: fp32 against bf16 autocast at the default steps;
- ``starts`` (not by default): the SDEdit start, all terms and no guidance from each ``--starts`` value (default
  ``START_SKIPS``);
- ``weights`` (not by default): the guidance weights ``--weights A:D:T ...`` (audio, direction, text), one row each.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tav.utils.fileio import write_text_atomic
from tav_scripts.demo_sample import DEMO_BLUR, DEMO_SIZE, DEMO_SKIP
from tav_scripts.demo_stages import DEMO_TEMPERATURE, DEMO_TOP_K, DEMO_TOP_P

REPO = Path(__file__).resolve().parent.parent
JUDGES = ("colour_acc", "shape_acc", "onset_f1", "pitch_height", "flicker")
SKIP = DEMO_SKIP / 100  # share of the respaced chain stage 2 skips: the demo's --skip_timesteps of 100
START_SKIPS = (75, 85, 90, 95)  # the starts table's --skip_timesteps (of 100)
STAGE1 = "stage 1 (GPT + VQGAN)"
# the rows each table's other rows are compared with, clip by clip: stage 1 (issue 16's stage-2 targets are relative
# to it), the unguided chain (what a guidance term adds), the demo's chain (DDPM 100) and fp32
PAIRED_REFS = {"ablation": (STAGE1, "stage 2, no guidance"), "steps": ("DDPM 100",), "precision": ("fp32",),
               "starts": (STAGE1,), "weights": (STAGE1,)}
NO_GUIDANCE = {"audio_guidance_lambda": 0, "direction_lambda": 0, "text_guidance_lambda": 0}


def ablation_rows(lambdas: dict[str, float]) -> list[tuple[str, dict]]:
    """(label, flag overrides) of the guidance ablation; ``lambdas`` are the default weights."""
    alone = {name: {**NO_GUIDANCE, flag: lambdas[flag]} for name, flag in
             (("+ audio", "audio_guidance_lambda"), ("+ direction", "direction_lambda"),
              ("+ text", "text_guidance_lambda"))}
    return [("stage 2, no guidance", dict(NO_GUIDANCE)), *alone.items(), ("all terms (joint encoder)", {}),
            ("all terms, random AudioCLIP + CLIP (control)", {"audio_emb_model": "audioclip",
                                                              "text_guidance_model": "clip"})]


def steps_rows(ddpm=(25, 50, 100, 200), ddim=(10, 25, 50), skip: float = SKIP,
               upstream_steps: int | None = None) -> list[tuple[str, dict]]:
    """(label, overrides) of the steps table: SDEdit from the same point of each chain (``skip`` of it skipped,
    at least one step run); ``upstream_steps`` (the process's length, e.g. 4000) adds the unrespaced chain upstream
    sampled."""
    def start(n: int) -> int:
        return min(n - 1, round(skip * n))

    rows = [(f"DDPM {n}", {"timestep_respacing": str(n), "skip_timesteps": start(n)}) for n in ddpm]
    rows += [(f"DDIM {n}", {"timestep_respacing": f"ddim{n}", "skip_timesteps": start(n), "ddim": True})
             for n in ddim]
    if upstream_steps:
        rows.append((f"DDPM {upstream_steps} (upstream: every step)",
                     {"timestep_respacing": "", "skip_timesteps": start(upstream_steps)}))
    return rows


def start_rows(skips: Sequence[int] = START_SKIPS) -> list[tuple[str, dict]]:
    """(label, overrides) of the starts table: all terms and no guidance from each SDEdit start (of 100 steps)."""
    return [row for k in skips for row in ((f"all terms, skip {k}", {"skip_timesteps": k}),
                                           (f"no guidance, skip {k}", {**NO_GUIDANCE, "skip_timesteps": k}))]


def weight_rows(triples: Sequence[str]) -> list[tuple[str, dict]]:
    """(label, overrides) of the weights table from ``"A:D:T"`` strings (audio, direction, text λ)."""
    rows = []
    for triple in triples:
        try:
            a, d, t = (float(x) for x in triple.split(":"))
        except ValueError:
            sys.exit(f"--weights {triple!r}: expected AUDIO:DIRECTION:TEXT, e.g. 10000:5000:10000")
        rows.append((f"λ {a:g} / {d:g} / {t:g}", {"audio_guidance_lambda": a, "direction_lambda": d,
                                                  "text_guidance_lambda": t}))
    return rows


def mean_ci(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and 95% CI half-width (1.96 standard errors; 0 for a single value) of the finite values."""
    xs = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if len(xs) == 0:
        return None, None
    half = 1.96 * xs.std(ddof=1) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0
    return float(xs.mean()), float(half)


def paired_differences(rows: dict[str, dict], ref: str) -> dict[str, dict]:
    """Each row minus row ``ref``, clip by clip: ``{label: {judge: [mean, ci, n]}}`` over the clips where both
    values exist (rows share the per-sample seeds, so clip k of every row starts from the same stage-1 clip).
    Pairing removes the spread between clips that two rows share, so the interval of a difference is narrower
    than the two rows' intervals suggest. Rows without ``per_clip`` values, and ``ref`` itself, are left out."""
    base = rows.get(ref, {}).get("per_clip")
    if not base:
        return {}
    out = {}
    for label, row in rows.items():
        clips = row.get("per_clip")
        if label == ref or not clips:
            continue
        out[label] = {}
        for key in JUDGES:
            diffs = [clips[c][key] - base[c][key] for c in clips
                     if c in base and clips[c][key] is not None and base[c][key] is not None]
            out[label][key] = [*mean_ci(diffs), len(diffs)]
    return out


def judge_run(folder: Path, videos: str, rotate_captions: bool = False) -> dict:
    """Judges of one video folder of a results folder: ``{judge: [mean, ci]}``, ``n``, ``s_per_video`` and
    ``per_clip`` (``{sample key: {judge: value}}``, for :func:`paired_differences`).
    ``rotate_captions`` judges video i against caption i+1 (a constructed negative control)."""
    import dataclasses

    from tav.metrics.synthetic_folders import judge_item, results_items

    items, _ = results_items(folder)
    chosen = items[videos]
    if rotate_captions:
        chosen = [dataclasses.replace(it, caption=chosen[(i + 1) % len(chosen)].caption) for i, it in enumerate(chosen)]
    from tav.metrics.synthetic import onset_f1_chance

    verdicts = [judge_item(it)[0] for it in chosen]
    judged = [v.scores() for v in verdicts]
    out: dict = {"n": len(judged)}
    for key in JUDGES:
        out[key] = list(mean_ci([j[key] for j in judged]))
    out["per_clip"] = {str(it.key): {k: j[k] for k in JUDGES} for it, j in zip(chosen, judged, strict=True)}
    out["onset_f1_chance"] = onset_f1_chance(verdicts)[0]  # each clip's motion against the other clips' sound
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    secs = [r.get("seconds", {}).get("stage2") for r in rows]  # per sample, written by the sampler
    out["s_per_video"] = float(np.mean([s for s in secs if s is not None])) if any(s is not None for s in secs) \
        else None
    return out


@functools.cache
def demo_cfg_scale(gpt_ckpt: Path) -> float:
    """The demo's ``--gpt_cfg_scale`` for this GPT file: ``DEMO_CFG`` when it trained with caption dropout (the demo's
    GPT since commit 4d79a66), else 1 (no guidance: a GPT without an unconditional model cannot be guided)."""
    from tav.gpt.load import read_gpt_checkpoint
    from tav_scripts.demo_stages import DEMO_CFG

    return DEMO_CFG if read_gpt_checkpoint(gpt_ckpt)[0].text_dropout > 0 else 1.0


def sample_argv(ckpt: Path, data: Path, save: Path, n: int, overrides: dict, extra: Sequence[str] = ()) -> list[str]:
    """``sample_tav.py`` flags of the demo's sampling command (stage 1 guided as the demo guides it) with
    ``overrides`` (flag -> value; True = switch), then the ``extra`` flags (they win: argparse keeps the last value)."""
    flags = {"gpt_text_ckpt": ckpt / "gpt.ckpt", "vqgan_ckpt": ckpt / "vqgan.ckpt", "diffusion_ckpt":
             ckpt / "diffusion.pt", "data_path": data, "top_k": DEMO_TOP_K, "top_p": DEMO_TOP_P,
             "temperature": DEMO_TEMPERATURE, "n_sample": n,
             "run": "bench", "dataset": "URMP", "load_vid_len": 90, "resolution": 32, "batch_size": 4,
             "sequence_length": 8,
             "model_output_size": DEMO_SIZE, "iterations_num": 1, "audio_emb_model": "joint", "text_guidance_model":
             "joint", "joint_ckpt": ckpt / "joint_encoder.pt", "audioclip_ckpt": ckpt / "audioclip_random.pt",
             "clip_ckpt": ckpt / "clip_random.pt", "audio_guidance_lambda": 10000, "direction_lambda": 5000,
             "text_guidance_lambda": 10000, "skip_timesteps": DEMO_SKIP, "guidance_blur": DEMO_BLUR,
             "save": save, "progress": "false", "gpt_cfg_scale": demo_cfg_scale(ckpt / "gpt.ckpt")}
    flags.update(overrides)
    argv = ["--text_stft_cond"]
    for key, value in flags.items():
        if value is True:
            argv.append(f"--{key}")
        elif value is not False:
            argv += [f"--{key}", str(value)]
    return argv + list(extra)


def control_encoders(ckpt: Path) -> None:
    """Random-weight AudioCLIP and CLIP ViT-B/32 stand-ins (tiny, same classes) for the control row."""
    from tav.encoders.audioclip import save_tiny_audioclip
    from tav.encoders.clip import save_tiny_clip

    if not (ckpt / "audioclip_random.pt").is_file():
        save_tiny_audioclip(ckpt / "audioclip_random.pt")
    if not (ckpt / "clip_random.pt").is_file():
        save_tiny_clip(ckpt / "clip_random.pt")


def run_row(args, work: Path, label: str, overrides: dict, keep_real: bool = False) -> dict[str, dict]:
    """Sample one row into a scratch folder and judge it; ``keep_real`` also judges real and stage 1."""
    from tav_scripts import sample_tav

    save = work / f"row{len(list(work.iterdir()))}"
    folder = sample_tav.sample(sample_argv(args.ckpt_dir, args.data, save, args.n, overrides,
                                           shlex.split(args.sample_args)))
    out = {label: judge_run(folder, "fake_stage2")}
    if keep_real:
        out = {"real": judge_run(folder, "real"), "real, captions rotated (control)": judge_run(folder, "real", True),
               STAGE1: judge_run(folder, "fake_stage1"), **out}
        for key in list(out)[:3]:
            out[key]["s_per_video"] = None
    shutil.rmtree(save, ignore_errors=True)
    print(f"  {label}: " + ", ".join(f"{k} {out[label][k][0]:.3f}" for k in JUDGES if out[label][k][0] is not None),
          flush=True)
    return out


def run_table(args, work: Path, rows: list[tuple[str, dict]], keep_real: bool) -> dict[str, dict]:
    """Every row of one table; ``keep_real`` also judges real and stage 1 with the first row."""
    table: dict[str, dict] = {}
    for i, (label, over) in enumerate(rows):
        table.update(run_row(args, work, label, over, keep_real=keep_real and i == 0))
    return table


def _cell(value: list | None) -> str:
    return "-" if not value or value[0] is None else f"{value[0]:.2f} ± {value[1]:.2f}"


def paired_markdown(name: str, ref: str, diffs: dict[str, dict], n: int) -> list[str]:
    """One table of :func:`paired_differences`: each row minus ``ref``, mean ± 95% CI over the paired clips."""
    if not diffs:
        return []
    lines = [f"**{name}: difference from {ref}** (paired over the same {n} clips, mean ± 95% CI; "
             "an interval that excludes 0 is a difference these clips resolve)", "",
             "| setting | " + " | ".join(JUDGES) + " |", "|---" * (len(JUDGES) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(_cell(d[k]) for k in JUDGES) + " |" for label, d in diffs.items()]
    return [*lines, ""]


def markdown(tables: dict[str, dict[str, dict]], n: int, split: str = "test",
             paired: dict[str, dict[str, dict]] | None = None) -> str:
    """The tables as markdown: mean ± 95% CI per judge and seconds per video; then, per table, the paired
    differences from each of its references (``paired``: ``{table: {ref: paired_differences(...)}}``)."""
    parts = []
    for name, rows in tables.items():
        parts += [f"**{name}** (N = {n} demo {split} clips, mean ± 95% CI; onset chance: each clip's motion against "
                  "the other clips' sound)", "",
                  "| setting | " + " | ".join(JUDGES[:3]) + " | onset chance | " + " | ".join(JUDGES[3:])
                  + " | s/video |", "|---" * (len(JUDGES) + 3) + "|"]
        for label, r in rows.items():
            cells = [_cell(r[k]) for k in JUDGES]
            chance = r.get("onset_f1_chance")
            cells.insert(3, "-" if chance is None else f"{chance:.2f}")
            secs = "-" if r.get("s_per_video") is None else f"{r['s_per_video']:.2f}"
            parts.append(f"| {label} | " + " | ".join(cells) + f" | {secs} |")
        parts.append("")
        for ref, diffs in (paired or {}).get(name, {}).items():
            parts += paired_markdown(name, ref, diffs, n)
    return "\n".join(parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt_dir", type=Path, default=REPO / "saved_ckpts" / "demo", help="the demo's checkpoints")
    p.add_argument("--data", type=Path, default=REPO / "results" / "demo" / "data", help="the demo dataset")
    p.add_argument("--n", type=int, default=16, help="clips per row (the first n of the split)")
    p.add_argument("--split", choices=["test", "train"], default="test",
                   help="the clips to sample and judge: test (the tables), or train (to choose settings on)")
    p.add_argument("--tables", nargs="+", default=["ablation", "steps", "precision"],
                   choices=["ablation", "steps", "precision", "starts", "weights"])
    p.add_argument("--starts", nargs="+", type=int, default=list(START_SKIPS), metavar="SKIP",
                   help="the starts table's --skip_timesteps values (of 100)")
    p.add_argument("--weights", nargs="+", default=["10000:5000:10000"], metavar="A:D:T",
                   help="the weights table's audio:direction:text guidance weights, one row each")
    p.add_argument("--upstream_steps", type=int, default=0, help="also the unrespaced chain of this many steps "
                   "(the demo prior's 4000; about 30 s per video on 2 cores)")
    p.add_argument("--sample_args", default="", help="extra sample_tav.py flags for every row (they win)")
    p.add_argument("--json", type=Path, default=None, help="write the tables as JSON here")
    p.add_argument("--md", type=Path, default=None, help="write the markdown tables here")
    return p.parse_args(argv)


def run_info() -> dict:
    """Where a table was measured: the CPU's model name and bf16 units, cores, torch and its threads, and the git
    commit of this checkout (None outside one)."""
    import os
    import subprocess

    import torch

    from tav.utils.runtime import cpu_bf16_units, cpu_name

    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    commit = done.stdout.strip() if done.returncode == 0 else ""
    return {"machine": f"{cpu_name()} (bf16 units: {cpu_bf16_units() or 'none'}), {os.cpu_count()} cores, torch "
                       f"{torch.__version__}, {torch.get_num_threads()} thread(s)", "commit": commit or None}


def check_demo_inputs(ckpt_dir: Path, data: Path, split: str = "test") -> None:
    """Exit with one line unless ``make demo``'s checkpoints and the ``split`` are there; then make the control
    encoders."""
    for name in ("gpt.ckpt", "vqgan.ckpt", "diffusion.pt", "joint_encoder.pt"):
        if not (ckpt_dir / name).is_file():
            sys.exit(f"{ckpt_dir / name}: missing; run `make demo` first (or pass --ckpt_dir)")
    if not (data / split).is_dir():
        sys.exit(f"{data / split}: no demo {split} split; run `make demo` first (or pass --data)")
    control_encoders(ckpt_dir)


def split_as_test(data: Path, split: str, work: Path) -> Path:
    """The dataset root the sampler reads (it samples the ``test`` split): ``data`` itself for ``test``; else a
    folder in ``work`` whose ``test`` links to ``data/<split>`` and whose other entries link to ``data``'s."""
    if split == "test":
        return data
    view = work / f"data_{split}"
    view.mkdir()
    for entry in data.iterdir():
        if entry.name not in ("test", split):
            (view / entry.name).symlink_to(entry.resolve())
    (view / "test").symlink_to((data / split).resolve(), target_is_directory=True)
    return view


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    check_demo_inputs(args.ckpt_dir, args.data, args.split)
    defaults = {"audio_guidance_lambda": 10000, "direction_lambda": 5000, "text_guidance_lambda": 10000}
    with tempfile.TemporaryDirectory(prefix="bench_quality_") as tmp:
        work = Path(tmp) / "rows"
        work.mkdir()
        args.data = split_as_test(args.data, args.split, Path(tmp))
        tables = {name: run_table(args, work, rows, keep_real) for name, rows, keep_real in (
            ("ablation", ablation_rows(defaults), True),
            ("steps", steps_rows(upstream_steps=args.upstream_steps), False),
            ("precision", [("fp32", {"precision": "32"}), ("bf16 autocast", {"precision": "bf16"})], False),
            ("starts", start_rows(args.starts), True),
            ("weights", weight_rows(args.weights), True)) if name in args.tables}
    paired = {name: {ref: paired_differences(rows, ref) for ref in PAIRED_REFS[name] if ref in rows}
              for name, rows in tables.items()}
    record = {"n": args.n, "split": args.split, "judges": list(JUDGES), **run_info(), "tables": tables,
              "paired": paired}
    text = markdown(tables, args.n, args.split, paired)
    print(text)
    for path, content in ((args.json, json.dumps(record, indent=1) + "\n"), (args.md, text)):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, content)
    return record


if __name__ == "__main__":
    from tav.errors import InputError

    try:
        main()
    except InputError as err:  # a bad checkpoint or dataset: one line, not a traceback
        raise SystemExit(f"bench_quality.py: error: {err}") from None
