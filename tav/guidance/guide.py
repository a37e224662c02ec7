"""Audio + text + direction + range guidance for the stage-2 SDEdit refinement.

``Guidance`` holds the frozen encoders and the weights. Per batch of samples, ``prepare`` embeds the audio
windows and captions once (no grad); ``cond_fn(cond)`` returns the sampler hook
``(x, t, out) -> ∇x(−L)``, which reuses the U-Net output ``out`` the sampler already computed on ``x``
(upstream ran the U-Net a second time inside its hook; the gradient is the same).

Per step, with ``fac = sqrt(1 - ᾱ_t)`` (blended-diffusion's mix: close to x_t early, to x̂0 late):
``x_in = fac · x̂0 + (1 - fac) · x_t`` and
``L = λ_audio·L_audio(x_in) + λ_dir·L_dir(x_in) + λ_text·L_text(x_in) + λ_range·L_range(x̂0)``.

With ``grad_blur = σ > 0`` (``--guidance_blur``; ours, off by default) the gradient is smoothed per frame by a
Gaussian of std σ pixels before the sampler adds it: a small guide's pixel gradient is mostly high-frequency
speckle, which the last steps of a small prior leave in the picture (the smoothing is the low-pass view of
gradient-noise reduction, e.g. SmoothGrad, Smilkov et al. 2017).

Encoders by ``audio_encoder``:
- ``audioclip`` (the release setting): audio and direction terms use AudioCLIP's image tower against its audio
  tower (one window per frame); the text term uses CLIP ViT-B/32.
- ``joint`` (``tav.encoders.joint``, trained on the user's clips): as ``audioclip``, with the joint encoder's
  frame and audio towers; with ``text_encoder="joint"`` its frame and caption towers also give the text term
  (one frame embedding then serves all three terms).
- ``wav2clip``: the audio term compares CLIP ViT-B/32 embeddings of ``aug_num`` views per frame (view 0 plain,
  the rest randomly warped) with wav2clip's audio embedding; direction uses the plain views; text as above.
Frame embeddings are computed once per step per encoder and shared by the terms that need them.

Input mapping: frames in [-0.5, 0.5] -> ``x + 0.5`` in [0, 1] -> the encoder's resize and normalisation;
the range term keeps x̂0 inside the data range [-0.5, 0.5]; the audio is one ``audio_window_s`` window per
frame. This class is only that corrected computation. ``GuidanceConfig(faithful_quirks=True)`` makes
``Guidance(...)`` build :class:`tav.compat.guidance.UpstreamGuidance`, which overrides the hooks below
(``audio_mode``, ``range_bounds``, ``_encoder_frames``, ``_view_frames``, ``_plain_view``,
``_direction_frames``) with upstream's behaviour; ``docs/upstream.md`` lists the differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from tav.diffusion.schedule import GaussianSchedule, gather_coef
from tav.encoders.base import Encoder
from tav.errors import InputError
from tav.guidance import losses as L
from tav.utils.seeding import sample_generators

if TYPE_CHECKING:
    from tav.encoders.audio import AudioMode

AUDIO_ENCODERS = ("audioclip", "wav2clip", "joint")
PAIRED_AUDIO = ("audioclip", "joint")  # encoders whose own image tower is compared with their audio tower
TEXT_ENCODERS = ("clip", "joint")


@dataclass
class GuidanceConfig:
    """Weights and encoder choice of the stage-2 guidance (defaults: the README sampling command)."""

    audio_encoder: str = "audioclip"  # audioclip | wav2clip | joint (--audio_emb_model)
    text_encoder: str = "clip"  # clip | joint: the frame and caption towers of the text term (--text_emb_model)
    audio_lambda: float = 10000.0  # --audio_guidance_lambda
    direction_lambda: float = 5000.0  # --direction_lambda
    text_lambda: float = 10000.0  # --text_guidance_lambda
    range_lambda: float = 50.0  # --range_lambda
    aug_num: int = 8  # views per frame in wav2clip mode (view 0 unaugmented)
    audio_window_s: float = 0.5  # seconds of audio around each frame (unused with faithful_quirks)
    faithful_quirks: bool = False  # build tav.compat.guidance.UpstreamGuidance (upstream's mapping and chunking)
    grad_blur: float = 0.0  # --guidance_blur: std (pixels of the stage-2 frames) of the gradient's smoothing; 0 off

    def __post_init__(self) -> None:
        if self.audio_encoder not in AUDIO_ENCODERS:
            raise InputError(f"--audio_emb_model {self.audio_encoder}: guidance supports {AUDIO_ENCODERS}")
        if self.text_encoder not in TEXT_ENCODERS:
            raise InputError(f"--text_guidance_model {self.text_encoder}: guidance supports {TEXT_ENCODERS}")
        if self.audio_encoder == "wav2clip" and self.text_encoder != "clip" and self.uses_audio:
            raise InputError("--audio_emb_model wav2clip compares CLIP ViT-B/32 frames with its audio: it needs "
                             "--text_guidance_model clip")
        if self.aug_num < 1:
            raise InputError(f"--aug_num {self.aug_num}: must be >= 1")
        if not self.grad_blur >= 0:
            raise InputError(f"--guidance_blur {self.grad_blur}: must be >= 0 (pixels; 0 turns it off)")

    @property
    def uses_audio(self) -> bool:
        return self.audio_lambda != 0 or self.direction_lambda != 0

    @property
    def needs_clip(self) -> bool:
        return self.text_lambda != 0 or (self.uses_audio and self.audio_encoder == "wav2clip")


@dataclass
class Conditions:
    """What one batch is guided towards, embedded once: unit vectors."""

    audio: Tensor | None  # (B, T, D_audio) one audio embedding per frame
    text: Tensor | None  # (B, D_clip) caption embeddings
    generators: list[torch.Generator]  # one per sample: its random views (wav2clip mode)


class Guidance:
    """The guidance of one sampling run: encoders are built by the caller once and reused for every batch.

    ``Guidance(cfg, ...)`` with ``cfg.faithful_quirks`` returns a :class:`tav.compat.guidance.UpstreamGuidance`
    (same constructor), so callers never choose the class themselves.
    """

    audio_mode: AudioMode = "window"  # how ``prepare`` gives each frame its audio (tav.encoders.audio)
    range_bounds: tuple[float, float] = (-0.5, 0.5)  # the range term keeps x̂0 inside the data range

    def __new__(cls, cfg: GuidanceConfig | None = None, *args, **kwargs) -> Guidance:
        if cls is Guidance and cfg is not None and cfg.faithful_quirks:
            from tav.compat.guidance import UpstreamGuidance

            cls = UpstreamGuidance
        return super().__new__(cls)

    def __init__(self, cfg: GuidanceConfig, schedule: GaussianSchedule, *, audio_encoder: Encoder | None = None,
                 clip: Encoder | None = None):
        if cfg.uses_audio and audio_encoder is None:
            raise InputError(f"audio guidance needs the {cfg.audio_encoder} encoder")
        if cfg.needs_clip and clip is None:
            raise InputError("text guidance (and wav2clip-mode audio guidance) needs the CLIP ViT-B/32 encoder")
        if cfg.uses_audio and cfg.audio_encoder == "wav2clip" and clip.dim != audio_encoder.dim:
            raise InputError(f"wav2clip guidance compares CLIP image and wav2clip audio embeddings, but the CLIP "
                             f"model is {clip.dim}-d and wav2clip {audio_encoder.dim}-d; use the ViT-B/32 weights")
        self.cfg, self.schedule = cfg, schedule
        self.audio_encoder, self.clip = audio_encoder, clip
        self.last_terms: dict[str, Tensor] = {}  # per-sample terms of the latest step, for logging
        self.checkpointing = False  # recompute the image towers' activations in the backward (less memory)

    @property
    def active(self) -> bool:
        c = self.cfg
        return any(v != 0 for v in (c.audio_lambda, c.direction_lambda, c.text_lambda, c.range_lambda))

    # ------------------------------------------------------------------------------------ conditions
    @torch.no_grad()
    def prepare(self, audio: Tensor | None, captions: Sequence[str], rate: int, n_frames: int,
                seeds: Sequence[int] | None = None, spans: Tensor | None = None) -> Conditions:
        """Embed ``audio (B, N)`` (mono at ``rate``: the clip's ``n_frames`` frames, or with ``spans (B, 2)`` the
        sound around the clip, whose samples ``[start, end)`` are the clip; see
        ``tav.encoders.audio.encoder_audio``) and ``captions``; ``seeds`` (one per sample, default 0..B-1) drive
        each sample's random views."""
        from tav.encoders.audio import encoder_audio

        cfg, device = self.cfg, self._device()
        aud = txt = None
        if cfg.uses_audio:
            if audio is None:
                raise InputError("audio guidance is on but the batch has no audio")
            enc = self.audio_encoder
            windows = encoder_audio(audio, rate, enc, n_frames, window_s=cfg.audio_window_s, mode=self.audio_mode,
                                    spans=spans, device=device)
            b, t, w = windows.shape
            aud = L.normalize(torch.cat([enc.encode_audio(row) for row in windows])).view(b, t, -1)
        if cfg.text_lambda != 0:
            if any(not c.strip() for c in captions):
                raise InputError("text guidance needs a caption for every sample; one is empty")
            txt = L.normalize(self.clip.encode_texts(list(captions)))
        seeds = list(range(len(captions))) if seeds is None else list(seeds)
        return Conditions(aud, txt, sample_generators(seeds))

    def _device(self) -> torch.device:
        enc = self.audio_encoder or self.clip
        return enc.device if enc is not None else torch.device("cpu")

    # ------------------------------------------------------------------------------------ loss
    @staticmethod
    def _flat(x: Tensor) -> Tensor:
        """``(B, 3, T, H, W)`` -> ``(B*T, 3, H, W)`` (frames of a sample adjacent)."""
        return x.transpose(1, 2).flatten(0, 1)

    def _encoder_frames(self, x: Tensor) -> Tensor:
        """``(B, 3, T, H, W)`` in [-0.5, 0.5] -> ``(B*T, 3, H, W)`` in [0, 1], what the encoders take."""
        return self._flat(x) + 0.5

    def _encode_images(self, enc: Encoder, frames: Tensor) -> Tensor:
        """``enc.encode_images(frames)``; with ``checkpointing``, its activations are recomputed in the backward
        instead of kept (the same values)."""
        if self.checkpointing and torch.is_grad_enabled() and frames.requires_grad:
            return checkpoint(enc.encode_images, frames, use_reentrant=False)
        return enc.encode_images(frames)

    def _embed(self, enc: Encoder, frames: Tensor, b: int) -> Tensor:
        """``(B*T, 3, H, W)`` encoder input -> ``(B, T, D)`` unit embeddings."""
        return L.normalize(self._encode_images(enc, frames)).view(b, -1, enc.dim)

    def loss_terms(self, x_in: Tensor, pred_xstart: Tensor, cond: Conditions) -> dict[str, Tensor]:
        """Per-sample ``(B,)`` terms (unweighted) for ``x_in`` / ``pred_xstart`` ``(B, 3, T, H, W)``."""
        cfg, b = self.cfg, x_in.shape[0]
        terms: dict[str, Tensor] = {}
        frames = self._encoder_frames(x_in)
        clip_emb = None
        if cfg.text_lambda != 0 or (cfg.uses_audio and cfg.audio_encoder == "wav2clip"):
            clip_emb = self._embed(self.clip, frames, b)
        if cfg.uses_audio and cfg.audio_encoder in PAIRED_AUDIO:
            same = self.audio_encoder is self.clip and clip_emb is not None  # the joint encoder for both terms
            img = clip_emb if same else self._embed(self.audio_encoder, frames, b)
            terms["audio"] = L.audio_loss(img, cond.audio)
            terms["direction"] = L.direction_loss(img, cond.audio)
        elif cfg.uses_audio:
            terms["audio"] = L.audio_loss(self._views(x_in, cond, clip_emb), cond.audio)
            terms["direction"] = L.direction_loss(self._direction_frames(x_in, clip_emb), cond.audio)
        if cfg.text_lambda != 0:
            terms["text"] = L.text_loss(clip_emb, cond.text)
        terms["range"] = L.range_loss(pred_xstart, *self.range_bounds)
        return terms

    def _views(self, x_in: Tensor, cond: Conditions, plain: Tensor) -> Tensor:
        """CLIP embeddings ``(B, T, V, D)``: view 0 the plain frame, then ``aug_num - 1`` warped views of
        ``_view_frames(x_in)``; ``plain`` ``(B, T, D)`` are the CLIP embeddings of ``_encoder_frames(x_in)``."""
        b, v = x_in.shape[0], self.cfg.aug_num
        if v == 1:
            return plain[:, :, None]
        frames = self._view_frames(x_in)
        per_sample = frames.view(b, -1, *frames.shape[1:])
        views = torch.cat([L.augmented_views(f, v, gen)[:, 1:]  # (T, V-1, 3, H, W) per sample
                           for f, gen in zip(per_sample, cond.generators, strict=True)])
        warped = L.normalize(self._encode_images(self.clip, views.flatten(0, 1))).view(b, -1, v - 1, self.clip.dim)
        return torch.cat([self._plain_view(plain, frames, b)[:, :, None], warped], dim=2)

    def _view_frames(self, x_in: Tensor) -> Tensor:
        """The ``(B*T, 3, H, W)`` frames the wav2clip views are made from: the encoder input, in [0, 1]."""
        return self._encoder_frames(x_in)

    def _plain_view(self, plain: Tensor, frames: Tensor, b: int) -> Tensor:
        """View 0 ``(B, T, D)``: the view frames are the encoder input, so ``plain`` is reused as is."""
        return plain

    def _direction_frames(self, x_in: Tensor, plain: Tensor) -> Tensor:
        """Frame embeddings ``(B, T, D)`` of the wav2clip direction term: the plain views."""
        return plain

    def total(self, terms: dict[str, Tensor]) -> Tensor:
        """``Σ_b Σ_k λ_k · term_k[b]`` (a scalar)."""
        c = self.cfg
        weights = {"audio": c.audio_lambda, "direction": c.direction_lambda, "text": c.text_lambda,
                   "range": c.range_lambda}
        return sum(weights[k] * v.sum() for k, v in terms.items() if weights[k] != 0)

    def cond_fn(self, cond: Conditions):
        """The sampler hook for ``cond``: ``(x, t, out) -> -∂L/∂x`` through the step's own U-Net output."""

        def hook(x: Tensor, t: Tensor, out: dict[str, Tensor]) -> Tensor:
            fac = gather_coef(self.schedule.sqrt_one_minus_alphas_cumprod, t, x)
            x_in = out["pred_xstart"] * fac + x * (1 - fac)
            terms = self.loss_terms(x_in, out["pred_xstart"], cond)
            self.last_terms = {k: v.detach() for k, v in terms.items()}
            total = self.total(terms)
            if not torch.is_tensor(total) or not total.requires_grad:
                return torch.zeros_like(x)
            return smooth_frames(-torch.autograd.grad(total, x)[0], self.cfg.grad_blur)

        return hook


