"""Frame preparation for the metric networks: the one uint8 -> [0, 1] conversion, and bilinear resizing.

Two bilinear resizes are offered because they sample different grids:

- ``"torch"``: ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)``, half-pixel
  centres: source coordinate ``(i + 0.5) · in / out − 0.5``. The ``tav`` default, as in pytorch-fid and
  the VideoGPT/TATS FVD.
- ``"tf1"``: TF1 ``tf.image.resize_bilinear`` (``align_corners=False``, ``half_pixel_centers=False``):
  source coordinate ``i · in / out``, computed in float32 as TF does; the upper neighbour is clamped to the
  last row/column. Used by the upstream FVD/FID scripts (``--protocol ta2v``).

And clean-fid's antialiased resize for FID (``resize_clean``, ``--resize_mode clean``): PIL bicubic on each
channel as a float image (Parmar et al. 2022, "On Aliased Resizing and Surprising Subtleties in GAN
Evaluation").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

RESIZE_MODES = ("torch", "tf1")
FID_RESIZE_MODES = ("torch", "tf1", "clean")  # clean: resize_clean (PIL bicubic, antialiased), FID only


def to_unit_float(frames: np.ndarray | Tensor, device: torch.device | str | None = None) -> Tensor:
    """uint8 frames in {0..255} -> float32 in [0, 1]; float frames must already be in [0, 1] (checked).

    The only place the metric code converts pixel values. Any shape.
    ``device``: where to put the result (moved before the conversion, so uint8 crosses the bus); default:
    where ``frames`` are (CPU for numpy).
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if device is not None:
        x = x.to(device)
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise ValueError(f"frames must be uint8 or float in [0, 1], got dtype {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        raise ValueError(f"float frames must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}] "
                         "(pass uint8 frames, or divide by 255)")
    return x.float()


def _tf1_axis(in_size: int, out_size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Lower/upper source indices and the interpolation weight of the upper one, TF1 legacy grid.

    Source: TF ``resize_bilinear_op.cc`` ``compute_interpolation_weights`` with ``LegacyScaler``
    (``in = out_index · (in_size / out_size)`` in float32).
    """
    scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
    src = torch.arange(out_size, dtype=torch.float32) * scale
    lower = src.floor()
    frac = src - lower
    lower = lower.long()
    upper = (lower + 1).clamp(max=in_size - 1)
    return lower.to(device), upper.to(device), frac.to(device)


def _resize_tf1(x: Tensor, out_h: int, out_w: int) -> Tensor:
    """TF1 ``resize_bilinear`` of ``x (N, C, H, W)``: lerp along W first, then along H, as TF does."""
    top_i, bot_i, y_frac = _tf1_axis(x.shape[-2], out_h, x.device)
    left_i, right_i, x_frac = _tf1_axis(x.shape[-1], out_w, x.device)
    left, right = x.index_select(-1, left_i), x.index_select(-1, right_i)  # (N, C, H, out_w)
    rows = left + (right - left) * x_frac.to(x.dtype)
    top, bottom = rows.index_select(-2, top_i), rows.index_select(-2, bot_i)  # (N, C, out_h, out_w)
    return top + (bottom - top) * y_frac.to(x.dtype)[:, None]


def resize_bilinear(x: Tensor, size: int | tuple[int, int], mode: str = "torch") -> Tensor:
    """Bilinear resize of ``x (N, C, H, W)`` float to ``size`` (``S`` or ``(H', W')``); no antialiasing.

    ``mode``: ``"torch"`` (half-pixel centres) or ``"tf1"`` (TF1 legacy grid); see the module docstring.
    Returns ``(N, C, H', W')`` in ``x``'s dtype; ``x`` itself when it already has that size.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"resize_bilinear expects float (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    out_h, out_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if x.shape[-2:] == (out_h, out_w):
        return x  # both grids are the identity at equal size
    if mode == "torch":
        return F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=False)
    return _resize_tf1(x, out_h, out_w)


def resize_clean(frames: np.ndarray | Tensor, size: int) -> Tensor:
    """clean-fid's resize of ``frames (N, H, W, 3)`` (uint8, or float in [0, 1]) to ``(N, 3, size, size)``
    float32 in [0, 1]: every channel as a 32-bit float PIL image in [0, 255], PIL bicubic (antialiased when
    shrinking), clipped to [0, 255]. Runs on the CPU (PIL)."""
    from PIL import Image

    arr = frames.detach().cpu().numpy() if isinstance(frames, Tensor) else np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"resize_clean expects (N, H, W, 3) frames, got {arr.shape}")
    arr = arr.astype(np.float32) * (1.0 if arr.dtype == np.uint8 else 255.0)
    out = np.empty((arr.shape[0], 3, size, size), dtype=np.float32)
    for n in range(arr.shape[0]):
        for c in range(3):
            img = Image.fromarray(arr[n, :, :, c], mode="F").resize((size, size), resample=Image.BICUBIC)
            out[n, c] = np.asarray(img)
    return torch.from_numpy(out.clip(0.0, 255.0) / 255.0)
