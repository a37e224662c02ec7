"""What a report shows, read from disk: results folders (samples, settings, metric records), training runs
(``metrics.jsonl``) and benchmark JSON files.

Two kinds of folder are results folders:

- a sampler's (``sample_tav.py``, ``sample_motion_optim.py``; ``tav.pipelines.results``): ``real/``,
  ``fake_stage1/``, ``fake_stage2/`` (or upstream TIA2V's ``fake1_*``/``fake2_*``), ``audio/``, ``txt/`` and
  ``manifest.jsonl``; samples are paired by manifest ``id`` or the ``_<i>`` file-name suffix;
- ``generate.py``'s: ``<name>.mp4`` files, each with its sidecar ``<name>.json``; a sample per video.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tav.errors import InputError
from tav.metrics.folders import RunFolder, index_folder, open_run, resolve_folder

# (folder, label) per naming; the first is the reference (the real clip)
ROLES = {"ta2v": (("real", "real"), ("fake_stage1", "stage 1"), ("fake_stage2", "stage 2")),
         "tia2v": (("real", "real"), ("fake_stage1", "motion"), ("fake_stage2", "SHR")),
         "generated": (("generated", "generated"),)}
SETTINGS_SHOWN = ("checkpoints", "settings")  # manifest-row entries summarised in the header
GENERATED_SHOWN = ("method", "fps", "size", "silent")  # sidecar entries shown beside its settings


@dataclass
class Sample:
    """One row of the gallery: the clip's videos by folder (a path that may be missing), its caption and seed,
    and per-folder scores ``{folder: {score name: value}}`` gathered from the metric records."""

    key: int | str
    caption: str | None
    seed: int | None
    videos: dict[str, Path]
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    stem: str | None = None  # the test clip (manifest ``stem``)


@dataclass
class MetricRecord:
    """One ``metrics_*.json`` file: ``values`` per evaluated folder, and whether it belongs to this run."""

    path: Path
    record: dict
    same_run: bool
    reason: str | None = None  # why it is shown apart


@dataclass
class ResultsSource:
    """A results folder as the report sees it."""

    path: Path
    name: str
    kind: str  # "ta2v", "tia2v" or "generated"
    samples: list[Sample]
    header: dict[str, Any]  # settings common to every sample; "varies" lists the keys that differ
    metrics: list[MetricRecord]
    warnings: list[str]

    @property
    def roles(self) -> tuple[tuple[str, str], ...]:
        return ROLES[self.kind]


def read_results(path: str | os.PathLike) -> ResultsSource:
    """Read a results folder; a folder that is neither kind is a one-line ``InputError`` naming what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: no such folder; pass a results folder written by sample_tav.py, "
                         "sample_motion_optim.py or generate.py")
    run = open_run(path)  # the manifest is read once
    if any((path / resolve_folder(run, f)).is_dir() for f in ("real", "fake_stage1", "fake_stage2")):
        return _read_sampler_folder(run)
    sidecars = sorted(p for p in path.glob("*.json") if p.with_suffix(".mp4").is_file())
    if sidecars:
        return _read_generated_folder(path, sidecars)
    raise InputError(f"{path}: not a results folder: no real/, fake_stage1/ or fake_stage2/ folder and no "
                     "<name>.mp4 with its <name>.json; pass a folder written by sample_tav.py, "
                     "sample_motion_optim.py or generate.py")


def _kind(run: RunFolder, rows: list[dict]) -> str:
    """TIA2V when its file names (``video_<i>.mp4``) are used, TA2V otherwise."""
    names = [r.get("files", {}).get("fake_stage1", "") for r in rows]
    if not rows:
        stage1 = run.path / resolve_folder(run, "fake_stage1")
        names = [p.name for p in stage1.glob("*.mp4")] if stage1.is_dir() else []
    return "tia2v" if any(Path(n).name.startswith("video_") for n in names) else "ta2v"


def _read_sampler_folder(run: RunFolder) -> ResultsSource:
    path = run.path
    rows = list(run.manifest or ())
    kind = _kind(run, rows)
    warnings = [] if run.manifest is not None else [f"{path}: no manifest.jsonl: samples paired by file name; "
                                                    "captions from txt/, no seeds or settings"]
    indexes = {}
    for folder, _ in ROLES[kind]:
        where = resolve_folder(run, folder)
        indexes[folder] = index_folder(run, folder, "mp4") if (path / where).is_dir() else {}
    texts = index_folder(run, "txt", "txt") if (path / "txt").is_dir() else {}
    keys = sorted(set(run.by_id) | {k for index in indexes.values() for k in index})
    samples = []
    for key in keys:
        row = run.row(key) or {}
        videos = {}
        for folder, _ in ROLES[kind]:
            listed = row.get("files", {}).get(folder)
            videos[folder] = path / listed if listed else indexes[folder].get(key, path / folder / f"?_{key}.mp4")
        caption = row.get("caption")
        if caption is None and key in texts:
            caption = texts[key].read_text(encoding="utf-8", errors="replace").strip()
        samples.append(Sample(key, caption, row.get("seed"), videos, stem=row.get("stem")))
    metrics = read_metric_records(path, run.manifest_sha256)
    attach_scores(samples, metrics)
    return ResultsSource(path, path.name, kind, samples, common_settings(rows), metrics, warnings)


