"""Training windows for the video VQGAN and the TA2V prior: one square crop per clip, drawn towards its detail.

A convolutional network is the same function on a window as on the whole frame, so it can learn from windows
and run on whole clips. Windows placed where a clip differs from its background carry more of what is hard
to reconstruct (edges, corners, small objects) per pixel trained on; the demo domain's shapes cover about 5% of a
frame. ``detail`` mixes that placement with a uniform one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tav.errors import InputError


def detail_map(video: Tensor) -> Tensor:
    """How far each pixel strays from its clip's median colour at its most distant frame.

    ``video (B, C, T, H, W)`` float -> ``(B, H, W)`` float32 >= 0: the sum over channels of the absolute difference
    from the per-clip, per-channel median, maximised over time.
    """
    x = video.detach().float()
    median = x.flatten(2).median(dim=2).values  # (B, C)
    return (x - median[:, :, None, None, None]).abs().sum(1).amax(1)


def crop_corners(video: Tensor, size: int, detail: float,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Top-left corners ``(y0, x0)``, each ``(B,)`` long, of one ``size``² window per clip of ``video (B, C, T, H, W)``.

    With probability ``detail`` the window is centred on a pixel drawn in proportion to ``detail_map`` and moved
    inside the frame if it sticks out (a clip without detail falls back to uniform); otherwise every corner is equally
    likely. Draws from ``generator``, or the global RNG of ``video``'s device (seeded per training batch by
    ``StepSeeds``).
    """
    b, _, _, h, w = video.shape
    if not 0.0 <= detail <= 1.0:
        raise InputError(f"train.crop_detail={detail}: must be in [0, 1]")
    if size < 1 or size > min(h, w):
        raise InputError(f"train.crop_size={size}: must be in [1, {min(h, w)}] for {h}x{w} clips (0 = whole frames)")
    half = size // 2
    valid = torch.zeros(h, w, device=video.device)
    valid[half: h - size + half + 1, half: w - size + half + 1] = 1.0  # centres whose window fits the frame
    probs = (valid / valid.sum()).expand(b, h, w)
    if detail > 0:
        weight = detail_map(video)  # (B, H, W)
        total = weight.sum((1, 2), keepdim=True)
        weighted = torch.where(total > 0, weight / total.clamp_min(1e-12), probs)
        probs = (1.0 - detail) * probs + detail * weighted
    centre = torch.multinomial(probs.reshape(b, -1), 1, generator=generator).squeeze(1)  # (B,) flat pixel index
    return (centre // w - half).clamp(0, h - size), (centre % w - half).clamp(0, w - size)


def detail_crops(video: Tensor, size: int, detail: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """One ``size``² window of each clip: ``(B, C, T, H, W)`` -> ``(B, C, T, size, size)``, the same values.

    Corners from ``crop_corners(video, size, detail, generator)``; all frames of a clip share its window.
    """
    y0, x0 = crop_corners(video, size, detail, generator)
    offsets = torch.arange(size, device=video.device)
    rows = (y0[:, None] + offsets)[:, :, None]  # (B, size, 1)
    cols = (x0[:, None] + offsets)[:, None, :]  # (B, 1, size)
    batch = torch.arange(video.shape[0], device=video.device)[:, None, None]
    windows = video.permute(0, 3, 4, 1, 2)[batch, rows, cols]  # (B, size, size, C, T)
    return windows.permute(0, 3, 4, 1, 2).contiguous()
