"""The markdown report of ``benchmarks/bench_sample.py``: per-video and per-step tables, ours against the upstream
mode, and the verdict line. Pure formatting of the measured records (``s1``, ``s2``), no measuring.

``setting`` (built by ``bench_sample.main``) names what the tables describe: ``device`` (torch.device), clip
``frames`` and ``size``, ``respacing`` and ``skip`` of stage 2, the ``unet`` config, the networks' ``params``
(millions, by name), ``load_before`` (load average text) and ``wall`` (seconds of the whole run).
"""

from __future__ import annotations

import platform

import torch
from bench_gpt import _loadavg
from bench_unet import _cpu_name

LABELS = {"unet_fwd_nograd": "U-Net forward, no grad (update)", "unet_fwd_grad": "U-Net forward, with grad",
          "audioclip_img": "AudioCLIP image forward", "clip_img": "CLIP image forward",
          "clip_text": "CLIP caption tokenise + encode", "enc_bwd": "backward through encoders + losses",
          "unet_bwd": "backward through the U-Net", "other": "other (losses, sampler update, noise)"}
BUCKETS = tuple(LABELS)  # the parts of one guided step, in the step table's order


def row(label: str, values: list[float], bold: bool = False, digits: int = 1, gpu: bool = False) -> str:
    """A table row: the values, then the last over the first (upstream mode / ours). On a GPU every figure gets
    two more digits (its steps take milliseconds); a ratio is shown where the first value shows."""
    digits += 2 if gpu else 0
    ratio = f"{values[-1] / values[0]:.2f}x" if values[0] >= 0.5 * 10**-digits else "-"
    cells = [label, *(f"{v:.{digits}f}" for v in values), ratio]
    return "| " + " | ".join(f"**{c}**" if bold else c for c in cells) + " |"


def per_video_table(s1: dict, s2: dict, b: int, gpu: bool = False) -> list[str]:
    """Seconds per video of each part of stages 1 and 2, ours at batch ``b`` against the upstream mode."""
    o1, u1, o2, u2 = s1["ours"], s1["upstream"], s2["ours"], s2["upstream"]
    n_codes = "576 codes" + (f" ({s1['tokens_timed']} timed, scaled)" if s1["extrapolated"] else "")

    def r(label, values, bold=False, digits=1):
        return row(label, values, bold, digits, gpu)

    lines = [f"| per video | ours (batch {b}) s | upstream mode (batch 1) s | upstream / ours |", "|---|---|---|---|",
             r(f"stage 1: GPT, {n_codes}", [o1["gpt"], u1["gpt"]]),
             r("stage 1: VQGAN decode + clamp + resize", [o1["decode"], u1["decode"]]),
             r("stage 1", [o1["total"], u1["total"]], True),
             r("stage 2: editor rebuild (reload U-Net, AudioCLIP, CLIP)", [o2["rebuild"], u2["rebuild"]]),
             r("stage 2: audio + caption embedding", [o2["prepare"], u2["prepare"]]),
             r(f"stage 2: {s2['n_steps']} guided steps (x median step)", [o2["steps"], u2["steps"]]),
             r("stage 2", [o2["total"], u2["total"]], True),
             r("total", [o1["total"] + o2["total"], u1["total"] + u2["total"]], True),
             r("(one guided step, process CPU time)", [o2["step_cpu"], u2["step_cpu"]], digits=2), ""]
    if "ours_b1" in s2:
        o = s2["ours_b1"]
        lines += [f"ours at batch 1 (same run, interleaved): stage 2 {o['total']:.1f} s per video (step {o['step']:.2f}"
                  f" s); upstream mode / ours at batch 1, stage 2: {u2['total'] / o['total']:.2f}x", ""]
    return lines


def step_table(s2: dict, b: int, gpu: bool = False) -> list[str]:
    """One guided step per video, split into ``BUCKETS``, for each measured mode."""
    names = ["ours", "ours_b1", "upstream"] if "ours_b1" in s2 else ["ours", "upstream"]
    heads = {"ours": f"ours s (batch {b}, / {b})", "ours_b1": "ours s (batch 1)", "upstream": "upstream mode s"}
    lines = ["| one guided step, per video | " + " | ".join(heads[n] for n in names) + " | upstream / ours |",
             "|---" * (len(names) + 2) + "|"]
    lines += [row(LABELS[k], [s2[n]["step_breakdown"][k] for n in names], digits=2, gpu=gpu) for k in BUCKETS]
    lines.append(row("step", [s2[n]["step"] for n in names], True, digits=2, gpu=gpu))
    return lines


