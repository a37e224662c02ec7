"""The dataset builder: raw videos with sound + captions -> the VAT clip layout (``tav.data.layout``).

Each source video is decoded once, converted to the target frame rate by nearest timestamp, resized so its
shorter side is ``size`` (aspect kept, both sides even), and cut into ``load_vid_len``-frame clips wherever
both the picture and the sound cover the whole clip. Every clip goes through ``write_clip`` into
``<out>/<split>/``; the split is chosen per source, so no source has clips in both splits.

Resuming: after a source's clips are written, a small JSON record ``<out>/.prepare/<hash>.json`` lists
them. A re-run skips every source whose record matches the current options and whose clips all exist, and
rebuilds ``<out>/manifest.jsonl`` from the records. Every file is written atomically. A source that fails
is skipped with its reason counted; the clips it had written are removed again.

Finding the sources, their captions, clip stems and splits lives in ``tav.data.sources``.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import av
import numpy as np
from tqdm import tqdm

from tav.data.audio import fit_length, read_audio, samples_per_frame, spectrogram
from tav.data.layout import SPLITS, clip_complete, clip_files, write_clip
from tav.data.sources import (
    VIDEO_EXTENSIONS,
    SourceSkipped,
    assign_splits,
    digest,
    find_videos,
    load_captions,
    resolve_caption,
    source_stems,
)
from tav.data.video import probe_video
from tav.errors import InputError
from tav.utils.fileio import check_writable, remove_stale_temps, write_jsonl_atomic, write_text_atomic

logger = logging.getLogger(__name__)

RECORD_DIR = ".prepare"
MANIFEST = "manifest.jsonl"
RECORD_VERSION = 1
# AAC encoders often end the sound a few ms before the picture; a clip whose audio falls short by at most
# this much is zero-padded instead of dropped (otherwise an exactly-3-s source could lose its last clip).
AUDIO_SLACK_S = 0.025
# Below one 16-bit quantisation step everywhere: digital silence.
SILENCE_LEVEL = 1.0 / 32768

T = TypeVar("T")


@dataclass(frozen=True)
class PrepareConfig:
    """Options of the dataset builder; ``validate`` checks them and names the offending option."""

    videos: Path  # folder searched recursively for source videos
    out: Path  # dataset root: <out>/{train,test}/..., manifest.jsonl, .prepare/
    load_vid_len: int  # frames per clip
    fps: float  # target frame rate of the clips
    captions: Path | None = None  # CSV (file,caption) or JSONL; None: <video>.txt next to each video
    size: int = 128  # shorter side of the clips in pixels (even)
    sample_rate: int = 48000  # audio rate of the clips
    test_fraction: float = 0.2  # share of source videos put in the test split
    seed: int = 0  # salt of the per-source split hash
    workers: int = 0  # 0: in-process; N: a pool of N processes
    stride: int | None = None  # frames between clip starts; None: load_vid_len (no overlap)
    progress: bool = False  # show a tqdm bar over the sources

    @property
    def clip_stride(self) -> int:
        return self.load_vid_len if self.stride is None else self.stride

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per video frame, ``sample_rate / fps`` (validated to be an integer)."""
        return samples_per_frame(self.sample_rate, self.fps, "--sample_rate", "--fps")

    @property
    def samples_per_clip(self) -> int:
        return self.load_vid_len * self.samples_per_frame

    def validate(self) -> None:
        """Raise ``InputError`` with a one-line message naming the first bad option."""
        checks = [
            (Path(self.videos).is_dir(), f"--videos {self.videos}: not a directory; give the video folder"),
            (self.captions is None or Path(self.captions).is_file(),
             f"--captions {self.captions}: no such file; give a CSV or JSONL captions file"),
            (not Path(self.out).exists() or Path(self.out).is_dir(), f"--out {self.out}: not a directory"),
            (self.load_vid_len >= 1, f"--load_vid_len must be >= 1, got {self.load_vid_len}"),
            (0 < self.fps < math.inf, f"--fps must be a number > 0, got {self.fps}"),
            (self.size >= 2 and self.size % 2 == 0, f"--size must be an even number >= 2, got {self.size}"),
            (self.sample_rate >= 1, f"--sample_rate must be >= 1, got {self.sample_rate}"),
            (0 <= self.test_fraction <= 1, f"--test_fraction must be in [0, 1], got {self.test_fraction}"),
            (self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            (self.clip_stride >= 1, f"--stride must be >= 1, got {self.stride}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        samples_per_frame(self.sample_rate, self.fps, "--sample_rate", "--fps")  # one equal chunk per frame


@dataclass
class PrepareSummary:
    """What a run did. ``clips``/``duration_s`` describe the whole dataset (the manifest)."""

    found: int = 0  # source videos found under --videos
    processed: int = 0  # sources cut into clips in this run
    skipped_done: int = 0  # sources already complete from an earlier run
    failed: dict[str, int] = field(default_factory=dict)  # reason -> sources skipped for it
    clips: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))  # split -> in manifest
    clips_written: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))  # this run
    duration_s: float = 0.0  # total duration of the clips in the manifest
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (source, reason, message)

    def add_failure(self, source: str, reason: str, message: str) -> None:
        self.failed[reason] = self.failed.get(reason, 0) + 1
        self.failures.append((source, reason, message))

    def format(self) -> str:
        """Human-readable multi-line summary (the CLI prints it)."""
        failed = ", ".join(f"{r}: {n}" for r, n in sorted(self.failed.items())) or "none"
        return "\n".join([
            f"sources found: {self.found}",
            f"processed: {self.processed}, already done: {self.skipped_done}, "
            f"failed: {sum(self.failed.values())} ({failed})",
            "clips written this run: " + ", ".join(f"{s} {n}" for s, n in self.clips_written.items()),
            "clips in dataset: " + ", ".join(f"{s} {n}" for s, n in self.clips.items())
            + f" ({self.duration_s:.1f} s)",
        ])


