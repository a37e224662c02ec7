"""Temporal layers of the TIA2V motion U-Net (spec tia2v.md §4.5, §4.6): the temporal conv inside every
ResBlock, the temporal transformer over the frames of each pixel, and the dual (audio / text) block.

Sources: the temporal conv follows ModelScope/VideoComposer's ``TemporalConvBlock_v2``; the temporal
transformer is latent-diffusion's transformer run along the frame axis; the dual block is diffusers'
``DualTransformer2DModel`` (Versatile Diffusion) mixing. Written fresh, with upstream's module names.

Inputs are the motion U-Net's ``(B·F, C, H, W)`` frame batches (``(b f)`` order); F comes from the config.

Temporal cross-attention context ``(B·F, M, D)`` holds each frame's own tokens. Which frame's tokens a
feature attends to:

- default (fixed): the feature of frame f attends to frame f's tokens;
- ``audio_row_mapping`` (†, released weights): upstream repeats the per-frame context over the ``H·W``
  per-pixel sequences (``b m d -> (b r) m d``, ``r = H·W / F``), so all frames of pixel ``p = h·W + w``
  attend to frame ``p // r``: at 16×16 with F = 16, row h hears frame h.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tav.diffusion.blocks import GroupNorm32, ResBlock, timestep_embedding, zero_init
from tav.errors import InputError
from tav.tia2v.attention import TransformerBlock, transformer_norm


def clips_of(x: Tensor, frames: int) -> int:
    """Number of clips B in a ``(B·F, ...)`` frame batch; a batch that is not whole clips raises."""
    if x.shape[0] % frames:
        raise InputError(f"a batch of {x.shape[0]} frames is not a whole number of {frames}-frame clips; "
                         "frames must be flattened as (b f) with F = config.num_frames")
    return x.shape[0] // frames


class TemporalConvBlock(nn.Module):
    """Four stages GroupNorm → SiLU → [Dropout] → Conv3d (3,1,1) along the frames, plus the input.

    ``conv1`` has no dropout; the last conv is zero-initialised, so the block starts as the identity.
    """

    def __init__(self, channels: int, frames: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.frames = frames

        def conv() -> nn.Conv3d:
            return nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))

        self.conv1 = nn.Sequential(GroupNorm32(channels), nn.SiLU(), conv())
        self.conv2 = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Dropout(dropout), conv())
        self.conv3 = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Dropout(dropout), conv())
        self.conv4 = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Dropout(dropout), zero_init(conv()))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B·F, C, H, W) -> same shape."""
        b, f = clips_of(x, self.frames), self.frames
        n, c, hh, ww = x.shape
        h = x.reshape(b, f, c, hh, ww).transpose(1, 2)  # (B, C, F, H, W)
        h = self.conv4(self.conv3(self.conv2(self.conv1(h))))
        return x + h.transpose(1, 2).reshape(n, c, hh, ww)


class TemporalResBlock(ResBlock):
    """guided-diffusion 2D ResBlock followed by a :class:`TemporalConvBlock` (``temporal_conv``)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, frames: int, dropout: float = 0.0,
                 temporal_dropout: float = 0.1, use_scale_shift_norm: bool = True,
                 use_checkpoint: bool = False) -> None:
        super().__init__(channels, emb_channels, out_channels, dropout=dropout, dims=2,
                         use_scale_shift_norm=use_scale_shift_norm, use_checkpoint=use_checkpoint)
        self.temporal_conv = TemporalConvBlock(out_channels, frames, temporal_dropout)

    def _forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: (B·F, C_in, H, W), emb: (B·F, E) -> (B·F, C_out, H, W)."""
        return self.temporal_conv(super()._forward(x, emb))


class TemporalBlock(TransformerBlock):
    """Pre-LN block on per-pixel frame sequences: self-attention over the F frames, cross-attention to each
    frame's context tokens (mapping: see the module docstring), GEGLU feed-forward."""

    def forward(self, x: Tensor, context: Tensor, clips: int, row_mapping: bool) -> Tensor:
        """x: (B·H·W, F, C) per-pixel sequences (b-major); context: (B·F, M, D) -> like x."""
        x = x + self.attn1(self.norm1(x))
        h = _frame_groups(self.norm2(x), clips, row_mapping)  # (B·F, L, C): the queries of each context row
        x = x + _undo_frame_groups(self.attn2(h, context), x.shape, clips, row_mapping)
        return x + self.ff(self.norm3(x))


