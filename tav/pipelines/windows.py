"""Videos longer than a model's window: window plans, a temporally tiled network, and chunked VQGAN decoding.

- :func:`window_starts`: where overlapping windows of ``window`` frames start so that they cover ``n`` frames
  (the last one ends at frame ``n``);
- :class:`WindowedNet`: runs a video network (``net(x (B, C, T, H, W), t, **kw)``) trained on ``window``-frame
  clips on a clip of any length: the overlapping windows go through the network as one batch and the outputs
  are blended with triangular weights (a crossfade in every overlap). Wrapped around the denoiser, it makes
  one sampler call over the whole video, so the windows agree at every step instead of being stitched after
  the last one (the fused-windows idea of MultiDiffusion: Bar-Tal et al. 2023, arXiv:2302.08113);
- :func:`decode_long`: ``VQGAN.decode`` of a long code grid in chunks of latent frames with a halo of context
  on each side, keeping only each chunk's core (bounded memory, no seams from the chunking).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tav.errors import InputError


def window_starts(n: int, window: int, stride: int) -> list[int]:
    """Starts of windows of ``window`` frames, ``stride`` apart, covering ``[0, n)``; the last window ends at
    ``n`` (it may overlap its neighbour more). One window starting at 0 when ``n <= window``."""
    if window < 1 or not 1 <= stride <= window:
        raise InputError(f"windows of {window} frames every {stride}: need 1 <= stride <= window")
    if n <= window:
        return [0]
    starts = list(range(0, n - window, stride))
    return starts + [n - window]


def blend_weights(window: int) -> Tensor:
    """``(window,)`` triangular weights ``min(i + 1, window - i)``: a window's middle counts most."""
    i = torch.arange(window, dtype=torch.float32)
    return torch.minimum(i + 1, window - i)


class WindowedNet(nn.Module):
    """``net`` on clips of any length, by overlapping windows of ``window`` frames blended per frame.

    ``forward(x (B, C, T, H, W), t (B,), **kwargs) -> (B, C_out, T, H, W)``: with ``T <= window`` this is
    ``net`` itself; otherwise every window runs (``batch_windows`` at a time; tensors in ``kwargs`` whose first
    axis is B are repeated per window) and each output frame is the weighted mean of the windows covering it.
    """

    def __init__(self, net: nn.Module, window: int, stride: int | None = None, batch_windows: int = 8):
        super().__init__()
        self.net, self.window = net, window
        self.stride = stride or max(1, window // 2)
        self.batch_windows = max(1, batch_windows)
        window_starts(window, window, self.stride)  # validates window / stride

    def forward(self, x: Tensor, t: Tensor, **kwargs: Tensor) -> Tensor:
        b, n = x.shape[0], x.shape[2]
        if n <= self.window:
            return self.net(x, t, **kwargs)
        starts = window_starts(n, self.window, self.stride)
        w = blend_weights(self.window).to(x.device)
        out = norm = None
        for g in range(0, len(starts), self.batch_windows):
            group = starts[g: g + self.batch_windows]
            k = len(group)
            xs = torch.cat([x[:, :, s: s + self.window] for s in group])
            kw = {name: _repeat(v, b, k) for name, v in kwargs.items()}
            ys = self.net(xs, t.repeat(k), **kw).float()
            if out is None:
                out = torch.zeros(b, ys.shape[1], n, *ys.shape[3:], device=x.device)
                norm = torch.zeros(n, device=x.device)
            for j, s in enumerate(group):
                out[:, :, s: s + self.window] += ys[j * b:(j + 1) * b] * w[:, None, None]
                norm[s: s + self.window] += w
        return (out / norm[:, None, None]).to(x.dtype)


def _repeat(v, b: int, k: int):
    if torch.is_tensor(v) and v.dim() and v.shape[0] == b:
        return v.repeat(k, *([1] * (v.dim() - 1)))
    return v


def decode_long(vqgan, codes: Tensor, n_frames: int, chunk: int | None = None, halo: int | None = None) -> Tensor:
    """Codes ``(B, t, h, w)`` -> video ``(B, C, n_frames, H, W)`` float32 (unclamped), decoded ``chunk`` latent
    frames at a time (default the VQGAN's training grid) with ``halo`` latent frames of context on each side
    (default half a chunk, at least 1); ``n_frames <= t * dt`` crops the end."""
    dt = vqgan.cfg.downsample[0]
    t = codes.shape[1]
    if n_frames > t * dt:
        raise InputError(f"decode_long: {t} latent frames make {t * dt} frames, not {n_frames}")
    chunk = chunk or vqgan.cfg.latent_shape[0]
    halo = max(1, chunk // 2) if halo is None else halo
    parts = []
    for a in range(0, t, chunk):
        b = min(a + chunk, t)
        lo, hi = max(0, a - halo), min(t, b + halo)
        video = vqgan.decode(codes[:, lo:hi])
        parts.append(video[:, :, (a - lo) * dt:(b - lo) * dt])
    return torch.cat(parts, dim=2)[:, :, :n_frames].float()

