"""bf16 autocast against fp32 on this CPU, per network of the samplers, with the top operators of each.

Random weights (speed does not depend on their values). Per network, one call in fp32 and one under
``torch.autocast("cpu", torch.bfloat16)`` (what ``--precision bf16`` does), each warmed up once, then ``--rounds``
interleaved rounds (order reversed every other round), median wall time; the bf16/fp32 speed-up is the ratio of
the medians. Networks (``--nets``):

- ``unet``: the released TA2V U-Net (``bench_unet.bench_config``: 318 M parameters, attention at the same levels)
  on ``(1, 3, --frames, 64, 64)``, forward + backward to the parameters (a training step's work);
- ``unet_guidance``: the same network frozen, forward + backward to the input only (a guided sampling step's
  U-Net work);
- ``vqgan_decode``: the URMP VQGAN's decoder on a 4x12x12 code grid (16x96x96 clip), no grad;
- ``clip_image``: CLIP ViT-B/32 image tower on 16 frames at 224 px, forward + backward to the pixels (the text
  and direction terms);
- ``audioclip_image``: AudioCLIP's image tower (released size) on 16 frames of 64 px (resized inside), forward +
  backward to the pixels (the audio and direction terms);
- ``guided_step``: one whole guided TA2V sampling step as ``bench_guidance_memory.py`` times it (its 64-channel
  U-Net, AudioCLIP and CLIP forward + backward, the DDPM update; batch 1 of 16x64x64), one prepared sampler per
  precision, each holding its frozen networks' weights as the samplers do (``tav.utils.runtime.sampling_weights``:
  under bf16 cast once, on a CPU with AMX channels-last), so the two interleave in one process;
- ``demo_vqgan``, ``demo_unet``, ``demo_gpt`` (not by default): a training step's forward + backward of ``make
  demo``'s VQGAN (batch 8 of 8x32x32), diffusion prior (batch 4 of 8x16x16) and GPT (batch 16: 12 caption ids and
  the 2x8x8 code grid, the loss over the video codes), whose precision ``make demo --precision auto`` picks per CPU
  kind;
- ``unet_cl``, ``unet_guidance_cl`` (not by default): ``unet`` and ``unet_guidance`` with the weights and the input
  in ``channels_last_3d``.

``--profile`` adds the ten operators with the most self CPU time of one call in each precision
(``torch.profiler``), which shows where bf16 does and does not pay (layout reorders, norms, elementwise ops).

    python benchmarks/bench_precision.py [--nets unet unet_guidance ...] [--frames 8] [--rounds 2] [--threads 1]
        [--profile] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
NETS = ("unet", "unet_guidance", "vqgan_decode", "clip_image", "audioclip_image", "guided_step", "demo_vqgan",
        "demo_unet", "demo_gpt", "unet_cl", "unet_guidance_cl")
DEFAULT_NETS = NETS[:6]


def _unet(name: str, frames: int) -> Callable[[], None]:
    """The release-size U-Net at 64 px: a training step (``unet*``) or a guided step's backward to the input
    (``unet_guidance*``); ``*_cl``: weights and input in channels_last_3d (NDHWC)."""
    import torch
    from bench_unet import bench_config

    from tav.diffusion.unet3d import UNet

    train = not name.startswith("unet_guidance")
    net = UNet(bench_config()).train(train).requires_grad_(train)
    x, t = torch.randn(1, 3, frames, 64, 64), torch.tensor([500.0])
    if name.endswith("_cl"):
        net.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    if train:
        def call():
            net.zero_grad(set_to_none=True)
            net(x, t).float().square().mean().backward()
        return call

    def guided():
        x_in = x.clone().requires_grad_(True)
        torch.autograd.grad(net(x_in, t).float().square().mean(), x_in)
    return guided


def _vqgan_decode(frames: int) -> Callable[[], None]:
    """The URMP VQGAN decoding a 4 x 12 x 12 code grid, without autograd."""
    import torch

    from tav.vqgan import VQGAN, vqgan_preset

    vq = VQGAN(vqgan_preset("urmp")).eval()
    codes = torch.randint(0, vq.cfg.n_codes, (1, 4, 12, 12))
    return lambda: _no_grad(torch, lambda: vq.decode(codes))


def _input_grad(encode, images) -> Callable[[], None]:
    """A frozen image tower's forward and backward to its input ``images`` (a guidance term's work)."""
    import torch

    def call():
        x_in = images.clone().requires_grad_(True)
        torch.autograd.grad(encode(x_in).float().square().mean(), x_in)
    return call


def _clip_image(frames: int) -> Callable[[], None]:
    """CLIP ViT-B/32's image tower on 16 images of 224 px, run sequence-first as the guidance runs it
    (see tav.encoders.clip.sequence_first)."""
    import open_clip
    import torch

    from tav.encoders.clip import CLIPEncoder

    model = CLIPEncoder(open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).float()).model
    return _input_grad(model.encode_image, torch.randn(16, 3, 224, 224))


def _audioclip_image(frames: int) -> Callable[[], None]:
    """AudioCLIP's image tower on 16 frames of 64 px."""
    import torch

    from tav.encoders.audioclip import AudioCLIP, AudioCLIPConfig

    model = AudioCLIP(AudioCLIPConfig()).freeze()
    return _input_grad(model.encode_images, torch.rand(16, 3, 64, 64))


