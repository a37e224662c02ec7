"""Stage 1 alone (GPT codes decoded by their VQGAN) on the demo's test captions, several seeds per caption:
how often the clips show the caption's colour and shape. Compares demo checkpoint folders side by side, or
GPT recipes trained on one VQGAN.

    python benchmarks/bench_demo_stage1.py --ckpt_dir demo=saved_ckpts/demo [--ckpt_dir other=DIR ...]
                                           [--data results/demo/data] [--reps 6] [--split test|train]
                                           [--cfg_scale S] [--top_k K] [--top_p P] [--temperature T]
                                           [--json OUT.json]
    python benchmarks/bench_demo_stage1.py --train A="--set pos_emb=absolute --base_lr 1e-3" \
        --train B="--set pos_emb=axial --base_lr 4e-3" --seeds 1234 1 2 --out /tmp/bench_gpt \
        [--vqgan saved_ckpts/demo/vqgan.ckpt] [--steps N] [--data ...] [--reps 6] [--json OUT.json]

Each folder holds ``gpt.ckpt`` and ``vqgan.ckpt`` (what ``make demo`` leaves in ``saved_ckpts/demo/``). Each
``--train`` recipe is the demo's GPT training (``demo_stages.gpt_argv``: preset ``demo``, ``--steps`` steps, in the
precision ``make demo`` trains it in on this CPU, ``demo_stages.gpt_precision``) with its flags appended, once per
``--seeds`` seed, in ``<out>/<NAME>_s<seed>`` (a finished run folder is reused); its validation loss is reported
with the judges, which are pooled over the seeds. Seed 1234 is the demo's own. The preset is read when each run
starts, so a recipe should set every field it compares rather than lean on the preset's values. The GPT is sampled
as the demo samples it unless told otherwise (``--top_k``, ``--top_p``, ``--temperature``, ``--cfg_scale``): top-k
2048, top-p 0.8, temperature 1 (``demo_stages.DEMO_TEMPERATURE``; top-p 0.4 at dba4d6a, temperature 0.5 from
ef0ee6e to 42b411b), classifier-free
guidance 2 when it trained with caption dropout (``bench_quality.demo_cfg_scale``); seed ``--first_seed + rep * 100
+ i`` for caption ``i`` of repetition ``rep`` (``--first_seed 404``: repetition 0 draws the demo's own codes, judged
here without the demo's mp4 round trip); in fp32 unless ``--precision bf16``. Clips are judged at the VQGAN's
resolution. Values are means with a 95% confidence interval over the ``reps × captions`` clips (× seeds). With two
or more repetitions it also reports what sampling costs in variety (:func:`draw_variety`): the position spread (the
mean distance between the shape's centre in two draws of one caption, fraction of the side; the same between two
real clips of the split cut to a draw's length is printed as the reference) and the share of identical draws.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from bench_quality import demo_cfg_scale, mean_ci, run_info

from tav.utils.fileio import write_text_atomic
from tav_scripts.demo_stages import DEMO_TEMPERATURE, DEMO_TOP_K, DEMO_TOP_P

TOP_K, TOP_P, TEMPERATURE = DEMO_TOP_K, DEMO_TOP_P, DEMO_TEMPERATURE  # the demo's sampling
JUDGED = ("colour_acc", "shape_acc")
REPORTED = (*JUDGED, "dark")  # dark: the share of clips with no shape in any frame


def split_captions(data: Path, split: str = "test") -> list[str]:
    """Captions of one split of the demo dataset, in manifest order."""
    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
    return [r["caption"] for r in rows if r["split"] == split]


def real_position_spread(data: Path, split: str = "test", n_frames: int = 8) -> float | None:
    """The same spread over the split's real clips, each cut to its first ``n_frames`` (the length of a draw): the
    mean distance between the shape's mean centres of two clips (fraction of the side; their positions follow
    their melodies), the reference for ``position_spread``."""
    import numpy as np

    from tav.data.layout import clip_files
    from tav.data.video import read_video
    from tav.metrics.synthetic import judge_video

    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
    centres = []
    for r in (r for r in rows if r["split"] == split):
        frames, fps = read_video(clip_files(data / split, r["stem"]).mp4)
        verdict = judge_video(frames[:n_frames], fps)
        if verdict.features.any():
            centres.append(verdict.features[[5, 7]])
    gaps = [np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[:i]]
    return float(np.mean(gaps)) if gaps else None


def draw_variety(draws: list, centres: list) -> dict | None:
    """How much the draws of one caption differ, from one entry per repetition (the same B captions in each):
    ``draws`` ``(B, ...)`` codes, ``centres`` ``(B, 2)`` the shape's mean centre over the clip as fractions of the
    side (NaN where no shape was seen). Returns ``{"position_spread": mean distance between the centres of two draws
    of a caption (fraction of the side), "identical_pairs": share of pairs of draws with the same codes}``, averaged
    over the pairs of repetitions and the captions (pairs with an unseen shape left out of the spread), or None for
    fewer than two repetitions."""
    import numpy as np
    import torch

    if len(draws) < 2:
        return None
    codes = torch.stack([d.reshape(d.shape[0], -1) for d in draws])  # (R, B, N)
    where = np.stack(centres)  # (R, B, 2)
    pairs = [(r, q) for r in range(len(draws)) for q in range(r)]
    same = torch.stack([(codes[r] == codes[q]).all(-1) for r, q in pairs]).float().mean().item()
    gaps = np.stack([np.linalg.norm(where[r] - where[q], axis=-1) for r, q in pairs])  # (pairs, B)
    seen = np.isfinite(gaps)
    return {"position_spread": float(gaps[seen].mean()) if seen.any() else None, "identical_pairs": same}


def judge_stage1(gpt_ckpt: Path, vqgan_ckpt: Path, captions: list[str], reps: int, precision: str = "32",
                 cfg_scale: float | None = None, first_seed: int = 0, top_k: int = TOP_K, top_p: float = TOP_P,
                 temperature: float = TEMPERATURE) -> dict:
    """``{judge: [mean, ci]}``, ``n``, ``cfg_scale``, ``by_shape`` (``{shape: [mean, ci]}`` of shape_acc over the
    captions naming it), ``by_rep`` (``[{judge: mean}]``, one per repetition), ``variety``
    (:func:`draw_variety` of the draws; None for one repetition) and ``dark`` (``[mean, ci]`` of the clips in which
    the judge sees no shape at all) for a GPT and its VQGAN on ``captions``; the GPT
    decodes under ``precision`` (``32`` or ``bf16`` autocast) with classifier-free guidance ``cfg_scale`` (None:
    the demo's for this GPT), ``top_k``, ``top_p`` and ``temperature``; caption ``i`` of repetition ``rep`` draws
    with seed ``first_seed + rep * 100 + i``."""
    import numpy as np
    import torch

    from tav.data.text import build_tokenizer
    from tav.data.video import to_uint8
    from tav.gpt import sample_codes
    from tav.gpt.load import load_stage1
    from tav.metrics.synthetic import judge_video, parse_caption
    from tav.utils.runtime import autocast

    gpt, vqgan = load_stage1(gpt_ckpt, vqgan_ckpt)
    cfg_scale = demo_cfg_scale(gpt_ckpt) if cfg_scale is None else cfg_scale
    ids = build_tokenizer("bert", gpt.cfg.text_seq_len)(captions)
    scores: dict[str, list[float]] = {k: [] for k in JUDGED}
    by_shape: dict[str, list[float]] = {}
    by_rep: list[dict[str, float]] = []
    draws, centres, dark = [], [], []
    for rep in range(reps):
        seeds = [first_seed + rep * 100 + i for i in range(len(captions))]
        before = {k: len(v) for k, v in scores.items()}
        with torch.inference_mode():
            with autocast(precision, torch.device("cpu")):
                codes = sample_codes(gpt, ids, temperature=temperature, top_k=top_k, top_p=top_p, seeds=seeds,
                                     cfg_scale=cfg_scale)
            draws.append(codes)
            videos = vqgan.decode(codes).clamp(-0.5, 0.5)  # (B, 3, T, H, W) in [-0.5, 0.5]
        centres.append(np.full((len(captions), 2), np.nan))
        for i, (video, caption) in enumerate(zip(videos, captions, strict=True)):
            verdict = judge_video(to_uint8(video).numpy(), 30.0, caption=caption)
            seen = bool(verdict.features.any())  # False: no shape in any frame, a dark clip
            dark.append(float(not seen))
            if seen:  # features 5 and 7: the shape's mean centre x and y (judge_video)
                centres[-1][i] = verdict.features[[5, 7]]
            for key in JUDGED:
                if getattr(verdict, key) is not None:
                    scores[key].append(getattr(verdict, key))
            shape = parse_caption(caption)[1]
            if shape is not None and verdict.shape_acc is not None:
                by_shape.setdefault(shape, []).append(verdict.shape_acc)
        by_rep.append({k: sum(v[before[k]:]) / (len(v) - before[k]) for k, v in scores.items() if len(v) > before[k]})
    return {"n": len(scores["colour_acc"]), "cfg_scale": cfg_scale, "frames": int(videos.shape[2]),
            **{k: list(mean_ci(v)) for k, v in scores.items()},
            "by_shape": {k: list(mean_ci(v)) for k, v in sorted(by_shape.items())}, "by_rep": by_rep,
            "variety": draw_variety(draws, centres), "dark": list(mean_ci(dark)),
            "values": {**scores, "dark": dark}}


def train_runs(args: argparse.Namespace, n_train: int) -> dict[str, list[tuple[int, Path]]]:
    """Train (or reuse) every ``--train`` recipe at every seed: ``{name: [(seed, checkpoint), ...]}``."""
    import torch

    from tav.utils.runtime import resolve_precision
    from tav_scripts import train_text_transformer
    from tav_scripts.demo_stages import _trained, gpt_argv, gpt_precision

    precision = gpt_precision(resolve_precision("auto", torch.device("cpu")))  # make demo's choice on this CPU
    runs: dict[str, list[tuple[int, Path]]] = {}
    for name, flags in args.recipes.items():
        for seed in args.seeds:
            root = args.out / f"{name}_s{seed}"
            argv = [*gpt_argv(args.vqgan, args.data, root, n_train, args.steps, precision), "--seed", str(seed),
                    *flags]
            runs.setdefault(name, []).append((seed, _trained(root, argv, train_text_transformer.train)))
    return runs


def val_loss(ckpt: Path) -> float | None:
    """The last ``val_text_loss`` in the run folder's ``metrics.jsonl`` (``ckpt`` is in ``<run>/checkpoints``)."""
    log = ckpt.parent.parent / "metrics.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    losses = [r["val_text_loss"] for r in rows if "val_text_loss" in r]
    return losses[-1] if losses else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt_dir", action="append", default=[], metavar="NAME=DIR",
                   help="a name and a folder with gpt.ckpt and vqgan.ckpt (repeatable)")
    p.add_argument("--train", action="append", default=[], metavar="NAME=FLAGS",
                   help="a GPT recipe: a name and train_text_transformer.py flags added to the demo's (repeatable)")
    p.add_argument("--vqgan", type=Path, default=Path("saved_ckpts/demo/vqgan.ckpt"), help="--train: the VQGAN")
    p.add_argument("--seeds", type=int, nargs="+", default=[1234], help="--train: training seeds")
    p.add_argument("--steps", type=int, default=None,
                   help="--train: GPT training steps (default: the demo's, scripts/demo.py --gpt_steps)")
    p.add_argument("--out", type=Path, default=None, help="--train: folder of the run folders")
    p.add_argument("--data", type=Path, default=Path("results/demo/data"), help="the demo dataset")
    p.add_argument("--reps", type=int, default=6, help="seeds per caption")
    p.add_argument("--first_seed", type=int, default=0,
                   help="caption i of repetition r draws with seed FIRST_SEED + 100 r + i (404: repetition 0 is the "
                        "demo's own draw, sample_tav.py's default --seed)")
    p.add_argument("--split", choices=["test", "train"], default="test",
                   help="whose captions (train: choose a sampling setting without looking at the test split)")
    p.add_argument("--cfg_scale", type=float, default=None,
                   help="the GPT's classifier-free guidance (default: the demo's, for a GPT trained with caption "
                        "dropout)")
    p.add_argument("--top_k", type=int, default=TOP_K, help="the GPT's top-k (default: the demo's)")
    p.add_argument("--top_p", type=float, default=TOP_P, help="the GPT's top-p (default: the demo's)")
    p.add_argument("--temperature", type=float, default=TEMPERATURE, help="the GPT's temperature (default: the demo's)")
    p.add_argument("--precision", choices=["32", "bf16"], default="32",
                   help="the GPT decodes in fp32 (the samplers' choice on a CPU) or under bf16 autocast")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error(f"--reps {args.reps}: must be >= 1")
    if args.first_seed < 0:
        p.error(f"--first_seed {args.first_seed}: must be >= 0")
    if args.cfg_scale is not None and args.cfg_scale < 0:
        p.error(f"--cfg_scale {args.cfg_scale}: must be >= 0 (1 = no guidance)")
    if args.top_k < 1:
        p.error(f"--top_k {args.top_k}: must be >= 1")
    if not 0 < args.top_p <= 1:
        p.error(f"--top_p {args.top_p}: must be in (0, 1]")
    if args.temperature <= 0:
        p.error(f"--temperature {args.temperature}: must be > 0")
    if not args.ckpt_dir and not args.train:
        p.error("give --ckpt_dir NAME=DIR or --train NAME=FLAGS (or both)")
    folders = {}
    for item in args.ckpt_dir:
        name, sep, folder = item.partition("=")
        if not sep or not name:
            p.error(f"--ckpt_dir {item!r}: expected NAME=DIR")
        for file in ("gpt.ckpt", "vqgan.ckpt"):
            if not (Path(folder) / file).is_file():
                p.error(f"--ckpt_dir {item}: {Path(folder) / file} is missing; run `make demo` first")
        folders[name] = Path(folder)
    recipes = {}
    for item in args.train:
        name, sep, flags = item.partition("=")
        if not sep or not name or "/" in name:
            p.error(f"--train {item!r}: expected NAME=FLAGS (NAME without '/')")
        recipes[name] = shlex.split(flags)
    if recipes and args.out is None:
        p.error("--train needs --out DIR for the run folders")
    if recipes and not args.vqgan.is_file():
        p.error(f"--vqgan {args.vqgan}: no such file; run `make demo` first (or pass a VQGAN checkpoint)")
    if args.steps is None:
        from tav_scripts.demo import parse_args as demo_options

        args.steps = demo_options([]).gpt_steps
    if args.steps < 1:
        p.error(f"--steps {args.steps}: must be >= 1")
    if not (args.data / "manifest.jsonl").is_file():
        p.error(f"--data {args.data}: no manifest.jsonl; run `make demo` first (or pass the demo dataset)")
    args.folders, args.recipes = folders, recipes
    return args


