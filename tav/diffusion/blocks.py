"""Building blocks of the guided-diffusion U-Net, for 2D images and 3D videos (``dims`` 2 or 3).

Source: Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis"
(https://github.com/openai/guided-diffusion, ``unet.py``). Module and attribute names (``in_layers``,
``emb_layers``, ``out_layers``, ``skip_connection``, ``qkv``, ``proj_out``, ``op``, ``conv``) follow it so
that upstream state dicts load with their own keys; the code here is written fresh.

Shapes: ``x`` is ``(B, C, *spatial)`` with ``spatial = (T, H, W)`` for dims 3 and ``(H, W)`` for dims 2;
``emb`` is the timestep embedding ``(B, E)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tav.errors import InputError
from tav.utils.attention import attention


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """``nn.Conv1d`` / ``Conv2d`` / ``Conv3d`` for ``dims`` 1 / 2 / 3."""
    convs = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
    if dims not in convs:
        raise InputError(f"dims={dims}: must be 1, 2 or 3")
    return convs[dims](*args, **kwargs)


def zero_init(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (the residual branch starts as the identity) and return it."""
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32, C) computed in float32 whatever the input dtype (bf16/fp16/autocast); output in x's dtype."""

    def __init__(self, channels: int, groups: int = 32) -> None:
        super().__init__(groups, channels)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, ...) any float dtype -> same shape and dtype."""
        with torch.autocast(x.device.type, enabled=False):
            out = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: ``[cos(t f_i), sin(t f_i)]``.

    t: (B,) int or float. Returns (B, dim) float32, the cos half first, with
    ``f_i = exp(-ln(max_period) * i / half)`` for ``i < half = dim // 2``; an odd ``dim`` gets a zero column.
    Source: Vaswani et al. 2017 positional encoding, in guided-diffusion's (cos, sin) order.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepBlock(nn.Module):
    """A block whose forward takes the timestep embedding as a second argument."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class TimestepSequential(nn.Sequential):
    """``nn.Sequential`` that also hands ``emb`` (B, E) to the :class:`TimestepBlock` children."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class ResBlock(TimestepBlock):
    """Two k3 convs with a timestep-conditioned middle, plus a skip (identity or 1x1 conv when widths differ).

    With ``use_scale_shift_norm`` the embedding gives ``(scale, shift)`` and the second norm becomes
    ``norm(h) * (1 + scale) + shift`` (FiLM); otherwise it is added to ``h`` before that norm.
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 dims: int = 3, use_scale_shift_norm: bool = True, use_checkpoint: bool = False) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       conv_nd(dims, channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        zero_init(conv_nd(dims, out_channels, out_channels, 3, padding=1)))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else conv_nd(dims, channels, out_channels, 1))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: (B, C_in, *spatial), emb: (B, E) -> (B, C_out, *spatial)."""
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)
        e = e.reshape(*e.shape, *([1] * (h.ndim - 2)))  # (B, C or 2C, 1, ...) broadcasts over spatial
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all positions (T*H*W tokens for videos), with a residual.

    ``legacy_order`` (the released weights): the ``qkv`` output channels are ``(heads, 3, d)``, i.e. each
    head's q, k, v are adjacent; the new order is ``(3, heads, d)``.
    """

    def __init__(self, channels: int, num_heads: int = 1, legacy_order: bool = True, impl: str = "sdpa",
                 use_checkpoint: bool = False) -> None:
        super().__init__()
        if channels % num_heads:
            raise InputError(f"attention: {num_heads} heads do not divide {channels} channels")
        self.num_heads = num_heads
        self.legacy_order = legacy_order
        self.impl = impl
        self.use_checkpoint = use_checkpoint
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, *spatial) -> same shape."""
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)  # (B, C, L), L = prod(spatial)
        qkv = self.qkv(self.norm(x))  # (B, 3C, L)
        d = c // self.num_heads
        if self.legacy_order:
            q, k, v = qkv.reshape(b, self.num_heads, 3, d, -1).unbind(2)  # each (B, heads, d, L)
        else:
            q, k, v = qkv.reshape(b, 3, self.num_heads, d, -1).unbind(1)
        h = attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2), self.impl)  # (B, heads, L, d)
        h = h.transpose(-1, -2).reshape(b, c, -1)  # (B, C, L), channels ordered (heads, d)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class Downsample(nn.Module):
    """Stride-2 k3 conv on H and W; for dims 3 the frame axis keeps stride 1 (frames are never down-sampled)."""

    def __init__(self, channels: int, dims: int = 3, out_channels: int | None = None) -> None:
        super().__init__()
        stride = (1, 2, 2) if dims == 3 else 2
        self.op = conv_nd(dims, channels, out_channels or channels, 3, stride=stride, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, [T,] H, W) -> (B, C_out, [T,] H/2, W/2) (odd sizes round up)."""
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 on H and W (frames untouched for dims 3), then a k3 conv."""

    def __init__(self, channels: int, dims: int = 3, out_channels: int | None = None) -> None:
        super().__init__()
        self.dims = dims
        self.conv = conv_nd(dims, channels, out_channels or channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, [T,] H, W) -> (B, C_out, [T,] 2H, 2W)."""
        scale = (1.0, 2.0, 2.0) if self.dims == 3 else 2.0
        return self.conv(F.interpolate(x, scale_factor=scale, mode="nearest"))
