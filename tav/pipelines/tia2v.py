"""TIA2V sampling: text + first image + audio -> 16 frames (motion U-Net) -> optional SHR refinement.

Stage 1 (motion): the clip's first frame followed by zeros is noised to the SDEdit start (upstream: skip 100
of 4000 steps, so the frame survives at √ᾱ ≈ 0.04) and denoised by the motion U-Net, conditioned on the
caption's CLIP-L text states, the first frame's CLIP-L image embedding and the per-frame BEATs tokens.
Stage 2 (SHR): every frame upsampled bilinearly to ``shr_size`` and refined SDEdit-style by the 3D text U-Net,
without guidance (upstream's editor ran with every guidance term off); the strength is ``shr_strength`` =
t0/T (default 0.375: skip 2500 of 4000, √ᾱ ≈ 0.83, a refinement that keeps the input) or
``shr_skip_timesteps`` (upstream's default 100 re-synthesises the clip almost from noise).

Both stages run respaced (``"200"``, ``"ddim50"``; the skip is converted to the respaced chain by original
step), batched over clips with one generator per clip, on one device. Conditions come from the condition
cache (:mod:`tav.tia2v.conditions`), so no encoder runs per step.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor, nn

from tav.diffusion.samplers import SAMPLERS
from tav.diffusion.schedule import GaussianSchedule
from tav.errors import InputError
from tav.pipelines.ta2v import resize_frames
from tav.pipelines.windows import WindowedNet
from tav.tia2v.conditions import motion_context
from tav.utils.runtime import autocast, sampling_weights
from tav.utils.seeding import sample_generators


@dataclass
class TIA2VSamplingConfig:
    """How ``sample_motion_optim.py`` samples (flags in brackets)."""

    respacing: str = "200"  # both chains respaced ("200" of 4000, "ddim50", "" = every step; upstream "")
    skip_timesteps: int = 100  # motion SDEdit start, in steps of the original chain (--skip_timesteps)
    shr_strength: float = 0.375  # SHR start t0/T: 0.375 = skip 2500 of 4000, a refinement (--shr_strength)
    shr_skip_timesteps: int | None = None  # or the original-chain steps to skip, overriding shr_strength
    shr_size: int = 128  # frames are upsampled to this before SHR (--model_output_size)
    sampler: str = "ddpm"  # ddpm | ddim (--use_ddim)
    clip_denoised: float = 0.5  # clamp x̂0 to [-c, c]; 0.5 = the data range (upstream 1.0: tav.compat.tia2v)
    reimpose_first_frame: bool = False  # put the given frame 0 back after each stage (off = upstream)
    motion_init: str = "zeros"  # SDEdit input of the motion stage: "zeros" (upstream: frame 0 then zeros) or
    # "first" (every frame starts as the given frame; with a later start the clip keeps its colours and shapes)
    hold_first_frame: bool = True  # keep frame 0 on the given frame's forward process at every step (upstream:
    # off; the given image then reaches the clip only through its noised copy at the start and the conditions)
    precision: str = "auto"  # auto | 32 | bf16 autocast around the networks (auto: bf16 where it is fast)
    audio_cfg_scale: float = 1.0  # motion: classifier-free guidance on the sound (1 = none; ours; needs a motion
    # model trained with --audio_dropout, which learned the null audio tokens)

    def __post_init__(self) -> None:
        if self.audio_cfg_scale < 0:
            raise InputError(f"--audio_cfg_scale {self.audio_cfg_scale}: must be >= 0 (1 = no guidance)")
        if self.motion_init not in MOTION_INITS:
            raise InputError(f"--motion_init {self.motion_init!r}: must be one of {MOTION_INITS}")
        if self.sampler not in SAMPLERS:
            raise InputError(f"sampler {self.sampler!r}: must be one of {sorted(SAMPLERS)}")
        if self.skip_timesteps < 0 or (self.shr_skip_timesteps or 0) < 0:
            raise InputError("--skip_timesteps and --shr_skip_timesteps must be >= 0")
        if not 0.0 < self.shr_strength <= 1.0:
            raise InputError(f"--shr_strength {self.shr_strength}: must be in (0, 1] (t0 / T)")

    def shr_skip(self, steps: int) -> int:
        """Original-chain steps SHR skips for a ``steps``-step process: ``shr_skip_timesteps`` if given, else
        ``steps - round(shr_strength * steps)`` (4000 steps at 0.375: 2500, start t0 = 1499)."""
        if self.shr_skip_timesteps is not None:
            return self.shr_skip_timesteps
        return steps - round(self.shr_strength * steps)


def respaced_skip(schedule: GaussianSchedule, skip_original: int, flag: str = "--skip_timesteps") -> int:
    """Respaced steps to skip so that the chain starts at original step ``T - skip_original - 1`` (or the
    nearest respaced step below it). E.g. 100 of 4000 with ``"200"`` -> 5. ``flag`` names the option in the
    error for a skip that leaves no step."""
    start = schedule.original_steps - skip_original - 1
    if start < 0:
        raise InputError(f"{flag} {skip_original}: leaves nothing of the {schedule.original_steps}-step chain; "
                         f"give a value in [0, {schedule.original_steps})")
    below = (schedule.timestep_map <= start).nonzero()
    first = int(below.max()) if len(below) else 0
    return schedule.num_timesteps - 1 - first


class FrameDenoiser(nn.Module):
    """Runs a per-frame U-Net (content/motion, inputs ``(B·F, C, H, W)``) on clips ``(B, C, F, H, W)``.

    ``forward(x (B, C, F, H, W), t (B,), context (B, 78, D), context_temp (B·F, P+77, D) | None,
    first_frame (B, C, H, W) | None)`` -> ``(B, C_out, F, H, W)``: every frame of clip b at timestep t[b] (one t
    per clip, as upstream samples). With ``first_frame`` (a motion model trained with ``first_frame: clean``),
    frame 0 of the input is replaced by that clean image at t = 0, as in its training.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, t: Tensor, first_frame: Tensor | None = None, **conditions: Tensor) -> Tensor:
        b, _, f = x.shape[:3]
        steps = t.repeat_interleave(f)
        if first_frame is not None:
            x = torch.cat([first_frame[:, :, None].to(x.dtype), x[:, :, 1:]], dim=2)
            steps = steps.view(b, f).clone()
            steps[:, 0] = 0
            steps = steps.reshape(-1)
        flat = rearrange(x, "b c f h w -> (b f) c h w")
        out = self.net(flat, steps, *conditions.values())
        return rearrange(out, "(b f) c h w -> b c f h w", b=b)


