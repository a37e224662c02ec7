"""Stage 2 of the demo with and without the samplers' held weights (``tav.utils.runtime.sampling_weights``).

Under bf16 the samplers hold their frozen networks' convolution weights in bf16 for the whole chain (and, on a
CPU with AMX, in channels-last). This samples the demo's 16 test clips with ``sample_tav.py`` at one setting
(default: DDPM 50, skip 12, ``--precision auto``, batch 16) with the hold as the samplers do it (``held``) and with
it replaced by a no-op (``plain``: autocast casts the weights at every call), in interleaved rounds in one process
(order reversed every other round), and prints the median seconds of each. Needs the demo's checkpoints and
data (``make demo``).

    python benchmarks/bench_held_weights.py [--rounds 3] [--respacing 50] [--skip 12] [--ckpt_dir saved_ckpts/demo]
        [--data results/demo/data] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--respacing", default="50")
    p.add_argument("--skip", type=int, default=12)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--ckpt_dir", type=Path, default=HERE.parent / "saved_ckpts" / "demo")
    p.add_argument("--data", type=Path, default=HERE.parent / "results" / "demo" / "data")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    from bench_quality import check_demo_inputs, sample_argv

    from tav.pipelines import ta2v
    from tav.utils.runtime import cpu_bf16_units
    from tav_scripts import sample_tav

    check_demo_inputs(args.ckpt_dir, args.data)
    held = ta2v.sampling_weights
    over = {"timestep_respacing": args.respacing, "skip_timesteps": args.skip, "precision": "auto",
            "batch_size": args.n, "progress": "false"}
    times: dict[str, list[float]] = {"held": [], "plain": []}
    try:
        for r in range(args.rounds):
            for mode in (("held", "plain") if r % 2 == 0 else ("plain", "held")):
                ta2v.sampling_weights = held if mode == "held" else (lambda *a, **k: contextlib.nullcontext())
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.perf_counter()
                    sample_tav.sample(sample_argv(args.ckpt_dir, args.data, Path(tmp) / "r", args.n, over))
                    times[mode].append(time.perf_counter() - t0)
    finally:
        ta2v.sampling_weights = held
    med = {k: statistics.median(v) for k, v in times.items()}
    record = {"cpu_bf16_units": cpu_bf16_units(), "setting": over, "times": times, "median_s": med,
              "plain_over_held": med["plain"] / med["held"]}
    print(f"bf16 units: {record['cpu_bf16_units']}; {args.n} clips, DDPM/DDIM {args.respacing} skip {args.skip}: "
          f"held {med['held']:.2f} s, plain {med['plain']:.2f} s (plain / held {record['plain_over_held']:.3f})")
    if args.json is not None:
        from tav.utils.fileio import write_json_atomic

        write_json_atomic(args.json, record)
    return record


if __name__ == "__main__":
    main()
