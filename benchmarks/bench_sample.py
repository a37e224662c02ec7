"""Seconds per video of TA2V two-stage sampling: ``tav`` vs an "upstream algorithm" mode of the same modules.

Random weights (speed does not depend on their values), fp32, CPU unless ``--device`` says otherwise. One video = a
12-token caption + 16 audio frames -> 576 GPT codes -> VQGAN clip 16x96x96 -> resized to 16x64x64 -> guided SDEdit
(respaced "100", 25 skipped -> 75 DDPM steps), README guidance weights (audio 1e4, direction 5e3, text 1e4, range
50; AudioCLIP audio encoder, 0.5 s audio windows): the same models, sizes, steps and terms in both modes. Models:
GPT ``gpt_preset("urmp_upstream")`` (12 layers, 8 heads, 512 wide, 12 + 576 tokens, the released 37 512-row
vocabulary; ``--gpt-preset urmp``'s 46 906 rows only slow the upstream mode's full-vocabulary head), top-k 2048,
top-p 0.8; VQGAN ``vqgan_preset("urmp")``; U-Net 64 channels, mult (1, 1, 2, 3, 4), ``--res-blocks`` ResBlocks per
level (default 2; the release has 3), 4 heads, attention at 8 and 4 px (the release's levels at 64 px), no gradient
checkpointing (``--unet release``: the released network, 128 channels, 3 ResBlocks, 318 M; ``--size 128``: frames of
128 px as the README's ``--model_output_size 128``, attention at 16 and 8 px); AudioCLIP ``AudioCLIPConfig()``
(released size); CLIP ViT-B/32 (open_clip ``ViT-B-32-quickgelu``). The upstream mode reloads its own copies of the
stage-2 networks from disk.

Modes:
- ``ours``, batch ``--batch``, per video = batch time / batch: stage 1 = ``sample_codes`` (static KV cache,
  video rows of the head) + ``VQGAN.decode`` + clamp + ``resize_frames``; stage 2 = ``Guidance.prepare``
  (caption and audio embedded once per batch) + ``ddpm_sample`` with ``Guidance.cond_fn`` (one U-Net
  forward per step, with grad, reused by the guidance; AudioCLIP frame embeddings shared by the audio and
  direction terms; frames batched). Models built once per run. ``ours_b1``: the same at batch 1 (stage 2).
- ``upstream``, batch 1: stage 1 = upstream's ``sample_with_past`` (concatenating cache, full-vocabulary
  head and filter: ``bench_gpt.upstream_sample_with_past``) + decode; stage 2 = the editor rebuilt for the
  video (U-Net, AudioCLIP, CLIP reloaded from files, timed; upstream's wav2clip and LPIPS-VGG loads are not
  counted), the audio embedded once, then per step ``p_mean_variance`` under no_grad for the update AND
  again with grad in the hook, AudioCLIP image embeddings computed twice (audio term,
  direction term), and per frame the caption re-tokenised and re-encoded and the frame encoded by CLIP at
  batch 1 (upstream's ``text_loss``). Upstream's logging pass (AudioCLIP, 5 per video) is not counted.

Timing:
- stage 1: the GPT runs ``--gpt-tokens-timed`` codes (default 576: in full); fewer are scaled by 576 / n
  (an underestimate for both, more for upstream's cache, whose per-token cost grows). One decode each.
- stage 2: 75 steps are too slow here: each mode runs 1 warm-up step at batch 1 (not counted), then
  ``--steps-timed`` steps (default 3), the variants alternating step by step (order reversed every other
  step); per video = setup + 75 x median step. Ours is ``ddpm_sample`` itself, stopped at its next U-Net
  call and resumed (bit-exactly) from the sample handed to that call.
- step breakdown (wall): wrappers time the U-Net forwards and encoder calls; the backward is split where the
  gradient reaches the U-Net output (a tensor hook): encoders = loss -> U-Net output, U-Net = the rest.
  Each step's process CPU time is reported too: with one thread it discounts time lost to other processes.

Device (``--device cuda``): ours runs every network on the GPU; the upstream mode runs its U-Net, GPT, VQGAN and
CLIP there (CLIP under fp16 autocast, standing for upstream's fp16 ``clip.load``) and AudioCLIP on the CPU, as
upstream does (the guidance gradient crosses the device boundary; give ``--threads`` the CPU's cores). Every timer
synchronises the device. ``--precision bf16`` runs ours under bf16 autocast (the upstream mode stays fp32).

Memory: ours holds the guidance graph of the whole batch, ~3.5 GiB per video here on top of ~3.5 GiB of
weights (batch 4: ~17 GiB), so the default batch is 2 (this machine has 12-16 GiB free). Threads default
to 1 (on the shared 2-core machines two OpenMP threads stall whenever another process holds a core).
Default runtime 7-10 minutes (1 thread, loaded machine). Progress goes to stderr; the report's tables are
written by ``bench_sample_report.py``.

    python benchmarks/bench_sample.py [--threads 1] [--batch 2] [--steps-timed 3] [--gpt-tokens-timed 576]
        [--res-blocks 2] [--gpt-preset urmp_upstream] [--unet small|release] [--size 64|128] [--device cpu|cuda]
        [--precision 32|bf16] [--json out.json]
    python benchmarks/bench_sample.py --equal-quality [--ckpt_dir saved_ckpts/demo] [--data results/demo/data]
        [--n 16] [--json out.json]     # per video at judged-equal quality: see benchmarks/equal_quality.py
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from bench_gpt import TOP_K, TOP_P, _loadavg, upstream_sample_with_past
from bench_sample_report import BUCKETS, report
from torch import Tensor, nn

from tav.diffusion.config import UNetConfig
from tav.diffusion.load import load_unet, save_unet
from tav.diffusion.samplers import ddpm_sample
from tav.diffusion.schedule import GaussianSchedule, ProcessConfig, gather_coef
from tav.diffusion.unet3d import UNet
from tav.encoders.audio import encoder_audio
from tav.encoders.audioclip import AudioCLIP, AudioCLIPConfig, load_audioclip
from tav.encoders.clip import CLIPEncoder, load_clip
from tav.gpt import GPT, gpt_preset, sample_codes
from tav.guidance import Guidance, GuidanceConfig
from tav.guidance import losses as L
from tav.pipelines.ta2v import resize_frames
from tav.utils.runtime import autocast, sampling_weights
from tav.vqgan import VQGAN, vqgan_preset

HERE = Path(__file__).resolve().parent

FRAMES, SIZE, RATE, FPS = 16, 64, 48000, 30
RESPACING, SKIP = "100", 25
CAPTION = "A young man is playing the violin in front of a music stand."
DEVICE = torch.device("cpu")  # --device: ours and the upstream mode's U-Net, GPT, VQGAN and CLIP run here


def _sync() -> None:
    """Wait for the device's queued work, so that wall-clock stamps measure it (a no-op on CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- instrumentation
