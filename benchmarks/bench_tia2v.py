"""Seconds per TIA2V video on CPU at a tiny, real-shaped config: respaced sampling vs upstream's 3,900-step
schedule, and BEATs features computed once per clip vs at every step.

Set-up (random weights: the speed does not depend on their values; fp32; batch 1, as upstream samples):
- motion U-Net: ``tia2v_preset("motion-tiny")`` widths (32 channels, mult (1, 2), 1 ResBlock per level,
  2 heads, transformers at down-sampling 2 and in the middle) at upstream's clip shape: 16 frames of
  ``--image-size`` px (default 64, the released motion size), context widths = the BEATs width (768), so the
  real condition layout goes in: ``context`` (1, 78, 768), ``context_temp`` (16, 85, 768);
- process: TIA2V's 4000-step cosine process with learned sigma (``TIA2V_PROCESS``);
- **upstream schedule**: no respacing, ``skip_timesteps=100`` -> 3900 DDPM steps (``sample_motion_optim.py``);
- **ours**: respaced ``"200"`` DDPM with the same start (``respaced_skip``: 5 skipped -> 195 steps), and
  ``"ddim50"`` DDIM (49 steps);
- every variant runs through ``TIA2VSampler.stage1`` itself (``motion_context``, SDEdit init = frame 0 + zeros);
- BEATs: the full iter3+ model (``BEATsConfig()``, 90.3 M, random init, built once) or ``--beats tiny``; input
  16 frames of 48 kHz audio at 30 fps (URMP); ``--beats-mode compat`` (default: rows at 96 kHz read as 16 kHz,
  as the released weights saw; 8 tokens per frame) or ``fixed``.

Timing:
- Steps: 3900 steps at CPU take hours, so each variant runs ``--rounds`` (default 3) times ``--steps-timed``
  consecutive steps (default 2; 6 steps per variant) after one warm-up run, the variants in turn, the order
  reversed every round so outside load hits them alike; the sampler is stopped at its next U-Net call.
  Step = time between successive U-Net calls (network + sampler update + noise).
  **Per video = setup (conditions + start sample) + N x median step, extrapolated** for upstream and ours
  alike. Process CPU time per step is recorded too (with 1 thread it discounts time lost to other processes).
- End-to-end check: ``--full-chain ddim50`` (default; ``200`` or ``none`` possible) runs ``TIA2VSampler.stage1``
  to the end for that variant and reports its measured seconds beside the extrapolation.
- BEATs once per clip: ``beats_frame_tokens`` over the clip's 16 frames (resampling included), median of
  ``--beats-reps``. BEATs per step: per video = N x once per clip (the clip's tokens recomputed at every
  motion step); checked by a measured variant whose network call recomputes the tokens and ``context_temp``
  at every step (upstream schedule): its step minus the plain step should be about one clip's BEATs.
  Upstream's sampler computed BEATs once per sample, so per-step BEATs in sampling is a what-if; upstream's
  *training* loop did run it every training step with autograd on (its parameters required grad, so the
  backward filled unused gradients): that per-training-step cost is measured as well (forward with grad +
  backward of a scalar of the tokens), against ours' offline condition cache (once per clip, none per step).
- ``--shr``: the SHR stage (``tia2v_preset("shr-tiny")`` widths, 3D U-Net, 768-wide text context; the clip
  upsampled to ``--shr-size``, default 2x the motion size as upstream's 64 -> 128) the same way: upstream 3900
  DDPM steps (skip 100) vs ours ``"200"`` and ``"ddim50"`` at the default ``shr_strength`` 0.375 (skip 2500:
  75 and 19 steps). Ours' SHR default changes the strength too (2500 of 4000 skipped vs 100), not only the
  spacing; the report adds ours ``"200"`` at upstream's skip 100 (195 x ours' measured step) for a like-for-like ratio.

Threads default to 1 (on the shared 2-core machines two OpenMP threads stall whenever another process holds a
core). Default runtime about 3 minutes at 1 thread on a quiet machine (``--shr``: about 4 more at 128 px).
Progress goes to stderr; a markdown report to stdout.

    python benchmarks/bench_tia2v.py [--threads 1] [--image-size 64] [--steps-timed 2] [--rounds 3]
        [--beats full|tiny] [--beats-mode compat|fixed] [--beats-reps 5] [--full-chain ddim50|200|none]
        [--train-reps 2] [--shr] [--shr-size 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import torch
from bench_unet import _cpu_name, _loadavg
from torch import Tensor, nn

from tav.diffusion.schedule import GaussianSchedule, ProcessConfig
from tav.encoders.beats import (
    BEATsEncoder,
    beats_frame_tokens,
    compat_rows,
    fixed_windows,
    tiny_beats_config,
)
from tav.encoders.beats_model import BEATs, BEATsConfig
from tav.pipelines.tia2v import TIA2VSampler, TIA2VSamplingConfig, respaced_skip
from tav.tia2v import TIA2V_PROCESS, TIA2VUNet, tia2v_preset
from tav.tia2v.conditions import motion_context

HERE = Path(__file__).resolve().parent

FRAMES, FPS, AUDIO_RATE, COMPAT_RATE = 16, 30.0, 48000, 96000  # URMP: 30 fps, rows at 96 kHz (90-frame files)
UPSTREAM_SKIP, SHR_SKIP = 100, TIA2VSamplingConfig().shr_skip(4000)  # 100 (motion and SHR upstream), ours 2500
# name -> (respacing, sampler); "upstream" = no respacing, as sample_motion_optim.py
SCHEDULES = {"upstream": (None, "ddpm"), "200": ("200", "ddpm"), "ddim50": ("ddim50", "ddim")}
LABELS = {"upstream": 'upstream schedule (4000, DDPM)', "200": 'ours respaced "200" (DDPM)',
          "ddim50": 'ours "ddim50" (DDIM)'}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ------------------------------------------------------------------------------------------- instrumentation
class _Stop(Exception):
    """Raised by ``StepClock`` to stop a sampler after the steps to time."""


class StepClock(nn.Module):
    """A U-Net whose calls are time-stamped (wall and process CPU); with ``limit`` set, call ``limit + 1``
    stops the sampler, so ``limit`` whole steps lie between the stamps."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.limit = net, None
        self.reset()

    def reset(self, limit: int | None = None) -> None:
        self.limit, self.wall, self.cpu = limit, [], []

    def forward(self, *args, **kwargs) -> Tensor:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())
        if self.limit is not None and len(self.wall) > self.limit:
            raise _Stop
        return self.net(*args, **kwargs)


