"""``bench_sample.py --equal-quality``: seconds per video at judged-equal quality, on the demo's trained models.

The reference is upstream's published stage-2 setting run by ``sample_tav.py``: DDPM respaced "100", SDEdit skip
25 (75 guided steps), fp32, batch 1. The candidates start the chain from the same point (the first quarter of
each chain skipped) with fewer steps (DDIM 10 / 25 / 50, DDPM 25 / 30 / 35 / 40 / 50) or the same (DDPM 100:
what bf16 and batching alone give), ``--precision auto`` (bf16 on a CPU with bf16 units), all clips in one batch and the
guidance gradient smoothed as the demo samples (``--guidance_blur 2``; upstream's is not smoothed). Every
run samples the same ``--n`` demo test clips with the same per-sample seeds (so stage 1 is the same clip in
every run) and is judged by ``tools/synthetic_judge.py``'s judges. A candidate is **of equal quality** when, for
every judge in ``EQUAL_JUDGES``, the 95% confidence interval of its paired per-clip difference from the
reference contains 0 or lies on the better side (above it; below it for ``flicker``, where less is better). The
recommended setting is the fastest candidate of equal quality; the figure is the reference's seconds per video
over its.

The reference's time is that of our sampler at upstream's setting; upstream's own step is slower again (its
U-Net forward runs twice per step and the caption is re-encoded per frame: 1.60x ours in ``bench_sample.py``'s
default mode), so the ratio here understates the gain over the original code.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
EQUAL_JUDGES = {"colour_acc": 1, "shape_acc": 1, "onset_f1": 1, "flicker": -1}  # judge -> better direction
REPORTED = tuple(EQUAL_JUDGES)
SKIP = 0.25  # upstream's SDEdit start: 25 of 100 respaced steps skipped


def settings(n: int) -> tuple[tuple[str, dict], list[tuple[str, dict]]]:
    """(reference, candidates) as (label, sample_tav flag overrides)."""
    ref = ("upstream setting: DDPM 100, skip 25 (75 steps), fp32, batch 1",
           {"timestep_respacing": "100", "skip_timesteps": 25, "precision": "32", "batch_size": 1,
            "guidance_blur": 0})  # upstream's gradient, unsmoothed (bench_quality's rows smooth it as the demo)
    cands = []
    for sampler, steps in (("DDIM", 10), ("DDIM", 25), ("DDPM", 25), ("DDPM", 30), ("DDPM", 35), ("DDPM", 40),
                           ("DDIM", 50), ("DDPM", 50), ("DDPM", 100)):
        skip = round(SKIP * steps)
        over = {"timestep_respacing": f"ddim{steps}" if sampler == "DDIM" else str(steps), "skip_timesteps": skip,
                "precision": "auto", "batch_size": n}  # ours: the demo's smoothed gradient (--guidance_blur 2)
        if sampler == "DDIM":
            over["ddim"] = True
        cands.append((f"{sampler} {steps}, skip {skip} ({steps - skip} steps), auto precision, batch {n}, blur 2",
                      over))
    return ref, cands


def per_clip(folder: Path) -> dict:
    """Per-clip judges of the stage-2 videos and seconds per video (stage 1, stage 2) from the manifest."""
    from tav.metrics.synthetic_folders import judge_item, results_items

    items, _ = results_items(folder)
    scores = [judge_item(it)[0].scores() for it in items["fake_stage2"]]
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    rows.sort(key=lambda r: r["id"])
    return {"judges": {k: [s[k] for s in scores] for k in REPORTED},
            "stage1_s": float(np.mean([r["seconds"]["stage1"] for r in rows])),
            "stage2_s": float(np.mean([r["seconds"]["stage2"] for r in rows])),
            "precision": rows[0]["settings"].get("precision")}


def _mean_ci(xs: list[float]) -> tuple[float | None, float | None]:
    """Mean and 95% CI half-width of the finite values; (None, None) when there are none (strict JSON)."""
    a = np.asarray([x for x in xs if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(a) == 0:
        return None, None
    return float(a.mean()), float(1.96 * a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else 0.0


def paired_difference(cand: list, ref: list) -> tuple[float | None, float | None]:
    """Mean and 95% CI half-width of ``cand - ref`` over the clips both judged (None, None: no such clip)."""
    return _mean_ci([c - r for c, r in zip(cand, ref, strict=True) if c is not None and r is not None])


def equal_quality(cand: dict, ref: dict) -> dict[str, bool]:
    """Per judge of ``EQUAL_JUDGES``: is the candidate not worse than the reference (the CI of the paired
    difference contains 0 or lies on the judge's better side)?"""
    out = {}
    for k, better in EQUAL_JUDGES.items():
        mean, half = paired_difference(cand["judges"][k], ref["judges"][k])
        out[k] = bool(mean is None or better * mean + half >= 0)
    return out


def run(args) -> dict:
    """Sample the reference and the candidates on the demo's models; the record written by ``--json``."""
    from bench_quality import check_demo_inputs, sample_argv  # benchmarks/ is on the path: bench_sample.py's folder

    from tav_scripts import sample_tav

    check_demo_inputs(args.ckpt_dir, args.data)
    ref_setting, candidates = settings(args.n)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="equal_quality_") as tmp:
        for i, (label, over) in enumerate([ref_setting, *candidates]):
            save = Path(tmp) / f"run{i}"
            folder = sample_tav.sample(sample_argv(args.ckpt_dir, args.data, save, args.n, over,
                                                   shlex.split(args.sample_args)))
            runs[label] = per_clip(folder)
            shutil.rmtree(save, ignore_errors=True)
            print(f"  {label}: stage 2 {runs[label]['stage2_s']:.3f} s/video", file=sys.stderr, flush=True)
    ref = runs[ref_setting[0]]
    rows = []
    for label, r in runs.items():
        row = {"setting": label, "precision": r["precision"], "stage1_s": r["stage1_s"], "stage2_s": r["stage2_s"],
               "speedup_stage2": ref["stage2_s"] / r["stage2_s"],
               "speedup_total": (ref["stage1_s"] + ref["stage2_s"]) / (r["stage1_s"] + r["stage2_s"]),
               "judges": {k: _mean_ci(r["judges"][k]) for k in REPORTED}}
        if r is not ref:
            row["equal"] = equal_quality(r, ref)
            row["difference"] = {k: paired_difference(r["judges"][k], ref["judges"][k]) for k in EQUAL_JUDGES}
        rows.append(row)
    equal = [r for r in rows[1:] if all(r["equal"].values())]
    best = max(equal, key=lambda r: r["speedup_stage2"]) if equal else None
    from bench_quality import run_info

    return {"n": args.n, **run_info(), "reference": rows[0]["setting"], "rows": rows,
            "recommended": best["setting"] if best else None,
            "speedup_per_video_stage2": best["speedup_stage2"] if best else None,
            "speedup_per_video_total": best["speedup_total"] if best else None}


