"""Reading a sampling run's results folder for the metric tools.

Layout (``tav.pipelines.results``)::

    <results_root>/<exp_tag>/{real,fake_stage1,fake_stage2,audio,txt}/<prefix>_<stem>_<i>.<ext>
    <results_root>/<exp_tag>/manifest.jsonl       rows with ``id`` (= ``<i>``), ``stem``, ``caption``, ``files``

TIA2V runs (``<results_root>/<run>_tacm_<dataset>/``) use the same sub-folders, with ``real/groundtruth_<i>.mp4``,
``fake_stage{1,2}/video_<i>.mp4`` and ``audio/groundtruth_<i>.wav``; upstream's folder names ``fake1_6fps``,
``fake1_30fps`` (stage 1) and ``fake2_6fps`` (stage 2) stand in for ``fake_stage1``/``fake_stage2`` when those are
absent (``resolve_folder``).

Pairing (protocol ``tav``): by the manifest ``id``, a row's file being ``files[<folder>]`` when the manifest
lists that folder, else the file of the folder whose name ends in ``_<id>``; without a manifest, by that
``_<i>`` suffix alone. A missing partner is an ``InputError`` naming the file. Protocol ``ta2v``: upstream's
``sorted(glob(<folder>/*))[i]`` pairing. Refinement-iteration files (``..._it<k>.mp4``) are never samples.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tav.data.video import probe_video, read_video
from tav.errors import InputError
from tav.utils.fileio import file_sha256

MANIFEST = "manifest.jsonl"
_INDEX = re.compile(r"_(\d+)$")  # the sample number at the end of a file stem (not "_it<k>")
PROTOCOLS = ("tav", "ta2v")


def find_run(root: str | os.PathLike, exp_tag: str) -> Path:
    """``<root>/<exp_tag>`` if it is a folder, else the single folder ``<root>/*<exp_tag>``.

    Raises ``InputError`` when none or several match, listing the candidates.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--results_root {root}: no such folder; pass the folder holding the run folders")
    exact = root / exp_tag
    if exact.is_dir():
        return exact
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    matches = [name for name in folders if name.endswith(exp_tag)]
    if len(matches) == 1:
        return root / matches[0]
    if matches:
        raise InputError(f"--exp_tag {exp_tag}: {len(matches)} folders under {root} end with it "
                         f"({', '.join(matches)}); give the full folder name")
    listing = ", ".join(folders) if folders else "none"
    raise InputError(f"--exp_tag {exp_tag}: no folder {exact} and none under {root} ends with it; "
                     f"candidates: {listing}")


@dataclass(frozen=True)
class RunFolder:
    """A results folder and its manifest rows (``None`` without ``manifest.jsonl``)."""

    path: Path
    manifest: tuple[dict, ...] | None = None
    manifest_sha256: str | None = None
    by_id: dict[int, dict] = field(default_factory=dict, repr=False)

    def row(self, key: int) -> dict | None:
        """The manifest row of sample ``key`` (``None`` without one)."""
        return self.by_id.get(key)


def open_run(path: str | os.PathLike) -> RunFolder:
    """Read ``<path>/manifest.jsonl`` if present (rows in file order); a bad line is a one-line ``InputError``."""
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        return RunFolder(path)
    rows = []
    for n, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            int(row["id"])
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{manifest}:{n}: not a manifest row (needs an integer 'id'); fix or remove the "
                             "line") from None
        rows.append(row)
    return RunFolder(path, tuple(rows), file_sha256(manifest), {int(r["id"]): r for r in rows})


# TIA2V's upstream sampler writes these names (``--legacy_folders`` in ``tav``); tried in order.
LEGACY_FOLDERS = {"fake_stage1": ("fake1_6fps", "fake1_30fps"), "fake_stage2": ("fake2_6fps",)}
FAKE_FOLDERS = ("fake_stage2", "fake_stage1", "fake")  # default generated-video folder, best first


def resolve_folder(run: RunFolder, folder: str) -> str:
    """``folder`` if ``<run>/<folder>`` exists, else its first existing TIA2V legacy name (``LEGACY_FOLDERS``),
    else ``folder`` unchanged (reading it then reports it missing)."""
    if (run.path / folder).is_dir():
        return folder
    return next((alt for alt in LEGACY_FOLDERS.get(folder, ()) if (run.path / alt).is_dir()), folder)


def subfolders(run: RunFolder) -> list[str]:
    """The names of the folders inside the run folder (for error messages)."""
    if not run.path.is_dir():
        return []
    return sorted(p.name for p in run.path.iterdir() if p.is_dir() and not p.name.startswith("."))


def default_fake_folder(run: RunFolder) -> str:
    """The generated-video folder to evaluate when none is given: the first of ``FAKE_FOLDERS`` present (legacy
    TIA2V names included), so stage 2 when the run has it."""
    for name in FAKE_FOLDERS:
        folder = resolve_folder(run, name)
        if (run.path / folder).is_dir():
            return folder
    raise InputError(f"{run.path}: no generated-video folder ({', '.join(FAKE_FOLDERS)} or "
                     f"{', '.join(n for v in LEGACY_FOLDERS.values() for n in v)}); folders there: "
                     f"{', '.join(subfolders(run)) or 'none'}; pass --video_folder")


def _folder_files(run: RunFolder, folder: str, ext: str) -> list[Path]:
    where = run.path / resolve_folder(run, folder)
    if not where.is_dir():
        raise InputError(f"{where}: no such folder; check the folder flag (e.g. --video_folder) and --exp_tag "
                         f"(folders there: {', '.join(subfolders(run)) or 'none'})")
    return sorted(p for p in where.glob(f"*.{ext}")  # hidden files (a writer's temp files) are never samples
                  if not p.name.startswith(".") and not re.search(r"_it\d+$", p.stem))


def index_folder(run: RunFolder, folder: str, ext: str) -> dict[int, Path]:
    """Sample number -> file of ``<run>/<folder>/*.<ext>``, from the ``_<i>`` suffix of each file name.

    Files whose name does not end in ``_<i>`` are not samples and are left out; two files with one number
    are an error naming both.
    """
    index: dict[int, Path] = {}
    for path in _folder_files(run, folder, ext):
        m = _INDEX.search(path.stem)
        if m is None:
            continue
        key = int(m.group(1))
        if key in index:
            raise InputError(f"{path} and {index[key]} both end in _{key}; keep one file per sample")
        index[key] = path
    return index


@dataclass(frozen=True)
class Source:
    """One side of a comparison: ``folder`` (e.g. ``fake_stage2``) of ``run``, files ending in ``ext``."""

    run: RunFolder
    folder: str
    ext: str = "mp4"


@dataclass
class Pair:
    """One sample: its key (manifest id or ``_<i>`` suffix), a file per source label, and its caption."""

    key: int
    files: dict[str, Path] = field(default_factory=dict)
    caption: str | None = None


def _keys(primary: RunFolder, indexes: Mapping[str, dict[int, Path]]) -> list[int]:
    if primary.manifest is not None:
        return [int(r["id"]) for r in primary.manifest]
    return sorted(set().union(*(set(ix) for ix in indexes.values())))


def _file_for(src: Source, index: dict[int, Path], key: int) -> Path | None:
    row, folder = src.run.row(key), resolve_folder(src.run, src.folder)
    if row is not None and folder in row.get("files", {}):
        return src.run.path / row["files"][folder]
    return index.get(key)


def _missing(label: str, src: Source, key: int, partners: Mapping[str, Path | None]) -> InputError:
    row, folder = src.run.row(key), resolve_folder(src.run, src.folder)
    if row is not None and folder in row.get("files", {}):
        return InputError(f"{src.run.path / row['files'][folder]}: missing (manifest id {key}); "
                          "re-run the sampler to finish the sample or drop its manifest row")
    partner = next((p for p in partners.values() if p is not None and p.is_file()), None)
    what = f" to pair with {partner}" if partner is not None else ""
    return InputError(f"{src.run.path / folder}: no file ending in _{key}.{src.ext}{what} ({label})")


def pair_sources(sources: Mapping[str, Source], protocol: str = "tav") -> list[Pair]:
    """Pair the files of several folders sample by sample; the first source's run gives the order.

    ``protocol="tav"``: by manifest id / ``_<i>`` suffix (module docstring); ``"ta2v"``: upstream's sorted
    order, where differing file counts are an error naming the first unpaired file.
    """
    if protocol not in PROTOCOLS:
        raise InputError(f"--protocol {protocol}: choose one of {', '.join(PROTOCOLS)}")
    labels = list(sources)
    if protocol == "ta2v":
        return _pair_sorted(sources)
    indexes = {label: index_folder(src.run, src.folder, src.ext) for label, src in sources.items()}
    primary = sources[labels[0]].run
    pairs = []
    for key in _keys(primary, indexes):
        files = {label: _file_for(src, indexes[label], key) for label, src in sources.items()}
        for label, path in files.items():
            if path is None or not path.is_file():
                raise _missing(label, sources[label], key, files)
        row = primary.row(key)
        pairs.append(Pair(key, dict(files), row.get("caption") if row is not None else None))
    if not pairs:
        raise InputError(f"{primary.path}: no samples to evaluate in {', '.join(s.folder for s in sources.values())}")
    return pairs


def _pair_sorted(sources: Mapping[str, Source]) -> list[Pair]:
    lists = {label: _folder_files(src.run, src.folder, src.ext) for label, src in sources.items()}
    n = min(len(v) for v in lists.values())
    short = min(lists, key=lambda k: len(lists[k]))
    for files in lists.values():
        if len(files) > n:
            raise InputError(f"{files[n]}: has no partner in {sources[short].run.path / sources[short].folder}/ "
                             f"({len(files)} files against {n}; upstream pairs by sorted order)")
    if n == 0:
        raise InputError(f"no files to evaluate in {', '.join(str(s.run.path / s.folder) for s in sources.values())}")
    return [Pair(i, {label: files[i] for label, files in lists.items()}) for i in range(n)]


def read_caption(path: str | os.PathLike) -> list[str]:
    """The non-empty lines of a caption file; one that is not UTF-8 text is a one-line ``InputError``."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: caption is not UTF-8 text ({e.reason} at byte {e.start}); re-save it as UTF-8 or "
                         "remove it") from None
    return [ln for ln in (x.strip() for x in text.splitlines()) if ln]


def drop_remainder(pairs: Sequence[Pair], batch_size: int) -> list[Pair]:
    """Upstream's ``len // batch_size`` batches: the first ``batch_size * (N // batch_size)`` pairs."""
    if batch_size < 1:
        raise InputError(f"--batch_size {batch_size}: must be at least 1")
    return list(pairs[: len(pairs) // batch_size * batch_size])


def chunks(items: Sequence, size: int) -> list[list]:
    """Consecutive chunks of ``size`` (the last may be shorter); ``[]`` for no items."""
    if size < 1:
        raise InputError(f"--size {size}: must be at least 1")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


@dataclass(frozen=True)
class VideoMeta:
    """What the metric JSON records about a set of video files."""

    fps: list[float]
    frames: list[int]
    sizes: list[tuple[int, int]]  # (height, width)

    def summary(self) -> dict:
        return {"fps": sorted(set(self.fps)), "frames": sorted(set(self.frames)),
                "resolution": sorted({f"{h}x{w}" for h, w in self.sizes})}


def probe_videos(paths: Sequence[Path]) -> VideoMeta:
    """fps, frame count and size of each file, from the container (no decoding)."""
    infos = [probe_video(p) for p in paths]
    return VideoMeta([i.fps for i in infos], [i.frames for i in infos], [(i.height, i.width) for i in infos])


def area_resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``(T, H, W, 3)`` -> uint8 ``(T, h, w, 3)`` by area averaging (upstream's ``--resize h w`` uses
    ``cv2.INTER_AREA``; the two agree exactly for integer shrink factors), rounded back to uint8."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).double()
    y = F.interpolate(x, size=tuple(size), mode="area")
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def load_videos(paths: Sequence[Path], n_frames: int | None = None,
                resize: tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``paths`` into one uint8 ``(N, T, H, W, 3)`` RGB array.

    ``n_frames``: keep the first ``n_frames`` of each video (a file with fewer is an error); ``None``: every
    frame, and all files must hold the same number. Files of another size than the first are an error.
    ``resize``: ``(h, w)`` area pre-resize of every frame (``--resize``).
    """
    clips = []
    for path in paths:
        frames, _ = read_video(path)
        if n_frames is not None:
            if len(frames) < n_frames:
                raise InputError(f"{path}: {len(frames)} frames, fewer than the {n_frames} to evaluate "
                                 "(--sequence_length)")
            frames = frames[:n_frames]
        if resize is not None:
            frames = area_resize(frames, resize)
        if clips and frames.shape != clips[0].shape:
            raise InputError(f"{path}: frames {frames.shape[:3]} (T, H, W) but {paths[0]} has "
                             f"{clips[0].shape[:3]}; every video of a set must have the same frame count and size")
        clips.append(frames)
    return np.stack(clips) if clips else np.zeros((0, 0, 0, 0, 3), np.uint8)


def audio_rate(path: str | os.PathLike) -> int:
    """The sample rate of the first audio stream of ``path`` (a wav's true rate)."""
    import av

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such audio file")
    try:
        with av.open(str(path)) as c:
            if not c.streams.audio:
                raise InputError(f"{path}: has no audio stream")
            return int(c.streams.audio[0].rate)
    except av.FFmpegError as e:
        raise InputError(f"{path}: cannot open ({e}); the file is corrupt or truncated") from e


def protocol_colour(videos: np.ndarray, protocol: str) -> np.ndarray:
    """``(..., 3)`` RGB frames in the protocol's channel order: RGB for ``tav``, BGR for ``ta2v`` (upstream
    decodes with OpenCV and never converts)."""
    if protocol not in PROTOCOLS:
        raise InputError(f"--protocol {protocol}: choose one of {', '.join(PROTOCOLS)}")
    return np.ascontiguousarray(videos[..., ::-1]) if protocol == "ta2v" else videos
