"""Transformers of the TIA2V U-Nets: cross-attention, GEGLU feed-forward, and the spatial transformers with
first-frame K/V self-attention.

Source: latent-diffusion's ``SpatialTransformer`` / ``BasicTransformerBlock`` (Rombach et al. 2022), the
first-frame ("cross-frame") self-attention of Text2Video-Zero (Khachatryan et al. 2023) and Shazeer 2020
GEGLU; written fresh with upstream's module names (``attn1``, ``ff.net.0.proj``, ``norm1..3``, ``proj_in``,
``proj_out``) so the released state dicts load with their own keys.

Token layout: a clip's feature map becomes one sequence ``(B, F·H·W, C)``, frames in order, each frame's
``H·W`` positions row-major. Every frame's queries share frame 0's keys/values, so instead of repeating
frame 0 per frame (upstream) the frames are folded into the query axis; the text/image context is shared by
all frames of a clip the same way. This is the same maths with the batch size free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tav.diffusion.blocks import GroupNorm32, conv_nd, zero_init
from tav.errors import InputError
from tav.utils.attention import attention

TRANSFORMER_NORM_EPS = 1e-6  # GroupNorm eps of latent-diffusion's ``Normalize`` (ResBlocks keep 1e-5)


def transformer_norm(channels: int) -> GroupNorm32:
    """GroupNorm(32, channels) with eps 1e-6, computed in float32."""
    norm = GroupNorm32(channels)
    norm.eps = TRANSFORMER_NORM_EPS
    return norm


class CrossAttention(nn.Module):
    """Multi-head attention of queries ``x`` over ``context`` tokens (self-attention when context is None).

    q, k, v projections have no bias; ``to_out`` = Linear + Dropout. Weights ``softmax(q kᵀ / √d_head)``.
    """

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int, dropout: float = 0.0,
                 impl: str = "sdpa") -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads, self.impl = heads, impl
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x: (N, L, query_dim); context: (N, M, context_dim) or None (= x). Returns (N, L, query_dim)."""
        context = x if context is None else context
        if context.shape[0] != x.shape[0]:
            raise InputError(f"cross-attention: {x.shape[0]} query sequences but {context.shape[0]} contexts")
        n, h = x.shape[0], self.heads
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        q, k, v = (t.reshape(n, t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))  # (N, heads, L|M, d)
        out = attention(q, k, v, self.impl).transpose(1, 2).reshape(n, x.shape[1], -1)  # (N, L, heads·d)
        return self.to_out(out)


class GEGLU(nn.Module):
    """``Linear(dim_in → 2·dim_out)`` split into (value, gate); returns ``value · GELU(gate)``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., dim_in) -> (..., dim_out)."""
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward: ``dim → 4·dim`` (gated, so ``proj`` is ``dim → 8·dim``) → Dropout → ``4·dim → dim``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, mult * dim), nn.Dropout(dropout), nn.Linear(mult * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., dim) -> (..., dim)."""
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-LN block: self-attention ``attn1``, cross-attention ``attn2``, GEGLU ``ff`` (upstream's attribute
    order, hence its state-dict order). Subclasses define how the context enters ``forward``."""

    def __init__(self, dim: int, heads: int, context_dim: int, dropout: float = 0.0, impl: str = "sdpa") -> None:
        super().__init__()
        dim_head = dim // heads
        self.attn1 = CrossAttention(dim, None, heads, dim_head, dropout, impl)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, dropout, impl)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)


class FirstFrameBlock(TransformerBlock):
    """Spatial block of a clip sequence: every frame attends to frame 0 (K/V), then to the context.

    ``text_tokens=None`` (SHR, ``attention_3d``): one cross-attention to the whole context.
    ``text_tokens=T`` (content/motion, ``attention_ti``): the same ``attn2`` runs on the text tokens
    ``context[:, :T]`` (A_t) and on the image tokens ``context[:, T:]`` (A_i); the result is
    ``(x + A_t) + (x + A_i)`` with ``double_residual`` (released weights: x counted twice), else
    ``x + A_t + A_i``.
    """

    def __init__(self, dim: int, heads: int, context_dim: int, dropout: float = 0.0, impl: str = "sdpa",
                 text_tokens: int | None = None, double_residual: bool = False) -> None:
        super().__init__(dim, heads, context_dim, dropout, impl)
        self.text_tokens, self.double_residual = text_tokens, double_residual

    def forward(self, x: Tensor, context: Tensor, frame_len: int) -> Tensor:
        """x: (B, F·L, dim) with L = ``frame_len`` tokens per frame; context: (B, M, context_dim) -> like x."""
        h = self.norm1(x)
        x = x + self.attn1(h, h[:, :frame_len])  # queries from every frame, keys/values from frame 0
        h = self.norm2(x)
        if self.text_tokens is None:
            x = x + self.attn2(h, context)
        else:
            text, image = context[:, :self.text_tokens], context[:, self.text_tokens:]
            a_text, a_image = self.attn2(h, text), self.attn2(h, image)
            x = (a_text + x) + (a_image + x) if self.double_residual else x + a_text + a_image
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm → 1×1 ``proj_in`` → first-frame blocks → zero-initialised 1×1 ``proj_out``, plus the input.

    ``dims=2`` (content/motion): x is ``(B·F, C, H, W)``, frames of a clip adjacent (``(b f)``), with
    ``frames = F``; ``dims=3`` (SHR): x is ``(B, C, F, H, W)`` and F is read from x. The context is
    ``(B, M, context_dim)``, one per clip.
    """

    def __init__(self, channels: int, heads: int, context_dim: int, depth: int = 1, dropout: float = 0.0,
                 dims: int = 2, frames: int = 16, text_tokens: int | None = None, double_residual: bool = False,
                 impl: str = "sdpa", use_checkpoint: bool = False) -> None:
        super().__init__()
        self.dims, self.frames, self.use_checkpoint = dims, frames, use_checkpoint
        self.norm = transformer_norm(channels)
        self.proj_in = conv_nd(dims, channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([
            FirstFrameBlock(channels, heads, context_dim, dropout, impl, text_tokens, double_residual)
            for _ in range(depth)])
        self.proj_out = zero_init(conv_nd(dims, channels, channels, 1))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x: (B·F, C, H, W) [dims 2] or (B, C, F, H, W) [dims 3]; context (B, M, D) -> same shape as x."""
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, context, use_reentrant=False)
        return self._forward(x, context)

    def _forward(self, x: Tensor, context: Tensor) -> Tensor:
        h = self.proj_in(self.norm(x))
        if self.dims == 2:
            n, c, hh, ww = h.shape
            b, f = n // self.frames, self.frames
            tokens = h.reshape(b, f, c, hh * ww).transpose(2, 3).reshape(b, f * hh * ww, c)
        else:
            b, c, f, hh, ww = h.shape
            tokens = h.reshape(b, c, f * hh * ww).transpose(1, 2)
        if context.shape[0] != b:
            raise InputError(f"spatial transformer: {b} clips but a context of shape {tuple(context.shape)}; "
                             "pass one context per clip, (B, tokens, dim)")
        context = context.to(tokens.dtype)
        for block in self.transformer_blocks:
            tokens = block(tokens, context, hh * ww)
        if self.dims == 2:
            h = tokens.reshape(b, f, hh * ww, c).transpose(2, 3).reshape(n, c, hh, ww)
        else:
            h = tokens.transpose(1, 2).reshape(b, c, f, hh, ww)
        return self.proj_out(h) + x
