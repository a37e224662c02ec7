"""GPT decode and training speed at the URMP README configuration (12 layers, 8 heads, 512 wide), CPU.

What is measured (random weights; the speed does not depend on their values):

1. **Decoding the 576 codes of one URMP clip** from a 12-token BERT prefix, top-k 2048, top-p 0.80, T 1.0,
   with the released checkpoint's layout (``text_vocab_offset=21128``, vocabulary 21128 + 16384 = 37 512):
   - ``ours``: ``tav.gpt.sample_codes`` (preallocated KV cache, SDPA, head over the 16 384 video rows only,
     per-sample generators) at batch 1 and batch ``--batch`` (default 8), fp32; and at batch ``--batch``
     under bf16 autocast (the cache then held in bf16);
   - ``(b) concat cache``: upstream's ``sample_with_past`` method over the same weights, re-implemented in
     this file: every step concatenates the list of past (k, v) tensors into one tensor and then each layer
     concatenates again, attention as matmul-softmax, the head over the full vocabulary, upstream's
     ``top_k_top_p_filtering`` (top-k then a full sort), ``multinomial``; batch 1 as upstream samples;
   - ``(a) no cache``: every step recomputes the transformer over the whole sequence (only the last
     position's logits go through the head, which favours this baseline over upstream's ``sample()``). Its
     576 steps are too slow to run in full by default: the forward is timed at ``--nocache-points``
     evenly spaced lengths from 12 to 587 and the per-step times are summed by linear interpolation
     (``--full-nocache`` runs it instead).
   Throughput is tokens/s = (batch x 576) / wall time; "per clip" ratios compare these.

2. **One training step at block 1024** (batch 1, 1024 tokens; default vocabulary 46 906, dropouts 0.2,
   cross-entropy, backward, AdamW): attention through ``scaled_dot_product_attention`` (ours) vs a manual
   matmul + masked_fill(mask buffer) + softmax + dropout + matmul (upstream's ``CausalSelfAttention``).

Variants are interleaved over ``--rounds`` (order reversed every other round) so that load from other
users of the machine hits them alike; reported: medians and ratios from this one run. Threads default to
1: on the shared 2-core machines two OpenMP threads stall whenever another process holds a core (decode
measured 8x slower than with one thread under load); use ``--threads 2`` on an idle machine. Default
runtime about 4 minutes (1 thread, loaded machine).

    python benchmarks/bench_gpt.py [--threads 1] [--rounds 1] [--batch 8] [--nocache-points 6]
        [--full-nocache] [--train-steps 2] [--skip-train] [--skip-decode] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tav.gpt import GPT, GPTConfig, gpt_preset, sample_codes
from tav.gpt.model import CausalSelfAttention
from tav.utils.runtime import autocast, cpu_bf16_units

TOP_K, TOP_P = 2048, 0.80
UPSTREAM_TOKENS_PER_S = 21.8  # measured earlier, not by this script: upstream concat cache, batch 1, this machine kind


# ------------------------------------------------------------------------------------------- baselines
def upstream_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Upstream's ``top_k_top_p_filtering`` (minGPT/HF gist): top-k mask, then a full sort for top-p."""
    kth = torch.topk(logits, top_k)[0][..., -1, None]
    logits = logits.masked_fill(logits < kth, float("-inf"))
    sorted_logits, sorted_idx = torch.sort(logits, descending=True)
    remove = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1) > top_p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = False
    return logits.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))


def _upstream_attn(attn: CausalSelfAttention, x: torch.Tensor, past: torch.Tensor | None):
    """Upstream ``CausalSelfAttention.forward`` with ``layer_past``: returns (y, present)."""
    b, t, c = x.shape
    k, q, v = (lin(x).view(b, t, attn.n_head, -1).transpose(1, 2) for lin in (attn.key, attn.query, attn.value))
    present = torch.stack((k, v))
    if past is not None:
        k = torch.cat((past[0], k), dim=-2)
        v = torch.cat((past[1], v), dim=-2)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
    if past is None:
        mask = torch.ones(t, t, device=x.device).tril()
        att = att.masked_fill(mask == 0, float("-inf"))
    y = (att.softmax(dim=-1) @ v).transpose(1, 2).contiguous().view(b, t, c)
    return attn.proj(y), present


def _upstream_forward_with_past(gpt: GPT, idx: torch.Tensor, past: list | None, past_length: int):
    """Upstream ``GPT.forward_with_past``: the whole past is concatenated into one tensor every call."""
    x = gpt.tok_emb(idx)
    if past is not None:
        past = torch.cat(past, dim=-2)  # (n_layer, 2, B, H, past_length, hd), rebuilt every step
        x = x + gpt.pos_emb[:, past_length, :]
    else:
        x = x + gpt.pos_emb[:, : x.shape[1], :]
    presents = []
    for i, block in enumerate(gpt.blocks):
        y, present = _upstream_attn(block.attn, block.ln1(x), None if past is None else past[i])
        x = x + y
        x = x + block.mlp(block.ln2(x))
        presents.append(present)
    return gpt.head(gpt.ln_f(x)), torch.stack(presents)


