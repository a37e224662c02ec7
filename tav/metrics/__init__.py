"""Metric computations (FVD, FID, ...): pure functions over frames and features; the ``tools/`` CLIs call them.

``frechet_distance`` (numpy/scipy only) is imported eagerly. The feature networks (``I3D``,
``FIDInception``) and their loaders pull in torchvision, so they are imported on first use:
``tav.metrics.load_i3d`` works, but ``import tav.metrics`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from tav.metrics.frechet import frechet_distance, frechet_from_stats, frechet_scipy, frechet_stats

_LAZY = {
    "I3D": "tav.metrics.i3d",
    "load_i3d": "tav.metrics.i3d",
    "i3d_features": "tav.metrics.i3d",
    "save_tiny_i3d": "tav.metrics.i3d",
    "FIDInception": "tav.metrics.inception",
    "load_inception": "tav.metrics.inception",
    "inception_features": "tav.metrics.inception",
    "save_tiny_inception": "tav.metrics.inception",
    "resize_bilinear": "tav.metrics.resize",
}

__all__ = ["frechet_distance", "frechet_from_stats", "frechet_scipy", "frechet_stats", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tav.metrics' has no attribute {name!r}")
