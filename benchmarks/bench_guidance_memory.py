"""Peak memory and time of one guided TA2V step, with and without ``--guidance_checkpointing``, at batch 1 / 2 / 4.

The networks and sizes of ``bench_sample.py``'s stage 2 (random weights): U-Net 64 channels, mult (1, 1, 2, 3, 4),
``--res-blocks`` ResBlocks per level, attention at 8 and 4 px, on 16x64x64 clips; AudioCLIP (released size) and
CLIP ViT-B/32 as the guides; README guidance weights; respaced "100", SDEdit skip 25. One step = one U-Net
forward with grad, the guidance losses, their backward to the sample, the DDPM update: what ``ddpm_sample`` does
per step, through ``Guidance.cond_fn`` (``bench_sample.OursStage2``).

Every (batch, checkpointing) point runs in a **fresh process** that builds the networks, embeds the batch's
audio and caption, runs one warm-up step and then ``--steps`` timed steps, and reports its peak resident set size
(``ru_maxrss``, the process's high-water mark) and that peak minus the resident size after the build (what
sampling adds: the guidance graph and work space). The points run one after the other, so their times compare.
Checkpointing switches the U-Net's ResBlock and attention layers and the guides' image towers to recompute their
activations in the backward pass (``UNet.set_gradient_checkpointing`` and ``Guidance.checkpointing``, what
``sample_tav.py --guidance_checkpointing`` does). The steps hold the networks' convolution weights as the
samplers do (``tav.utils.runtime.sampling_weights``: under bf16 cast once, on a CPU with AMX channels-last);
``--channels-last`` stores the U-Net's conv weights in ``channels_last_3d`` and AudioCLIP's in ``channels_last`` in
either precision (oneDNN / cuDNN then run those convolutions in NDHWC / NHWC).

    python benchmarks/bench_guidance_memory.py [--batches 1 2 4] [--steps 1] [--threads 1] [--res-blocks 2]
        [--precision 32] [--device cpu|cuda] [--checkpointing both|off|on] [--channels-last] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GIB = 2**20  # ru_maxrss is in KiB on Linux


def _rss_gib() -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib / GIB


def _device_gib(device, peak: bool) -> float:
    """Memory allocated on a CUDA ``device`` now, or its peak since the last reset."""
    import torch

    return (torch.cuda.max_memory_allocated if peak else torch.cuda.memory_allocated)(device) / 2**30


def build_runner(batch: int, checkpointing: bool, res_blocks: int, precision: str, device_name: str = "cpu",
                 channels_last: bool = False):
    """The benchmark's networks (seeded random weights) and a ``bench_sample.OursStage2`` over a batch of
    ``batch`` clips, prepared: audio and caption embedded, the frozen networks' weights held as the samplers hold
    them under ``precision``. Its ``step()`` is one guided step."""
    import bench_sample
    import open_clip
    import torch
    from bench_sample import FRAMES, RATE, SIZE, Clock, Models, OursStage2, unet_config

    from tav.diffusion.schedule import GaussianSchedule, ProcessConfig
    from tav.diffusion.unet3d import UNet
    from tav.encoders.audioclip import AudioCLIP, AudioCLIPConfig
    from tav.encoders.clip import CLIPEncoder

    torch.manual_seed(0)
    unet = UNet(unet_config(res_blocks)).eval().requires_grad_(False)
    unet.set_gradient_checkpointing(checkpointing)
    schedule = GaussianSchedule.from_config(ProcessConfig(), respacing="100")
    audioclip = AudioCLIP(AudioCLIPConfig()).freeze()
    clip = CLIPEncoder(open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).float())
    device = bench_sample.DEVICE = torch.device(device_name)
    for net in (unet, audioclip, clip):
        net.to(device)
    if channels_last:
        unet.to(memory_format=torch.channels_last_3d)
        audioclip.to(memory_format=torch.channels_last)
    models = Models(None, None, unet, schedule, audioclip, clip, {})
    gen = torch.Generator().manual_seed(1)
    clips = (torch.rand(batch, 3, FRAMES, SIZE, SIZE, generator=gen) - 0.5).to(device)
    audio = 0.1 * torch.randn(batch, FRAMES * RATE // 30, generator=gen)
    runner = OursStage2(models, Clock(), clips, audio, list(range(batch)), precision)
    runner.guidance.checkpointing = checkpointing
    runner.prepare()
    return runner


def one_point(batch: int, checkpointing: bool, steps: int, res_blocks: int, precision: str,
              device_name: str = "cpu", channels_last: bool = False) -> dict:
    """Build, prepare and step ``steps`` + 1 times in this process; the figures of this point. On a CUDA
    device the memory figures are the allocator's (``max_memory_allocated``), not the process's RSS."""
    import bench_sample
    import torch

    runner = build_runner(batch, checkpointing, res_blocks, precision, device_name, channels_last)
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    built = _device_gib(device, peak=False) if cuda else _rss_gib()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps + 1):  # the first step is the warm-up
        bench_sample._sync()
        t0 = time.perf_counter()
        runner.step()
        bench_sample._sync()
        times.append(time.perf_counter() - t0)
    peak = _device_gib(device, peak=True) if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / GIB
    return {"batch": batch, "checkpointing": checkpointing, "precision": precision, "built_gib": built,
            "peak_gib": peak, "added_gib": peak - built, "added_per_video_gib": (peak - built) / batch,
            "channels_last": channels_last, "step_s": min(times[1:]), "step_per_video_s": min(times[1:]) / batch,
            "warmup_s": times[0]}


def run_point(args, batch: int, checkpointing: bool) -> dict:
    """``one_point`` in a fresh process (its own memory high-water mark)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_point", str(batch), str(int(checkpointing)),
           "--steps", str(args.steps), "--res-blocks", str(args.res_blocks), "--precision", args.precision,
           "--threads", str(args.threads), "--device", args.device] + ["--channels-last"] * args.channels_last
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"batch {batch}, checkpointing {checkpointing}: the point failed (exit {done.returncode}): "
                         f"{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(points: list[dict], machine: str) -> str:
    where = ("peak = the CUDA allocator's high-water mark, added = peak minus what the weights and embeddings hold"
             if "cuda" in machine else "peak = process high-water mark, added = peak minus the resident size after "
             "the build")
    lines = [f"Guided step, 16x64x64 clips ({machine}); {where}", "",
             "| batch | checkpointing | peak GiB | added GiB | added per video GiB | s/step | s/step per video |",
             "|---|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p['batch']} | {'on' if p['checkpointing'] else 'off'} | {p['peak_gib']:.2f} | "
                     f"{p['added_gib']:.2f} | {p['added_per_video_gib']:.2f} | {p['step_s']:.1f} | "
                     f"{p['step_per_video_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--steps", type=int, default=1, help="timed steps per point, after one warm-up step")
    p.add_argument("--threads", type=int, default=1, help="torch threads per point")
    p.add_argument("--res-blocks", type=int, default=2, help="U-Net ResBlocks per level (release: 3)")
    p.add_argument("--precision", choices=["32", "bf16"], default="32")
    p.add_argument("--device", default="cpu", help="cpu | cuda[:i] (memory then from the CUDA allocator)")
    p.add_argument("--checkpointing", choices=["both", "off", "on"], default="both", help="which points to run")
    p.add_argument("--channels-last", action="store_true", help="conv weights in channels_last(_3d)")
    p.add_argument("--json", type=Path, default=None, help="write the points here")
    p.add_argument("--_point", nargs=2, type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args._point is not None:
        print(json.dumps(one_point(args._point[0], bool(args._point[1]), args.steps, args.res_blocks,
                                   args.precision, args.device, args.channels_last)))
        return {}
    points = []
    for batch in args.batches:
        for checkpointing in {"both": (False, True), "off": (False,), "on": (True,)}[args.checkpointing]:
            points.append(run_point(args, batch, checkpointing))
            print(f"batch {batch}, checkpointing {checkpointing}: peak {points[-1]['peak_gib']:.2f} GiB, "
                  f"step {points[-1]['step_s']:.1f} s", file=sys.stderr)
    machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), " \
              f"{args.precision}{', channels_last' if args.channels_last else ''}"
    if args.device != "cpu":
        machine += f", {args.device} ({torch.cuda.get_device_name(torch.device(args.device))})"
    record = {"machine": machine, "res_blocks": args.res_blocks, "points": points}
    print(markdown(points, machine))
    if args.json is not None:
        from tav.utils.fileio import write_json_atomic

        write_json_atomic(args.json, record)
    return record


if __name__ == "__main__":
    main()