@torch.inference_mode()
def upstream_sample_with_past(gpt: GPT, prefix: torch.Tensor, steps: int) -> torch.Tensor:
    """Upstream ``sample_with_past`` (concatenating cache, full-vocabulary head and filter, multinomial)."""
    x, sample, past, cond_len = prefix, prefix, None, prefix.shape[1]
    for n in range(steps):
        logits, present = _upstream_forward_with_past(gpt, x, past, n + cond_len - 1)
        past = [present] if past is None else [*past, present]
        logits = upstream_top_k_top_p(logits[:, -1, :], TOP_K, TOP_P)
        x = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
        sample = torch.cat((sample, x), dim=1)
    return sample[:, cond_len:]


@torch.inference_mode()
def nocache_step(gpt: GPT, seq: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
    """One no-cache decode step: the whole sequence again, head at the last position, same filters."""
    from tav.gpt.sampling import draw

    h = gpt.features(seq)[:, -1]
    off = gpt.cfg.video_offset
    return draw(F.linear(h, gpt.head.weight[off: off + gpt.cfg.n_codes]), gens, 1.0, TOP_K, TOP_P)


def nocache_clip_seconds(gpt: GPT, prefix: torch.Tensor, steps: int, points: int, full: bool) -> float:
    """Seconds for ``steps`` no-cache steps: timed at ``points`` lengths and interpolated, or run in full."""
    gens = [torch.Generator().manual_seed(0)]
    n_text = prefix.shape[1]
    seq = torch.cat([prefix, torch.randint(0, gpt.cfg.n_codes, (1, steps - 1)) + gpt.cfg.video_offset], dim=1)
    if full:
        t0 = time.perf_counter()
        for i in range(steps):
            nocache_step(gpt, seq[:, : n_text + i], gens)
        return time.perf_counter() - t0
    lengths = [round(n_text + i * (steps - 1) / (points - 1)) for i in range(points)]
    nocache_step(gpt, seq[:, : lengths[0]], gens)  # warm-up
    times = []
    for length in lengths:
        t0 = time.perf_counter()
        nocache_step(gpt, seq[:, :length], gens)
        times.append(time.perf_counter() - t0)
    return sum(_interp(lengths, times, n_text + i) for i in range(steps))


def _interp(xs: list[int], ys: list[float], x: float) -> float:
    """Piecewise-linear interpolation of ``ys`` over the increasing ``xs`` at ``x``."""
    for i in range(1, len(xs)):
        if x <= xs[i]:
            return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - xs[i - 1]) / max(xs[i] - xs[i - 1], 1)
    return ys[-1]


# ------------------------------------------------------------------------------------------- decode runs
def decode_benchmark(args) -> dict:
    torch.manual_seed(0)
    cfg = gpt_preset("urmp_upstream")
    gpt = GPT(cfg).eval()
    steps = cfg.video_seq_len
    prompts = torch.randint(0, cfg.text_vocab_size, (args.batch, cfg.text_seq_len),
                            generator=torch.Generator().manual_seed(1))

    def ours(batch: int, precision: str = "32"):
        def decode():
            with autocast(precision, torch.device("cpu")):
                return sample_codes(gpt, prompts[:batch], seeds=list(range(batch)), top_k=TOP_K, top_p=TOP_P,
                                    restrict_to_video=True)
        return decode

    variants = {
        "ours_b1": (1, ours(1)),
        f"ours_b{args.batch}": (args.batch, ours(args.batch)),
        f"ours_b{args.batch}_bf16": (args.batch, ours(args.batch, "bf16")),
        "concat_b1": (1, lambda: upstream_sample_with_past(gpt, prompts[:1], steps)),
    }
    sample_codes(gpt, prompts[:2], steps=4, seeds=[0, 1])  # warm-up (allocator, kernels)
    upstream_sample_with_past(gpt, prompts[:1], 4)
    secs: dict[str, list[float]] = {k: [] for k in variants}
    nocache: list[float] = []
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            t0 = time.perf_counter()
            variants[name][1]()
            secs[name].append(time.perf_counter() - t0)
            print(f"  round {r}: {name} {secs[name][-1]:.1f} s", file=sys.stderr)
        nocache.append(nocache_clip_seconds(gpt, prompts[:1], steps, args.nocache_points, args.full_nocache))
        print(f"  round {r}: nocache_b1 {nocache[-1]:.1f} s", file=sys.stderr)
    out = {name: {"batch": b, "seconds": statistics.median(secs[name]),
                  "tokens_per_s": b * steps / statistics.median(secs[name])} for name, (b, _) in variants.items()}
    out["nocache_b1"] = {"batch": 1, "seconds": statistics.median(nocache),
                         "tokens_per_s": steps / statistics.median(nocache),
                         "estimated": not args.full_nocache}
    return out


