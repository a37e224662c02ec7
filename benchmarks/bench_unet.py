"""Diffusion U-Net speed and memory at the TA2V channels on 16x64x64 clips (batch 1, fp32, CPU).

What is measured (random weights; the speed does not depend on their values):

1. **Forward and forward + backward** of ``UNet(cfg)`` with the released TA2V network's channels and structure
   (``unet_preset("unet3d-ta2v")``: 128 channels, mult (1, 1, 2, 3, 4), 3 ResBlocks per level, 4 heads,
   318 M parameters) at ``image_size=64`` with ``attention_resolutions=(8, 4)``: the same attention *levels*
   as the released network's (16, 8) at 128 px (down-sampling factors 8 and 16, plus the middle block), which see
   16x8x8 = 1024 and 16x4x4 = 256 tokens here. Input (1, 3, 16, 64, 64), one timestep.
   - forward: ``torch.inference_mode()``; forward + backward: ``net(x, t).sum().backward()`` (parameters);
   - variants: attention ``sdpa`` (``F.scaled_dot_product_attention``) vs ``math`` (einsum + float32
     softmax), i.e. ``UNetConfig.attention_impl``, switched on the same weights (``AttentionBlock.impl``);
     each with contiguous tensors and with ``channels_last_3d`` (``net.to(memory_format=...)`` on a copy of
     the weights, ``x.to(memory_format=...)``);
   - one warm-up forward per layout, then ``--rounds`` interleaved rounds of forwards and
     ``--train-rounds`` rounds of forward + backward (default 1: one takes about a minute here), the order
     reversed every other round so that outside load hits all variants alike; reported: the median,
     min-max, process CPU time / wall time ("cores used");
   - **achieved GFLOP/s** = counted FLOPs / median time. FLOPs are counted with
     ``torch.utils.flop_counter.FlopCounterMode`` over a ``FakeTensorMode`` copy of the network (no
     compute; its convention: 2 per multiply-add; SDPA counted as its two batched matmuls, so both
     attention variants count the same, softmax and normalisation not counted). Reference: fp32
     ``torch.mm`` 2048 x 2048 in the same process and thread count (best of 5, and the median);
   - which kernels ``attention_impl="sdpa"`` actually runs (profiler, one 512-wide attention block).

2. **Peak memory of forward + backward** without and with ``gradient_checkpointing=True`` (sdpa,
   contiguous): each in a **fresh subprocess** that builds the network, records its resident set size
   (``VmRSS``), runs one forward + backward and reads the peak RSS (``resource.getrusage(RUSAGE_SELF).
   ru_maxrss``, the process's high-water mark). Reported: the peak, and the peak minus the RSS after the
   build (what the step adds: gradients 1.2 GiB + activations + work space). To save time the two run side
   by side and beside part 1's untimed set-up (build, warm-ups), whose timed runs wait for them to exit;
   their step times are for reference only. (Not tracemalloc: PyTorch's CPU allocations bypass it.)

3. **Sampling wall (and process CPU) time** of ``ddpm_sample`` at ``unet_preset("unet3d-tiny")`` on
   (1, 3, 4, 32, 32), the TA2V process (4000 cosine steps, learned sigma), SDEdit from an ``x_init``
   skipping the first quarter as the TA2V sampler does: respaced ``"100"`` (skip 25 -> 75 steps) vs no
   respacing (skip 1000 -> 3000 steps). The unrespaced run is timed over its first ``--unrespaced-steps``
   steps (default 75, as many as the respaced run; the net is wrapped to stop the sampler there) and
   extrapolated linearly to 3000 steps; both per-step times are reported (they should match: respacing
   changes only the number of network calls). ``--unrespaced-steps 3000`` runs it in full. One warm-up,
   ``--rounds`` interleaved rounds, medians; the kernels of one tiny forward (profiler) are listed.

Threads default to 1: on the shared 2-core machines two OpenMP threads stall whenever another process holds
a core (``--threads 2`` on an idle machine). Output: a markdown block (machine, torch, threads, load average
before/after, wall time); progress on stderr. Default runtime about 11 minutes (1 thread, loaded machine).

    python benchmarks/bench_unet.py [--threads 1] [--rounds 2] [--train-rounds 1] [--unrespaced-steps 75]
        [--skip-unet] [--skip-memory] [--skip-sampling] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

SHAPE = (1, 3, 16, 64, 64)
SAMPLE_SHAPE = (1, 3, 4, 32, 32)
RESPACING, SKIP_FRACTION = "100", 0.25  # TA2V: respaced 100 steps, the first 25 skipped (SDEdit)
VARIANTS = (("sdpa", "contiguous"), ("math", "contiguous"), ("sdpa", "channels_last_3d"),
            ("math", "channels_last_3d"))


# ------------------------------------------------------------------------------------------- helpers
def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _rss_now_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _cpu_name() -> str:
    from tav.utils.runtime import cpu_name

    return cpu_name()


def _setup_torch(threads: int):
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    return torch


def _timed(fn) -> tuple[float, float]:
    """(wall s, process CPU s) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def bench_config(**overrides):
    """The TA2V U-Net (channels, mults, blocks, heads) at 64 px, attention at the same levels (ds 8, 16)."""
    from tav.diffusion.config import unet_preset

    return dataclasses.replace(unet_preset("unet3d-ta2v"), image_size=64, attention_resolutions=(8, 4), **overrides)


