"""What a metric tool reports for one comparison (its ``--mode`` flag): values over all
pairs or over consecutive chunks, and the JSON record written next to the results folder.

``mode="full"``: one value over all N pairs (per-video scores also give their std over videos).
``mode="size"``: consecutive chunks of ``size`` pairs in pairing (manifest) order; per-chunk values, their
mean and std (``ddof=0``, as CCVS/TA2V print them). The last chunk may be shorter; fewer pairs than
``size`` give one chunk and a warning.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from tav.metrics.folders import chunks
from tav.utils.fileio import write_json_atomic

MODES = ("full", "size")


def chunk_groups(n: int, mode: str, size: int) -> tuple[list[np.ndarray], str | None]:
    """Index groups of ``n`` pairs for ``mode`` and a warning (or ``None``)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "full":
        return [np.arange(n)], None
    groups = [np.asarray(c) for c in chunks(range(n), size)]
    warning = None
    if n < size:
        warning = f"only {n} pairs, fewer than --size {size}: one chunk of {n}; its std is 0"
    elif n % size:
        warning = f"{n} pairs are not a multiple of --size {size}: the last chunk holds {n % size}"
    return groups, warning


def _chunk_summary(values: Sequence[float], sizes: Sequence[int]) -> dict:
    vals = np.asarray(values, dtype=np.float64)
    return {"values": vals.tolist(), "chunk_sizes": list(sizes), "mean": float(vals.mean()),
            "std": float(vals.std()), "value": float(vals.mean())}


def score_summary(scores: np.ndarray, groups: Sequence[np.ndarray], keys: Sequence = (), chunked: bool = False) -> dict:
    """Per-video scores ``(N,)`` -> ``{"N", "value", "std", "std_videos", "per_video"}`` (``value``: the mean
    over videos; both stds over videos) and, with ``chunked`` (``--mode size``), the chunk fields: ``values``,
    ``chunk_sizes``, ``mean`` and ``std`` over chunks (``value`` is then the chunk mean)."""
    scores = np.asarray(scores, dtype=np.float64)
    out = {"N": len(scores), "value": float(scores.mean()), "std": float(scores.std()),
           "std_videos": float(scores.std()),
           "per_video": [{"key": k, "score": float(s)} for k, s in zip(keys, scores, strict=False)]}
    if chunked:
        out.update(_chunk_summary([scores[g].mean() for g in groups], [len(g) for g in groups]))
    return out


def frechet_summary(real: np.ndarray, fake: np.ndarray, groups: Sequence[np.ndarray],
                    distance: Callable[[np.ndarray, np.ndarray], float],
                    per_item: Callable[[np.ndarray], np.ndarray] = lambda f: f, min_items: int = 2,
                    chunked: bool = False) -> dict:
    """Fréchet distance between ``real[g]`` and ``fake[g]`` for each index group ``g``.

    ``per_item`` turns a group's features into sample rows (FID: ``(n, T, 2048) -> (n*T, 2048)``). Groups
    with fewer than ``min_items`` pairs cannot give a covariance; they are skipped and listed. ``chunked``
    (``--mode size``) adds ``values``, ``chunk_sizes``, ``mean`` and ``std`` over chunks (``value`` = mean).
    """
    if len(real) != len(fake):
        raise ValueError(f"{len(real)} real against {len(fake)} fake feature sets")
    kept = [g for g in groups if len(g) >= min_items]
    skipped = [len(g) for g in groups if len(g) < min_items]
    if not kept:
        raise ValueError(f"need at least {min_items} pairs per chunk, got chunks of {[len(g) for g in groups]}")
    values = [float(distance(per_item(real[g]), per_item(fake[g]))) for g in kept]
    out = {"N": len(real), "value": values[0]}
    if chunked:
        out.update(_chunk_summary(values, [len(g) for g in kept]))
    if skipped:
        out["skipped_chunks"] = skipped
    return out


def fold_summary(values: Sequence[float]) -> dict:
    """Mean and std (``ddof=0``) over ``--num_folds`` runs."""
    vals = np.asarray(values, dtype=np.float64)
    return {"values": vals.tolist(), "mean": float(vals.mean()), "std": float(vals.std())}


def metric_record(metric: str, protocol: str, values: Mapping[str, dict], backbone: Mapping, preprocessing: Mapping,
                  videos: Mapping, folders: Mapping, run_folder: str | os.PathLike, manifest_sha256: str | None,
                  **extra) -> dict:
    """The JSON record of one metric run: ``values`` per evaluated folder, the common
    ``N`` (a dict when the folders differ), the protocol, backbone and weight hash, preprocessing, fps and
    frame counts read from the files (``videos``: per folder ``{"fps", "frames", "resolution"}``; the top-level
    ``fps``/``frames`` are their union), the folders compared, the manifest hash and the ``tav`` version."""
    from tav import __version__

    ns = {label: v["N"] for label, v in values.items()}
    fps = sorted({f for v in videos.values() for f in v.get("fps", [])})
    frames = sorted({t for v in videos.values() for t in v.get("frames", [])})
    n = next(iter(ns.values())) if len(set(ns.values())) == 1 else ns
    return {"metric": metric, "values": dict(values), "N": n, "protocol": protocol, "backbone": dict(backbone),
            "weights_sha256": backbone.get("sha256"), "preprocessing": dict(preprocessing), "videos": dict(videos),
            "fps": fps, "frames": frames, "folders": dict(folders),
            "run_folder": str(run_folder), "manifest_sha256": manifest_sha256, "tav_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}


def write_record(path: str | os.PathLike, record: Mapping) -> None:
    """Write ``record`` as indented JSON, atomically."""
    write_json_atomic(path, record)
