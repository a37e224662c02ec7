"""Video VQGAN speed and memory at the URMP configuration (batch 1, 16x96x96 clips, fp32, CPU).

What is measured (``vqgan_preset("urmp")``: BatchNorm, 16384 x 256 codebook, 576 tokens per clip):

1. **Training step**: generator pass (autoencoder forward, L1 + commitment + LPIPS + adversarial +
   feature-matching loss, backward, clip-grad-norm 1.0, Adam step) and discriminator pass (2D and 3D
   PatchGAN hinge loss, backward, clip, Adam step), at ``step = discriminator_iter_start`` so the GAN
   terms are on. LPIPS uses a **random VGG16 backbone** (``build_perceptual(random_backbone=True)``):
   the real ImageNet weights cannot be had offline; the cost is the same, the loss value is meaningless.
   The codebook is initialised from the clip before timing. Step time: **all variants in one process**
   (1 warm-up step each, then ``--steps`` rounds of one step per variant, the order reversed every other
   round), so that load from other users of this shared machine hits all of them alike; reported: the
   median, min-max, "cores used" (process CPU time / wall time; below the thread count means the
   process was starved), the speed-up as the median over rounds of baseline time / variant time in
   the same round (and the ratio of the fastest steps), and the same for process CPU time (less
   sensitive to being descheduled); the warm-up step also counts the step's FLOPs (FlopCounterMode,
   forward + backward; bf16 FLOPs count the same). Peak RSS: **a fresh process per variant** running
   ``--mem-steps`` steps (2: from step 2 on, Adam's state and the previous step's gradients are alive
   during the forward), ``resource.getrusage(...).ru_maxrss``.

   Variants:
   - ``baseline``: the upstream (TATS / TA2V) way of computing the same model, in
     ``benchmarks/baseline_vqgan.py``, over the same ``tav`` modules and weights: PyTorch Lightning 1.x
     automatic optimisation with two optimisers, i.e. the **whole autoencoder forward (encoder,
     codebook with its EMA update, decoder) runs once per optimiser pass, twice per step**, each pass
     with its own random frame, the other optimiser's parameters frozen (``toggle_optimizer``);
     SiLU as ``x * sigmoid(x)``; EMA codebook with a one-hot ``(576, 16384)`` matrix, the sums as the
     matmul ``flat.T @ onehot`` (4.8 GFLOP) and a tiled + permuted restart pool on every forward.
   - ``ours``: the step of ``tav.training.vqgan_module.VQGANModule`` (re-stated without Lightning's
     logging): one autoencoder forward per step (``model(video)``), ``generator_loss`` with the
     discriminators' parameters frozen (``toggle_optimizer``) and their real-input features under
     ``no_grad``, then ``discriminator_loss`` on the same (detached) reconstruction and frame index,
     gradients dropped right after each Adam step; fused ``F.silu``; codebook by ``index_add_`` /
     ``bincount``, distances without autograd.
   - ``ours_cl``: ``ours`` after ``model.to_channels_last()`` (channels_last_3d weights).
   - optional (``--train-variants``): ``ours_nofreeze`` (no toggling: the generator backward also
     computes the discriminators' unused gradients) and ``ours_bf16`` (``torch.autocast("cpu",
     bfloat16)`` around the forwards, as Lightning's ``bf16-mixed`` precision; changes numerics).

   Semantics differ slightly by design: ours updates the codebook EMA once per step (upstream twice)
   and the discriminator sees the reconstruction from before the generator's Adam step (upstream
   recomputes it after).

2. **Encode + decode throughput** (clips/s) under ``torch.inference_mode()`` in eval mode, batch 1 and
   4 (``--batches``): ``model.encode`` (encoder, pre-VQ conv, nearest code) then ``model.decode``,
   with contiguous and channels_last_3d weights, and the upstream ``encode``/``decode`` at the batch
   sizes in ``--baseline-batches``. 1 warm-up + ``--repeats`` timed runs, interleaved, median.

3. **Achieved GFLOP/s** of encode and decode: FLOPs counted with ``torch.utils.flop_counter.
   FlopCounterMode`` during the warm-up run (its convention: 2 per multiply-add; a transposed conv
   counted on its input grid), divided by the median time, against the fp32 ``torch.mm`` 2048 x 2048
   rate measured in the same subprocess (best of 5, and median).

The output is a markdown block (machine, threads, load average before/after); progress goes to stderr.
Default runtime about 5 minutes on 2 idle cores (more under outside load).

    python benchmarks/bench_vqgan.py [--threads N] [--steps 2] [--mem-steps 2] [--repeats 2]
        [--train-variants baseline,ours,ours_cl] [--batches 1,4] [--baseline-batches 1]
        [--skip-train] [--skip-memory] [--skip-infer] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN_VARIANTS = ("baseline", "ours", "ours_cl", "ours_nofreeze", "ours_bf16")
TRAIN_LABELS = {
    "baseline": "baseline (upstream-style step)",
    "ours": "ours",
    "ours_cl": "ours + channels_last_3d",
    "ours_nofreeze": "ours, D params not frozen in G pass",
    "ours_bf16": "ours + bf16 autocast (not default)",
}
# Upstream TA2V on this machine kind, measured earlier (not by this script), for reference only.
UPSTREAM_STEP_S, UPSTREAM_PEAK_GIB, UPSTREAM_DECODE_S = 15.5, 3.1, 3.1


# ------------------------------------------------------------------------------------------- helpers
def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _setup_torch(threads: int):
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", message="LPIPS built with a random VGG16 backbone")
    warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
    return torch


def _clip(torch, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 16, 96, 96, generator=g) - 0.5


def _cpu_name() -> str:
    from tav.utils.runtime import cpu_name

    return cpu_name()


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ------------------------------------------------------------------------------------------- our step
def _toggle(on: list, off: list) -> None:
    """Lightning's ``toggle_optimizer``: only the current optimiser's parameters require grad."""
    for p in off:
        p.requires_grad_(False)
    for p in on:
        p.requires_grad_(True)


def ours_training_step(model, perceptual, video, opt_g, opt_d, step: int, frame_idx,
                       freeze_disc: bool = True, autocast: bool = False) -> tuple[float, float]:
    """One ``tav`` training step, as ``tav.training.vqgan_module.VQGANModule.training_step`` does it
    (without Lightning's logging and bookkeeping, accumulation 1, clip 1.0): one autoencoder forward,
    then the generator pass (discriminators frozen) and the discriminator pass (autoencoder frozen) on
    the same reconstruction and frame; gradients are dropped (``set_to_none``) right after each step."""
    import torch

    from tav.vqgan import discriminator_loss, generator_loss

    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    ae, disc = model.autoencoder_parameters(), model.discriminator_parameters()
    with ctx():
        recon, vq = model(video)
    for opt, on, off in ((opt_g, ae, disc), (opt_d, disc, ae)):
        if freeze_disc:
            _toggle(on, off)
        with ctx():
            if opt is opt_g:
                loss, _ = generator_loss(model, perceptual, video, recon, vq, step, frame_idx)
                loss_g = loss
            else:
                loss, _ = discriminator_loss(model, video, recon, step, frame_idx)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(on, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    _toggle(ae + disc, [])
    return float(loss_g.detach()), float(loss.detach())


# ------------------------------------------------------------------------------------------- children
def _train_setup(variant: str):
    """Model, optimisers and step function of one training variant (same init and clip for all)."""
    import baseline_vqgan
    import torch

    from tav.vqgan import VQGAN, build_perceptual, vqgan_preset
    from tav.vqgan.losses import random_frame_index

    torch.manual_seed(0)
    cfg = vqgan_preset("urmp")
    model = VQGAN(cfg).train()
    perceptual = build_perceptual(cfg.lpips_input_scale, random_backbone=True)
    video = _clip(torch, 1)
    with torch.no_grad():  # data-dependent codebook init (excluded from timing)
        model.codebook(model.encode_latents(video))
    if variant == "ours_cl":
        model.to_channels_last()
    opt_g = torch.optim.Adam(model.autoencoder_parameters(), lr=cfg.lr, betas=cfg.betas)
    opt_d = torch.optim.Adam(model.discriminator_parameters(), lr=cfg.lr, betas=cfg.betas)
    step = cfg.discriminator_iter_start  # GAN terms on

    def one_step():
        if variant == "baseline":
            return baseline_vqgan.training_step(model, perceptual, video, opt_g, opt_d)
        return ours_training_step(model, perceptual, video, opt_g, opt_d, step, random_frame_index(video),
                                  freeze_disc=variant != "ours_nofreeze", autocast=variant == "ours_bf16")

    return one_step


def _timed(fn) -> tuple[float, float]:
    """(wall s, process CPU s) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def child_train_time(variants: list[str], threads: int, steps: int) -> dict:
    """All variants in one process: 1 warm-up step each, then ``steps`` rounds of one step per variant,
    order reversed every other round, so that outside load hits every variant alike."""
    _setup_torch(threads)
    from torch.utils.flop_counter import FlopCounterMode

    fns = {v: _train_setup(v) for v in variants}
    out = {v: {"wall": [], "cpu": []} for v in variants}
    for v, fn in fns.items():  # warm-up step, also counting the step's FLOPs (forward + backward)
        with FlopCounterMode(display=False) as fc:
            fn()
        out[v]["flops"] = fc.get_total_flops()
    for rnd in range(steps):
        for v in variants if rnd % 2 == 0 else variants[::-1]:
            wall, cpu = _timed(fns[v])
            out[v]["wall"].append(wall)
            out[v]["cpu"].append(cpu)
            print(f"[train round {rnd + 1}/{steps}] {v}: {wall:.2f} s", file=sys.stderr, flush=True)
    return out


def child_train_memory(variant: str, threads: int, steps: int) -> dict:
    """Fresh process, ``steps`` steps of one variant: its peak RSS (``ru_maxrss``), setup RSS, step times."""
    _setup_torch(threads)
    fn = _train_setup(variant)
    setup = _peak_rss_gib()
    times, peaks = [], []
    for _ in range(steps):
        times.append(_timed(fn)[0])
        peaks.append(_peak_rss_gib())
    return {"variant": variant, "peak_rss_gib": peaks[-1], "peaks_gib": peaks, "setup_rss_gib": setup, "wall": times}


def child_infer(threads: int, batches: list[int], baseline_batches: list[int], repeats: int) -> dict:
    """Encode/decode timing (ours contiguous, ours channels_last_3d, upstream-style), FLOPs, mm rate."""
    torch = _setup_torch(threads)
    import baseline_vqgan
    from torch.utils.flop_counter import FlopCounterMode

    from tav.vqgan import VQGAN, vqgan_preset

    # fp32 matmul reference
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    mm = []
    for _ in range(5):
        t0 = time.perf_counter()
        torch.mm(a, b)
        mm.append(2 * 2048**3 / (time.perf_counter() - t0) / 1e9)
    del a, b

    torch.manual_seed(0)
    cfg = vqgan_preset("urmp")
    model = VQGAN(cfg).train()
    with torch.no_grad():
        model.codebook(model.encode_latents(_clip(torch, 1)))
    model.eval()
    model_cl = copy.deepcopy(model).to_channels_last()

    variants = {
        "ours": (model.encode, model.decode),
        "ours_cl": (model_cl.encode, model_cl.decode),
        "baseline": (lambda x: baseline_vqgan.encode(model, x), lambda c: baseline_vqgan.decode(model, c)),
    }
    out = {"mm_gflops": mm, "rows": []}
    for batch in batches:
        video = _clip(torch, batch, seed=1)
        names = [n for n in variants if n != "baseline" or batch in baseline_batches]
        rec = {n: {"enc": [], "dec": [], "cpu": []} for n in names}
        flops = {}
        for rep in range(1 + repeats):
            for name in names if rep % 2 == 0 else names[::-1]:
                enc, dec = variants[name]
                with torch.inference_mode():
                    if rep == 0 and name == "ours":  # warm-up run doubles as the FLOP count
                        with FlopCounterMode(display=False) as fc:
                            codes = enc(video)
                        flops["enc"] = fc.get_total_flops()
                        with FlopCounterMode(display=False) as fc:
                            dec(codes)
                        flops["dec"] = fc.get_total_flops()
                        continue
                    c0, t0 = time.process_time(), time.perf_counter()
                    codes = enc(video)
                    t1 = time.perf_counter()
                    dec(codes)
                    t2, c2 = time.perf_counter(), time.process_time()
                if rep:
                    rec[name]["enc"].append(t1 - t0)
                    rec[name]["dec"].append(t2 - t1)
                    rec[name]["cpu"].append(c2 - c0)
        for name in names:
            out["rows"].append({"variant": name, "batch": batch, **rec[name],
                                "flops_enc": flops["enc"], "flops_dec": flops["dec"],
                                "flops_nn": 2 * batch * cfg.n_latents * cfg.embedding_dim * cfg.n_codes})
    out["peak_rss_gib"] = _peak_rss_gib()
    return out


def _run_child(args: argparse.Namespace, extra: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--threads", str(args.threads), *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {' '.join(extra)} failed with exit code {proc.returncode} (its stderr is above)")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- report
def _fmt_range(xs: list[float]) -> str:
    return f"{min(xs):.2f}–{max(xs):.2f}" if xs else "–"


def _cores_used(wall: list[float], cpu: list[float]) -> str:
    return f"{sum(cpu) / sum(wall):.1f}" if wall and sum(wall) > 0 else "–"


def report(meta: dict, train: dict | None, memory: dict | None, infer: dict | None) -> str:
    """Markdown block of the results."""
    lines = [f"**Machine:** {meta['cpu']}, {meta['cores']} cores; torch {meta['torch']}, "
             f"{meta['threads']} threads, fp32 unless noted; load average (1/5/15 min) before: "
             f"{meta['load_before']}, after: {meta['load_after']}; benchmark wall time {meta['wall_s']:.0f} s. "
             "\"cores used\" = process CPU time / wall time (below the thread count: the process was starved "
             "by other load).", ""]
    if infer is not None:
        mm = infer["mm_gflops"]
        lines += [f"fp32 `torch.mm` 2048²: **{max(mm):.0f} GFLOP/s** best of 5 (median {_median(mm):.0f}).", ""]
    if train is not None or memory is not None:
        names = list(train or memory)
        base = (train or {}).get("baseline")
        lines += ["**Training step**, URMP config (BatchNorm, 16384 codes), batch 1, 16×96×96, fp32, generator "
                  "+ discriminator pass (each forward, backward, clip 1.0, Adam), GAN terms on, LPIPS with a "
                  "**random** VGG16 backbone (real weights unavailable offline). Time: all variants in one "
                  "process, 1 warm-up step each, then interleaved steps; speed-up = median over rounds of "
                  "baseline step / variant step in the same round (in brackets: fastest baseline step / fastest "
                  "variant step). Peak RSS: a fresh process per variant "
                  f"({meta['mem_steps']} steps).", "",
                  "| variant | step (s), median | min–max | n | cores used | speed-up vs baseline | CPU s/step "
                  "(speed-up) | GFLOP/step (GFLOP/s) | peak RSS (GiB) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name in names:
            t = (train or {}).get(name)
            wall = t["wall"] if t else []
            if base and t:
                ratio = (f"{_median([b / w for b, w in zip(base['wall'], wall, strict=True)]):.2f}× "
                         f"({min(base['wall']) / min(wall):.2f}×)")
            else:
                ratio = "–"
            rss = f"{memory[name]['peak_rss_gib']:.2f}" if memory and name in memory else "–"
            med = f"{_median(wall):.2f}" if wall else "–"
            cores = _cores_used(wall, t["cpu"]) if t else "–"
            flops = f"{t['flops'] / 1e9:.0f} ({t['flops'] / 1e9 / _median(wall):.0f})" if t and wall else "–"
            cpu = "–"
            if t and wall:
                cpu = f"{_median(t['cpu']):.1f}"
                if base:
                    cpu += f" ({_median([b / c for b, c in zip(base['cpu'], t['cpu'], strict=True)]):.2f}×)"
            lines.append(f"| {TRAIN_LABELS[name]} | {med} | {_fmt_range(wall)} | {len(wall)} | {cores} | {ratio} "
                         f"| {cpu} | {flops} | {rss} |")
        lines += [f"| *upstream TA2V, earlier measurement (not measured here)* | *{UPSTREAM_STEP_S}* | | | | | | | "
                  f"*{UPSTREAM_PEAK_GIB}* |", ""]
    if infer is not None:
        peak = max(infer["mm_gflops"])
        names = {"ours": "ours", "ours_cl": "ours + channels_last_3d", "baseline": "baseline (upstream-style)"}
        lines += ["**Encode + decode**, `torch.inference_mode()`, eval mode, fp32, 16×96×96 clips; 1 warm-up + "
                  "interleaved timed runs, median; GFLOP/s = FlopCounterMode FLOPs / median time (% of the "
                  "`torch.mm` best above):", "",
                  "| variant | batch | encode (s) | decode (s) | clips/s | cores used | encode GFLOP/s | "
                  "decode GFLOP/s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for row in infer["rows"]:
            enc, dec = _median(row["enc"]), _median(row["dec"])
            tot = _median([e + d for e, d in zip(row["enc"], row["dec"], strict=True)])
            ge, gd = row["flops_enc"] / enc / 1e9, row["flops_dec"] / dec / 1e9
            cores = _cores_used([e + d for e, d in zip(row["enc"], row["dec"], strict=True)], row["cpu"])
            lines.append(f"| {names[row['variant']]} | {row['batch']} | {enc:.2f} | {dec:.2f} | "
                         f"{row['batch'] / tot:.3f} | {cores} | {ge:.0f} ({100 * ge / peak:.0f}%) | "
                         f"{gd:.0f} ({100 * gd / peak:.0f}%) |")
        lines.append(f"| *upstream TA2V decode, earlier measurement (not measured here)* | 1 | | "
                     f"*{UPSTREAM_DECODE_S}* | | | | |")
        r1 = min(infer["rows"], key=lambda r: r["batch"])
        b = r1["batch"]
        lines += ["", f"Counted FLOPs per clip: encode {r1['flops_enc'] / b / 1e9:.1f} G (encoder "
                  f"{(r1['flops_enc'] - r1.get('flops_nn', 0)) / b / 1e9:.1f} G + nearest code among 16384), decode "
                  f"{r1['flops_dec'] / b / 1e9:.1f} G."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main
def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (all cores)")
    p.add_argument("--steps", type=int, default=2, help="timed training steps per variant (after 1 warm-up)")
    p.add_argument("--mem-steps", type=int, default=2,
                   help="steps of the per-variant peak-RSS processes (>= 2: Adam state exists from step 2)")
    p.add_argument("--repeats", type=int, default=2, help="timed encode+decode runs per variant (after 1 warm-up)")
    p.add_argument("--train-variants", default="baseline,ours,ours_cl",
                   help=f"comma list from {','.join(TRAIN_VARIANTS)}")
    p.add_argument("--batches", default="1,4", help="encode/decode batch sizes")
    p.add_argument("--baseline-batches", default="1", help="batch sizes at which upstream-style encode/decode runs")
    p.add_argument("--skip-train", action="store_true", help="no training-step timing")
    p.add_argument("--skip-memory", action="store_true", help="no per-variant peak-RSS processes")
    p.add_argument("--skip-infer", action="store_true", help="no encode/decode measurements")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--child", choices=["train", "memory", "infer"], help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    variants = [v for v in args.train_variants.split(",") if v]
    bad = [v for v in variants if v not in TRAIN_VARIANTS]
    if bad:
        p.error(f"unknown --train-variants {bad}; choose from {TRAIN_VARIANTS}")
    if args.child:
        if args.child == "train":
            res = child_train_time(variants, args.threads, args.steps)
        elif args.child == "memory":
            res = child_train_memory(args.variant, args.threads, args.mem_steps)
        else:
            res = child_infer(args.threads, _ints(args.batches), _ints(args.baseline_batches), args.repeats)
        print(json.dumps(res))
        return res

    import torch

    t_start, load_before = time.perf_counter(), _loadavg()
    common = ["--train-variants", ",".join(variants), "--steps", str(args.steps), "--mem-steps", str(args.mem_steps)]
    train = None if args.skip_train else _run_child(args, ["--child", "train", *common])
    memory = None
    if not args.skip_memory:
        memory = {}
        for v in variants:
            memory[v] = _run_child(args, ["--child", "memory", "--variant", v, *common])
            print(f"[memory] {v}: peak RSS {memory[v]['peak_rss_gib']:.2f} GiB; steps "
                  + ", ".join(f"{t:.2f} s" for t in memory[v]["wall"]), file=sys.stderr, flush=True)
    infer = None
    if not args.skip_infer:
        infer = _run_child(args, ["--child", "infer", "--batches", args.batches,
                                  "--baseline-batches", args.baseline_batches, "--repeats", str(args.repeats)])
    meta = {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "threads": args.threads,
            "load_before": load_before, "load_after": _loadavg(), "wall_s": time.perf_counter() - t_start,
            "mem_steps": args.mem_steps}
    print(report(meta, train, memory, infer))
    result = {"meta": meta, "train": train, "memory": memory, "infer": infer}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