class Clock:
    """Seconds per bucket and time stamps of the step being measured, filled in by the wrappers below."""

    def reset(self) -> None:
        self.buckets: dict[str, float] = defaultdict(float)
        self.stamps: dict[str, float] = {}

    __init__ = reset

    def timed(self, name: str, fn):
        def wrapper(*args, **kwargs):
            _sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                _sync()
                self.buckets[name] += time.perf_counter() - t0
        return wrapper

    def stamping(self, name: str, fn):
        def wrapper(*args, **kwargs):
            out = fn(*args, **kwargs)
            _sync()
            self.stamps[name] = time.perf_counter()
            return out
        return wrapper

    def breakdown(self, total: float) -> dict[str, float]:
        """The step's buckets, backward split at the U-Net output, and what is left as "other"."""
        out = {k: self.buckets.get(k, 0.0) for k in BUCKETS[:5]}
        s = self.stamps
        out["enc_bwd"] = s["grad_at_unet"] - s["loss"]
        out["unet_bwd"] = s["grad_done"] - s["grad_at_unet"]
        out["other"] = total - sum(out.values())
        return out


def instrument(audioclip: AudioCLIP, clip: CLIPEncoder, clock: Clock) -> None:
    """Time the encoder calls the guidance makes (instance attributes shadow the methods)."""
    audioclip.encode_images = clock.timed("audioclip_img", audioclip.encode_images)
    clip.encode_images = clock.timed("clip_img", clip.encode_images)
    clip.encode_texts = clock.timed("clip_text", clip.encode_texts)