def verdict(s1: dict, s2: dict) -> list[str]:
    """The overall ratio against the 10x goal and where ours' time goes."""
    ours = s1["ours"]["total"] + s2["ours"]["total"]
    up = s1["upstream"]["total"] + s2["upstream"]["total"]
    o = s2["ours"]["step_breakdown"]
    enc = o["audioclip_img"] + o["clip_img"] + o["clip_text"] + o["enc_bwd"]
    net = o["unet_fwd_grad"] + o["unet_fwd_nograd"] + o["unet_bwd"]
    step = s2["ours"]["step"]
    return [f"Overall: upstream mode / ours = **{up / ours:.2f}x per video** (goal >= 10x): "
            f"{'met' if up / ours >= 10 else '**NOT met**'}.",
            f"Where ours' time goes: stage 2 is {s2['ours']['total'] / ours:.0%} of a video "
            f"({s2['ours']['total']:.0f} of {ours:.0f} s); per guided step {step:.1f} s = encoders (forward + "
            f"backward) {enc:.1f} s ({enc / step:.0%}), U-Net forward + backward {net:.1f} s ({net / step:.0%}), "
            f"other {o['other']:.1f} s. Stage-2 ratio {s2['upstream']['total'] / s2['ours']['total']:.2f}x "
            f"(step by process CPU time, insensitive to other load: "
            f"{s2['upstream']['step_cpu'] / s2['ours']['step_cpu']:.2f}x), "
            f"stage-1 ratio {s1['upstream']['total'] / s1['ours']['total']:.2f}x."]


def device_words(device: torch.device, s2: dict) -> dict[str, str]:
    """The report's words for the device: CPU only, or a GPU with the upstream mode's AudioCLIP on the CPU."""
    if device.type != "cuda":
        return {"title": "CPU", "gpu": "", "peak": ""}
    return {"title": f"{device.type} (upstream mode: AudioCLIP on the CPU, CLIP fp16, as upstream)",
            "gpu": f", {torch.cuda.get_device_name(device)}",
            "peak": f", peak device memory (stage 2) {s2['peak_device_gib']:.1f} GiB"}


def report(args, setting: dict, s1: dict, s2: dict) -> str:
    """The whole markdown report of one run (``args``: bench_sample's parsed flags)."""
    b, n, cfg, device = args.batch, setting["params"], setting["unet"], setting["device"]
    gpu = device.type == "cuda"
    prec = "fp32" if args.precision == "32" else f"ours {args.precision}, upstream mode fp32"
    where = device_words(device, s2)
    frames, size = setting["frames"], setting["size"]
    lines = [f"## TA2V sampling: seconds per video, ours vs upstream-algorithm mode ({prec}, {where['title']}, "
             "random weights)", "",
             f"machine: {platform.machine()}, {_cpu_name()}{where['gpu']}, torch {torch.__version__}, "
             f"threads {torch.get_num_threads()}, load average before {setting['load_before']}, after {_loadavg()}; "
             f"wall time {setting['wall'] / 60:.1f} min; peak RSS {s2['peak_rss_gib']:.1f} GiB{where['peak']}", "",
             f"models: GPT {args.gpt_preset} ({n['gpt']:.1f} M, vocabulary {s1['vocab']}), VQGAN urmp "
             f"({n['vqgan']:.1f} M), U-Net {cfg.model_channels} ch mult {cfg.channel_mult} x {cfg.num_res_blocks} "
             f"ResBlocks, attention at {cfg.attention_resolutions} px ({n['unet']:.1f} M), AudioCLIP full "
             f"({n['audioclip']:.1f} M), CLIP ViT-B/32 ({n['clip']:.1f} M)",
             f"clip 3x{frames}x{size}x{size}; respaced {setting['respacing']}, skip {setting['skip']} -> "
             f"{s2['n_steps']} DDPM steps; guidance audio 1e4, direction 5e3, text 1e4, range 50; stage-2 steps "
             f"timed: {args.steps_timed} per mode after 1 warm-up step at batch 1, x {s2['n_steps']}", ""]
    lines += per_video_table(s1, s2, b, gpu) + step_table(s2, b, gpu) + [""]
    meas = "; ".join(f"{k} " + ", ".join(f"{v:.1f}" for v in s2[k]["measured_steps_s"])
                     for k in ("ours", "ours_b1", "upstream") if k in s2)
    lines += [f"measured steps (s, whole batch of {b} for ours): {meas}; warm-up steps at batch 1 (first calls, not "
              "counted): " + ", ".join(f"{k} {v:.1f}" for k, v in s2["warmup_step_b1_s"].items()), ""]
    return "\n".join(lines + verdict(s1, s2) + [""])