def _frame_groups(x: Tensor, clips: int, row_mapping: bool) -> Tensor:
    """(B·HW, F, C) -> (B·F, L, C): group the tokens by the context frame they attend to."""
    n, f, c = x.shape
    hw = n // clips
    if row_mapping:  # pixel p hears frame p // (HW / F): consecutive blocks of HW / F pixels per frame
        return x.reshape(clips * f, (hw // f) * f, c)
    return x.reshape(clips, hw, f, c).transpose(1, 2).reshape(clips * f, hw, c)


def _undo_frame_groups(x: Tensor, shape: torch.Size, clips: int, row_mapping: bool) -> Tensor:
    """Inverse of :func:`_frame_groups`: (B·F, L, C) -> ``shape`` = (B·HW, F, C)."""
    if row_mapping:
        return x.reshape(shape)
    n, f, c = shape
    return x.reshape(clips, f, n // clips, c).transpose(1, 2).reshape(shape)


class TemporalTransformer(nn.Module):
    """GroupNorm → Conv1d ``proj_in`` along the frames of each pixel → blocks → zero-initialised Conv1d
    ``proj_out``, plus the input. Optional frame position embedding (``pos_emb``; upstream: none)."""

    def __init__(self, channels: int, heads: int, context_dim: int, frames: int, depth: int = 1,
                 dropout: float = 0.0, row_mapping: bool = False, pos_emb: str = "none", impl: str = "sdpa",
                 use_checkpoint: bool = False) -> None:
        super().__init__()
        self.frames, self.row_mapping, self.pos_emb = frames, row_mapping, pos_emb
        self.use_checkpoint = use_checkpoint
        self.norm = transformer_norm(channels)
        self.proj_in = nn.Conv1d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([TemporalBlock(channels, heads, context_dim, dropout, impl)
                                                 for _ in range(depth)])
        self.proj_out = zero_init(nn.Conv1d(channels, channels, 1))
        if pos_emb == "learned":
            self.frame_pos = nn.Parameter(torch.zeros(frames, channels))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x: (B·F, C, H, W); context: (B·F, M, context_dim), frame f's tokens at row b·F + f -> like x."""
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, context, use_reentrant=False)
        return self._forward(x, context)

    def _forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, f = clips_of(x, self.frames), self.frames
        n, c, hh, ww = x.shape
        if context.shape[0] != n:
            raise InputError(f"temporal transformer: {n} frames but a context of shape {tuple(context.shape)}; "
                             "pass one context row per frame, (B·F, tokens, dim)")
        if self.row_mapping and (hh * ww) % f:
            raise InputError(f"audio_row_mapping needs H·W ({hh}x{ww}) to be a multiple of F={f} "
                             "(upstream's context repeat); turn the switch off for this size")
        h = self.norm(x).reshape(b, f, c, hh * ww).permute(0, 3, 2, 1).reshape(b * hh * ww, c, f)
        tokens = self.proj_in(h).transpose(1, 2)  # (B·HW, F, C)
        tokens = tokens + self._position(tokens)
        context = context.to(tokens.dtype)
        for block in self.transformer_blocks:
            tokens = block(tokens, context, b, self.row_mapping)
        h = self.proj_out(tokens.transpose(1, 2))  # (B·HW, C, F)
        return x + h.reshape(b, hh * ww, c, f).permute(0, 3, 2, 1).reshape(n, c, hh, ww)

    def _position(self, tokens: Tensor) -> Tensor | float:
        """Frame position embedding (F, C) for ``tokens`` (B·HW, F, C), or 0."""
        if self.pos_emb == "learned":
            return self.frame_pos.to(tokens.dtype)
        if self.pos_emb == "sinusoidal":
            steps = torch.arange(tokens.shape[1], device=tokens.device)
            return timestep_embedding(steps, tokens.shape[2]).to(tokens.dtype)
        return 0.0


class DualTemporalTransformer(nn.Module):
    """Two temporal transformers: ``transformers.0`` on the audio tokens, ``transformers.1`` on the text.

    Output ``x + mix·(T0(x) − x) + (1 − mix)·(T1(x) − x)`` with ``T0`` fed ``context[:, :audio_tokens]``
    and ``T1`` fed the next ``text_tokens``. ``frame_collapse`` (†, released weights) keeps upstream's
    ``[0]`` indexing: ``T(x)[0]`` is frame 0 of clip 0 ``(C, H, W)``, broadcast to every frame of every clip.
    """

    def __init__(self, channels: int, heads: int, context_dim: int, frames: int, audio_tokens: int = 8,
                 text_tokens: int = 77, mix_ratio: float = 0.7, frame_collapse: bool = False, **kwargs) -> None:
        super().__init__()
        self.transformers = nn.ModuleList([TemporalTransformer(channels, heads, context_dim, frames, **kwargs)
                                           for _ in range(2)])
        self.lengths = (audio_tokens, text_tokens)
        self.mix_ratio, self.frame_collapse = mix_ratio, frame_collapse

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x: (B·F, C, H, W); context: (B·F, audio_tokens + text_tokens, D), audio first -> like x."""
        if context.ndim != 3 or context.shape[1] != sum(self.lengths):
            raise InputError(f"dual temporal block: context_temp of shape {tuple(context.shape)}; expected "
                             f"(B·F, {self.lengths[0]} audio + {self.lengths[1]} text tokens, dim)")
        audio, text = context.split(self.lengths, dim=1)
        deltas = []
        for transformer, tokens in zip(self.transformers, (audio, text), strict=True):
            y = transformer(x, tokens)
            deltas.append((y[0] if self.frame_collapse else y) - x)
        return deltas[0] * self.mix_ratio + deltas[1] * (1 - self.mix_ratio) + x