def matmul_gflops(torch, n: int = 2048, repeats: int = 5) -> list[float]:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return rates


def count_flops(torch, cfg) -> dict:
    """FLOPs of one forward and one forward + backward, counted on fake tensors (nothing is computed)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    from tav.diffusion.unet3d import UNet

    with FakeTensorMode():
        net = UNet(cfg)
        x, t = torch.randn(SHAPE), torch.tensor([500.0])
        with FlopCounterMode(display=False) as fc, torch.inference_mode():
            net(x, t)
        fwd = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            net(x, t).sum().backward()
        by_op = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    return {"fwd": fwd, "fwdbwd": fc.get_total_flops(), "fwdbwd_by_op": by_op}


def kernels_used(torch, fn) -> dict[str, float]:
    """Share of self CPU time of the convolution and attention kernels in one call of ``fn`` (profiler)."""
    fn()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    keys = ("conv", "scaled_dot_product", "bmm", "softmax")
    return {e.key: e.self_cpu_time_total / total for e in events
            if any(k in e.key for k in keys)
            and (e.self_cpu_time_total > 0.005 * total or "scaled_dot_product" in e.key)}


def _attention_kernels(torch) -> dict[str, float]:
    """Kernels behind ``attention_impl="sdpa"`` in one attention block of the middle-block width (512)."""
    from tav.diffusion.blocks import AttentionBlock

    block = AttentionBlock(512, 4, impl="sdpa").eval()
    x = torch.randn(1, 512, 16, 8, 8)

    def run():
        with torch.inference_mode():
            block(x)
    return kernels_used(torch, run)


# ------------------------------------------------------------------------------------------- U-Net timing
def _set_attention(net, impl: str) -> None:
    from tav.diffusion.blocks import AttentionBlock

    for m in net.modules():
        if isinstance(m, AttentionBlock):
            m.impl = impl


def _unet_runs(torch, nets: dict, inputs: dict, t) -> dict:
    """Closures ``(variant, kind) -> fn`` for the forward and forward + backward of every variant."""

    def forward(impl, layout):
        def run():
            _set_attention(nets[layout], impl)
            with torch.inference_mode():
                nets[layout](inputs[layout], t)
        return run

    def forward_backward(impl, layout):
        def run():
            net = nets[layout]
            _set_attention(net, impl)
            net.zero_grad(set_to_none=True)
            net(inputs[layout], t).sum().backward()
        return run

    return {kind: {v: make(*v) for v in VARIANTS} for kind, make in (("fwd", forward), ("fwdbwd", forward_backward))}


def unet_setup(torch) -> dict:
    """The untimed part (it may overlap the memory subprocesses): FLOPs, kernel check, networks, warm-ups."""
    from tav.diffusion.unet3d import UNet

    out = {"flops": count_flops(torch, bench_config()), "sdpa_kernels": _attention_kernels(torch)}
    torch.manual_seed(0)
    net = UNet(bench_config()).train()
    out["parameters"] = net.num_parameters()
    cl = torch.channels_last_3d
    nets = {"contiguous": net, "channels_last_3d": copy.deepcopy(net).to(memory_format=cl)}
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    inputs = {"contiguous": x, "channels_last_3d": x.to(memory_format=cl)}
    runs = _unet_runs(torch, nets, inputs, torch.tensor([500.0]))
    for layout in nets:
        wall, _ = _timed(runs["fwd"][("sdpa", layout)])
        print(f"[unet warm-up] forward {layout}: {wall:.1f} s", file=sys.stderr, flush=True)
    return {"out": out, "runs": runs}


def unet_timing(torch, args, setup: dict) -> dict:
    """The mm reference, then interleaved forward and forward + backward timings of the four variants."""
    out, runs = setup["out"], setup.pop("runs")  # the networks go when this returns
    out["mm_gflops"] = matmul_gflops(torch)
    rec = {kind: {v: {"wall": [], "cpu": []} for v in VARIANTS} for kind in runs}
    for kind, rounds in (("fwd", args.rounds), ("fwdbwd", args.train_rounds)):
        for rnd in range(rounds):
            for v in VARIANTS if rnd % 2 == 0 else VARIANTS[::-1]:
                wall, cpu = _timed(runs[kind][v])
                rec[kind][v]["wall"].append(wall)
                rec[kind][v]["cpu"].append(cpu)
                print(f"[unet {kind} round {rnd + 1}/{rounds}] {v[0]} {v[1]}: {wall:.1f} s",
                      file=sys.stderr, flush=True)
    out["rows"] = [{"impl": v[0], "layout": v[1], **{k: rec[k][v] for k in rec}} for v in VARIANTS]
    return out


# ------------------------------------------------------------------------------------------- memory
def child_memory(threads: int, checkpointing: bool) -> dict:
    """Fresh process: build the network, one forward + backward; RSS after the build and the peak RSS."""
    torch = _setup_torch(threads)
    from tav.diffusion.unet3d import UNet

    torch.manual_seed(0)
    net = UNet(bench_config(gradient_checkpointing=checkpointing)).train()
    x, t = torch.randn(SHAPE), torch.tensor([500.0])
    gc.collect()
    built, peak_built = _rss_now_gib(), _peak_rss_gib()
    wall, cpu = _timed(lambda: net(x, t).sum().backward())
    return {"checkpointing": checkpointing, "rss_after_build_gib": built, "peak_after_build_gib": peak_built,
            "peak_rss_gib": _peak_rss_gib(), "wall": wall, "cpu": cpu}


def _start_child(args: argparse.Namespace, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--threads", str(args.threads), *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=env)


def _child_result(proc: subprocess.Popen) -> dict:
    stdout, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"child {proc.args[-1]} failed with exit code {proc.returncode} (its stderr is above)")
    return json.loads(stdout.strip().splitlines()[-1])


def start_memory(args: argparse.Namespace) -> dict[str, subprocess.Popen]:
    """The two peak-RSS subprocesses, side by side (each process has its own high-water mark)."""
    return {k: _start_child(args, ["--child-memory", k]) for k in ("plain", "ckpt")}


def finish_memory(torch, procs: dict[str, subprocess.Popen]) -> dict:
    out = {"flops": {k: count_flops(torch, bench_config(gradient_checkpointing=k == "ckpt"))["fwdbwd"]
                     for k in procs}}
    for key, proc in procs.items():
        res = out[key] = _child_result(proc)
        print(f"[memory] checkpointing={res['checkpointing']}: peak RSS {res['peak_rss_gib']:.2f} GiB (after build "
              f"{res['rss_after_build_gib']:.2f}); step {res['wall']:.1f} s", file=sys.stderr, flush=True)
    return out


# ------------------------------------------------------------------------------------------- sampling
class _Stop(Exception):
    pass


class _StopAfter:
    """Wraps the net; raises ``_Stop`` once it has been called ``n`` times (a prefix of a sampler run)."""

    def __init__(self, net, n: int) -> None:
        self.net, self.n, self.calls = net, n, 0

    def __call__(self, *a, **kw):
        if self.calls == self.n:
            raise _Stop
        self.calls += 1
        return self.net(*a, **kw)


def _sample_run(torch, net, schedule, skip: int, steps: int, x_init) -> tuple[float, float]:
    """(wall s, process CPU s) of the first ``steps`` DDPM steps of an SDEdit run skipping ``skip`` steps."""
    from tav.diffusion.samplers import ddpm_sample

    wrapped = _StopAfter(net, steps)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        ddpm_sample(wrapped, schedule, SAMPLE_SHAPE, x_init=x_init, skip_timesteps=skip,
                    generators=[torch.Generator().manual_seed(0)])
    except _Stop:
        pass
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if wrapped.calls != steps:
        raise RuntimeError(f"sampler made {wrapped.calls} network calls; expected {steps}")
    return wall, cpu


def sampling_benchmark(torch, args) -> dict:
    from tav.diffusion.config import unet_preset
    from tav.diffusion.schedule import GaussianSchedule, ProcessConfig
    from tav.diffusion.unet3d import UNet

    torch.manual_seed(0)
    net = UNet(unet_preset("unet3d-tiny")).eval()
    x_init = torch.rand(SAMPLE_SHAPE, generator=torch.Generator().manual_seed(2)) - 0.5
    process = ProcessConfig()
    plans = {}
    for name, respacing in (("respaced", RESPACING), ("unrespaced", None)):
        schedule = GaussianSchedule.from_config(process, respacing=respacing)
        skip = round(schedule.num_timesteps * SKIP_FRACTION)
        total = schedule.num_timesteps - skip
        timed = total if name == "respaced" else min(args.unrespaced_steps, total)
        plans[name] = {"schedule": schedule, "skip": skip, "total": total, "timed": timed}
    _sample_run(torch, net, plans["respaced"]["schedule"], plans["respaced"]["skip"], 5, x_init)  # warm-up
    with torch.no_grad():
        kernels = kernels_used(torch, lambda: net(x_init, torch.tensor([500.0])))
    rec = {k: {"wall": [], "cpu": []} for k in plans}
    for rnd in range(args.rounds):
        for name in plans if rnd % 2 == 0 else list(plans)[::-1]:
            p = plans[name]
            wall, cpu = _sample_run(torch, net, p["schedule"], p["skip"], p["timed"], x_init)
            rec[name]["wall"].append(wall)
            rec[name]["cpu"].append(cpu)
            print(f"[sampling round {rnd + 1}/{args.rounds}] {name}: {p['timed']} steps in {wall:.2f} s",
                  file=sys.stderr, flush=True)
    out = {name: {"steps_total": p["total"], "steps_timed": p["timed"], "skip": p["skip"],
                  "schedule_steps": p["schedule"].num_timesteps, **rec[name],
                  **{f"per_step_{k}_s": _median(rec[name][k]) / p["timed"] for k in ("wall", "cpu")},
                  **{f"total_{k}_s": _median(rec[name][k]) / p["timed"] * p["total"] for k in ("wall", "cpu")}}
           for name, p in plans.items()}
    return {**out, "kernels": kernels}


# ------------------------------------------------------------------------------------------- report
def _fmt_range(xs: list[float]) -> str:
    return f"{min(xs):.1f}–{max(xs):.1f}" if xs else "–"


def _cores(rec: dict) -> str:
    return f"{sum(rec['cpu']) / sum(rec['wall']):.2f}" if rec["wall"] else "–"


def _kernel_text(kernels: dict[str, float]) -> str:
    return ", ".join(f"`{k}` {100 * v:.0f}%" for k, v in sorted(kernels.items(), key=lambda kv: -kv[1]))


def _unet_lines(unet: dict, meta: dict) -> list[str]:
    mm, flops = max(unet["mm_gflops"]), unet["flops"]
    t, h, w = SHAPE[2:]
    lines = [f"fp32 `torch.mm` 2048²: **{mm:.1f} GFLOP/s** best of 5 (median {_median(unet['mm_gflops']):.1f}).", "",
             f"**U-Net forward / forward + backward**, TA2V channels ({unet['parameters'] / 1e6:.1f} M parameters), "
             f"input {'×'.join(map(str, SHAPE))}, attention at ds 8 and 16 ({t * (h // 8) * (w // 8)} and "
             f"{t * (h // 16) * (w // 16)} tokens) + middle; counted FLOPs: forward {flops['fwd'] / 1e9:.0f} G, "
             f"forward + backward {flops['fwdbwd'] / 1e9:.0f} G. 1 warm-up forward per layout, then {meta['rounds']} "
             "interleaved forward round(s) and "
             f"{meta['train_rounds']} forward + backward round(s); median (min–max); GFLOP/s = counted FLOPs / median "
             "time (% of the `torch.mm` best); speed-up vs sdpa contiguous (its median / this median).", "",
             "| attention | layout | forward s | GFLOP/s | speed-up | cores | fwd+bwd s | GFLOP/s | speed-up | "
             "cores |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = unet["rows"][0]
    for row in unet["rows"]:
        cells = []
        for kind in ("fwd", "fwdbwd"):
            med = _median(row[kind]["wall"])
            rate = flops[kind] / med / 1e9
            cells += [f"{med:.1f} ({_fmt_range(row[kind]['wall'])})", f"{rate:.1f} ({100 * rate / mm:.0f}%)",
                      f"{_median(base[kind]['wall']) / med:.2f}×", _cores(row[kind])]
        lines.append(f"| {row['impl']} | {row['layout']} | " + " | ".join(cells) + " |")
    return lines + ["", "Kernels behind `attention_impl=\"sdpa\"` (one 512-wide attention block, 1024 tokens, share "
                    f"of its self CPU time): {_kernel_text(unet['sdpa_kernels'])}.", ""]


def _memory_lines(memory: dict) -> list[str]:
    lines = ["**Peak memory, one forward + backward** (sdpa, contiguous), a fresh process each: peak RSS "
             "(`ru_maxrss`) and peak minus the RSS after building the network (VmRSS); step wall / CPU time for "
             "reference only (one run each, side by side, beside the untimed U-Net set-up).", "",
             "| gradient checkpointing | peak RSS GiB | RSS after build GiB | step adds GiB | step wall s | "
             "step CPU s | counted GFLOP |", "|---|---:|---:|---:|---:|---:|---:|"]
    for key in ("plain", "ckpt"):
        r = memory[key]
        lines.append(f"| {'on' if r['checkpointing'] else 'off'} | {r['peak_rss_gib']:.2f} | "
                     f"{r['rss_after_build_gib']:.2f} | {r['peak_rss_gib'] - r['rss_after_build_gib']:.2f} | "
                     f"{r['wall']:.1f} | {r['cpu']:.1f} | {memory['flops'][key] / 1e9:.0f} |")
    p, c = memory["plain"], memory["ckpt"]
    saved = (p["peak_rss_gib"] - p["rss_after_build_gib"]) / max(c["peak_rss_gib"] - c["rss_after_build_gib"], 1e-9)
    return lines + ["", f"What the step adds, without / with checkpointing: **{saved:.2f}×**.", ""]


def _sampling_lines(sampling: dict, meta: dict) -> list[str]:
    r, u = sampling["respaced"], sampling["unrespaced"]
    est = u["steps_timed"] < u["steps_total"]
    lines = [f"**Sampling** (`ddpm_sample`, `unet3d-tiny`, {'×'.join(map(str, SAMPLE_SHAPE))}, SDEdit from x_init, "
             f"first {SKIP_FRACTION:.0%} of the schedule skipped); 1 warm-up, {meta['rounds']} interleaved rounds, "
             "median." + (f" The unrespaced run is timed over its first {u['steps_timed']} steps and **extrapolated "
                          f"linearly** to {u['steps_total']} steps." if est else ""), "",
             "| schedule | steps | timed | per step ms (CPU ms) | wall s (CPU s) |", "|---|---:|---:|---:|---:|"]
    for label, x in ((f'respaced "{RESPACING}"', r), (f"none, {u['schedule_steps']} steps", u)):
        lines.append(f"| {label} (skip {x['skip']}) | {x['steps_total']} | {x['steps_timed']} | "
                     f"{1e3 * x['per_step_wall_s']:.1f} ({1e3 * x['per_step_cpu_s']:.1f}) | {x['total_wall_s']:.2f} "
                     f"({x['total_cpu_s']:.2f}){' extrapolated' if x is u and est else ''} |")
    ratio = {k: u[f"total_{k}_s"] / r[f"total_{k}_s"] for k in ("wall", "cpu")}
    step = {k: u[f"per_step_{k}_s"] / r[f"per_step_{k}_s"] for k in ("wall", "cpu")}
    return lines + ["", f"Unrespaced / respaced wall time: **{ratio['wall']:.1f}×**, CPU time {ratio['cpu']:.1f}× "
                    f"(step count ratio {u['steps_total'] / r['steps_total']:.0f}×; per-step ratio wall "
                    f"{step['wall']:.2f}, CPU {step['cpu']:.2f}).", "",
                    f"Kernels of one tiny forward (share of self CPU time): {_kernel_text(sampling['kernels'])}.", ""]


def report(meta: dict, unet: dict | None, memory: dict | None, sampling: dict | None) -> str:
    lines = ["## Diffusion U-Net benchmark (fp32, CPU)", "",
             f"**Machine:** {meta['cpu']}, {meta['cores']} cores; torch {meta['torch']}, {meta['threads']} "
             f"thread(s); load average (1/5/15 min) before: {meta['load_before']}, after: {meta['load_after']}; "
             f"benchmark wall time {meta['wall_s']:.0f} s. \"cores\" = process CPU time / wall time.", ""]
    if unet:
        lines += _unet_lines(unet, meta)
    if memory:
        lines += _memory_lines(memory)
    if sampling:
        lines += _sampling_lines(sampling, meta)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared machine)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of forwards and of sampling")
    p.add_argument("--train-rounds", type=int, default=1, help="interleaved rounds of forward + backward")
    p.add_argument("--unrespaced-steps", type=int, default=75,
                   help="steps of the 3000-step unrespaced sampling run that are timed (3000: all)")
    p.add_argument("--skip-unet", action="store_true", help="no forward / forward + backward timing")
    p.add_argument("--skip-memory", action="store_true", help="no peak-memory subprocesses")
    p.add_argument("--skip-sampling", action="store_true", help="no sampling timing")
    p.add_argument("--json", type=Path, help="also write the raw results here")
    p.add_argument("--child-memory", choices=["plain", "ckpt"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_memory:
        res = child_memory(args.threads, args.child_memory == "ckpt")
        print(json.dumps(res))
        return res

    torch = _setup_torch(args.threads)
    t_start, load_before = time.perf_counter(), _loadavg()
    procs = None if args.skip_memory else start_memory(args)
    setup = None if args.skip_unet else unet_setup(torch)  # untimed: may overlap the memory processes
    memory = None if procs is None else finish_memory(torch, procs)
    unet = None if setup is None else unet_timing(torch, args, setup)  # timed: nothing else of ours runs
    sampling = None if args.skip_sampling else sampling_benchmark(torch, args)
    meta = {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "threads": args.threads,
            "rounds": args.rounds, "train_rounds": args.train_rounds, "load_before": load_before,
            "load_after": _loadavg(), "wall_s": time.perf_counter() - t_start}
    print(report(meta, unet, memory, sampling))
    result = {"meta": meta, "unet": unet, "memory": memory, "sampling": sampling}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
