"""Contact sheets: a grid of evenly spaced frames, one row per video, saved as PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tav.utils.fileio import atomic_path

LABEL_HEIGHT = 12  # pixels of caption strip above each row when labels are given


def frame_indices(num_frames: int, n: int) -> np.ndarray:
    """``n`` evenly spaced frame indices in ``[0, num_frames - 1]``, first and last included."""
    return np.linspace(0, num_frames - 1, n).round().astype(int)


def contact_sheet(videos: Sequence[np.ndarray], n_frames: int = 8, labels: Sequence[str] | None = None,
                  pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile ``n_frames`` evenly spaced frames of each video into one image: rows = videos, cols = frames.

    videos: uint8 ``(T, H, W, 3)`` arrays sharing ``H, W`` (``T`` may differ). Returns uint8
    ``(R * (H + pad + l) + pad, n_frames * (W + pad) + pad, 3)`` where ``R = len(videos)`` and ``l`` is
    ``LABEL_HEIGHT`` when ``labels`` (one string per video, drawn above its row) are given, else 0.
    """
    if not videos:
        raise ValueError("contact_sheet: no videos given")
    if labels is not None and len(labels) != len(videos):
        raise ValueError(f"contact_sheet: {len(labels)} labels for {len(videos)} videos")
    h, w = videos[0].shape[1:3]
    for v in videos:
        if v.dtype != np.uint8 or v.ndim != 4 or v.shape[1:] != (h, w, 3):
            raise ValueError(f"contact_sheet: every video must be uint8 (T, {h}, {w}, 3), got {v.dtype} "
                             f"{v.shape}")
    lab = LABEL_HEIGHT if labels is not None else 0
    row_h, col_w = h + pad + lab, w + pad
    sheet = np.full((len(videos) * row_h + pad, n_frames * col_w + pad, 3), pad_value, dtype=np.uint8)
    for r, v in enumerate(videos):
        top = r * row_h + pad + lab
        for c, i in enumerate(frame_indices(len(v), n_frames)):
            left = c * col_w + pad
            sheet[top : top + h, left : left + w] = v[i]
    if labels is not None:
        sheet = _draw_labels(sheet, labels, row_h, pad)
    return sheet


def _draw_labels(sheet: np.ndarray, labels: Sequence[str], row_h: int, pad: int) -> np.ndarray:
    """Write ``labels[r]`` in black into the strip above row ``r``."""
    image = Image.fromarray(sheet)
    draw = ImageDraw.Draw(image)
    for r, text in enumerate(labels):
        draw.text((pad, r * row_h + pad - 1), str(text), fill=(0, 0, 0))
    return np.asarray(image).copy()


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write uint8 ``image (H, W, 3)`` to ``path`` as PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")
    return path