class BeatsPerStep(nn.Module):
    """The motion U-Net with the audio tokens and ``context_temp`` recomputed by BEATs at every call (what-if:
    no condition cache; upstream's training loop ran BEATs per step). Inputs as ``TIA2VUNet`` (motion)."""

    def __init__(self, net: nn.Module, beats: BEATsEncoder, wave: Tensor, text: Tensor, mode: str) -> None:
        super().__init__()
        self.net, self.beats, self.wave, self.text, self.mode = net, beats, wave, text, mode

    def forward(self, x: Tensor, t: Tensor, context: Tensor, context_temp: Tensor) -> Tensor:
        tokens = clip_tokens(self.beats, self.wave, self.mode)[None]  # (1, F, P, D)
        return self.net(x, t, context, motion_context(tokens, self.text))


# ------------------------------------------------------------------------------------------- set-up
@dataclass
class Setup:
    motion: TIA2VUNet
    shr: TIA2VUNet | None
    beats: BEATsEncoder
    schedules: dict[str, GaussianSchedule]
    wave: Tensor  # (S,) 48 kHz, the clip's 16 frames
    text: Tensor  # (1, 77, D)
    image: Tensor  # (1, D)
    first: Tensor  # (1, 3, H, W) in [-0.5, 0.5]
    params: dict[str, float] = field(default_factory=dict)  # millions
    beats_build_s: float = 0.0


