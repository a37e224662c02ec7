"""The synthetic-domain judges (``tav.metrics.synthetic``) over folders: a dataset split or every video folder of
a results folder, with the folder summaries that ``tools/synthetic_judge.py`` prints and writes.

A dataset split is ``<split>/{mp4,txt,audio|wav}/<stem>.*``; a results folder is ``real/``, ``fake_stage1/``,
``fake_stage2/`` (or TIA2V's legacy names) with ``audio/``, ``txt/`` and ``manifest.jsonl``, paired by sample
number as the metric tools pair them. A missing audio file or caption skips the judges that need it (noted
once per folder); the others still run.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tav.data.audio import read_audio
from tav.data.layout import clip_files
from tav.data.video import read_video
from tav.errors import InputError
from tav.metrics.folders import LEGACY_FOLDERS, audio_rate, index_folder, open_run, read_caption, resolve_folder
from tav.metrics.synthetic import Judgement, fd_judge, judge_video, summarize

VIDEO_FOLDERS = ("real", "fake_stage1", "fake_stage2")


@dataclass(frozen=True)
class Item:
    """One video to judge, with its sound and caption when they exist."""

    video: Path
    audio: Path | None
    caption: str | None
    key: int | None = None  # the sample number in a results folder (per-video scores are listed by it)


def split_items(split_dir: str | os.PathLike) -> tuple[list[Item], list[str]]:
    """The clips of a dataset split (every ``mp4/<stem>.mp4``) and notes on what is missing."""
    root = Path(split_dir)
    videos = sorted((root / "mp4").glob("*.mp4")) if (root / "mp4").is_dir() else []
    if not videos:
        raise InputError(f"{root}: no mp4/<stem>.mp4 files; pass a dataset split such as datasets/demo/test")
    items = []
    for video in videos:
        files = clip_files(root, video.stem)
        caption = read_caption(files.txt) if files.txt.is_file() else []
        items.append(Item(video, files.audio if files.audio.is_file() else None, caption[0] if caption else None))
    return items, _notes(items, root.name)


def results_items(run_dir: str | os.PathLike) -> tuple[dict[str, list[Item]], list[str]]:
    """Every video folder of a results folder (``real``, ``fake_stage1``, ``fake_stage2``, or TIA2V's legacy
    names), each a list of items paired with the sample's audio and caption; and the notes."""
    run = open_run(run_dir)
    if not run.path.is_dir():
        raise InputError(f"{run.path}: no such results folder")
    audio = index_folder(run, "audio", "wav") if (run.path / "audio").is_dir() else {}
    texts = index_folder(run, "txt", "txt") if (run.path / "txt").is_dir() else {}
    out = {}
    notes = [] if run.manifest is not None else [f"{run.path.name}: no manifest.jsonl: samples are paired by file "
                                                 "name"]
    for name in VIDEO_FOLDERS:
        folder = resolve_folder(run, name)
        if not (run.path / folder).is_dir():
            continue
        items = []
        for key, video in sorted(index_folder(run, folder, "mp4").items()):
            row = run.row(key) or {}
            caption = row.get("caption") or (read_caption(texts[key])[0] if key in texts else None)
            items.append(Item(video, audio.get(key), caption, key))
        out[folder] = items
        notes += _notes(items, folder)
    if not out:
        folders = ", ".join((*VIDEO_FOLDERS, *(n for v in LEGACY_FOLDERS.values() for n in v)))
        raise InputError(f"{run.path}: no video folder ({folders}); pass a results folder written by a sampler")
    return out, notes


def _notes(items: list[Item], name: str) -> list[str]:
    """What the judges skip: a whole folder without audio or captions, or the clips that lack them."""
    notes = []
    no_audio = [i.video.name for i in items if not i.audio]
    no_caption = [i.video.name for i in items if not i.caption]
    if len(no_audio) == len(items):
        notes.append(f"{name}: no audio files: onset_f1, pitch_height and AV-Align are skipped")
    elif no_audio:
        notes.append(f"{name}: {len(no_audio)} of {len(items)} videos have no audio file (first: {no_audio[0]}): "
                     "onset_f1, pitch_height and AV-Align skip them")
    if len(no_caption) == len(items):
        notes.append(f"{name}: no captions: colour_acc and shape_acc are skipped")
    elif no_caption:
        notes.append(f"{name}: {len(no_caption)} of {len(items)} videos have no caption (a missing or empty txt; "
                     f"first: {no_caption[0]}): colour_acc and shape_acc skip them")
    return notes


def judge_item(item: Item) -> tuple[Judgement, float | None]:
    """The judges and the AV-Align IoU (None without audio) of one item."""
    from tav.metrics.av_align import align_score

    frames, fps = read_video(item.video)
    wave = rate = None
    if item.audio is not None:
        rate = audio_rate(item.audio)
        wave = read_audio(item.audio, rate)
    judgement = judge_video(frames, fps, wave, rate, item.caption)
    iou = None
    if wave is not None:
        score = align_score(frames, wave, rate, fps)
        iou = None if score.skipped else float(score.iou)
    return judgement, iou


def judge_folders(folders: dict[str, list[Item]], reference: str | None = None,
                  progress: Callable[[int], None] | None = None) -> dict:
    """``{"folders": {name: summary}, "seconds_per_video": ...}``; every folder other than ``reference``
    (``real`` when present) also gets ``fd_judge`` against it."""
    t0, count = time.perf_counter(), 0
    judged: dict[str, list[Judgement]] = {}
    summaries = {}
    for name, items in folders.items():
        pairs = []
        for item in items:
            pairs.append(judge_item(item))
            count += 1
            if progress is not None:
                progress(1)
        judged[name] = [j for j, _ in pairs]
        summary = summarize(judged[name])
        ious = [iou for _, iou in pairs if iou is not None and math.isfinite(iou)]
        summary.update(av_align=float(np.mean(ious)) if ious else None, av_align_n=len(ious))
        if any(item.key is not None for item in items):
            summary["per_video"] = [{"key": item.key, **{k: v for k, v in j.scores().items() if v is not None}}
                                    for item, (j, _) in zip(items, pairs, strict=True)]
        summaries[name] = summary
    reference = reference or ("real" if "real" in judged else None)
    for name, js in judged.items():
        if reference is not None and name != reference and len(js) > 1 and len(judged[reference]) > 1:
            summaries[name]["fd_judge"] = fd_judge(judged[reference], js)
    return {"folders": summaries, "seconds_per_video": (time.perf_counter() - t0) / max(count, 1)}
