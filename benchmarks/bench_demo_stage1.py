"""Stage 1 alone (GPT codes decoded by their VQGAN) on the demo's test captions, several seeds per caption:
how often the clips show the caption's colour and shape. Compares demo checkpoint folders side by side.

    python benchmarks/bench_demo_stage1.py --ckpt_dir demo=saved_ckpts/demo [--ckpt_dir other=DIR ...]
                                           [--data results/demo/data] [--reps 6] [--json OUT.json]

Each folder holds ``gpt.ckpt`` and ``vqgan.ckpt`` (what ``make demo`` leaves in ``saved_ckpts/demo/``). The GPT
is sampled as the demo samples it: top-k 2048, top-p 0.8, classifier-free guidance 2 when it trained with
caption dropout (``bench_quality.demo_cfg_scale``); seed ``rep * 100 + i`` for caption ``i`` of repetition
``rep``. Clips are judged at the VQGAN's resolution. Values are means with a 95% confidence interval over the
``reps × captions`` clips.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_quality import demo_cfg_scale, mean_ci, run_info

from tav.utils.fileio import write_text_atomic

TOP_K, TOP_P = 2048, 0.8  # the demo's sample_tav.py flags
JUDGED = ("colour_acc", "shape_acc")


def split_captions(data: Path) -> list[str]:
    """Captions of the demo dataset's test split, in manifest order."""
    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
    return [r["caption"] for r in rows if r["split"] == "test"]


def judge_stage1(ckpt_dir: Path, captions: list[str], reps: int) -> dict:
    """``{judge: [mean, ci]}``, ``n`` and ``cfg_scale`` for the GPT + VQGAN of ``ckpt_dir`` on ``captions``."""
    import torch

    from tav.data.text import build_tokenizer
    from tav.data.video import to_uint8
    from tav.gpt import sample_codes
    from tav.gpt.load import load_stage1
    from tav.metrics.synthetic import judge_video

    gpt, vqgan = load_stage1(ckpt_dir / "gpt.ckpt", ckpt_dir / "vqgan.ckpt")
    cfg_scale = demo_cfg_scale(ckpt_dir / "gpt.ckpt")
    ids = build_tokenizer("bert", gpt.cfg.text_seq_len)(captions)
    scores: dict[str, list[float]] = {k: [] for k in JUDGED}
    for rep in range(reps):
        seeds = [rep * 100 + i for i in range(len(captions))]
        with torch.inference_mode():
            codes = sample_codes(gpt, ids, top_k=TOP_K, top_p=TOP_P, seeds=seeds, cfg_scale=cfg_scale)
            videos = vqgan.decode(codes).clamp(-0.5, 0.5)  # (B, 3, T, H, W) in [-0.5, 0.5]
        for video, caption in zip(videos, captions, strict=True):
            verdict = judge_video(to_uint8(video).numpy(), 30.0, caption=caption)
            for key in JUDGED:
                if getattr(verdict, key) is not None:
                    scores[key].append(getattr(verdict, key))
    return {"n": len(scores["colour_acc"]), "cfg_scale": cfg_scale, **{k: list(mean_ci(v)) for k, v in scores.items()}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt_dir", action="append", required=True, metavar="NAME=DIR",
                   help="a name and a folder with gpt.ckpt and vqgan.ckpt (repeatable)")
    p.add_argument("--data", type=Path, default=Path("results/demo/data"), help="the demo dataset")
    p.add_argument("--reps", type=int, default=6, help="seeds per caption")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error(f"--reps {args.reps}: must be >= 1")
    folders = {}
    for item in args.ckpt_dir:
        name, sep, folder = item.partition("=")
        if not sep or not name:
            p.error(f"--ckpt_dir {item!r}: expected NAME=DIR")
        for file in ("gpt.ckpt", "vqgan.ckpt"):
            if not (Path(folder) / file).is_file():
                p.error(f"--ckpt_dir {item}: {Path(folder) / file} is missing; run `make demo` first")
        folders[name] = Path(folder)
    if not (args.data / "manifest.jsonl").is_file():
        p.error(f"--data {args.data}: no manifest.jsonl; run `make demo` first (or pass the demo dataset)")
    args.folders = folders
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    captions = split_captions(args.data)
    record = {**run_info(), "reps": args.reps, "captions": len(captions), "top_k": TOP_K, "top_p": TOP_P,
              "results": {name: judge_stage1(folder, captions, args.reps) for name, folder in args.folders.items()}}
    print(f"stage 1 on {len(captions)} test captions x {args.reps} seeds (mean ± 95% CI)")
    for name, r in record["results"].items():
        cells = "  ".join(f"{k} {r[k][0]:.3f} ± {r[k][1]:.3f}" for k in JUDGED)
        print(f"  {name:<16} cfg {r['cfg_scale']:.0f}  {cells}")
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    main()