def clip_tokens(beats: BEATsEncoder, wave: Tensor, mode: str) -> Tensor:
    """``(F, P, D)`` per-frame BEATs tokens of one clip (compat: URMP's 96 kHz rows)."""
    rate = COMPAT_RATE if mode == "compat" else None
    return beats_frame_tokens(beats, wave, AUDIO_RATE, FRAMES, FPS, mode, compat_rate=rate)


def _scaled(preset: str, size: int, width: int) -> TIA2VUNet:
    """The preset's widths at ``size`` px and 16 frames, its transformers at the same down-sampling factors."""
    base = tia2v_preset(preset)
    over = {"image_size": size, "num_frames": FRAMES, "context_dim": width,
            "attention_resolutions": tuple(size // d for d in base.attention_ds)}
    if base.is_motion:
        over["context_dim_temp"] = width
    return TIA2VUNet(dataclasses.replace(base, **over)).eval().requires_grad_(False)


def build(args) -> Setup:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    beats = BEATsEncoder(BEATs(BEATsConfig() if args.beats == "full" else tiny_beats_config()).eval())
    built = time.perf_counter() - t0
    d = beats.dim
    motion = _scaled("motion-tiny", args.image_size, d)
    shr = _scaled("shr-tiny", args.shr_size, d) if args.shr else None
    process = ProcessConfig(**TIA2V_PROCESS)
    schedules = {k: GaussianSchedule.from_config(process, respacing=r) for k, (r, _) in SCHEDULES.items()}
    g = torch.Generator().manual_seed(1)
    s = Setup(motion, shr, beats, schedules, wave=0.1 * torch.randn(int(AUDIO_RATE * FRAMES / FPS), generator=g),
              text=torch.randn(1, 77, d, generator=g), image=torch.randn(1, d, generator=g),
              first=torch.rand(1, 3, args.image_size, args.image_size, generator=g) - 0.5, beats_build_s=built)
    nets = {"motion": motion, "shr": shr, "beats": beats}
    s.params = {k: sum(p.numel() for p in v.parameters()) / 1e6 for k, v in nets.items() if v is not None}
    return s


def n_steps(schedule: GaussianSchedule, skip: int) -> int:
    """Steps the sampler runs on ``schedule`` for a skip of ``skip`` original steps."""
    return schedule.num_timesteps - respaced_skip(schedule, skip)


# ------------------------------------------------------------------------------------------- stage timing
@dataclass
class Variant:
    """One way of sampling one stage: the sampler (around a ``StepClock``) and how to call its stage."""

    name: str
    stage: str  # "motion" | "shr"
    sampler: TIA2VSampler
    clock: StepClock
    steps: int  # per video
    call: object = None  # () -> Tensor, the stage for one clip
    t_start: float = 0.0
    setup: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def run(self, limit: int | None) -> float:
        """Run the stage, stopped after ``limit`` steps (None: to the end); returns the wall seconds."""
        self.clock.reset(limit)
        self.t_start = time.perf_counter()
        try:
            self.call()
        except _Stop:
            pass
        return time.perf_counter() - self.t_start

    def record(self) -> None:
        """Keep the last run's setup (start to first U-Net call) and step times."""
        w, c = self.clock.wall, self.clock.cpu
        self.setup.append(w[0] - self.t_start)
        self.wall += [b - a for a, b in pairwise(w)]
        self.cpu += [b - a for a, b in pairwise(c)]

    def result(self) -> dict:
        step = _median(self.wall)
        setup = _median(self.setup)
        return {"steps": self.steps, "step_s": step, "step_cpu_s": _median(self.cpu), "setup_s": setup,
                "per_video_s": setup + self.steps * step, "measured_steps_s": self.wall,
                "measured_steps_cpu_s": self.cpu}


def motion_variants(s: Setup, args, tokens: Tensor) -> list[Variant]:
    out = []
    for name, (_, kind) in SCHEDULES.items():
        cfg = TIA2VSamplingConfig(skip_timesteps=UPSTREAM_SKIP, sampler=kind)
        out.append(_motion_variant(name, s, s.schedules[name], cfg, StepClock(s.motion), tokens))
    per_step = StepClock(BeatsPerStep(s.motion, s.beats, s.wave, s.text, args.beats_mode))
    cfg = TIA2VSamplingConfig(skip_timesteps=UPSTREAM_SKIP, sampler="ddpm")
    out.append(_motion_variant("upstream+beats", s, s.schedules["upstream"], cfg, per_step, tokens))
    return out


def _motion_variant(name: str, s: Setup, schedule: GaussianSchedule, cfg: TIA2VSamplingConfig, clock: StepClock,
                    tokens: Tensor) -> Variant:
    sampler = TIA2VSampler(clock, schedule, None, None, cfg)
    v = Variant(name, "motion", sampler, clock, n_steps(schedule, cfg.skip_timesteps))
    v.call = lambda: sampler.stage1(s.first, s.text, s.image, tokens, FRAMES, seeds=[0])
    return v


def shr_variants(s: Setup, args) -> list[Variant]:
    clip = torch.rand(1, 3, FRAMES, args.image_size, args.image_size, generator=torch.Generator().manual_seed(2))
    out = []
    for name, (_, kind) in SCHEDULES.items():
        up = {"shr_skip_timesteps": UPSTREAM_SKIP} if name == "upstream" else {}  # ours: the default strength
        cfg = TIA2VSamplingConfig(shr_size=args.shr_size, sampler=kind, **up)
        clock = StepClock(s.shr)
        sampler = TIA2VSampler(s.motion, s.schedules[name], clock, s.schedules[name], cfg)
        v = Variant(name, "shr", sampler, clock, n_steps(s.schedules[name], cfg.shr_skip(4000)))
        v.call = (lambda sm: lambda: sm.stage2(clip - 0.5, s.text, seeds=[0]))(sampler)
        out.append(v)
    return out


def time_stage(variants: list[Variant], args) -> dict:
    """One warm-up run of 1 step each, then ``rounds`` x ``steps_timed`` steps per variant, in turn."""
    stage = variants[0].stage
    for v in variants:
        log(f"{stage}: warm-up {v.name}: {v.run(1):.1f} s")
    for r in range(args.rounds):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            v.run(args.steps_timed)
            v.record()
            log(f"{stage}: round {r}, {v.name}: steps " + ", ".join(f"{x:.2f}" for x in v.wall[-args.steps_timed:]))
    return {v.name: v.result() for v in variants}


def full_chain(variants: list[Variant], name: str) -> dict | None:
    """The named variant's stage run to the end (measured, not extrapolated)."""
    if name == "none":
        return None
    v = next(x for x in variants if x.name == name)
    log(f"{v.stage}: full chain {name}, {v.steps} steps (~{v.steps * _median(v.wall):.0f} s)")
    secs = v.run(None)
    return {"variant": name, "steps": v.steps, "measured_s": secs, "extrapolated_s": v.result()["per_video_s"]}


# ------------------------------------------------------------------------------------------- BEATs
def time_beats(s: Setup, args) -> dict:
    """BEATs once per clip (inference, resampling included) and upstream's train-loop use (with autograd)."""
    clip_tokens(s.beats, s.wave, args.beats_mode)  # warm-up
    once = []
    for _ in range(args.beats_reps):
        t0 = time.perf_counter()
        clip_tokens(s.beats, s.wave, args.beats_mode)
        once.append(time.perf_counter() - t0)
    log("BEATs once per clip: " + ", ".join(f"{x:.2f}" for x in once))
    rows = (compat_rows(s.wave, AUDIO_RATE, FRAMES, COMPAT_RATE) if args.beats_mode == "compat"
            else fixed_windows(s.wave, AUDIO_RATE, FRAMES, FPS))
    model: BEATs = s.beats.model
    model.requires_grad_(True)  # as upstream's train loop: parameters require grad, no no_grad
    weights = torch.randn(FRAMES, 8, s.beats.dim, generator=torch.Generator().manual_seed(3))
    fwd, bwd, both = [], [], []
    for _ in range(1 + args.train_reps):  # the first is a warm-up
        t0 = time.perf_counter()
        tokens = model.extract_features(rows)
        t1 = time.perf_counter()
        (tokens[:, :8] * weights).sum().backward()
        fwd.append(t1 - t0)
        bwd.append(time.perf_counter() - t1)
        both.append(fwd[-1] + bwd[-1])
        model.zero_grad(set_to_none=True)
    model.requires_grad_(False)
    log("BEATs as in upstream's train loop (fwd + bwd): " + ", ".join(f"{x:.2f}" for x in both))
    return {"once_s": _median(once), "measured_once_s": once, "train_fwd_s": _median(fwd[1:]),
            "train_bwd_s": _median(bwd[1:]), "train_step_s": _median(both[1:])}


# ------------------------------------------------------------------------------------------- report
def _f(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 1 else f"{x:.2f}"


def _ratio(a: float, b: float) -> str:
    if b <= 0:
        return "-"
    return f"{a / b:,.0f}x" if a / b >= 100 else f"{a / b:.1f}x"


def _row(label: str, cells: list[float], fmt=_f, bold: bool = False, ratios: bool = True) -> str:
    """Label, one cell per schedule (upstream first), then upstream / each of ours."""
    out = [label, *(fmt(c) for c in cells)]
    out += [_ratio(cells[0], c) for c in cells[1:]] if ratios else [""] * (len(cells) - 1)
    return "| " + " | ".join(f"**{c}**" if bold and c else c for c in out) + " |"


def totals(res: dict) -> dict[str, dict[str, float]]:
    """Per video per schedule: motion, SHR, BEATs once / per step, and the totals."""
    m, b = res["motion"], res["beats"]
    out = {}
    for name in SCHEDULES:
        shr = res["shr"][name]["per_video_s"] if res.get("shr") else 0.0
        per_step = m[name]["steps"] * b["once_s"]  # the clip's tokens recomputed at every motion step
        out[name] = {"motion": m[name]["per_video_s"], "shr": shr, "beats_once": b["once_s"],
                     "beats_per_step": per_step, "total_once": m[name]["per_video_s"] + shr + b["once_s"],
                     "total_per_step": m[name]["per_video_s"] + shr + per_step}
    return out


def _main_table(res: dict, tot: dict) -> list[str]:
    m, names = res["motion"], list(SCHEDULES)
    cols = " | ".join(LABELS[n] for n in names)
    ours = " | ".join(f"upstream / ours {n}" for n in names[1:])
    lines = [f"| per video | {cols} | {ours} |", "|---" * (2 * len(names)) + "|",
             _row("motion: steps (skip 100 of 4000)", [m[n]["steps"] for n in names], fmt=str),
             _row("motion: one step, s (median)", [m[n]["step_s"] for n in names], fmt=lambda x: f"{x:.2f}"),
             _row("motion: one step, process CPU s (median)", [m[n]["step_cpu_s"] for n in names],
                  fmt=lambda x: f"{x:.2f}"),
             _row("motion: stage, s (setup + N x step)", [tot[n]["motion"] for n in names])]
    if res.get("shr"):
        sh = res["shr"]
        lines += [_row(f"SHR: steps (upstream skip 100, ours {SHR_SKIP})", [sh[n]["steps"] for n in names], fmt=str),
                  _row("SHR: one step, s (median)", [sh[n]["step_s"] for n in names], fmt=lambda x: f"{x:.2f}"),
                  _row("SHR: stage, s (setup + N x step)", [tot[n]["shr"] for n in names])]
    lines += [_row("BEATs once per clip, s", [tot[n]["beats_once"] for n in names], ratios=False),
              _row("total, BEATs once per clip, s", [tot[n]["total_once"] for n in names], bold=True),
              _row("BEATs recomputed every motion step, s (N x once per clip)",
                   [tot[n]["beats_per_step"] for n in names]),
              _row("total, BEATs every step, s", [tot[n]["total_per_step"] for n in names])]
    return lines


def _beats_table(res: dict, tot: dict, args) -> list[str]:
    b, m = res["beats"], res["motion"]
    extra = m["upstream+beats"]["step_s"] - m["upstream"]["step_s"]  # measured: BEATs + motion_context in a step
    lines = ["| BEATs, per video | s | vs once per clip |", "|---|---|---|",
             f"| once per clip (`beats_frame_tokens`, 16 frames, {args.beats_mode}) | {_f(b['once_s'])} | 1x |"]
    for n in SCHEDULES:
        s = tot[n]["beats_per_step"]
        lines.append(f"| every step, {LABELS[n]}: {m[n]['steps']} x {b['once_s']:.2f} s | {_f(s)} | "
                     f"{_ratio(s, b['once_s'])} |")
    with_beats, without = m["upstream+beats"]["step_s"], m["upstream"]["step_s"]
    lines += ["", f"Check, measured: a motion step with BEATs recomputed inside it takes {with_beats:.2f} s vs "
              f"{without:.2f} s without ({extra:+.2f} s, {extra / without:+.0%} at "
              f"this tiny U-Net; one clip's tokens alone: {b['once_s']:.2f} s). Upstream's training loop ran BEATs "
              f"every training step with autograd on: forward {b['train_fwd_s']:.2f} s + backward into its unused "
              f"gradients {b['train_bwd_s']:.2f} s = **{b['train_step_s']:.2f} s per training step**; ours reads the "
              f"tokens from the condition cache (computed once per clip, {b['once_s']:.2f} s, none per step)."]
    return lines


def report(args, s: Setup, res: dict, load_before: str, wall: float) -> str:
    tot = totals(res)
    p = s.params
    mc, shr = s.motion.config, f"; SHR {p['shr']:.2f} M at {args.shr_size} px" if s.shr is not None else ""
    lines = ["## TIA2V sampling: seconds per video, respaced vs upstream's 3900 steps (fp32 CPU, random weights)", "",
             f"machine: {platform.machine()}, {_cpu_name()}, torch {torch.__version__}, threads "
             f"{torch.get_num_threads()}, load average before {load_before}, after {_loadavg()}; wall time "
             f"{wall / 60:.1f} min; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB", "",
             f"models: motion U-Net motion-tiny widths ({mc.model_channels} ch, mult {mc.channel_mult}, "
             f"{p['motion']:.2f} M) on 1 clip 3x{FRAMES}x{args.image_size}x{args.image_size}{shr}; BEATs "
             f"{args.beats} ({p['beats']:.1f} M, built once in {s.beats_build_s:.1f} s, not counted); 4000-step cosine "
             f"process. Steps: {args.steps_timed} timed x {args.rounds} round(s) per variant after a warm-up; "
             "**per video = setup + N x median step (extrapolated)**.", ""]
    lines += _main_table(res, tot) + [""]
    if res.get("shr"):
        sh = res["shr"]
        n = n_steps(s.schedules["200"], UPSTREAM_SKIP)
        like = sh["200"]["setup_s"] + n * sh["200"]["step_s"]
        lines += [f"SHR like for like (ours \"200\" at upstream's skip 100: {n}"
                  f" x {sh['200']['step_s']:.2f} s = {_f(like)} s): upstream / ours = "
                  f"{sh['upstream']['per_video_s'] / like:.1f}x; the rest of the SHR ratio is ours' weaker default "
                  f"strength (skip {SHR_SKIP}).", ""]
    fc = res.get("full_chain")
    if fc:
        lines += [f"End-to-end check, `TIA2VSampler.stage1` run to the end ({LABELS[fc['variant']]}, {fc['steps']} "
                  f"steps): measured {fc['measured_s']:.1f} s vs extrapolated {fc['extrapolated_s']:.1f} s.", ""]
    lines += _beats_table(res, tot, args) + [""]
    u, o, m = tot["upstream"], tot["200"], res["motion"]
    cpu = m["upstream"]["step_cpu_s"] / m["200"]["step_cpu_s"]
    stages = "motion + SHR" if res.get("shr") else "motion"
    lines += [f"Verdict: respaced \"200\" is **{u['total_once'] / o['total_once']:.1f}x** faster per video than the "
              f"upstream schedule ({stages}, BEATs once per clip in both). Motion stage: "
              f"{u['motion'] / o['motion']:.1f}x; every variant's step is one call of the same network, so the "
              f"expected ratio is the step count's, {m['upstream']['steps']} / {m['200']['steps']} = "
              f"{m['upstream']['steps'] / m['200']['steps']:.1f}x; the measured per-step medians differ by "
              f"{m['upstream']['step_s'] / m['200']['step_s']:.2f}x (process CPU time {cpu:.2f}x), which is noise. "
              f"With BEATs recomputed every step, upstream would take {u['total_per_step'] / o['total_once']:.1f}x "
              "ours.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared machine)")
    p.add_argument("--image-size", type=int, default=64, help="motion frame size (released: 64)")
    p.add_argument("--steps-timed", type=int, default=2, help="consecutive steps timed per variant and round")
    p.add_argument("--rounds", type=int, default=3, help="rounds over the variants (order reversed each round)")
    p.add_argument("--beats", choices=("full", "tiny"), default="full", help="BEATs iter3+ size or the tiny test one")
    p.add_argument("--beats-mode", choices=("compat", "fixed"), default="compat", help="per-frame audio input")
    p.add_argument("--beats-reps", type=int, default=5, help="timed BEATs runs once per clip (median)")
    p.add_argument("--train-reps", type=int, default=2, help="timed BEATs forward + backward (train loop)")
    p.add_argument("--full-chain", choices=("ddim50", "200", "none"), default="ddim50",
                   help="run this variant's motion stage to the end as a check")
    p.add_argument("--shr", action="store_true", help="also time the SHR stage")
    p.add_argument("--shr-size", type=int, default=None, help="SHR frame size (default 2x --image-size)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.shr_size = args.shr_size or 2 * args.image_size
    if min(args.steps_timed, args.rounds, args.beats_reps, args.train_reps) < 1 or args.image_size % 4:
        p.error("--steps-timed, --rounds, --beats-reps, --train-reps must be >= 1; --image-size a multiple of 4")
    torch.set_num_threads(args.threads)
    load_before, t0 = _loadavg(), time.perf_counter()
    log("building models (random weights)")
    s = build(args)
    res: dict = {"beats": time_beats(s, args)}
    with torch.no_grad():
        tokens = clip_tokens(s.beats, s.wave, args.beats_mode)[None]  # (1, F, P, D), once per clip
    motion = motion_variants(s, args, tokens)
    res["motion"] = time_stage(motion, args)
    if s.shr is not None:
        res["shr"] = time_stage(shr_variants(s, args), args)
    res["full_chain"] = full_chain(motion, args.full_chain)
    print(report(args, s, res, load_before, time.perf_counter() - t0))
    if args.json:
        opts = {k: str(v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps({**res, "totals": totals(res), "args": opts}, indent=2))


if __name__ == "__main__":
    main()
