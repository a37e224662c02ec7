"""The results folder of a sampling run, with resume (also described in ``docs/formats.md``).

Layout with TA2V's names (``naming="ta2v"``; ``<stem>`` = the clip's file stem, ``<i>`` = the sample number)::

    <root>/real/groundtruth_<stem>_<i>.mp4           the real clip (data resolution)
    <root>/fake_stage1/generation_stage1_<stem>_<i>.mp4
    <root>/fake_stage2/generation_stage2_<stem>_<i>.mp4   (earlier refinement iterations: ..._<i>_it<k>.mp4)
    <root>/audio/groundtruth_<stem>_<i>.wav          the clip's audio chunk
    <root>/txt/groundtruth_<stem>_<i>.txt            the caption
    <root>/manifest.jsonl                            one JSON line per finished sample

With TIA2V's names (``naming="tia2v"``): ``real/groundtruth_<i>.mp4``, ``fake_stage1/video_<i>.mp4`` (motion
model), ``fake_stage2/video_<i>.mp4`` (SHR), ``audio/groundtruth_<i>.wav``, ``txt/groundtruth_<i>.txt``;
``legacy_folders`` also writes upstream's ``fake1_6fps/``, ``fake1_30fps/`` and ``fake2_6fps/`` copies (at
the dataset fps: the names are kept for old scripts, the frame rates are not).

Every mp4 carries the clip's audio (AAC); frames are rounded to uint8 with clamping, at the model resolution,
with no border. The video is H.264 at crf 17 (yuv420p), or with ``lossless=True`` bit-exact RGB (``libx264rgb``
crf 0: the metrics then score the sampler's frames, not the codec's; on 32-px demo clips the lossy codec turns about
one shape in six into another; most browsers cannot play these files, the HTML report makes playable copies).
Every file is written atomically and the manifest row last (the manifest itself is rewritten
atomically), so a sample is finished exactly when it has a manifest row; a re-run skips those. A sharded run
(``set_shard``: several processes, one folder) writes each process's rows to ``manifest.shard-<i>-of-<n>.jsonl``
and merges them into ``manifest.jsonl`` under a file lock as each process finishes; readers take the union.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from tav.data.audio import write_wav
from tav.data.video import to_uint8, write_video
from tav.errors import InputError
from tav.utils.fileio import remove_stale_temps, write_jsonl_atomic, write_text_atomic

FOLDERS = ("real", "fake_stage1", "fake_stage2", "audio", "txt")
MANIFEST = "manifest.jsonl"
SHARD_GLOB = "manifest.shard-*-of-*.jsonl"  # rows of processes of a sharded run, merged when each finishes


def _read_rows(path: Path) -> dict[int, dict]:
    """The rows of one manifest file by id; a line that is not a row is a one-line ``InputError``."""
    rows: dict[int, dict] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows[int(row["id"])] = row
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{path}:{n}: not a manifest row; move the folder away or fix the line") from None
    return rows


def sample_key(stem: str, index: int) -> str:
    """``<stem>_<i>``: the part every file name of one sample shares."""
    return f"{stem}_{index}"


NAMINGS = ("ta2v", "tia2v")
LEGACY_FOLDERS = {"fake1_6fps": "fake_stage1", "fake1_30fps": "fake_stage1", "fake2_6fps": "fake_stage2"}


def sample_paths(root: str | os.PathLike, stem: str, index: int, naming: str = "ta2v") -> dict[str, Path]:
    """The five files of sample ``index`` of clip ``stem``, by folder name, in the ``naming`` scheme."""
    root, key = Path(root), sample_key(stem, index)
    if naming == "tia2v":
        return {"real": root / "real" / f"groundtruth_{index}.mp4",
                "fake_stage1": root / "fake_stage1" / f"video_{index}.mp4",
                "fake_stage2": root / "fake_stage2" / f"video_{index}.mp4",
                "audio": root / "audio" / f"groundtruth_{index}.wav",
                "txt": root / "txt" / f"groundtruth_{index}.txt"}
    if naming != "ta2v":
        raise InputError(f"results naming {naming!r}: must be one of {NAMINGS}")
    return {"real": root / "real" / f"groundtruth_{key}.mp4",
            "fake_stage1": root / "fake_stage1" / f"generation_stage1_{key}.mp4",
            "fake_stage2": root / "fake_stage2" / f"generation_stage2_{key}.mp4",
            "audio": root / "audio" / f"groundtruth_{key}.wav",
            "txt": root / "txt" / f"groundtruth_{key}.txt"}


def iteration_path(path: Path, iteration: int) -> Path:
    """Stage-2 file of an earlier refinement iteration: ``..._<i>_it<k>.mp4``."""
    return path.with_name(f"{path.stem}_it{iteration}{path.suffix}")


@dataclass
class SampleRecord:
    """One finished sample, as written: videos ``(3, T, H, W)`` in [-0.5, 0.5], audio ``(N,)`` in [-1, 1]."""

    index: int
    stem: str
    caption: str
    real: Tensor
    stage1: Tensor
    stage2: list[Tensor]  # one per refinement iteration; the last is the unsuffixed file
    audio: np.ndarray
    info: dict[str, Any]  # seed, crop start, checkpoint hashes, per-stage seconds, ...


class ResultsFolder:
    """Writes samples into ``root`` and knows which are already finished (from ``manifest.jsonl``)."""

    def __init__(self, root: str | os.PathLike, fps: float, sample_rate: int, naming: str = "ta2v",
                 legacy_folders: bool = False, stage2: bool = True, lossless: bool = False):
        self.root, self.fps, self.sample_rate, self.lossless = Path(root), fps, sample_rate, lossless
        self.naming, self.legacy_folders, self.stage2 = naming, legacy_folders, stage2  # stage2: False = none
        sample_paths(root, "x", 0, naming)  # an unknown naming fails here
        self.manifest = self.root / MANIFEST
        remove_stale_temps(self.root)  # half-written files of a killed run (a live shard's are kept)
        self.shard = (0, 1)  # (index, count): see set_shard
        self.rows = self._read_manifest()

    def _read_manifest(self) -> dict[int, dict]:
        """Rows of ``manifest.jsonl`` and of any shard manifests (``manifest.shard-<i>-of-<n>.jsonl``), by id."""
        rows: dict[int, dict] = {}
        for path in [self.manifest, *sorted(self.root.glob(SHARD_GLOB))]:
            if path.is_file():
                rows.update(_read_rows(path))
        return rows

    def set_shard(self, index: int, count: int) -> None:
        """This process writes the samples ``i`` with ``i % count == index``; its rows go to its own shard manifest
        until :meth:`finish` merges them into ``manifest.jsonl``."""
        if count < 1 or not 0 <= index < count:
            raise InputError(f"--shard {index}/{count}: need 0 <= i < n")
        self.shard = (index, count)

    @property
    def rows_file(self) -> Path:
        """Where this process writes its rows: ``manifest.jsonl``, or its shard manifest when sharded."""
        i, n = self.shard
        return self.manifest if n == 1 else self.root / f"manifest.shard-{i}-of-{n}.jsonl"

    def finish(self) -> None:
        """Sharded runs: merge every row written so far into ``manifest.jsonl`` (under a lock, atomically) and
        drop this process's shard manifest. The last shard to finish leaves the complete manifest."""
        if self.shard[1] == 1:
            return
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".manifest.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.rows = self._read_manifest()
            write_jsonl_atomic(self.manifest, [self.rows[i] for i in sorted(self.rows)])
            self.rows_file.unlink(missing_ok=True)

    def clear(self) -> int:
        """``--overwrite``: delete the finished samples of this process's shard (their files and manifest rows,
        under the manifest lock); returns how many. Other shards' samples are theirs to clear."""
        import fcntl

        i, n = self.shard
        if not self.root.is_dir():
            return 0
        with open(self.root / ".manifest.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.rows = self._read_manifest()
            mine = [k for k in self.rows if k % n == i]
            for k in mine:
                row = self.rows.pop(k)
                for rel in (row.get("files") or {}).values():
                    (self.root / rel).unlink(missing_ok=True)
            rows = [self.rows[k] for k in sorted(self.rows)]
            write_jsonl_atomic(self.manifest, rows)
            for path in self.root.glob(SHARD_GLOB):
                path.unlink()
        return len(mine)

    def is_done(self, index: int, stem: str) -> bool:
        """True when sample ``index`` has a manifest row for the same clip and all its files exist."""
        row = self.rows.get(index)
        if row is None:
            return False
        if row.get("stem") != stem:
            raise InputError(f"{self.manifest}: sample {index} was {row.get('stem')!r} but is now {stem!r}; the "
                             "test set changed since this run: use another --run or a fresh --save folder")
        return all(p.is_file() for p in self.paths(stem, index).values())

    def paths(self, stem: str, index: int) -> dict[str, Path]:
        """The files of sample ``index`` (with ``legacy_folders``, also the upstream-named copies)."""
        paths = sample_paths(self.root, stem, index, self.naming)
        if self.legacy_folders:
            for legacy, folder in LEGACY_FOLDERS.items():
                paths[legacy] = self.root / legacy / paths[folder].name
        if not self.stage2:
            paths = {k: v for k, v in paths.items() if k not in ("fake_stage2", "fake2_6fps")}
        return paths

    def write(self, rec: SampleRecord) -> dict:
        """Write every file of ``rec``, then its manifest row; returns the row."""
        paths = self.paths(rec.stem, rec.index)
        audio = np.asarray(rec.audio, dtype=np.float32).reshape(-1)
        self._video(paths["real"], rec.real, audio)
        self._video(paths["fake_stage1"], rec.stage1, audio)
        if self.stage2:
            for k, video in enumerate(rec.stage2[:-1]):
                self._video(iteration_path(paths["fake_stage2"], k), video, audio)
            self._video(paths["fake_stage2"], rec.stage2[-1], audio)
        for legacy, folder in LEGACY_FOLDERS.items():
            if legacy in paths:
                self._video(paths[legacy], rec.stage1 if folder == "fake_stage1" else rec.stage2[-1], audio)
        write_wav(paths["audio"], audio, self.sample_rate)
        write_text_atomic(paths["txt"], rec.caption + "\n")
        row = {"id": rec.index, "stem": rec.stem, "caption": rec.caption, "fps": self.fps,
               "sample_rate": self.sample_rate, "audio": str(paths["audio"].relative_to(self.root)),
               "files": {k: str(p.relative_to(self.root)) for k, p in paths.items()}, **rec.info}
        self.rows[rec.index] = row
        i, n = self.shard
        write_jsonl_atomic(self.rows_file, [self.rows[k] for k in sorted(self.rows) if k % n == i])
        return row

    def _video(self, path: Path, video: Tensor, audio: np.ndarray) -> None:
        frames = to_uint8(video.detach().float().cpu()).numpy()  # (T, H, W, 3), rounded and clamped
        write_video(path, frames, self.fps, audio=audio, sample_rate=self.sample_rate, lossless=self.lossless)