def _read_generated_folder(path: Path, sidecars: list[Path]) -> ResultsSource:
    samples, rows, warnings = [], [], []
    for sidecar in sidecars:
        try:
            row = json.loads(sidecar.read_text(encoding="utf-8"))
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as err:
            warnings.append(f"{sidecar}: not a generate.py sidecar ({err}); its video is shown without settings")
            row = {}
        settings = {k: row[k] for k in GENERATED_SHOWN if k in row}
        rows.append({"checkpoints": row.get("checkpoints"), "settings": {**settings, **(row.get("settings") or {})}})
        samples.append(Sample(sidecar.stem, row.get("caption"), row.get("seed"),
                              {"generated": sidecar.with_suffix(".mp4")}))
    return ResultsSource(path, path.name, "generated", samples, common_settings(rows), [], warnings)


def common_settings(rows: list[dict]) -> dict[str, Any]:
    """The ``checkpoints`` and ``settings`` entries of the manifest rows, flattened to ``{"settings.x": v}``; a
    key whose value differs between rows is listed under ``"varies"`` instead."""
    flat: list[dict[str, Any]] = []
    for row in rows:
        entry = {}
        for section in SETTINGS_SHOWN:
            for k, v in (row.get(section) or {}).items():
                entry[f"{section}.{k}"] = v
        flat.append(entry)
    keys = sorted({k for f in flat for k in f})
    common, varies = {}, []
    for k in keys:
        values = {json.dumps(f.get(k), sort_keys=True) for f in flat}
        if len(values) == 1:
            common[k] = flat[0].get(k)
        else:
            varies.append(k)
    if varies:
        common["varies"] = varies
    return common


def read_metric_records(path: Path, manifest_sha256: str | None) -> list[MetricRecord]:
    """Every ``metrics_*.json`` in ``path``; a record naming another manifest (or another folder) is kept but
    marked as not of this run, and an unreadable one becomes a record with the reason."""
    out = []
    for file in sorted(path.glob("metrics_*.json")):
        try:
            record = json.loads(file.read_text(encoding="utf-8"), parse_constant=lambda c: float(c))
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as err:
            out.append(MetricRecord(file, {}, False, f"unreadable ({err})"))
            continue
        reason = None
        recorded = record.get("manifest_sha256")
        if recorded and manifest_sha256 and recorded != manifest_sha256:
            reason = "written for another manifest.jsonl (a different run or a re-run since)"
        elif record.get("run_folder") and Path(record["run_folder"]).name != path.name:
            reason = f"written for the folder {record['run_folder']}"
        out.append(MetricRecord(file, record, reason is None, reason))
    return out


def metric_name(m: MetricRecord) -> str:
    """``clip_audio``, ``fvd``, ``synthetic``...: the record's ``metric`` or the file name's tail."""
    return str(m.record.get("metric") or m.path.stem.removeprefix("metrics_"))


def per_video_scores(m: MetricRecord) -> dict[str, dict[int, dict[str, float]]]:
    """``{folder: {sample key: {score name: value}}}`` from a record's per-video lists (CLIP scores:
    ``values[folder]["per_video"]``; the judges: ``folders[folder]["per_video"]``)."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    name = metric_name(m)
    for section in ("values", "folders"):
        for folder, summary in (m.record.get(section) or {}).items():
            for entry in (summary.get("per_video") or []) if isinstance(summary, dict) else []:
                key = entry.get("key")
                scores = {k: v for k, v in entry.items() if k != "key" and _is_number(v)}
                if "score" in scores:
                    scores = {name: scores["score"]}
                out.setdefault(folder, {}).setdefault(key, {}).update(scores)
    return out


def attach_scores(samples: list[Sample], metrics: list[MetricRecord]) -> None:
    """Copy each record's per-video scores onto the samples of this run (records of other runs are skipped)."""
    by_key = {s.key: s for s in samples}
    for m in metrics:
        if not m.same_run:
            continue
        for folder, scores in per_video_scores(m).items():
            for key, values in scores.items():
                sample = by_key.get(key)
                if sample is not None:
                    sample.scores.setdefault(folder, {}).update(values)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """Rows of a ``metrics.jsonl``; lines that are not JSON objects are counted, not fatal (a run killed
    mid-write leaves a partial last line)."""
    rows, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, bad