class _Stop(Exception):
    """Raised by ``ProbeNet`` to stop the sampler; ``args[0]`` is the sample handed to the stopped call."""


class ProbeNet(nn.Module):
    """The U-Net with its forwards timed and the guidance gradient's arrival at its output stamped; with
    ``calls_left`` set, the next call after those stops the sampler, handing over its input (the new sample)."""

    def __init__(self, net: UNet, clock: Clock) -> None:
        super().__init__()
        self.net, self.clock, self.calls_left = net, clock, None

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if self.calls_left == 0:
            raise _Stop(x.detach())
        if self.calls_left is not None:
            self.calls_left -= 1
        name = "unet_fwd_grad" if torch.is_grad_enabled() else "unet_fwd_nograd"
        y = self.clock.timed(name, self.net)(x, t)
        if y.requires_grad:
            y.register_hook(self._arrived)
        return y

    def _arrived(self, grad: Tensor) -> None:
        _sync()
        self.clock.stamps["grad_at_unet"] = time.perf_counter()


# ------------------------------------------------------------------------------------------- models
@dataclass
class Models:
    gpt: GPT
    vqgan: VQGAN
    unet: UNet
    schedule: GaussianSchedule
    audioclip: AudioCLIP
    clip: CLIPEncoder
    params: dict[str, float]  # millions


def unet_config(res_blocks: int, release: bool = False) -> UNetConfig:
    """The benchmark's U-Net at ``SIZE`` px: 64 channels and ``res_blocks`` ResBlocks per level, or the released
    TA2V network (128 channels, 3 ResBlocks; ``--unet release``); attention at SIZE/8 and SIZE/16 px either way."""
    levels = (SIZE // 8, SIZE // 16)
    if release:
        return dataclasses.replace(UNetConfig(), image_size=SIZE, attention_resolutions=levels)
    return UNetConfig(image_size=SIZE, model_channels=64, channel_mult=(1, 1, 2, 3, 4), num_res_blocks=res_blocks,
                      attention_resolutions=levels, num_heads=4, gradient_checkpointing=False)


def build_models(args) -> Models:
    torch.manual_seed(0)
    gpt = GPT(gpt_preset(args.gpt_preset)).eval()
    vqgan = VQGAN(vqgan_preset("urmp")).eval()
    unet = UNet(unet_config(args.res_blocks, args.unet == "release")).eval().requires_grad_(False)
    schedule = GaussianSchedule.from_config(ProcessConfig(), respacing=RESPACING)
    audioclip = AudioCLIP(AudioCLIPConfig()).freeze()
    logging.getLogger().setLevel(logging.ERROR)  # open_clip: "no pretrained weights loaded" (intended)
    clip = CLIPEncoder(open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).float())
    nets = {"gpt": gpt, "vqgan": vqgan, "unet": unet, "audioclip": audioclip, "clip": clip}
    for net in nets.values():
        net.to(DEVICE)
    params = {k: sum(p.numel() for p in v.parameters()) / 1e6 for k, v in nets.items()}
    return Models(gpt, vqgan, unet, schedule, audioclip, clip, params)


def save_editor_files(m: Models, folder: Path) -> dict[str, Path]:
    """The stage-2 networks as files, for the upstream mode's per-video editor rebuild."""
    paths = {"unet": folder / "unet.pt", "audioclip": folder / "audioclip.pt", "clip": folder / "clip.pt"}
    save_unet(m.unet, paths["unet"], ProcessConfig())
    torch.save(m.audioclip.state_dict(), paths["audioclip"])
    torch.save(m.clip.model.state_dict(), paths["clip"])
    return paths


def load_editor(paths: dict[str, Path]) -> tuple[UNet, AudioCLIP, CLIPEncoder]:
    """Upstream's editor: U-Net and CLIP on the device, AudioCLIP left on the CPU (upstream never moves it)."""
    net = load_unet(paths["unet"], DEVICE).requires_grad_(False)
    return net, load_audioclip(paths["audioclip"]), load_clip(paths["clip"], DEVICE)