def sampling(args: argparse.Namespace) -> tuple[int, float, float]:
    """``(top_k, top_p, temperature)`` from the options."""
    return args.top_k, args.top_p, args.temperature


def draw_frames(results: dict) -> int:
    """Frames of a draw (the VQGAN's clip length), from any judged result; 8 (the demo's) when none has it."""
    return next((r["frames"] for r in results.values() if "frames" in r), 8)


def variety_cells(result: dict) -> str:
    """``"  position spread 0.123, identical pairs 0.05"`` where ``result`` has :func:`draw_variety`'s figures."""
    v = result.get("variety")
    if not v or v["position_spread"] is None:
        return ""
    return f"  position spread {v['position_spread']:.3f}, identical pairs {v['identical_pairs']:.2f}"


def shape_cells(result: dict) -> str:
    """``"  (circle 0.97, diamond 0.14, ...)"``: shape_acc per named shape, where ``result`` has it."""
    shapes = result.get("by_shape")
    return "  (" + ", ".join(f"{k} {v[0]:.2f}" for k, v in shapes.items()) + ")" if shapes else ""


def main(argv: list[str] | None = None) -> dict:
    from tav.utils.console import configure_output

    args = parse_args(argv)
    configure_output()  # as the demo: our log lines, not Lightning's device lines and tips
    captions = split_captions(args.data, args.split)
    if not captions:
        raise SystemExit(f"--data {args.data}: no {args.split} captions in manifest.jsonl")
    results = {name: judge_stage1(folder / "gpt.ckpt", folder / "vqgan.ckpt", captions, args.reps, args.precision,
                                  args.cfg_scale, args.first_seed, *sampling(args))
               for name, folder in args.folders.items()}
    n_train = len(split_captions(args.data, "train"))
    trained = train_runs(args, n_train) if args.recipes else {}
    for name, runs in trained.items():
        per_seed = {str(seed): {"val_loss": val_loss(ckpt),
                                **judge_stage1(ckpt, args.vqgan, captions, args.reps, args.precision,
                                               args.cfg_scale, args.first_seed, *sampling(args))}
                    for seed, ckpt in runs}
        pooled = {k: [v for r in per_seed.values() for v in r["values"][k]] for k in REPORTED}
        results[name] = {"flags": shlex.join(args.recipes[name]), "per_seed": per_seed,
                         "n": len(pooled["colour_acc"]), "cfg_scale": next(iter(per_seed.values()))["cfg_scale"],
                         "frames": next(iter(per_seed.values()))["frames"],
                         **{k: list(mean_ci(v)) for k, v in pooled.items()}}
    record = {**run_info(), "reps": args.reps, "first_seed": args.first_seed, "split": args.split,
              "real_position_spread": real_position_spread(args.data, args.split, draw_frames(results)),
              "captions": len(captions), "top_k": args.top_k,
              "top_p": args.top_p, "temperature": args.temperature,
              "precision": args.precision, "results": results}
    if trained:
        record.update(vqgan=str(args.vqgan), steps=args.steps, seeds=args.seeds)
    print(f"stage 1 on {len(captions)} {args.split} captions x {args.reps} seeds, decoded in {args.precision} "
          "(mean ± 95% CI)")
    if record["real_position_spread"] is not None:
        print(f"  real clips: position spread {record['real_position_spread']:.3f} (between two clips of the split)")
    for name, r in results.items():
        cells = "  ".join(f"{k} {r[k][0]:.3f} ± {r[k][1]:.3f}" for k in REPORTED if k in r)
        print(f"  {name:<16} cfg {r['cfg_scale']:g}  {cells}{shape_cells(r)}{variety_cells(r)}")
        for seed, one in r.get("per_seed", {}).items():
            cells = "  ".join(f"{k} {one[k][0]:.3f}" for k in REPORTED if k in one)
            print(f"    seed {seed:<10} val_loss {one['val_loss']:.3f}  {cells}{shape_cells(one)}{variety_cells(one)}")
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    from tav.errors import InputError

    try:
        main()
    except InputError as err:  # a bad checkpoint or dataset: one line, not a traceback
        raise SystemExit(f"bench_demo_stage1.py: error: {err}") from None