class AudioGuided(nn.Module):
    """Classifier-free guidance on the sound over a motion :class:`FrameDenoiser` (Ho & Salimans 2022): the
    noise prediction ``null + scale · (audio − null)``, where ``null`` is the same step with the null audio
    tokens (``context_temp_null``); the variance channels (learned sigma) are the conditioned pass's. One
    batched call of ``2B`` clips per step. Same inputs and output as :class:`FrameDenoiser`."""

    def __init__(self, denoiser: FrameDenoiser, scale: float):
        super().__init__()
        self.denoiser, self.scale = denoiser, scale

    def forward(self, x: Tensor, t: Tensor, first_frame: Tensor | None = None, *, context: Tensor,
                context_temp: Tensor, context_temp_null: Tensor) -> Tensor:
        """x ``(B, C, F, H, W)``; t ``(B,)``; context ``(B, 78, D)``; both temporal contexts ``(B·F, P+77, D)``."""
        def two(v: Tensor) -> Tensor:
            return torch.cat([v, v])

        out = self.denoiser(two(x), two(t), None if first_frame is None else two(first_frame), context=two(context),
                            context_temp=torch.cat([context_temp, context_temp_null]))
        audio, null = out.chunk(2)
        c = x.shape[1]
        eps = null[:, :c] + self.scale * (audio[:, :c] - null[:, :c])
        return torch.cat([eps, audio[:, c:]], dim=1)


