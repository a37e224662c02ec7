"""BatchNorm3d forward + backward on CPU, contiguous against ``channels_last_3d`` tensors, by channel count.

    python benchmarks/bench_norm_layout.py [--channels 8 12 16 24 32 48] [--threads 2] [--json OUT]

Why: the demo VQGAN trains with ``channels_last_3d`` weights (``train.channels_last``), so its activations are
channels-last too, and PyTorch's CPU batch-norm kernel for that layout is fast only for some channel counts. The
demo's ``n_hiddens`` 4 and 6 give 8 and 12 channels at full resolution (``n_hiddens`` 8: 16). Each row times one
``F.batch_norm`` in training mode (batch statistics) plus its backward on a ``(8, C, 8, 32, 32)`` clip batch
(the demo VQGAN's first and last stage), fp32 and bf16, interleaved rounds in one process, median of
``--rounds``; ``ratio`` is channels-last time over contiguous time (above 1: channels-last is slower).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tav.utils.runtime import cpu_name

SHAPE = (8, 8, 32, 32)  # batch, frames, height, width (channels inserted at dim 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, nargs="+", default=[8, 12, 16, 24, 32, 48])
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--rounds", type=int, default=15, help="timed rounds per case (after 3 warm-up calls)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if min(args.channels) < 1 or args.threads < 1 or args.rounds < 1:
        p.error("--channels, --threads and --rounds must be >= 1")
    return args


def case(channels: int, dtype: torch.dtype, layout: torch.memory_format) -> tuple:
    """Input, upstream gradient, weight and bias of one case (seeded)."""
    g = torch.Generator().manual_seed(channels)
    x = torch.randn(SHAPE[0], channels, *SHAPE[1:], generator=g).to(dtype=dtype, memory_format=layout)
    grad = torch.randn(x.shape, generator=g).to(dtype=dtype, memory_format=layout)
    weight = torch.rand(channels, generator=g).add_(0.5).requires_grad_()
    bias = torch.rand(channels, generator=g).sub_(0.5).requires_grad_()
    return x.requires_grad_(), grad, weight, bias


def step(x, grad, weight, bias) -> None:
    """One training-mode batch norm and its backward to the input, weight and bias."""
    F.batch_norm(x, None, None, weight, bias, training=True).backward(grad)


def time_cases(channels: int, dtype: torch.dtype, rounds: int) -> dict[str, float]:
    """Median milliseconds of ``step`` per layout, the layouts interleaved round by round."""
    layouts = {"contiguous": torch.contiguous_format, "channels_last_3d": torch.channels_last_3d}
    cases = {name: case(channels, dtype, fmt) for name, fmt in layouts.items()}
    for args in cases.values():
        for _ in range(3):
            step(*args)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, args in cases.items():
            t0 = time.perf_counter()
            step(*args)
            times[name].append(1e3 * (time.perf_counter() - t0))
    return {name: statistics.median(v) for name, v in times.items()}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for channels in args.channels:
        for dtype in (torch.float32, torch.bfloat16):
            ms = time_cases(channels, dtype, args.rounds)
            rows.append({"channels": channels, "dtype": str(dtype).removeprefix("torch."), **ms,
                         "ratio": ms["channels_last_3d"] / ms["contiguous"]})
    out = {"machine": cpu_name(), "torch": torch.__version__,
           "threads": args.threads, "shape": [SHAPE[0], "C", *SHAPE[1:]], "rounds": args.rounds, "rows": rows}
    print(f"BatchNorm3d forward + backward, (8, C, 8, 32, 32), {out['machine']}, {args.threads} threads, "
          f"torch {torch.__version__}")
    print("| C | dtype | contiguous ms | channels_last_3d ms | ratio |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['channels']} | {r['dtype']} | {r['contiguous']:.2f} | {r['channels_last_3d']:.2f} | "
              f"{r['ratio']:.2f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