@dataclass(frozen=True)
class SourceJob:
    """One source video to cut, with everything a worker process needs."""

    rel: str  # path relative to --videos, POSIX separators
    path: Path
    split: str
    stem: str  # sanitised; clip stems are <stem>_<index>
    caption: str
    key: dict[str, Any]  # options + source identity; a record is current only if its key is equal
    cfg: PrepareConfig


@dataclass(frozen=True)
class SourceResult:
    rel: str
    rows: list[dict[str, Any]]  # manifest rows of the clips written; empty on failure
    reason: str | None = None  # one of sources.REASONS on failure
    message: str = ""


# ----------------------------------------------------------------------------------------- frames


MAX_OUTPUT_SIDE = 8192  # longest side of a written clip (encoders refuse far larger frames with cryptic errors)


def output_size(width: int, height: int, size: int) -> tuple[int, int]:
    """``(width, height)`` with the shorter side ``size`` and the longer one scaled alike, rounded to even."""
    if width <= height:
        return size, max(size, 2 * round(height * size / width / 2))
    return max(size, 2 * round(width * size / height / 2)), size


def nearest_frames(timed: Iterable[tuple[float, float, T]], fps: float) -> Iterator[tuple[int, T]]:
    """Resample a stream of ``(time_s, duration_s, item)`` (times increasing) to ``fps``.

    Yields ``(k, item)`` for output frames ``k = 0, 1, ...``: frame k, at ``k / fps`` after the first
    item's time, takes the item with the nearest timestamp (ties go to the later item). Output frames
    continue while ``k / fps`` is before the end of the last item (its time plus its duration).
    """
    k, eps = 0, 1e-9
    t0 = prev_t = prev_dur = prev = None
    for t, dur, item in timed:
        if t0 is None:
            t0 = t
        elif t <= prev_t:  # broken timestamps: keep order, assume one frame later
            t = prev_t + prev_dur
        if prev is not None:
            midpoint = (prev_t + t) / 2 - t0
            while k / fps < midpoint - eps:
                yield k, prev
                k += 1
        prev, prev_t, prev_dur = item, t, dur
    if prev is None:
        return
    while k / fps < prev_t + prev_dur - t0 - eps:
        yield k, prev
        k += 1


