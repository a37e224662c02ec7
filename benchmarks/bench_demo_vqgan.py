"""The demo's VQGAN stage under training variants, several seeds each: PSNR and the judges on the test clips.

    python benchmarks/bench_demo_vqgan.py --out /tmp/bv --seeds 0 1 2 --jobs 2 \\
        --variant preset= --variant edges="--set grad_weight=4" --json /tmp/bv.json

Each ``--variant NAME=FLAGS`` appends ``FLAGS`` (and ``--seed S``) to the demo's ``train_vqgan.py`` call; every run
trains a fresh model in ``<out>/<name>_s<seed>`` on one shared demo dataset (``<out>/data``, built once) and reads
``quality.json``'s ``vqgan_recon`` row. Runs go ``--jobs`` at a time in child processes, splitting the cores between
them. Prints, and writes with ``--json``, the mean and 95% CI over seeds of each figure plus seconds per run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_quality import mean_ci

FIGURES = ("psnr", "colour_acc", "shape_acc", "colour_frame_acc")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="work folder (runs already finished there are reused)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                   help="a name and the train_vqgan.py flags it adds (repeatable; default: preset=)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=None, help="VQGAN training steps (default: the demo's)")
    p.add_argument("--demo_args", default="", help="extra demo.py flags for the data and VQGAN stages, e.g. "
                   "'--n_train 64' or '--base_clips 0' (one dataset per --out)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each gets cores / jobs threads)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child", nargs=3, metavar=("RUN_DIR", "THREADS", "FLAGS"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def resolve_steps(steps: int | None) -> int:
    """``steps``, or when None the demo's own VQGAN steps (``scripts/demo.py --vqgan_steps``'s default)."""
    if steps is not None:
        return steps
    from tav_scripts import demo

    return demo.parse_args([]).vqgan_steps


def child(run_dir: Path, threads: int, flags: list[str], steps: int, data: Path, demo_args: list[str]) -> None:
    """One run: the demo's data (symlinked) and VQGAN stages with ``flags`` appended to the training call."""
    import torch

    torch.set_num_threads(threads)
    from tav_scripts import demo, train_vqgan

    train = train_vqgan.train
    train_vqgan.train = lambda argv: train([*argv, *flags])
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "data").exists():
        (run_dir / "data").symlink_to(data.resolve())
    demo.main(["--out", str(run_dir), "--stages", "data", "vqgan", "--vqgan_steps", str(steps), *demo_args])


def run_one(args: argparse.Namespace, name: str, flags: str, seed: int, threads: int) -> dict:
    """Train and judge one (variant, seed) in a child process, unless its quality.json is already there."""
    run_dir = args.out / f"{name}_s{seed}"
    quality, seconds = run_dir / "quality.json", run_dir / "seconds.txt"
    if not quality.exists():
        argv = [sys.executable, __file__, "--out", str(args.out), "--steps", str(args.steps), "--demo_args",
                args.demo_args,
                "--child", str(run_dir), str(threads), shlex.join([*shlex.split(flags), "--seed", str(seed)])]
        t0 = time.perf_counter()
        log_path = args.out / f"{name}_s{seed}.log"
        with open(log_path, "w") as log:
            done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise SystemExit(f"variant {name!r}, seed {seed}: the run failed (exit {done.returncode}); see {log_path}")
        seconds.write_text(f"{time.perf_counter() - t0:.1f}\n")
    row = json.loads(quality.read_text())["vqgan_recon"]
    return {**{k: row.get(k) for k in FIGURES}, "seconds": float(seconds.read_text()) if seconds.exists() else None}


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per variant: ``{figure: {"mean", "ci95", "runs"}}`` over its seeds."""
    out = {}
    for name, rows in runs.items():
        out[name] = {}
        for key in (*FIGURES, "seconds"):
            values = [r[key] for r in rows if r[key] is not None]
            mean, ci = mean_ci(values)
            out[name][key] = {"mean": mean, "ci95": ci, "runs": values}
    return out


def table(summary: dict[str, dict], flags: dict[str, str]) -> str:
    lines = ["| variant | flags | " + " | ".join(FIGURES) + " | s/run |", "|---|---|" + "---|" * (len(FIGURES) + 1)]
    for name, figs in summary.items():
        cells = []
        for key in (*FIGURES, "seconds"):
            m, ci = figs[key]["mean"], figs[key]["ci95"]
            cells.append("-" if m is None else f"{m:.3f}" + ("" if not ci else f" ± {ci:.3f}"))
        lines.append(f"| {name} | `{flags[name] or '(preset)'}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.steps = resolve_steps(args.steps)
    data = args.out / "data"
    if args.child:
        run_dir, threads, flags = args.child
        child(Path(run_dir), int(threads), shlex.split(flags), args.steps, data, shlex.split(args.demo_args))
        return {}
    bad = [v for v in args.variant if "=" not in v or not v.split("=", 1)[0]]
    if bad:
        raise SystemExit(f"--variant {bad[0]!r}: write NAME=FLAGS, e.g. --variant edges='--set grad_weight=1' "
                         "(NAME= for the preset)")
    variants = dict(v.split("=", 1) for v in (args.variant or ["preset="]))
    args.out.mkdir(parents=True, exist_ok=True)
    from tav_scripts import demo

    # the shared dataset (resumes when complete)
    demo.main(["--out", str(args.out), "--stages", "data", *shlex.split(args.demo_args)])
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    jobs = [(name, flags, seed) for name, flags in variants.items() for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(lambda j: run_one(args, *j, threads), jobs))
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for (name, _, _), row in zip(jobs, done, strict=True):
        runs[name].append(row)
    summary = summarise(runs)
    print(f"demo VQGAN, {args.steps} steps, seeds {args.seeds}, demo flags {args.demo_args!r}: mean ± 95% CI over "
          "seeds")
    print(table(summary, variants))
    result = {"steps": args.steps, "demo_args": args.demo_args, "seeds": args.seeds, "flags": variants,
              "variants": summary}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.json)
    return result


if __name__ == "__main__":
    main()
