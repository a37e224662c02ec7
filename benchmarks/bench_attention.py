"""PyTorch's SDPA against the written-out attention (``tav.utils.attention``) on this machine, per shape and dtype.

What ``attention_impl: auto`` rests on: for each shape (the networks' own: batch·heads, query length L, key length
S, head width d), forward alone and forward + backward to q, k and v, in fp32 and bf16; each call warmed up once,
then ``--rounds`` interleaved rounds, median wall time. The last columns say which form ``auto`` picks for a
forward + backward (``prefer_written_out``) and which was faster.

    python benchmarks/bench_attention.py [--threads 2] [--rounds 10] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (name, batch·heads, L, S, d): where each shape occurs in tav
SHAPES = [
    ("TIA2V tiny spatial self-attention (8x8 px)", 8, 64, 64, 16),
    ("TIA2V tiny cross-attention to 78 text+image tokens", 8, 64, 78, 16),
    ("TIA2V tiny temporal attention (4 frames + 85 tokens)", 64, 4, 85, 16),
    ("demo GPT, causal (16 clips x 4 heads, 139 tokens)", 64, 139, 139, 32),
    ("demo prior self-attention (8 frames x 8x8)", 8, 512, 512, 16),
    ("release U-Net self-attention (16 frames x 8x8)", 4, 1024, 1024, 64),
]


def time_call(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(shape: tuple, dtype, rounds: int) -> dict:
    import torch
    import torch.nn.functional as F

    from tav.utils.attention import prefer_written_out, written_out

    name, bh, L, S, d = shape
    causal = "causal" in name
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, bh, L, d, generator=g).to(dtype).requires_grad_()
    k, v = (torch.randn(1, bh, S, d, generator=g).to(dtype).requires_grad_() for _ in range(2))
    grad = torch.randn(1, bh, L, d, generator=g).to(dtype)
    forms = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
             "written_out": lambda: written_out(q, k, v, causal=causal)}
    out = {}
    for form, fn in forms.items():
        def forward(fn=fn):
            with torch.no_grad():
                fn()

        def backward(fn=fn):
            fn().backward(grad)
        out[form] = {"forward_ms": 1e3 * time_call(forward, rounds), "train_ms": 1e3 * time_call(backward, rounds)}
    out["auto_picks"] = "written_out" if prefer_written_out(q, k) else "sdpa"
    out["faster"] = min(forms, key=lambda f: out[f]["train_ms"])
    return out


def markdown(record: dict) -> str:
    lines = [f"attention forms ({record['machine']}); ms, median of {record['rounds']} rounds", "",
             "| shape (batch·heads, L, S, d) | dtype | SDPA fwd | written fwd | SDPA fwd+bwd | written fwd+bwd | "
             "auto picks | faster |", "|---|---|---|---|---|---|---|---|"]
    for row in record["rows"]:
        s, w = row["sdpa"], row["written_out"]
        lines.append(f"| {row['shape']} | {row['dtype']} | {s['forward_ms']:.2f} | {w['forward_ms']:.2f} | "
                     f"{s['train_ms']:.2f} | {w['train_ms']:.2f} | {row['auto_picks']} | {row['faster']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads < 1 or args.rounds < 1:
        p.error(f"--threads {args.threads} and --rounds {args.rounds}: each must be >= 1")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from tav.utils.runtime import cpu_name

    torch.set_num_threads(args.threads)
    rows = []
    for shape in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            r = measure(shape, dtype, args.rounds)
            rows.append({"shape": f"{shape[0]}: {shape[1:]}", "dtype": str(dtype).removeprefix("torch."), **r})
            print(f"{shape[0]} {dtype}: {r['sdpa']['train_ms']:.2f} / {r['written_out']['train_ms']:.2f} ms",
                  file=sys.stderr)
    record = {"machine": f"{cpu_name()}, torch {torch.__version__}, {args.threads} thread(s)", "rounds": args.rounds,
              "rows": rows}
    print(markdown(record))
    if args.json is not None:
        from tav.utils.fileio import write_json_atomic

        write_json_atomic(args.json, record)
    return record


if __name__ == "__main__":
    main()