def _timed_frames(container, stream) -> Iterator[tuple[float, float, av.VideoFrame]]:
    rate = float(stream.average_rate or stream.guessed_rate or 25)
    for i, frame in enumerate(container.decode(stream)):
        t = frame.time if frame.time is not None else i / rate
        dur = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 1 / rate
        yield t, dur, frame


def _video_clips(path: Path, cfg: PrepareConfig, max_clips: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(clip_index, start_frame, frames uint8 (L, h, w, 3))`` for up to ``max_clips`` clips.

    Streams the decode so memory stays at about one clip; only frames a clip needs are resized.
    """
    length, stride = cfg.load_vid_len, cfg.clip_stride
    pending: dict[int, np.ndarray] = {}
    next_clip, n_out, last = 0, 0, (None, None)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for k, frame in nearest_frames(_timed_frames(container, stream), cfg.fps):
                n_out = k + 1
                c = min(k // stride, max_clips - 1)  # the latest clip that may contain frame k
                if c < next_clip or k >= c * stride + length:
                    continue
                if last[0] is not frame:
                    last = (frame, _to_rgb(frame, cfg.size))
                pending[k] = last[1]
                start = next_clip * stride
                if k == start + length - 1:
                    yield next_clip, start, np.stack([pending[i] for i in range(start, start + length)])
                    next_clip += 1
                    pending = {i: f for i, f in pending.items() if i >= next_clip * stride}
                    if next_clip == max_clips:
                        return
    except av.FFmpegError as e:
        raise SourceSkipped("corrupt", f"decoding failed after {n_out} output frames ({e})") from e
    if next_clip == 0:
        raise SourceSkipped("too_short", f"the video gives {n_out} frames at {cfg.fps} fps; "
                                         f"a clip needs {length}")


def _to_rgb(frame: av.VideoFrame, size: int) -> np.ndarray:
    """Decoded frame -> uint8 ``(h, w, 3)`` RGB at ``output_size`` (area filter when shrinking)."""
    w, h = output_size(frame.width, frame.height, size)
    interpolation = "AREA" if w < frame.width else "BICUBIC"
    return frame.to_ndarray(width=w, height=h, format="rgb24", interpolation=interpolation)


# ----------------------------------------------------------------------------------------- audio


def audio_clip_starts(num_samples: int, cfg: PrepareConfig) -> list[int]:
    """First audio sample of each clip the sound covers (allowing ``AUDIO_SLACK_S`` at the end).

    Clip c starts at video frame ``c * stride``, i.e. at sample ``c * stride * samples_per_frame``.
    """
    step = cfg.clip_stride * cfg.samples_per_frame
    limit = num_samples + round(AUDIO_SLACK_S * cfg.sample_rate)
    return list(range(0, max(0, limit - cfg.samples_per_clip + 1), step))


def _read_sound(path: Path, sample_rate: int) -> np.ndarray:
    """Mono float32 ``(N,)`` at ``sample_rate``; raises ``SourceSkipped`` for missing or silent sound."""
    try:
        info = probe_video(path)
    except InputError as e:
        raise SourceSkipped("corrupt", str(e)) from e
    if not info.has_audio:
        raise SourceSkipped("no_audio", "the file has no audio stream")
    try:
        wave = read_audio(path, sample_rate)
    except InputError as e:
        raise SourceSkipped("corrupt", str(e)) from e
    if not len(wave) or float(np.abs(wave).max()) < SILENCE_LEVEL:
        raise SourceSkipped("silent_audio", "the audio track is silent (all zero)")
    return wave


# ----------------------------------------------------------------------------------------- one source


def process_source(job: SourceJob) -> SourceResult:
    """Cut one source into clips and write them plus its record; never raises (errors become a result).

    Clips written before a failure are removed, so a failed source leaves nothing behind.
    """
    rows: list[dict[str, Any]] = []
    try:
        for row in _write_clips(job):
            rows.append(row)
        record = {"version": RECORD_VERSION, "source": job.rel, "key": job.key, "clips": rows}
        write_text_atomic(record_path(job.cfg.out, job.rel), json.dumps(record, sort_keys=True) + "\n")
        return SourceResult(job.rel, rows)
    except SourceSkipped as e:
        _remove_clips(job.cfg.out, rows)
        return SourceResult(job.rel, [], e.reason, str(e))
    except Exception as e:  # one bad file never aborts the run
        _remove_clips(job.cfg.out, rows)
        return SourceResult(job.rel, [], "error", f"{type(e).__name__}: {e}")


def _write_clips(job: SourceJob) -> Iterator[dict[str, Any]]:
    """Write the clips of ``job`` one by one, yielding each one's manifest row."""
    cfg = job.cfg
    wave = _read_sound(job.path, cfg.sample_rate)
    info = probe_video(job.path)
    w, h = output_size(info.width, info.height, cfg.size)
    if max(w, h) > MAX_OUTPUT_SIDE:
        raise SourceSkipped("too_elongated", f"{info.width}x{info.height}: with the shorter side at --size {cfg.size} "
                                             f"it would be {w}x{h}, over {MAX_OUTPUT_SIDE} px; crop it first")
    starts = audio_clip_starts(len(wave), cfg)
    if not starts:
        raise SourceSkipped("too_short", f"the audio lasts {len(wave) / cfg.sample_rate:.3f} s; "
                                         f"a clip needs {cfg.load_vid_len / cfg.fps:.3f} s")
    spc = cfg.samples_per_clip
    for index, start, frames in _video_clips(job.path, cfg, len(starts)):
        audio = fit_length(wave[starts[index] : starts[index] + spc], spc)  # pads at most AUDIO_SLACK_S
        stem = f"{job.stem}_{index}"
        write_clip(Path(cfg.out) / job.split, stem, frames, cfg.fps, audio, cfg.sample_rate, job.caption,
                   spectrogram(audio, cfg.load_vid_len))
        yield {
            "stem": stem, "split": job.split, "source": job.rel, "clip_index": index,
            "start_frame": start, "start_time_s": round(start / cfg.fps, 6), "frames": cfg.load_vid_len,
            "fps": cfg.fps, "sample_rate": cfg.sample_rate, "width": int(frames.shape[2]),
            "height": int(frames.shape[1]), "caption": job.caption,
        }


# ----------------------------------------------------------------------------------------- records


def record_path(out: str | Path, rel: str) -> Path:
    """Where the completion record of source ``rel`` lives."""
    return Path(out) / RECORD_DIR / f"{digest(rel)[:16]}.json"


def _read_record(out: Path, rel: str) -> dict | None:
    try:
        record = json.loads(record_path(out, rel).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("source") == rel else None


def _current_rows(out: Path, rel: str, key: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The record's rows when it matches ``key`` and all its clips exist; None otherwise."""
    record = _read_record(out, rel)
    if record is None or record.get("version") != RECORD_VERSION or record.get("key") != key:
        return None
    rows = record.get("clips") or []
    if rows and all(clip_complete(out / r["split"], r["stem"]) for r in rows):
        return rows
    return None


def _discard_record(out: Path, rel: str) -> None:
    """Remove an outdated record of ``rel`` and the clips it lists (nothing else is touched)."""
    record = _read_record(out, rel)
    if record is not None:
        _remove_clips(out, record.get("clips") or [])
    record_path(out, rel).unlink(missing_ok=True)


def _remove_clips(out: str | Path, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        files = clip_files(Path(out) / row["split"], row["stem"])
        for p in (files.txt, files.mp4, files.audio, files.stft):  # txt first: it marks a complete clip
            p.unlink(missing_ok=True)


def _record_key(job_path: Path, cfg: PrepareConfig, split: str, stem: str, caption: str) -> dict[str, Any]:
    st = job_path.stat()
    return {
        "load_vid_len": cfg.load_vid_len, "fps": cfg.fps, "size": cfg.size, "sample_rate": cfg.sample_rate,
        "stride": cfg.clip_stride, "split": split, "stem": stem, "caption": caption,
        "source_bytes": st.st_size, "source_mtime_ns": st.st_mtime_ns,
    }


# ----------------------------------------------------------------------------------------- driver


def prepare_dataset(cfg: PrepareConfig) -> PrepareSummary:
    """Build (or resume) the dataset described by ``cfg``; returns what was done.

    Raises ``InputError`` for bad options (before any work). Per-source problems are logged, counted in
    the summary and never abort the run. ``<out>/manifest.jsonl`` is written last, atomically.
    """
    cfg.validate()
    captions = load_captions(cfg.captions) if cfg.captions is not None else None
    videos = find_videos(cfg.videos, exclude=cfg.out)
    if not videos:
        raise InputError(f"--videos {cfg.videos}: no {'/'.join(VIDEO_EXTENSIONS)} files found")
    check_writable(cfg.out, "--out")  # before any source is read
    remove_stale_temps(cfg.out)  # half-written clips or records of a killed build
    summary = PrepareSummary(found=len(videos))
    jobs, rows_by_source = _plan(cfg, videos, captions, summary)
    for result in _run(jobs, cfg.workers, cfg.progress):
        if result.reason is not None:
            logger.warning("skipped %s (%s): %s", result.rel, result.reason, result.message)
            summary.add_failure(result.rel, result.reason, result.message)
            continue
        logger.info("%s: %d clips", result.rel, len(result.rows))
        summary.processed += 1
        rows_by_source[result.rel] = result.rows
        for row in result.rows:
            summary.clips_written[row["split"]] += 1
    rows = []
    for rel in sorted(rows_by_source):
        rows += sorted(rows_by_source[rel], key=lambda r: r["clip_index"])
    write_jsonl_atomic(Path(cfg.out) / MANIFEST, rows)
    for row in rows:
        summary.clips[row["split"]] += 1
        summary.duration_s += row["frames"] / row["fps"]
    _warn_orphan_records(Path(cfg.out), {p.relative_to(cfg.videos).as_posix() for p in videos})
    return summary


def _plan(cfg: PrepareConfig, videos: list[Path], captions: dict[str, str] | None,
          summary: PrepareSummary) -> tuple[list[SourceJob], dict[str, list[dict[str, Any]]]]:
    """Sort sources into done (rows from their records), failed (caption problems) and jobs to run."""
    out = Path(cfg.out)
    rels = {p: p.relative_to(cfg.videos).as_posix() for p in videos}
    splits = assign_splits(rels.values(), cfg.seed, cfg.test_fraction)
    stems = source_stems(rels.values())
    jobs, done = [], {}
    for path, rel in rels.items():
        try:
            caption = resolve_caption(rel, path, captions)
        except SourceSkipped as e:
            logger.warning("skipped %s (%s): %s", rel, e.reason, e)
            summary.add_failure(rel, e.reason, str(e))
            _discard_record(out, rel)
            continue
        key = _record_key(path, cfg, splits[rel], stems[rel], caption)
        rows = _current_rows(out, rel, key)
        if rows is not None:
            summary.skipped_done += 1
            done[rel] = rows
            continue
        _discard_record(out, rel)  # outdated or partial: its clips are rebuilt
        jobs.append(SourceJob(rel, path, splits[rel], stems[rel], caption, key, cfg))
    if done:
        logger.info("%d sources already done, skipped", len(done))
    return jobs, done


def _run(jobs: list[SourceJob], workers: int, progress: bool) -> Iterator[SourceResult]:
    """Run ``process_source`` over ``jobs`` in-process or in a spawn pool; results arrive unordered."""
    bar = partial(tqdm, total=len(jobs), disable=not progress, unit="video", desc="prepare")
    if workers == 0 or len(jobs) <= 1:
        yield from bar(map(process_source, jobs))
        return
    # spawn, not fork: forking a process that holds FFmpeg/torch threads is unsafe
    with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
        yield from bar(pool.imap_unordered(process_source, jobs))


def _warn_orphan_records(out: Path, rels: set[str]) -> None:
    known = {record_path(out, r).name for r in rels}
    orphans = [p for p in (out / RECORD_DIR).glob("*.json") if p.name not in known]
    if orphans:
        logger.warning("%d records in %s belong to sources no longer under --videos; their clips are left "
                       "in place and are not in the manifest", len(orphans), out / RECORD_DIR)
