"""The TA2V stage-2 guidance loss terms, as pure functions of embeddings and frames.

Every term returns one value per sample, shape ``(B,)``; the guided sampler sums ``λ · term`` over the
batch, so each sample's gradient is its own (samples never interact). Embeddings passed in are
L2-normalised along the last axis (``normalize``).

- ``audio_loss``: mean over frames of ``1 - cos(frame_t, audio_t)`` (AudioCLIP: one audio window per frame);
  with ``V`` augmented views per frame (wav2clip mode) the mean also runs over the views.
- ``direction_loss``: mean over consecutive pairs of ``1 - cos(I_{t+1} - I_t, A_{t+1} - A_t)``: the change of
  the picture should point the way the sound changes ("semantic change consistency").
- ``text_loss``: mean over frames of ``1 - cos(frame_t, caption)``.
- ``range_loss``: squared excess of the predicted clean video outside ``[lo, hi]``, averaged over
  (C, T, H) and summed over W (upstream's reduction); tav's data range is [-0.5, 0.5] (upstream: [-1, 1]).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def normalize(x: Tensor) -> Tensor:
    """L2-normalise along the last axis (computed in float32)."""
    return F.normalize(x.float(), dim=-1)


def audio_loss(frames: Tensor, audio: Tensor) -> Tensor:
    """``frames (B, T, D)`` or ``(B, T, V, D)`` (V views), ``audio (B, T, D)``, unit vectors -> ``(B,)``."""
    if frames.dim() == 4:
        cos = (frames * audio[:, :, None]).sum(-1)  # (B, T, V)
    else:
        cos = (frames * audio).sum(-1)  # (B, T)
    return (1 - cos).flatten(1).mean(1)


def direction_loss(frames: Tensor, audio: Tensor) -> Tensor:
    """``frames (B, T, D)``, ``audio (B, T, D)`` unit vectors, T >= 2 -> ``(B,)``: the mean over the T-1
    consecutive pairs of ``1 - cos(ΔI, ΔA)`` (the cosine renormalises the differences)."""
    if frames.shape[1] < 2:
        raise ValueError(f"direction loss needs at least 2 frames, got {frames.shape[1]}")
    d_img, d_aud = frames.diff(dim=1), audio.diff(dim=1)
    return (1 - F.cosine_similarity(d_img, d_aud, dim=-1, eps=1e-8)).mean(1)


def text_loss(frames: Tensor, text: Tensor) -> Tensor:
    """``frames (B, T, D)``, ``text (B, D)`` unit vectors -> ``(B,)`` mean over frames of ``1 - cos``."""
    return (1 - (frames * text[:, None]).sum(-1)).mean(1)


def range_loss(x: Tensor, lo: float = -0.5, hi: float = 0.5) -> Tensor:
    """``x (B, C, T, H, W)`` -> ``(B,)``: ``((x - clamp(x, lo, hi))²)`` averaged over C, T, H, summed over W."""
    excess = (x - x.clamp(lo, hi)).float() ** 2
    return excess.mean(dim=(1, 2, 3)).sum(-1)


# ------------------------------------------------------------------------------------------- augmentation
def _homographies(n: int, generator: torch.Generator, degrees: float, translate: float, distortion: float,
                  p: float) -> Tensor:
    """``(n, 3, 3)`` random maps in normalised [-1, 1] coordinates: an affine (rotation ±degrees,
    translation ±translate of the size) and a perspective warp (each corner moves inward by up to distortion x
    half the size), each applied with probability ``p`` (the parameters of upstream's kornia RandomAffine and
    RandomPerspective)."""
    u = torch.rand(n, 13, generator=generator)
    h = torch.eye(3).repeat(n, 1, 1)
    use_affine, use_persp = u[:, 0] < p, u[:, 1] < p
    angle = (u[:, 2] * 2 - 1) * math.radians(degrees)
    tx, ty = (u[:, 3] * 2 - 1) * translate * 2, (u[:, 4] * 2 - 1) * translate * 2  # fraction of the [-1,1] span
    affine = torch.eye(3).repeat(n, 1, 1)
    affine[:, 0, 0], affine[:, 0, 1], affine[:, 0, 2] = angle.cos(), -angle.sin(), tx
    affine[:, 1, 0], affine[:, 1, 1], affine[:, 1, 2] = angle.sin(), angle.cos(), ty
    h = torch.where(use_affine[:, None, None], affine, h)
    src = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]).repeat(n, 1, 1)
    dst = src - src.sign() * u[:, 5:13].view(n, 4, 2) * distortion
    persp = torch.stack([_fit_homography(s, d) for s, d in zip(src, dst, strict=True)])
    return torch.where(use_persp[:, None, None], persp @ h, h)


def _fit_homography(src: Tensor, dst: Tensor) -> Tensor:
    """The 3x3 homography mapping 4 points ``src (4, 2)`` to ``dst (4, 2)`` (direct linear transform)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src.tolist(), dst.tolist(), strict=True):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        rhs += [u, v]
    sol = torch.linalg.solve(torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64))
    return torch.cat([sol, sol.new_ones(1)]).view(3, 3).float()


def augmented_views(images: Tensor, n_views: int, generator: torch.Generator, *, degrees: float = 15.0,
                    translate: float = 0.1, distortion: float = 0.7, p: float = 0.7) -> Tensor:
    """``images (N, 3, H, W)`` -> ``(N, n_views, 3, H, W)``: view 0 is the image itself, the others are random
    affine + perspective warps with border padding (differentiable w.r.t. ``images``; the random parameters
    come from ``generator``, so a seeded run is reproducible)."""
    n = images.shape[0]
    if n_views <= 1:
        return images[:, None]
    maps = _homographies(n * (n_views - 1), generator, degrees, translate, distortion, p).to(images.device)
    inv = torch.linalg.inv(maps)  # output pixel -> input pixel
    h, w = images.shape[-2:]
    ys, xs = torch.linspace(-1, 1, h, device=images.device), torch.linspace(-1, 1, w, device=images.device)
    grid = torch.stack([*torch.meshgrid(xs, ys, indexing="xy"), torch.ones(h, w, device=images.device)], -1)
    src = torch.einsum("nij,hwj->nhwi", inv, grid)
    src = src[..., :2] / src[..., 2:].clamp(min=1e-6)
    repeated = images.repeat_interleave(n_views - 1, dim=0)
    warped = F.grid_sample(repeated, src.to(images.dtype), mode="bilinear", padding_mode="border",
                           align_corners=True)
    return torch.cat([images[:, None], warped.view(n, n_views - 1, *images.shape[1:])], dim=1)
