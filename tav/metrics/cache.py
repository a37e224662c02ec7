"""On-disk cache of per-video features (the metric tools' ``--feature_cache``).

Each video's features are one ``.npy`` file named by a sha256 over: the video file's identity (its content
sha256, or ``size:mtime_ns`` with ``identity="stat"``), the protocol, the feature network's weight hash and
the preprocessing settings (resize method, size, frame count, ...). A changed file, network or setting
therefore misses, never returns stale features. Files are written atomically, so a killed run leaves only
complete entries; a second run over the same real set computes nothing for it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from tav.utils.fileio import atomic_path, file_sha256, remove_stale_temps

Compute = Callable[[list[Path]], np.ndarray]  # paths -> (len(paths), ...) features


class FeatureCache:
    """Features of video files under ``folder`` (``None``: no caching, every call computes).

    Args:
        folder: cache directory, created on first write.
        network_sha256: hash of the feature network's weight file.
        protocol: ``"tav"`` or ``"ta2v"``.
        settings: everything else that changes the features (JSON-serialisable), e.g.
            ``{"resize": "tf1", "size": 224, "frames": 16, "colour": "BGR"}``.
        identity: ``"sha256"`` (file content, default) or ``"stat"`` (size and mtime; faster on big sets).
    """

    def __init__(self, folder: str | os.PathLike | None, network_sha256: str, protocol: str,
                 settings: Mapping | None = None, identity: str = "sha256"):
        if identity not in ("sha256", "stat"):
            raise ValueError(f"identity must be 'sha256' or 'stat', got {identity!r}")
        self.folder = Path(folder) if folder is not None else None
        if self.folder is not None:
            remove_stale_temps(self.folder)  # left by a killed run; never read as features
        self.network_sha256, self.protocol, self.identity = network_sha256, protocol, identity
        self.settings = dict(settings or {})
        self.hits = 0
        self.misses = 0

    def _file_id(self, path: Path) -> str:
        if self.identity == "stat":
            st = path.stat()
            return f"{st.st_size}:{st.st_mtime_ns}"
        return file_sha256(path)

    def key(self, path: str | os.PathLike) -> str:
        """The cache key (64 hex digits) of ``path``'s features under this cache's settings."""
        blob = json.dumps({"file": self._file_id(Path(path)), "protocol": self.protocol,
                           "network": self.network_sha256, "settings": self.settings}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _entry(self, path: Path) -> Path:
        return self.folder / f"{self.key(path)}.npy"

    def features(self, paths: Sequence[str | os.PathLike], compute: Compute, chunk: int = 64) -> np.ndarray:
        """Features of ``paths`` stacked in order, ``(N, ...)``: cached entries are loaded, the rest computed by
        ``compute(missing_paths)`` in calls of at most ``chunk`` videos (bounded memory), each call's entries
        stored before the next (a killed run keeps them)."""
        paths = [Path(p) for p in paths]
        entries = [self._entry(p) for p in paths] if self.folder is not None else [None] * len(paths)
        out: list[np.ndarray | None] = [np.load(e) if e is not None and e.is_file() else None for e in entries]
        todo = [i for i, f in enumerate(out) if f is None]
        self.hits += len(paths) - len(todo)
        self.misses += len(todo)
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            fresh = np.asarray(compute([paths[i] for i in part]))
            if len(fresh) != len(part):
                raise ValueError(f"feature function returned {len(fresh)} rows for {len(part)} videos")
            for i, feats in zip(part, fresh, strict=True):
                if entries[i] is not None:
                    entries[i].parent.mkdir(parents=True, exist_ok=True)
                    with atomic_path(entries[i]) as tmp:
                        np.save(tmp, feats)
                out[i] = feats
        return np.stack(out) if out else np.zeros((0,))