# ------------------------------------------------------------------------------------------- stage 1
def _timed(fn) -> tuple[float, object]:
    _sync()
    t0, out = time.perf_counter(), fn()
    _sync()
    return time.perf_counter() - t0, out


@torch.inference_mode()
def _decode(m: Models, codes: Tensor) -> Tensor:
    """``TwoStageSampler.stage1``'s tail: decode, clamp, then ``resize_frames`` to the diffusion size."""
    return resize_frames(m.vqgan.decode(codes).float().clamp(-0.5, 0.5), SIZE)


def stage1_benchmark(args, m: Models) -> tuple[dict, Tensor]:
    cfg, b, n = m.gpt.cfg, args.batch, args.gpt_tokens_timed
    full, scale = cfg.video_seq_len, cfg.video_seq_len / args.gpt_tokens_timed
    prompts = torch.randint(0, cfg.text_vocab_size, (b, cfg.text_seq_len), generator=torch.Generator().manual_seed(1))
    prompts = prompts.to(DEVICE)
    with autocast(args.precision, DEVICE):  # warm-up in ours' precision (first calls load the device's kernels)
        warm = min(b, 2)
        sample_codes(m.gpt, prompts[:warm], steps=4, seeds=list(range(warm)), restrict_to_video=True)
        _decode(m, torch.zeros(1, *cfg.latent_shape, dtype=torch.long, device=DEVICE))
    upstream_sample_with_past(m.gpt, prompts[:1], 4)
    _decode(m, torch.zeros(1, *cfg.latent_shape, dtype=torch.long, device=DEVICE))
    log(f"stage 1: ours, GPT {n} codes at batch {b}")
    with autocast(args.precision, DEVICE):
        gpt_b, codes = _timed(lambda: sample_codes(m.gpt, prompts, steps=n, seeds=list(range(b)), top_k=TOP_K,
                                                   top_p=TOP_P, restrict_to_video=True))
        codes = codes if n == full else torch.randint(0, cfg.n_codes, (b, *cfg.latent_shape), device=DEVICE)
        dec_b, clips = _timed(lambda: _decode(m, codes.view(b, *cfg.latent_shape)))
    log(f"  {gpt_b:.1f} s + decode {dec_b:.1f} s; upstream mode, GPT {n} codes at batch 1")
    gpt_1, tokens = _timed(lambda: upstream_sample_with_past(m.gpt, prompts[:1], n))
    up_codes = (tokens - cfg.video_offset).clamp(0, cfg.n_codes - 1) if n == full else codes[:1]
    dec_1, _ = _timed(lambda: _decode(m, up_codes.reshape(1, *cfg.latent_shape)))
    log(f"  {gpt_1:.1f} s + decode {dec_1:.1f} s")
    ours, up = (gpt_b * scale / b, dec_b / b, gpt_b, dec_b), (gpt_1 * scale, dec_1, gpt_1, dec_1)
    res = {name: {"gpt": g, "decode": d, "total": g + d, "batch_gpt_s": bg, "batch_decode_s": bd}
           for name, (g, d, bg, bd) in (("ours", ours), ("upstream", up))}
    return {**res, "tokens_timed": n, "extrapolated": n != full, "vocab": cfg.vocab_size}, clips


