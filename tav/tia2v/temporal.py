"""Temporal layers of the TIA2V motion U-Net: the temporal conv inside every
ResBlock, the temporal transformer over the frames of each pixel, and the dual (audio / text) block.

Sources: the temporal conv follows ModelScope/VideoComposer's ``TemporalConvBlock_v2``; the temporal
transformer is latent-diffusion's transformer run along the frame axis; the dual block is diffusers'
``DualTransformer2DModel`` (Versatile Diffusion) mixing. Written fresh, with upstream's module names.

Inputs are the motion U-Net's ``(B·F, C, H, W)`` frame batches (``(b f)`` order); F comes from the config.

Temporal cross-attention context ``(B·F, M, D)`` holds each frame's own tokens; the feature of frame f
attends to frame f's tokens, and the dual block gives every frame its own output.

This module is that corrected computation only. The two motion-model bugs the released weights were trained
with live in :mod:`tav.compat.tia2v`: ``TemporalTransformer(..., row_mapping=True)`` builds its
``RowMappedTemporalTransformer`` (``audio_row_mapping``) and ``DualTemporalTransformer(...,
frame_collapse=True)`` its ``FrameCollapsedDualTemporalTransformer`` (``dual_block_frame_collapse``).
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
    """Pre-LN block on per-pixel frame sequences: self-attention over the F frames, cross-attention of each
    frame's features to that frame's context tokens, GEGLU feed-forward."""

    def forward(self, x: Tensor, context: Tensor, clips: int) -> Tensor:
        """x: (B·H·W, F, C) per-pixel sequences (b-major); context: (B·F, M, D) -> like x."""
        x = x + self.attn1(self.norm1(x))
        h = self.frame_groups(self.norm2(x), clips)  # (B·F, L, C): the queries of each context row
        x = x + self.undo_frame_groups(self.attn2(h, context), x.shape, clips)
        return x + self.ff(self.norm3(x))

    @staticmethod
    def frame_groups(x: Tensor, clips: int) -> Tensor:
        """(B·HW, F, C) -> (B·F, HW, C): row b·F + f holds frame f's features of every pixel of clip b."""
        n, f, c = x.shape
        return x.reshape(clips, n // clips, f, c).transpose(1, 2).reshape(clips * f, n // clips, c)

    @staticmethod
    def undo_frame_groups(x: Tensor, shape: torch.Size, clips: int) -> Tensor:
        """Inverse of :meth:`frame_groups`: (B·F, L, C) -> ``shape`` = (B·HW, F, C)."""
        n, f, c = shape
        return x.reshape(clips, f, n // clips, c).transpose(1, 2).reshape(shape)


class TemporalTransformer(nn.Module):
    """GroupNorm → Conv1d ``proj_in`` along the frames of each pixel → blocks → zero-initialised Conv1d
    ``proj_out``, plus the input. Optional frame position embedding (``pos_emb``; upstream: none).

    ``row_mapping=True`` returns :class:`tav.compat.tia2v.RowMappedTemporalTransformer` (upstream's context
    repeat, the released motion weights' ``audio_row_mapping``); this class ignores the argument otherwise.
    """

    block_type: type[TemporalBlock] = TemporalBlock

    def __new__(cls, *args, row_mapping: bool = False, **kwargs) -> TemporalTransformer:
        if cls is TemporalTransformer and row_mapping:
            from tav.compat.tia2v import RowMappedTemporalTransformer

            cls = RowMappedTemporalTransformer
        return super().__new__(cls)

    def __init__(self, channels: int, heads: int, context_dim: int, frames: int, depth: int = 1,
                 dropout: float = 0.0, row_mapping: bool = False, pos_emb: str = "none", impl: str = "sdpa",
                 use_checkpoint: bool = False) -> None:
        super().__init__()
        self.frames, self.pos_emb = frames, pos_emb
        self.use_checkpoint = use_checkpoint
        self.norm = transformer_norm(channels)
        self.proj_in = nn.Conv1d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([self.block_type(channels, heads, context_dim, dropout, impl)
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
        self._check_grid(hh, ww)
        h = self.norm(x).reshape(b, f, c, hh * ww).permute(0, 3, 2, 1).reshape(b * hh * ww, c, f)
        tokens = self.proj_in(h).transpose(1, 2)  # (B·HW, F, C)
        tokens = tokens + self._position(tokens)
        context = context.to(tokens.dtype)
        for block in self.transformer_blocks:
            tokens = block(tokens, context, b)
        h = self.proj_out(tokens.transpose(1, 2))  # (B·HW, C, F)
        return x + h.reshape(b, hh * ww, c, f).permute(0, 3, 2, 1).reshape(n, c, hh, ww)

    def _check_grid(self, hh: int, ww: int) -> None:
        """Reject feature maps the context mapping cannot handle (every size works here)."""

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
    and ``T1`` fed the next ``text_tokens``; other keyword arguments (``row_mapping``, ``pos_emb``, ...) go
    to both :class:`TemporalTransformer`. ``frame_collapse=True`` returns
    :class:`tav.compat.tia2v.FrameCollapsedDualTemporalTransformer` (upstream's ``[0]`` indexing, the released
    motion weights' ``dual_block_frame_collapse``); this class ignores the argument otherwise.
    """

    def __new__(cls, *args, frame_collapse: bool = False, **kwargs) -> DualTemporalTransformer:
        if cls is DualTemporalTransformer and frame_collapse:
            from tav.compat.tia2v import FrameCollapsedDualTemporalTransformer

            cls = FrameCollapsedDualTemporalTransformer
        return super().__new__(cls)

    def __init__(self, channels: int, heads: int, context_dim: int, frames: int, audio_tokens: int = 8,
                 text_tokens: int = 77, mix_ratio: float = 0.7, frame_collapse: bool = False, **kwargs) -> None:
        super().__init__()
        self.transformers = nn.ModuleList([TemporalTransformer(channels, heads, context_dim, frames, **kwargs)
                                           for _ in range(2)])
        self.lengths = (audio_tokens, text_tokens)
        self.mix_ratio = mix_ratio

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x: (B·F, C, H, W); context: (B·F, audio_tokens + text_tokens, D), audio first -> like x."""
        if context.ndim != 3 or context.shape[1] != sum(self.lengths):
            raise InputError(f"dual temporal block: context_temp of shape {tuple(context.shape)}; expected "
                             f"(B·F, {self.lengths[0]} audio + {self.lengths[1]} text tokens, dim)")
        audio, text = context.split(self.lengths, dim=1)
        deltas = [self._frames_out(transformer(x, tokens)) - x
                  for transformer, tokens in zip(self.transformers, (audio, text), strict=True)]
        return deltas[0] * self.mix_ratio + deltas[1] * (1 - self.mix_ratio) + x

    def _frames_out(self, y: Tensor) -> Tensor:
        """One transformer's output ``y`` (B·F, C, H, W) as the block uses it: every frame its own."""
        return y