MOTION_INITS = ("zeros", "first")
SHR_SKIP_FLAG = "--shr_skip_timesteps (or --shr_strength)"


def first_frame_init(video: Tensor, mode: str = "zeros") -> Tensor:
    """``(B, C, F, H, W)`` -> the motion stage's SDEdit input: frame 0 kept and frames 1.. set to 0 (``zeros``,
    upstream's) or to frame 0 (``first``)."""
    if mode == "first":
        return video[:, :, :1].expand_as(video).clone()
    init = torch.zeros_like(video)
    init[:, :, 0] = video[:, :, 0]
    return init


class TIA2VSampler:
    """Motion U-Net (+ optional SHR U-Net) with their respaced schedules, built once, on one device."""

    def __init__(self, motion: nn.Module, motion_schedule: GaussianSchedule, shr: nn.Module | None,
                 shr_schedule: GaussianSchedule | None, cfg: TIA2VSamplingConfig):
        self.motion, self.shr, self.cfg = FrameDenoiser(motion).eval(), shr, cfg
        self.motion_schedule, self.shr_schedule = motion_schedule, shr_schedule
        self.device = next(motion.parameters()).device
        respaced_skip(motion_schedule, cfg.skip_timesteps)  # a start outside the chains fails before any work
        if shr_schedule is not None:
            respaced_skip(shr_schedule, cfg.shr_skip(shr_schedule.original_steps), SHR_SKIP_FLAG)

    def _sample(self, net, schedule, x_init: Tensor, skip: int, seeds: Sequence[int], kwargs: dict,
                progress: bool, flag: str = "--skip_timesteps") -> Tensor:
        gens = sample_generators(seeds, self.device)
        known = None
        if self.cfg.hold_first_frame:  # frame 0 of x_init is the given (or upsampled given) first frame
            mask = torch.zeros(1, 1, x_init.shape[2], 1, 1, dtype=torch.bool, device=self.device)
            mask[:, :, 0] = True
            known = (x_init.to(self.device), mask)
        with torch.no_grad(), autocast(self.cfg.precision, self.device), \
                sampling_weights([net], self.cfg.precision, self.device):
            x = SAMPLERS[self.cfg.sampler](
                net, schedule, tuple(x_init.shape), x_init=x_init.to(self.device),
                skip_timesteps=respaced_skip(schedule, skip, flag), generators=gens, model_kwargs=kwargs,
                clip_denoised=self.cfg.clip_denoised, progress=progress, known=known)
        return x.float().clamp(-0.5, 0.5)

    def stage1(self, first_frames: Tensor, text: Tensor, image: Tensor, audio_tokens: Tensor,
               n_frames: int, seeds: Sequence[int], progress: bool = False) -> Tensor:
        """Motion sampling.

        first_frames ``(B, 3, H, W)`` in [-0.5, 0.5]; text ``(B, 77, D)``; image ``(B, D)``; audio_tokens
        ``(B, F, P, D_a)``. Returns ``(B, 3, F, H, W)`` in [-0.5, 0.5].
        """
        video = first_frame_init(first_frames.to(self.device)[:, :, None].expand(-1, -1, n_frames, -1, -1),
                                 self.cfg.motion_init)
        text, image = text.to(self.device), image.to(self.device)
        kwargs = {"context": torch.cat([text, image[:, None].to(text.dtype)], dim=1),
                  "context_temp": motion_context(audio_tokens.to(self.device), text)}
        clean = getattr(getattr(self.motion.net, "config", None), "first_frame", "noised") == "clean"
        if clean:
            kwargs["first_frame"] = video[:, :, 0]
        net = self.motion
        if self.cfg.audio_cfg_scale != 1.0:
            kwargs["context_temp_null"] = motion_context(torch.zeros_like(audio_tokens, device=self.device), text)
            net = AudioGuided(self.motion, self.cfg.audio_cfg_scale)
        out = self._sample(net, self.motion_schedule, video, self.cfg.skip_timesteps, seeds, kwargs, progress)
        if self.cfg.reimpose_first_frame or clean:
            out[:, :, 0] = video[:, :, 0]
        return out

    def stage2(self, video: Tensor, text: Tensor, seeds: Sequence[int], progress: bool = False,
               window: int | None = None) -> Tensor:
        """SHR: ``(B, 3, F, h, w)`` in [-0.5, 0.5] -> ``(B, 3, F, S, S)`` refined at ``shr_size`` S. ``window``:
        run the U-Net on overlapping windows of that many frames (a video longer than the SHR's clips)."""
        if self.shr is None:
            raise InputError("no SHR model loaded: pass --diffusion_ckpt, or --skip_shr for stage 1 only")
        up = resize_frames(video.to(self.device), self.cfg.shr_size)
        skip = self.cfg.shr_skip(self.shr_schedule.original_steps)
        net = self.shr if window is None else WindowedNet(self.shr, window)
        out = self._sample(net, self.shr_schedule, up, skip, seeds,
                           {"context": text.to(self.device)}, progress, SHR_SKIP_FLAG)
        if self.cfg.reimpose_first_frame:
            out[:, :, 0] = up[:, :, 0]
        return out

    def run(self, first_frames: Tensor, text: Tensor, image: Tensor, audio_tokens: Tensor, n_frames: int,
            seeds: Sequence[int], shr_seeds: Sequence[int] | None = None,
            progress: bool = False) -> tuple[Tensor, Tensor | None, dict[str, float]]:
        """Both stages for one batch: ``(motion clips, SHR clips or None, seconds per stage)``."""
        t0 = time.perf_counter()
        v1 = self.stage1(first_frames, text, image, audio_tokens, n_frames, seeds, progress)
        t1 = time.perf_counter()
        v2 = None if self.shr is None else self.stage2(v1, text, shr_seeds or seeds, progress)
        return v1, v2, {"stage1": t1 - t0, "stage2": time.perf_counter() - t1}