def _demo_vqgan(frames: int) -> Callable[[], None]:
    """One training step of the demo VQGAN (reconstruction + commitment) on 8 clips of 8 x 32 x 32."""
    import torch

    from tav.vqgan import VQGAN, vqgan_preset

    vq = VQGAN(vqgan_preset("demo")).train()
    video = torch.rand(8, 3, 8, 32, 32) - 0.5

    def vq_step():
        vq.zero_grad(set_to_none=True)
        recon, codes = vq(video)
        (4 * (recon.float() - video).square().mean() + 0.25 * codes["commitment_loss"].float()).backward()
    return vq_step


def _demo_unet(frames: int) -> Callable[[], None]:
    """One training step of the demo's diffusion prior on 4 clips of 8 x 16 x 16."""
    import torch

    from tav.config import load_yaml, preset_path
    from tav.diffusion.config import unet_config_from_dict
    from tav.diffusion.unet3d import UNet

    net = UNet(unet_config_from_dict(load_yaml(preset_path("diffusion", "demo"))["model"])).train()
    x, t = torch.randn(4, 3, 8, 16, 16), torch.tensor([10.0, 500.0, 2000.0, 3900.0])

    def unet_step():
        net.zero_grad(set_to_none=True)
        net(x, t).float().square().mean().backward()
    return unet_step


def _demo_gpt(frames: int) -> Callable[[], None]:
    """One training step of the demo GPT (teacher-forced loss over the video codes) on 16 captions and code grids;
    the call returns the loss (a scalar, about ln n_codes at the random start)."""
    import torch

    from tav.gpt import GPT, gpt_preset

    cfg = gpt_preset("demo")
    gpt = GPT(cfg).train()
    prefix = torch.randint(0, cfg.text_vocab_size, (16, cfg.text_seq_len))
    codes = torch.randint(0, cfg.n_codes, (16, *cfg.latent_shape))

    def gpt_step():
        gpt.zero_grad(set_to_none=True)
        loss = gpt.loss(prefix, codes, video_only=True).float()
        loss.backward()
        return loss.detach()
    return gpt_step


BUILDERS = {"vqgan_decode": _vqgan_decode, "clip_image": _clip_image, "audioclip_image": _audioclip_image,
            "demo_vqgan": _demo_vqgan, "demo_unet": _demo_unet, "demo_gpt": _demo_gpt}


def build(name: str, frames: int) -> Callable[[], None] | dict[str, Callable[[], None]]:
    """The call to time for network ``name`` (inputs built once), or one call per precision (``"32"``,
    ``"bf16"``) where the precision changes more than the autocast context."""
    import torch

    if name == "guided_step":
        from bench_guidance_memory import build_runner

        return {p: build_runner(1, False, 2, p).step for p in ("32", "bf16")}
    torch.manual_seed(0)
    if name.startswith("unet"):
        return _unet(name, frames)
    if name in BUILDERS:
        return BUILDERS[name](frames)
    raise ValueError(f"unknown network {name!r}; choose from {NETS}")


def _no_grad(torch, fn) -> None:
    with torch.inference_mode():
        fn()


def _in_precision(torch, precision: str, fn) -> Callable[[], None]:
    def run():
        if precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                fn()
        else:
            fn()
    return run


def top_ops(torch, fn, n: int = 10) -> list[dict]:
    """The ``n`` operators with the most self CPU time in one call of ``fn``, with their share of the total."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
             "calls": e.count} for e in events[:n]]


def measure(name: str, args) -> dict:
    import torch

    call = build(name, args.frames)
    runs = call if isinstance(call, dict) else {p: _in_precision(torch, p, call) for p in ("32", "bf16")}
    for run in runs.values():
        run()  # warm-up
    times: dict[str, list[float]] = {p: [] for p in runs}
    for r in range(args.rounds):
        for p in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t0 = time.perf_counter()
            runs[p]()
            times[p].append(time.perf_counter() - t0)
    med = {p: statistics.median(v) for p, v in times.items()}
    out = {"fp32_s": med["32"], "bf16_s": med["bf16"], "speedup": med["32"] / med["bf16"], "times": times}
    if args.profile:
        out["top_ops"] = {p: top_ops(torch, run) for p, run in runs.items()}
    print(f"{name}: fp32 {med['32']:.2f} s, bf16 {med['bf16']:.2f} s, bf16 speed-up {out['speedup']:.2f}x",
          file=sys.stderr)
    return out


def markdown(record: dict) -> str:
    lines = [f"bf16 autocast against fp32 ({record['machine']})", "",
             "| network | fp32 s | bf16 s | bf16 speed-up |", "|---|---|---|---|"]
    for name, r in record["nets"].items():
        lines.append(f"| {name} | {r['fp32_s']:.2f} | {r['bf16_s']:.2f} | {r['speedup']:.2f}x |")
    for name, r in record["nets"].items():
        for p, ops in r.get("top_ops", {}).items():
            lines += ["", f"{name}, {'fp32' if p == '32' else 'bf16'}: top operators by self CPU time", "",
                      "| op | self ms | share | calls |", "|---|---|---|---|"]
            lines += [f"| {o['op']} | {o['self_ms']:.0f} | {o['share']:.0%} | {o['calls']} |" for o in ops]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", nargs="+", choices=NETS, default=list(DEFAULT_NETS))
    p.add_argument("--frames", type=int, default=8, help="U-Net clip length (the issue's figures: 8 and 16)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="also the top 10 operators of each network")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    from bench_unet import _cpu_name

    torch.set_num_threads(args.threads)
    record = {"machine": f"{_cpu_name()}, torch {torch.__version__}, {args.threads} thread(s)",
              "frames": args.frames, "nets": {name: measure(name, args) for name in args.nets}}
    print(markdown(record))
    if args.json is not None:
        from tav.utils.fileio import write_json_atomic

        write_json_atomic(args.json, record)
    return record


if __name__ == "__main__":
    main()
