"""Videos as long as their sound, for both methods, by sliding windows over the trained clip length.

TA2V (:func:`ta2v_long`):
1. stage 1, GPT: window 0 draws a whole code grid (``t`` latent frames) after the caption prefix; every
   further window is a continuation: prefix + the last ``context`` latent frames of the codes so far, then
   ``t - context`` new latent frames (the GPT sees exactly the layout it was trained on, positions included).
   One generator, seeded once, draws every window in turn.
2. the VQGAN decodes the whole grid in chunks with context (:func:`tav.pipelines.windows.decode_long`).
3. stage 2: one SDEdit chain over the whole video, the U-Net run on overlapping windows of the clip length
   and blended at every step (:class:`~tav.pipelines.windows.WindowedNet`); the guidance sees every frame
   with the sound of that frame. Its terms are means over frames, so their gradient is scaled by
   ``T / window``: each frame is pulled as hard as inside a single window.

TIA2V (:func:`tia2v_long`): window k + 1 starts from the last frame of window k (held on its forward process,
as the given image is in window 0), with the CLIP-L embedding of that frame and the BEATs tokens of its own
frames' sound; consecutive windows share one frame. SHR (optional) then refines the whole video in one chain,
windowed like TA2V's stage 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from tav.diffusion.samplers import SAMPLERS
from tav.errors import InputError
from tav.gpt.sampling import sample_codes
from tav.pipelines.ta2v import TwoStageSampler, resize_frames, stage_seed
from tav.pipelines.tia2v import TIA2VSampler
from tav.pipelines.windows import WindowedNet, decode_long
from tav.tia2v.conditions import clip_image_input
from tav.utils.runtime import autocast, decoding_precision
from tav.utils.seeding import sample_generators

Progress = Callable[[int, int], None]  # (windows done, windows in all)


@dataclass
class Window:
    """One window of a long generation, in output frames ``[start, end)``; ``given`` frames at its start came
    from the previous window (the GPT context, or TIA2V's shared first frame)."""

    index: int
    start: int
    end: int
    given: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _tick(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


# --------------------------------------------------------------------------------------------------- TA2V
def ta2v_stage1_long(sampler: TwoStageSampler, text_ids: Tensor, n_frames: int, seed: int, context: int | None = None,
                     progress: Progress | None = None) -> tuple[Tensor, list[Window]]:
    """GPT codes for ``n_frames`` frames by continuation: ``text_ids (1, L)`` -> codes ``(1, t_all, h, w)`` and
    the windows (in frames). ``context``: latent frames carried into each next window (default half the grid,
    at least 1; 0 makes the windows independent draws)."""
    gpt, c = sampler.gpt, sampler.cfg
    lt, lh, lw = gpt.cfg.latent_shape
    dt = sampler.vqgan.cfg.downsample[0]
    ctx = max(1, lt // 2) if context is None else context
    if not 0 <= ctx < lt:
        raise InputError(f"--context_frames {ctx}: must be in [0, {lt - 1}] latent frames (the GPT's grid has {lt})")
    need = math.ceil(n_frames / dt)
    total = 1 + max(0, math.ceil((need - lt) / (lt - ctx)))
    gens = sample_generators([seed], sampler.device)
    ids = text_ids.to(sampler.device)
    per_frame = lh * lw
    codes = torch.empty(1, 0, lh, lw, dtype=torch.long, device=sampler.device)
    windows: list[Window] = []
    with autocast(decoding_precision(c.precision, sampler.device), sampler.device):
        while codes.shape[1] < need:
            given = min(ctx, codes.shape[1])
            ctx_ids = codes[:, codes.shape[1] - given:].reshape(1, -1) if given else None
            new = sample_codes(gpt, ids, steps=(lt - given) * per_frame, temperature=c.temperature, top_k=c.top_k,
                               top_p=c.top_p, generators=gens, context=ctx_ids,
                               cfg_scale=c.gpt_cfg_scale).view(1, lt - given, lh, lw)
            start = codes.shape[1] - given
            codes = torch.cat([codes, new], dim=1)
            windows.append(Window(len(windows), start * dt, min(codes.shape[1] * dt, n_frames), given * dt))
            _tick(progress, len(windows), total)
    return codes, windows


def guidance_scaled(cond_fn, scale: float):
    """``cond_fn`` with its gradient multiplied by ``scale``."""
    if cond_fn is None or scale == 1.0:
        return cond_fn
    return lambda x, t, out: cond_fn(x, t, out) * scale


def ta2v_stage2_long(sampler: TwoStageSampler, video: Tensor, audio: Tensor | None, caption: str, rate: int,
                     seed: int, window: int, stride: int | None = None) -> Tensor:
    """One guided SDEdit chain over ``video (1, 3, T, S, S)`` in [-0.5, 0.5] with the U-Net windowed (``window``
    frames, ``stride`` apart; default half a window); ``audio (1, T * spf)``. Returns ``(1, 3, T, S, S)``."""
    c, g = sampler.cfg, sampler.guidance
    n = video.shape[2]
    net = WindowedNet(sampler.net, window, window if stride == 0 else stride)
    seeds = [stage_seed(seed, 0)]
    cond_fn = None
    if g.active:
        cond_fn = guidance_scaled(g.cond_fn(g.prepare(audio, [caption], rate, n, seeds=seeds)), max(1.0, n / window))
    with autocast(c.precision, sampler.device), sampler.frozen_weights():
        x = SAMPLERS[c.sampler](net, sampler.schedule, tuple(video.shape), x_init=video.to(sampler.device),
                                skip_timesteps=c.skip_timesteps, cond_fn=cond_fn,
                                generators=sample_generators(seeds, sampler.device))
    return x.float().clamp(-0.5, 0.5)


def ta2v_long(sampler: TwoStageSampler, text_ids: Tensor, caption: str, audio: Tensor, rate: int, n_frames: int,
              seed: int, context: int | None = None, stage2: bool = True, stride: int | None = None,
              progress: Progress | None = None) -> tuple[Tensor, Tensor | None, list[Window]]:
    """Both TA2V stages over ``n_frames`` frames. ``audio (1, n_frames * spf)`` mono at ``rate``. ``context``: GPT
    context in latent frames (0: independent windows); ``stride``: of the stage-2 windows (default half a window;
    0: a whole window, no overlap).

    Returns ``(stage-1 video (1, 3, T, R, R), stage-2 video (1, 3, T, S, S) or None, windows)``, in [-0.5, 0.5].
    """
    codes, windows = ta2v_stage1_long(sampler, text_ids, n_frames, seed, context, progress)
    with torch.no_grad():
        v1 = decode_long(sampler.vqgan, codes, n_frames).clamp(-0.5, 0.5)
    if not stage2:
        return v1, None, windows
    window = sampler.vqgan.cfg.sequence_length
    v2 = ta2v_stage2_long(sampler, resize_frames(v1, sampler.cfg.output_size), audio, caption, rate, seed, window,
                          stride)
    return v1, v2, windows


# --------------------------------------------------------------------------------------------------- TIA2V
def tia2v_windows(n_frames: int, window: int) -> list[Window]:
    """Windows of ``window`` frames sharing one frame with the previous: starts 0, F-1, 2(F-1), ... The last
    may run past ``n_frames`` (its extra frames are dropped)."""
    if window < 2:
        raise InputError(f"TIA2V windows of {window} frame(s): the motion model must make at least 2 frames")
    step = window - 1
    count = 1 + max(0, math.ceil((n_frames - window) / step))
    return [Window(k, k * step, min(k * step + window, n_frames), 0 if k == 0 else 1) for k in range(count)]


@torch.no_grad()
def tia2v_long(sampler: TIA2VSampler, clip_l, first_frame: Tensor, caption: str, audio_tokens: Tensor, n_frames: int,
               seed: int, shr: bool = True, hand_over: bool = True, progress: Progress | None = None
               ) -> tuple[Tensor, Tensor | None, list[Window]]:
    """The motion model window after window, then (``shr``) SHR over the whole video. ``hand_over=False`` starts
    every window from the given image instead (independent windows: the baseline the benchmark compares with).

    ``first_frame (3, H, W)`` in [-0.5, 0.5] at the motion size; ``audio_tokens (T_pad, P, D)`` per frame,
    ``T_pad >= `` the last window's end (pad the sound past ``n_frames``). Returns ``(motion video (1, 3, T, H, W),
    SHR video (1, 3, T, S, S) or None, windows)``.
    """
    f = sampler.motion.net.config.num_frames
    windows = tia2v_windows(n_frames, f)
    if not hand_over:  # window k > 0 starts from the given image: its first frame is not the previous one's
        windows = [Window(w.index, w.start, w.end, 0) for w in windows]
    last_end = windows[-1].start + f
    if audio_tokens.shape[0] < last_end:
        raise InputError(f"tia2v_long: {audio_tokens.shape[0]} frames of audio tokens; the windows need {last_end}")
    text = clip_l.encode_text_states([caption]).float()
    out = torch.empty(1, 3, last_end, *first_frame.shape[-2:])
    first = first_frame[None].float()
    for w in windows:
        image = clip_l.encode_image_embeds(clip_image_input(first).to(clip_l.device)).float()
        tokens = audio_tokens[None, w.start: w.start + f]
        clip = sampler.stage1(first, text, image, tokens, f, [stage_seed(seed, w.index)]).cpu()
        out[:, :, w.start: w.start + f] = clip
        first = clip[:, :, -1] if hand_over else first
        _tick(progress, w.index + 1, len(windows))
    motion = out[:, :, :n_frames]
    if not shr or sampler.shr is None:
        return motion, None, windows
    refined = sampler.stage2(motion, text, [stage_seed(seed, 1)], window=f)
    return motion, refined.cpu(), windows

