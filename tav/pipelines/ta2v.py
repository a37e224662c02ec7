"""The TA2V two-stage sampler: caption -> GPT codes -> VQGAN clip -> guided SDEdit refinement.

Stage 1: a batch of BERT caption prefixes -> ``sample_codes`` (KV cache, top-k / top-p, one generator per
sample) -> ``VQGAN.decode`` -> clamp to [-0.5, 0.5] -> bilinear resize of every frame to the diffusion size.
Stage 2: ``q_sample`` of that clip at respaced step ``num_timesteps - skip - 1`` (t ≈ 2989 of 4000 for the
release), then DDPM (or DDIM) steps with the guidance hook (``tav.guidance``), clamped to [-0.5, 0.5].

Everything is built once by the caller and reused for every batch. Randomness is per sample: sample ``i``
of a run uses seed ``base + i`` for its GPT draw, its stage-2 noise and its guidance views, so a sample does
not depend on the batch size or on the other samples; refinement iteration ``k`` uses a derived seed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tav.diffusion.samplers import SAMPLERS
from tav.diffusion.schedule import GaussianSchedule
from tav.diffusion.unet3d import UNet
from tav.gpt.model import GPT
from tav.gpt.sampling import check_cfg_scale, sample_codes
from tav.guidance import Guidance
from tav.guidance.guide import check_blur_fits
from tav.utils.runtime import autocast, decoding_precision, sampling_weights
from tav.utils.seeding import sample_generators
from tav.vqgan.model import VQGAN

ITERATION_SEED_STRIDE = 1_000_003  # seed of refinement iteration k of sample i: base + i + k * stride


@dataclass
class SamplingConfig:
    """Settings of one two-stage sampling run (defaults: the README command)."""

    top_k: int | None = 2048
    top_p: float | None = 0.80
    temperature: float = 1.0
    gpt_cfg_scale: float = 1.0  # classifier-free guidance of the GPT's tokens (1 = none; needs text_dropout training)
    output_size: int = 128  # --model_output_size: stage-1 frames are resized to this
    respacing: str = "100"  # --timestep_respacing: the stage-2 chain ("100" of 4000, "ddim50", "" = every step)
    skip_timesteps: int = 25  # SDEdit start: the first `skip` respaced steps are skipped
    sampler: str = "ddpm"  # ddpm | ddim (--ddim)
    iterations: int = 1  # --iterations_num: independent refinements per sample
    precision: str = "auto"  # auto | 32 | bf16 (autocast around the networks; auto: bf16 where it is fast; the GPT
    # decodes in fp32 on a CPU, where bf16 is slower: tav.utils.runtime.decoding_precision)
    guidance_checkpointing: bool = False  # recompute U-Net and image-tower activations in the guidance backward


def stage_seed(seed: int, iteration: int = 0) -> int:
    """Seed of refinement ``iteration`` of the sample whose base seed is ``seed``."""
    return int(seed) + iteration * ITERATION_SEED_STRIDE


def resize_frames(video: Tensor, size: int) -> Tensor:
    """``(B, C, T, H, W)`` -> ``(B, C, T, size, size)``: bilinear per frame, ``align_corners=False``."""
    b, c, t, h, w = video.shape
    if (h, w) == (size, size):
        return video
    frames = video.transpose(1, 2).flatten(0, 1)
    frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
    return frames.view(b, t, c, size, size).transpose(1, 2)


class TwoStageSampler:
    """GPT + VQGAN (stage 1) and diffusion U-Net + guidance (stage 2), on one device."""

    def __init__(self, gpt: GPT, vqgan: VQGAN, net: UNet, schedule: GaussianSchedule, guidance: Guidance,
                 cfg: SamplingConfig):
        self.gpt, self.vqgan, self.net, self.schedule = gpt, vqgan, net, schedule
        self.guidance, self.cfg = guidance, cfg
        check_blur_fits(guidance.cfg.grad_blur, cfg.output_size)  # before any sampling
        check_cfg_scale(gpt.cfg, cfg.gpt_cfg_scale)
        self.device = next(net.parameters()).device
        self.net.requires_grad_(False)  # guidance needs gradients w.r.t. x only
        if cfg.guidance_checkpointing:
            self.net.set_gradient_checkpointing(True)
            self.guidance.checkpointing = True

    def frozen_weights(self) -> contextlib.AbstractContextManager:
        """Within, the U-Net's and the guides' convolution weights are held as ``sampling_weights`` says for
        the chain's precision (bf16 once instead of at every step; channels-last on a CPU with AMX)."""
        guides = [e for e in (self.guidance.audio_encoder, self.guidance.clip) if isinstance(e, nn.Module)]
        return sampling_weights([self.net, *guides], self.cfg.precision, self.device)

    @torch.no_grad()
    def stage1(self, text_ids: Tensor, seeds: Sequence[int], progress: bool = False) -> Tensor:
        """``(B, L)`` caption ids -> ``(B, 3, T, R, R)`` decoded clips in [-0.5, 0.5] (VQGAN resolution)."""
        c = self.cfg
        gens = sample_generators(seeds, self.device)
        with autocast(decoding_precision(c.precision, self.device), self.device):
            codes = sample_codes(self.gpt, text_ids.to(self.device), temperature=c.temperature, top_k=c.top_k,
                                 top_p=c.top_p, generators=gens, progress=progress, cfg_scale=c.gpt_cfg_scale)
        return self.vqgan.decode(codes).float().clamp(-0.5, 0.5)

    def stage2(self, video: Tensor, audio: Tensor | None, captions: Sequence[str], rate: int,
               seeds: Sequence[int], progress: bool = False, spans: Tensor | None = None) -> list[Tensor]:
        """Refine ``video (B, 3, T, S, S)`` in [-0.5, 0.5]; returns one ``(B, 3, T, S, S)`` per iteration.
        ``audio (B, N)``: the clips' sound, or with ``spans (B, 2)`` the sound around them (``Guidance.prepare``)."""
        c, g = self.cfg, self.guidance
        n_frames, out = video.shape[2], []
        sample = SAMPLERS[c.sampler]
        for k in range(c.iterations):
            iter_seeds = [stage_seed(s, k) for s in seeds]
            gens = sample_generators(iter_seeds, self.device)
            cond_fn = None
            if g.active:
                cond = g.prepare(audio, captions, rate, n_frames, seeds=iter_seeds, spans=spans)
                cond_fn = g.cond_fn(cond)
            with autocast(c.precision, self.device), self.frozen_weights():
                x = sample(self.net, self.schedule, tuple(video.shape), x_init=video.to(self.device),
                           skip_timesteps=c.skip_timesteps, cond_fn=cond_fn, generators=gens, progress=progress)
            out.append(x.float().clamp(-0.5, 0.5))
        return out

    def run(self, text_ids: Tensor, audio: Tensor | None, captions: Sequence[str], rate: int, seeds: Sequence[int],
            progress: bool = False, spans: Tensor | None = None) -> tuple[Tensor, list[Tensor], dict[str, float]]:
        """Both stages for one batch: ``(stage-1 clips, [stage-2 clips per iteration], seconds per stage)``."""
        t0 = time.perf_counter()
        v1 = self.stage1(text_ids, seeds, progress)
        t1 = time.perf_counter()
        v2 = self.stage2(resize_frames(v1, self.cfg.output_size), audio, captions, rate, seeds, progress, spans)
        t2 = time.perf_counter()
        return v1, v2, {"stage1": t1 - t0, "stage2": t2 - t1}