# ------------------------------------------------------------------------------------------- stage 2
class OursStage2:
    """``Guidance`` + ``ddpm_sample`` on a batch; ``step`` advances the sampler itself by one step."""

    def __init__(self, m: Models, clock: Clock, init: Tensor, audio: Tensor, seeds: list[int],
                 precision: str = "32") -> None:
        self.net, self.schedule, self.clock = ProbeNet(m.unet, clock), m.schedule, clock
        self.precision = precision
        self.guidance = Guidance(GuidanceConfig(), m.schedule, audio_encoder=m.audioclip, clip=m.clip)
        self.guidance.total = clock.stamping("loss", self.guidance.total)
        self.init, self.audio, self.seeds = init, audio, seeds
        self.x, self.done, self.cond_fn = None, 0, None
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.frozen = [m.unet, m.audioclip, m.clip]

    def prepare(self) -> None:
        """Caption and audio embedded once for the whole batch; then the networks' weights held for the chain
        as ``TwoStageSampler.stage2`` holds them (for the rest of the process: every later step is the chain's)."""
        with autocast(self.precision, DEVICE):
            cond = self.guidance.prepare(self.audio, [CAPTION] * len(self.seeds), RATE, FRAMES, seeds=self.seeds)
        self.cond_fn = self.clock.stamping("grad_done", self.guidance.cond_fn(cond))
        # Held for the rest of the process through a reference: a bare ``__enter__()`` on the generator-based
        # context would let it be collected at once, and its ``finally`` would put the original weights back.
        self.held = contextlib.ExitStack()
        self.held.enter_context(sampling_weights(self.frozen, self.precision, DEVICE))

    def step(self) -> None:
        """One step of ``ddpm_sample``: stopped at its next U-Net call, resumed from the sample it hands over
        (``noise=x`` without ``x_init`` starts exactly there; the generators carry their state)."""
        self.net.calls_left = 1
        start = {"x_init": self.init} if self.x is None else {"noise": self.x}
        try:
            with autocast(self.precision, DEVICE):
                ddpm_sample(self.net, self.schedule, tuple(self.init.shape), skip_timesteps=SKIP + self.done,
                            cond_fn=self.cond_fn, generators=self.gens, **start)
        except _Stop as stop:
            self.x = stop.args[0]
        self.done += 1


class UpstreamStage2:
    """Upstream's ``VideoEditor.edit`` loop for one video, over our modules."""

    def __init__(self, editor, schedule: GaussianSchedule, clock: Clock, init: Tensor, audio: Tensor) -> None:
        net, self.audioclip, self.clip = editor
        self.net, self.schedule, self.clock = ProbeNet(net, clock), schedule, clock
        self.init, self.audio, self.x, self.k = init, audio, None, schedule.num_timesteps - SKIP - 1
        self.gen = torch.Generator().manual_seed(404)
        self.lam = GuidanceConfig()

    @torch.no_grad()
    def prepare(self) -> None:
        """The audio embedded once (as upstream, by AudioCLIP on the CPU); q_sample of the stage-1 clip."""
        windows = encoder_audio(self.audio, RATE, self.audioclip, FRAMES, window_s=self.lam.audio_window_s)
        self.a_emb = L.normalize(self.audioclip.encode_audio(windows[0]))[None].to(DEVICE)  # (1, 16, 1024)
        noise = torch.randn(self.init.shape, generator=self.gen).to(DEVICE)
        self.x = self.schedule.q_sample(self.init, self.k, noise)

    def cond_fn(self, x: Tensor, t: Tensor) -> Tensor:
        lam = self.lam
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            out = self.schedule.p_mean_variance(self.net, x, t)  # the second U-Net forward of the step
            fac = gather_coef(self.schedule.sqrt_one_minus_alphas_cumprod, t, x)
            x_in = out["pred_xstart"] * fac + x * (1 - fac)
            frames = x_in[0].transpose(0, 1) + 0.5  # (16, 3, H, W) in [0, 1]
            img = L.normalize(self.audioclip.encode_images(frames.cpu()).to(DEVICE))[None]  # AudioCLIP on the CPU
            loss = lam.audio_lambda * L.audio_loss(img, self.a_emb).sum()
            img = L.normalize(self.audioclip.encode_images(frames.cpu()).to(DEVICE))[None]  # again: direction term
            loss = loss + lam.direction_lambda * L.direction_loss(img, self.a_emb).sum()
            loss = loss + lam.range_lambda * L.range_loss(out["pred_xstart"]).sum()
            text = 0.0
            for frame in frames:  # upstream's text_loss: caption re-encoded and frame encoded at batch 1
                with _upstream_clip_precision():
                    txt = L.normalize(self.clip.encode_texts([CAPTION]).float())
                    f_emb = L.normalize(self.clip.encode_images(frame[None]).float())
                text = text + L.text_loss(f_emb[None], txt).sum() / FRAMES  # mean over frames of 1 - cos
            loss = loss + lam.text_lambda * text
            self.clock.stamps["loss"] = time.perf_counter()
            grad = -torch.autograd.grad(loss, x)[0]
            self.clock.stamps["grad_done"] = time.perf_counter()
            return grad

    def step(self) -> None:
        t = torch.full((1,), self.k, dtype=torch.long, device=DEVICE)
        with torch.no_grad():
            out = self.schedule.p_mean_variance(self.net, self.x, t)  # the first U-Net forward: the update
        mean = out["mean"] + out["variance"] * self.cond_fn(self.x, t)
        if self.k > 0:
            noise = torch.randn(self.x.shape, generator=self.gen).to(DEVICE)
            mean = mean + torch.exp(0.5 * out["log_variance"]) * noise
        self.x, self.k = mean.detach(), self.k - 1