# ------------------------------------------------------------------------------------------- training
def _manual_attend(self, q, k, v, causal, mask):
    """Upstream's attention core: matmul, masked_fill with a (1,1,T,T) tril buffer, softmax, dropout, matmul."""
    t = q.shape[-2]
    if not hasattr(self, "_bench_mask"):
        self._bench_mask = torch.tril(torch.ones(1024, 1024)).view(1, 1, 1024, 1024)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
    att = att.masked_fill(self._bench_mask[:, :, :t, :t] == 0, float("-inf"))
    att = F.dropout(att.softmax(dim=-1), self.attn_pdrop, self.training)
    return att @ v


@contextlib.contextmanager
def manual_attention():
    original = CausalSelfAttention.attend
    CausalSelfAttention.attend = _manual_attend
    try:
        yield
    finally:
        CausalSelfAttention.attend = original


def train_benchmark(args) -> dict:
    torch.manual_seed(0)
    cfg = GPTConfig()  # README recipe, default offset: vocabulary 46 906, dropouts 0.2
    gpt = GPT(cfg).train()
    opt = torch.optim.AdamW(gpt.parameters(), lr=3.6e-4, betas=(0.9, 0.95), weight_decay=0.01)
    tokens = torch.randint(0, cfg.vocab_size, (1, cfg.block_size + 1))

    def step():
        logits = gpt(tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def run(variant: str) -> float:
        ctx = manual_attention() if variant == "manual" else contextlib.nullcontext()
        with ctx:
            t0 = time.perf_counter()
            step()
            return time.perf_counter() - t0

    for variant in ("sdpa", "manual"):
        run(variant)  # warm-up
    secs: dict[str, list[float]] = {"sdpa": [], "manual": []}
    for i in range(args.train_steps):
        for variant in (("sdpa", "manual") if i % 2 == 0 else ("manual", "sdpa")):
            secs[variant].append(run(variant))
            print(f"  train step {i}: {variant} {secs[variant][-1]:.2f} s", file=sys.stderr)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)} for k, v in secs.items()}


# ------------------------------------------------------------------------------------------- report
def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def report(args, decode: dict | None, train: dict | None, load_before: str) -> str:
    lines = ["## GPT benchmark (URMP: 12 layers, 8 heads, 512 wide; CPU, fp32 unless marked)", "",
             f"machine: {platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
             f"load average before {load_before}, after {_loadavg()}", ""]
    if decode:
        b = args.batch
        lines += [f"### Decode 576 codes (top-k {TOP_K}, top-p {TOP_P}; vocabulary 37 512 as released)", "",
                  "| method | batch | wall s | tokens/s | vs (b) concat b1 | vs (a) no cache b1 |",
                  "|---|---|---|---|---|---|"]
        base_b, base_a = decode["concat_b1"]["tokens_per_s"], decode["nocache_b1"]["tokens_per_s"]
        labels = {"ours_b1": "ours (static KV cache)", f"ours_b{b}": "ours (static KV cache)",
                  f"ours_b{b}_bf16": "ours (static KV cache), bf16 autocast",
                  "concat_b1": "(b) concatenating cache (upstream)",
                  "nocache_b1": "(a) no cache" + (" (estimated)" if decode["nocache_b1"]["estimated"] else "")}
        for name in ("ours_b1", f"ours_b{b}", f"ours_b{b}_bf16", "concat_b1", "nocache_b1"):
            r = decode[name]
            lines.append(f"| {labels[name]} | {r['batch']} | {r['seconds']:.1f} | {r['tokens_per_s']:.1f} | "
                         f"{r['tokens_per_s'] / base_b:.2f}x | {r['tokens_per_s'] / base_a:.1f}x |")
        ratio = decode[f"ours_b{b}"]["tokens_per_s"] / base_b
        ratio16 = decode[f"ours_b{b}_bf16"]["tokens_per_s"] / base_b
        lines += ["", f"per clip at batch {b} vs (b): **{ratio:.2f}x** fp32, **{ratio16:.2f}x** bf16 (goal >= 5x); "
                  f"upstream's own figure on this machine kind: {UPSTREAM_TOKENS_PER_S} tokens/s; CPU bf16 units: "
                  f"{cpu_bf16_units() or 'none'}", ""]
    if train:
        s, m = train["sdpa"], train["manual"]
        lines += ["### Training step, block 1024, batch 1 (forward + backward + AdamW)", "",
                  "| attention | median s | min-max s |", "|---|---|---|",
                  f"| SDPA (ours) | {s['median_s']:.2f} | {s['min_s']:.2f}-{s['max_s']:.2f} |",
                  f"| manual matmul-softmax (upstream) | {m['median_s']:.2f} | {m['min_s']:.2f}-{m['max_s']:.2f} |",
                  "", f"SDPA speed-up: {m['median_s'] / s['median_s']:.2f}x", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared machine)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--nocache-points", type=int, default=6)
    p.add_argument("--full-nocache", action="store_true")
    p.add_argument("--train-steps", type=int, default=2)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-decode", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = _loadavg()
    decode = None if args.skip_decode else decode_benchmark(args)
    train = None if args.skip_train else train_benchmark(args)
    print(report(args, decode, train, load_before))
    if args.json:
        args.json.write_text(json.dumps({"decode": decode, "train": train, "threads": args.threads}, indent=2))


if __name__ == "__main__":
    main()
