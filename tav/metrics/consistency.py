"""First-frame consistency (FFC) and temporal consistency (TC) of TIA2V, on CLIP ViT-B/32
frame embeddings ``e_t`` (unit norm):

- FFC = mean over ``t = 1 … T−1`` of ``100 · cos(e_t, e_0)``;
- TC  = mean over ``t = 0 … T−2`` of ``100 · cos(e_t, e_{t+1})``;

per video; the caller reports mean ± std over videos. Both reward static videos: report them next to FVD or a
motion statistic.

Frame embeddings come from ``tav.metrics.clip_score.image_features`` (frames of several videos share each
forward pass; nothing is dropped): protocol ``"tav"`` feeds RGB in [0, 1] with CLIP's own preprocessing (bicubic
short side to 224, centre crop, mean/std normalisation); ``"ta2v"`` reproduces upstream (BGR/255, plain bilinear
resize to 224, no normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from tav.encoders.base import Encoder
from tav.metrics.clip_score import image_features

METRICS = ("first_frame_consistency", "temporal_consistency")


def _check(feats: np.ndarray) -> np.ndarray:
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 3 or feats.shape[1] < 2:
        raise ValueError(f"frame embeddings must be (N, T, D) with T >= 2, got {feats.shape}")
    return feats / np.linalg.norm(feats, axis=-1, keepdims=True).clip(min=1e-12)


def first_frame_consistency(feats: np.ndarray) -> np.ndarray:
    """``(N, T, D)`` frame embeddings -> ``(N,)`` float64: mean over ``t ≥ 1`` of ``100 · cos(e_t, e_0)``."""
    e = _check(feats)
    return 100.0 * np.einsum("ntd,nd->nt", e[:, 1:], e[:, 0]).mean(axis=1)


def temporal_consistency(feats: np.ndarray) -> np.ndarray:
    """``(N, T, D)`` frame embeddings -> ``(N,)`` float64: mean over ``t ≤ T−2`` of ``100 · cos(e_t, e_{t+1})``."""
    e = _check(feats)
    return 100.0 * (e[:, :-1] * e[:, 1:]).sum(-1).mean(axis=1)


SCORERS = {"first_frame_consistency": first_frame_consistency, "temporal_consistency": temporal_consistency}


def frame_embeddings(encoder: Encoder, videos: np.ndarray | Tensor, protocol: str = "tav",
                     frames_per_batch: int = 64) -> np.ndarray:
    """Unit-norm CLIP embeddings ``(N, T, D)`` float64 of uint8 RGB ``videos (N, T, H, W, 3)``, in forward
    passes of ``frames_per_batch`` frames taken across videos."""
    return image_features(encoder, videos, protocol, frames_per_batch)


@dataclass(frozen=True)
class ConsistencyScores:
    """Per-video FFC and TC, each ``(N,)`` float64 on the ×100 cosine scale."""

    first_frame: np.ndarray
    temporal: np.ndarray


def consistency_scores(encoder: Encoder, videos: np.ndarray | Tensor, protocol: str = "tav",
                       frames_per_batch: int = 64) -> ConsistencyScores:
    """FFC and TC per video of uint8 RGB ``videos (N, T, H, W, 3)``, ``T ≥ 2``."""
    feats = frame_embeddings(encoder, videos, protocol, frames_per_batch)
    return ConsistencyScores(first_frame_consistency(feats), temporal_consistency(feats))