def _upstream_clip_precision():
    """Upstream loads CLIP in fp16 on a GPU (``clip.load``'s default there): fp16 autocast stands for it."""
    if DEVICE.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return autocast("32", DEVICE)


def _summarise(steps: list[float], parts: list[dict], per: int) -> tuple[float, dict[str, float]]:
    """Median step per video and the breakdown of the median step (per video)."""
    mid = sorted(range(len(steps)), key=steps.__getitem__)[(len(steps) - 1) // 2]
    return statistics.median(steps) / per, {k: v / per for k, v in parts[mid].items()}


def _runners(args, m: Models, clock: Clock, clips: Tensor, audio: Tensor, editor) -> tuple[dict, dict]:
    """One warm-up step of each mode at batch 1 (not counted), then the runners to time; the warm-up's batch-1
    ours runner goes on as the ``ours_b1`` variant (batch > 1), which shows what batching brings."""
    ours_b1 = OursStage2(m, clock, clips[:1], audio[:1], [0], args.precision)
    warm = {"ours": ours_b1, "upstream": UpstreamStage2(editor, m.schedule, clock, clips[:1], audio[:1])}
    secs = {}
    for name, runner in warm.items():
        runner.prepare()
        secs[name] = _timed(runner.step)[0]
        log(f"  warm-up step at batch 1: {name} {secs[name]:.1f} s")
    batch = OursStage2(m, clock, clips, audio, list(range(args.batch)), args.precision) if args.batch > 1 else None
    runners = {"ours": batch or ours_b1,
               "upstream": UpstreamStage2(editor, m.schedule, clock, clips[:1], audio[:1])}
    if args.batch > 1:
        runners["ours_b1"] = ours_b1
    return runners, secs


def stage2_benchmark(args, m: Models, clips: Tensor, paths: dict[str, Path]) -> dict:
    clock = Clock()
    instrument(m.audioclip, m.clip, clock)
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats(DEVICE)
    audio = 0.1 * torch.randn(args.batch, FRAMES * RATE // FPS, generator=torch.Generator().manual_seed(2))  # 48 kHz
    log("stage 2: upstream mode rebuilds its editor (U-Net, AudioCLIP, CLIP reloaded from files)")
    rebuild, editor = _timed(lambda: load_editor(paths))
    instrument(editor[1], editor[2], clock)
    log(f"  {rebuild:.1f} s")
    runners, warm = _runners(args, m, clock, clips, audio, editor)
    prep = {name: _timed(r.prepare)[0] for name, r in runners.items()}
    log("  prepare (audio + caption, whole batch): " + ", ".join(f"{k} {v:.1f} s" for k, v in prep.items()))
    names = list(runners)
    steps, cpu, parts = ({name: [] for name in names} for _ in range(3))
    for i in range(args.steps_timed):
        for name in (names if i % 2 == 0 else names[::-1]):
            clock.reset()
            c0 = time.process_time()
            secs, _ = _timed(runners[name].step)
            steps[name].append(secs)
            cpu[name].append(time.process_time() - c0)
            parts[name].append(clock.breakdown(secs))
            log(f"  step {i}: {name} {secs:.1f} s")
    n_steps = m.schedule.num_timesteps - SKIP
    res: dict = {"n_steps": n_steps, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                 "warmup_step_b1_s": warm, "device": str(DEVICE), "precision_ours": args.precision}
    if DEVICE.type == "cuda":
        res["peak_device_gib"] = torch.cuda.max_memory_allocated(DEVICE) / 2**30
    for name in names:
        per = args.batch if name == "ours" else 1
        step, breakdown = _summarise(steps[name], parts[name], per)
        r = {"rebuild": rebuild if name == "upstream" else 0.0, "prepare": prep[name] / per, "step": step,
             "steps": n_steps * step, "step_breakdown": breakdown, "batch": per, "measured_steps_s": steps[name],
             "step_cpu": statistics.median(cpu[name]) / per, "measured_steps_cpu_s": cpu[name]}
        r["total"] = r["rebuild"] + r["prepare"] + r["steps"]
        res[name] = r
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared machine)")
    p.add_argument("--batch", type=int, default=2, help="videos per batch in ours (4: ~17 GiB peak)")
    p.add_argument("--steps-timed", type=int, default=3, help="guided steps timed per mode (x 75)")
    p.add_argument("--gpt-tokens-timed", type=int, default=576, help="codes decoded (fewer: scaled to 576)")
    p.add_argument("--res-blocks", type=int, default=2, help="U-Net ResBlocks per level (release: 3)")
    p.add_argument("--gpt-preset", default="urmp_upstream", help="GPT preset (urmp_upstream | urmp)")
    p.add_argument("--unet", choices=["small", "release"], default="small",
                   help="small: 64 channels, --res-blocks per level; release: the released network (318 M)")
    p.add_argument("--size", type=int, choices=[64, 128], default=64, help="stage-2 frame size (release: 128)")
    p.add_argument("--device", default="cpu", help="cpu | cuda[:i]: where ours runs (upstream mode: U-Net, GPT, "
                   "VQGAN and CLIP there, AudioCLIP on the CPU as upstream)")
    p.add_argument("--precision", choices=["32", "bf16"], default="32",
                   help="ours' autocast (32: equal settings with the upstream mode, which is always fp32)")
    p.add_argument("--json", type=Path)
    q = p.add_argument_group("--equal-quality: seconds per video at judged-equal quality on the demo's models "
                             "(benchmarks/equal_quality.py)")
    q.add_argument("--equal-quality", action="store_true", help="run this mode instead of the speed comparison")
    q.add_argument("--ckpt_dir", type=Path, default=HERE.parent / "saved_ckpts" / "demo", help="the demo's checkpoints")
    q.add_argument("--data", type=Path, default=HERE.parent / "results" / "demo" / "data", help="the demo dataset")
    q.add_argument("--n", type=int, default=16, help="demo test clips")
    q.add_argument("--sample_args", default="", help="extra sample_tav.py flags for every run (they win)")
    args = p.parse_args(argv)
    if args.equal_quality:
        import equal_quality

        record = equal_quality.run(args)
        print(equal_quality.markdown(record))
        if args.json:
            from tav.utils.fileio import write_text_atomic

            write_text_atomic(args.json, json.dumps(record, indent=2, allow_nan=False) + "\n")
        return
    if args.batch < 1 or args.steps_timed < 1 or not 1 <= args.gpt_tokens_timed <= 576:
        p.error("--batch and --steps-timed must be >= 1, --gpt-tokens-timed in [1, 576]")
    torch.set_num_threads(args.threads)
    global DEVICE, SIZE
    DEVICE, SIZE = torch.device(args.device), args.size
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device here")
    load_before, t0 = _loadavg(), time.perf_counter()
    log("building models (random weights)")
    m = build_models(args)
    with tempfile.TemporaryDirectory(prefix="bench_sample_") as tmp:
        paths = save_editor_files(m, Path(tmp))
        s1, clips = stage1_benchmark(args, m)
        m.gpt = m.vqgan = None  # stage 2 needs the memory (see the module docstring)
        gc.collect()
        s2 = stage2_benchmark(args, m, clips, paths)
    cfg = unet_config(args.res_blocks, args.unet == "release")
    setting = {"device": DEVICE, "frames": FRAMES, "size": SIZE, "respacing": RESPACING, "skip": SKIP, "unet": cfg,
               "params": m.params, "load_before": load_before, "wall": time.perf_counter() - t0}
    print(report(args, setting, s1, s2))
    if args.json:
        opts = {k: str(v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"stage1": s1, "stage2": s2, "args": opts}, indent=2))


if __name__ == "__main__":
    main()