def markdown(record: dict) -> str:
    lines = [f"Stage 2 at judged-equal quality (N = {record['n']} demo test clips; mean ± 95% CI; equal = the CI "
             f"of the paired difference from the reference contains 0 or lies on the better side, for "
             f"{', '.join(EQUAL_JUDGES)}; flicker: lower is better)",
             "", "| setting | " + " | ".join(REPORTED) + " | equal | stage 2 s/video | speed-up (stage 2) | "
             "speed-up (both stages) |", "|---" * (len(REPORTED) + 5) + "|"]
    for r in record["rows"]:
        cells = [f"{m:.2f} ± {h:.2f}" if m is not None else "-" for m, h in (r["judges"][k] for k in REPORTED)]
        eq = "reference" if "equal" not in r else ("yes" if all(r["equal"].values()) else
                                                   "no (" + ", ".join(k for k, v in r["equal"].items() if not v) + ")")
        lines.append(f"| {r['setting']} | " + " | ".join(cells) + f" | {eq} | {r['stage2_s']:.3f} | "
                     f"{r['speedup_stage2']:.1f}× | {r['speedup_total']:.1f}× |")
    rec = record["recommended"]
    lines += ["", f"Recommended: {rec}, {record['speedup_per_video_stage2']:.1f}× per video in stage 2 "
              f"({record['speedup_per_video_total']:.1f}× with stage 1)" if rec else
              "No candidate is of equal quality on every judge."]
    return "\n".join(lines)