def load_tia2v_sampler(motion_path: str | os.PathLike, shr_path: str | os.PathLike | None, cfg: TIA2VSamplingConfig,
                       device: str | torch.device = "cpu", compat: str | None = None) -> TIA2VSampler:
    """The sampler of the motion checkpoint (and the SHR checkpoint unless ``shr_path`` is None), both chains
    respaced as ``cfg.respacing`` says; ``compat`` as in ``tav.tia2v.load.load_tia2v_unet``."""
    from tav.tia2v.load import audio_dropout_of, load_tia2v_unet

    respacing = cfg.respacing or None
    motion = load_tia2v_unet(motion_path, "motion", device, compat=compat)
    shr = s_sched = None
    if shr_path is not None:
        if not Path(shr_path).is_file():
            raise InputError(f"--diffusion_ckpt {shr_path}: no such file; pass the SHR (\"Diffusion\") checkpoint, "
                             "or --skip_shr for the motion stage only")
        shr = load_tia2v_unet(shr_path, "shr", device, compat=compat)
        s_sched = GaussianSchedule.from_config(shr.process, respacing=respacing)
    if cfg.audio_cfg_scale != 1.0 and audio_dropout_of(motion_path) <= 0:
        raise InputError(f"--audio_cfg_scale {cfg.audio_cfg_scale:g}: {motion_path} was trained without "
                         "--audio_dropout, so it never saw the null audio tokens guidance compares against; retrain "
                         "it with --audio_dropout 0.1 or sample with --audio_cfg_scale 1")
    return TIA2VSampler(motion, GaussianSchedule.from_config(motion.process, respacing=respacing), shr, s_sched, cfg)