def gaussian_kernel(sigma: float) -> Tensor:
    """The normalised 1-D Gaussian of std ``sigma`` (float64), radius ``ceil(3σ)`` taps."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def check_blur_fits(sigma: float, size: int) -> None:
    """Raise ``InputError`` unless a ``sigma``-px smoothing kernel (radius ``ceil(3σ)``) fits ``size``-px frames."""
    r = len(gaussian_kernel(sigma)) // 2 if sigma > 0 else 0
    if r >= size:
        raise InputError(f"--guidance_blur {sigma}: its kernel (radius {r} px) does not fit {size}-px frames; "
                         f"use a value below {size / 3:g}")


def smooth_frames(x: Tensor, sigma: float) -> Tensor:
    """``(B, C, T, H, W)`` -> the same, each frame blurred by a separable Gaussian of std ``sigma`` pixels (reflected
    edges, so a constant field stays constant); ``sigma = 0`` returns ``x`` itself."""
    if sigma == 0:
        return x
    b, c, t, h, w = x.shape
    check_blur_fits(sigma, min(h, w))
    k = gaussian_kernel(sigma).to(device=x.device, dtype=x.dtype)
    r = len(k) // 2
    y = x.reshape(b * c * t, 1, h, w)
    y = torch.nn.functional.conv2d(torch.nn.functional.pad(y, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    y = torch.nn.functional.conv2d(torch.nn.functional.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return y.view(b, c, t, h, w)


def build_guidance(cfg: GuidanceConfig, schedule: GaussianSchedule, device: str | torch.device = "cpu",
                   weights: dict[str, str | None] | None = None) -> Guidance:
    """``Guidance`` with the encoders ``cfg`` needs, built once through the registry (shared with the metric
    tools in one process). ``weights``: encoder name (``audioclip``, ``wav2clip``, ``clip``, ``joint``) -> weight
    file, None or absent = the default file under ``saved_ckpts/``."""
    from tav.encoders.registry import get_encoder

    weights = weights or {}
    audio = get_encoder(cfg.audio_encoder, weights.get(cfg.audio_encoder), device) if cfg.uses_audio else None
    text = get_encoder(cfg.text_encoder, weights.get(cfg.text_encoder), device) if cfg.needs_clip else None
    return Guidance(cfg, schedule, audio_encoder=audio, clip=text)
