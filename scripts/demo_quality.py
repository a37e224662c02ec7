"""The demo's quality record: the judges of ``tools/synthetic_judge.py`` per stage, in ``<out>/quality.json``.

Stages add their entry with ``record_quality`` as they finish (the file is rewritten atomically each time, under
a lock, since the demo's two training lanes write it from two processes, and entries of stages not run this time
are kept); ``scripts/demo.py`` ends with ``quality_lines``, a table of
every entry. Keys: ``vqgan_recon`` (``psnr`` + judges of the reconstructions), ``stage1`` and ``stage2`` (the
TA2V results' ``fake_stage1`` / ``fake_stage2``), ``tia2v_motion`` and ``tia2v_shr`` (+ ``frame0_psnr``), and
``real`` (the same test clips, for reference). Each entry's judge values are folder means; ``n`` counts videos.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from tav.metrics.synthetic import judge_video, summarize
from tav.utils.fileio import dumps_strict, write_text_atomic

QUALITY_FILE = "quality.json"
PSNR_CAP = 100.0  # dB given to an exact copy in means
COLUMNS = ("psnr", "frame0_psnr", "colour_acc", "shape_acc", "colour_frame_acc", "onset_f1", "onset_f1_chance",
           "pitch_height", "flicker")
LABELS = {"onset_f1_chance": "chance"}  # column headings other than the key's first 9 characters
ORDER = ("real", "vqgan_recon", "stage1", "stage2", "tia2v_motion", "tia2v_shr")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays of one shape (peak 255); identical arrays give ``inf``."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(255.0**2 / mse))


def judge_clips(videos: Sequence[np.ndarray], rows: Sequence[dict], waves: Sequence[np.ndarray | None]) -> dict:
    """The judges' folder summary of uint8 ``(T, H, W, 3)`` videos with their manifest rows (caption, fps,
    sample_rate) and mono waves (None: no audio judges)."""
    return summarize([judge_video(v, r["fps"], w, r["sample_rate"] if w is not None else None, r["caption"])
                      for v, r, w in zip(videos, rows, waves, strict=True)])


def _plain(value):
    """JSON-safe: non-finite floats become strings ("inf"), numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else str(float(value))
    return value


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder/.quality.lock`` while the block runs (no lock on Windows)."""
    if os.name == "nt":  # no fcntl; the demo runs its lanes one after another there (--lanes 1)
        yield
        return
    import fcntl

    with open(folder / ".quality.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def record_quality(out: Path, stage: str, values: dict) -> Path:
    """Merge ``{stage: values}`` into ``<out>/quality.json`` (atomic rewrite, read and written under a lock);
    returns its path."""
    path = Path(out) / QUALITY_FILE
    with _locked(Path(out)):
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        data[stage] = _plain(values)
        ordered = {k: data[k] for k in (*ORDER, *sorted(set(data) - set(ORDER))) if k in data}
        write_text_atomic(path, dumps_strict(ordered, indent=1) + "\n")
    return path


def _cell(value) -> str:
    if value is None:
        return f"{'-':>9}"
    if isinstance(value, str):
        return f"{value:>9}"
    return f"{value:>9.3f}" if abs(value) < 10 else f"{value:>9.1f}"


def quality_lines(out: Path) -> list[str]:
    """The table of ``<out>/quality.json``: one row per stage, the judges as columns (empty if no file)."""
    path = Path(out) / QUALITY_FILE
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    head = f"{'stage':<14}{'n':>4}" + "".join(f"{LABELS.get(c, c)[:9]:>10}" for c in COLUMNS)
    lines = [f"judges per stage ({path}):", head]
    for stage, values in data.items():
        lines.append(f"{stage:<14}{values.get('n', 0):>4}" + "".join(" " + _cell(values.get(c)) for c in COLUMNS))
    return lines


def record_results(out: Path, folder: Path, stages: dict[str, str], judged: dict | None = None) -> dict:
    """Judge a results folder (``tools/synthetic_judge.py --results``) and record its video folders as stages:
    ``stages`` maps a video folder (``fake_stage1``) to a quality key (``stage1``). Returns the judges' record
    and keeps it in ``judged[str(folder)]`` when given (the metrics stage then reuses it)."""
    from tav.metrics.synthetic_folders import judge_folders, results_items

    items, _ = results_items(folder)
    record = judge_folders(items)
    if judged is not None:
        judged[str(folder)] = record
    for name, key in stages.items():
        if name in record["folders"]:
            summary = {k: v for k, v in record["folders"][name].items() if k != "per_video"}
            record_quality(out, key, summary)
    return record


def first_frame_psnr(folder: Path, fake: str = "fake_stage1") -> float:
    """Mean PSNR (dB) of frame 0 of every ``fake`` video against frame 0 of its ``real`` video (the given
    image) over a results folder's manifest; an exact copy counts as ``PSNR_CAP`` dB; videos of another size are
    skipped (NaN if none is left)."""
    from tav.data.video import read_video

    values = []
    for line in (Path(folder) / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        files = json.loads(line)["files"]
        real, _ = read_video(Path(folder) / files["real"], 0, 1)
        made, _ = read_video(Path(folder) / files[fake], 0, 1)
        if real.shape == made.shape:
            values.append(min(psnr(made[0], real[0]), PSNR_CAP))
    return float(np.mean(values)) if values else float("nan")
