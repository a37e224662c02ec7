"""Build a static HTML report of one or more results folders (``tools/report.py``)::

    <out>/index.html       header (settings, checkpoints), warnings, metrics, quality table, plots, gallery page 1
    <out>/page-<k>.html    further gallery pages
    <out>/media/<n>-<folder name>/<video folder>/<file>   the videos (hard links or copies; web copies as .webm)
    <out>/plots/*.svg      training curves and benchmark charts

Several results folders make one comparison page: their metric values side by side (a column group per
folder) and, per sample number, the real clip once and every folder's generated videos in one row.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tav.errors import InputError
from tav.report import plots
from tav.report.media import for_page
from tav.report.page import Cell, Raw, Row, esc, fmt, table, write_pages
from tav.report.sources import MetricRecord, ResultsSource, metric_name, read_results

JUDGE_KEYS = ("colour_acc", "shape_acc", "colour_frame_acc", "onset_f1", "onset_f1_chance", "pitch_height", "flicker",
              "av_align", "fd_judge")


@dataclass
class Report:
    """What was written: the pages, plots, counts of videos shown and not shown, and every warning."""

    index: Path
    pages: list[Path]
    plots: list[Path] = field(default_factory=list)
    videos: int = 0
    unshown: int = 0
    web_copies: int = 0
    warnings: list[str] = field(default_factory=list)


def build_report(results: Sequence[str | os.PathLike], out: str | os.PathLike, runs: Sequence[str | os.PathLike] = (),
                 bench: Sequence[str | os.PathLike] = (), quality: str | os.PathLike | None = None,
                 page_size: int = 50, web: str = "auto", title: str | None = None) -> Report:
    """Write the report of ``results`` (results folders) into ``out``; see the module docstring."""
    if page_size < 1:
        raise InputError(f"--page_size {page_size}: must be at least 1")
    if not results:
        raise InputError("no results folder given; pass one or more folders written by a sampler")
    sources = [read_results(p) for p in results]
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise InputError(f"--out {out}: cannot write there ({err.strerror}); pick a writable folder") from None
    warnings = [w for s in sources for w in s.warnings]
    warnings += [f"{m.path}: {m.reason}; shown apart" for s in sources for m in s.metrics if not m.same_run]
    rows, counts = gallery_rows(sources, out, web)
    warnings += counts.pop("notes")
    svgs, plot_html, notes = draw_plots(out, runs, bench)
    warnings += notes
    top = [header_html(sources), warnings_html(warnings), "<h2>Metrics</h2>", metrics_html(sources)]
    if quality is not None:
        top.append(quality_html(Path(quality)))
    title = title or "tav report: " + ", ".join(s.name for s in sources)
    pages = write_pages(out, title, top, rows, page_size, bottom=plot_html)
    return Report(pages[0], pages, svgs, counts["shown"], counts["unshown"], counts["web"], warnings)


# ------------------------------------------------------------------------------------------------ gallery
def gallery_rows(sources: list[ResultsSource], out: Path, web: str) -> tuple[list[Row], dict]:
    """One ``Row`` per sample key over all sources: the real clip from the first source that has one, then each
    source's other videos. Videos are checked and placed under ``out/media``."""
    keys: list = []
    for s in sources:
        keys += [x.key for x in s.samples if x.key not in keys]
    counts = {"shown": 0, "unshown": 0, "web": 0, "notes": []}
    rows = []
    for key in keys:
        cells, scores, caption, seed, stems = [], [], None, None, {}
        for n, s in enumerate(sources):
            sample = next((x for x in s.samples if x.key == key), None)
            if sample is None:
                continue
            if sample.stem is not None:
                stems[s.name] = sample.stem
            caption = caption if caption is not None else sample.caption
            seed = seed if seed is not None else sample.seed
            for folder, label in s.roles:
                if folder == "real" and any(c.label == "real" for c in cells):
                    continue
                shown = label if len(sources) == 1 or folder == "real" else f"{s.name}: {label}"
                media = out / "media" / f"{n}-{s.name}" / folder
                cell = _cell(sample.videos.get(folder), media, out, shown, web, counts)
                cells.append(cell)
                if sample.scores.get(folder):
                    scores.append((shown, sample.scores[folder]))
        if len(set(stems.values())) > 1:
            counts["notes"].append(f"sample {key} is a different clip per folder ({stems}); its row mixes them")
        playable = [c for c in cells if c.src is not None]
        if playable:
            playable[0].muted = False  # the row's sound; the others follow its clock muted
        rows.append(Row(str(key), caption, seed, cells, scores))
    return rows, counts


def _cell(path: Path | None, media: Path, out: Path, label: str, web: str, counts: dict) -> Cell:
    if path is None:
        counts["unshown"] += 1
        return Cell(label, None, "no file for this sample")
    checked, placed = for_page(path, media, path.stem, web)
    if placed is None:
        counts["unshown"] += 1
        counts["notes"].append(f"{path}: {checked.reason}")
        return Cell(label, None, f"{path.name}: {checked.reason}")
    counts["shown"] += 1
    counts["web"] += placed.suffix == ".webm" and path.suffix.lower() != ".webm"
    return Cell(label, placed.relative_to(out).as_posix(), duration=checked.duration)


# ------------------------------------------------------------------------------------------------ header
def header_html(sources: list[ResultsSource]) -> str:
    parts = [f"<p>written {esc(time.strftime('%Y-%m-%d %H:%M'))} by tools/report.py</p>"]
    for s in sources:
        parts.append(f"<h2>{esc(s.name)}</h2><p>{esc(s.path)} · {esc(s.kind.upper())} · "
                     f"{len(s.samples)} samples</p>")
        header = dict(s.header)
        varies = header.pop("varies", [])
        if header:
            parts.append(table(["setting", "value"], [[k, _setting(v)] for k, v in header.items()], "settings"))
        if varies:
            parts.append(f"<p>differs between samples: {esc(', '.join(varies))}</p>")
    return "\n".join(parts)


def _setting(value: object) -> object:
    return value if isinstance(value, (int, float, str)) or value is None else json.dumps(value, sort_keys=True)


def warnings_html(warnings: list[str]) -> str:
    if not warnings:
        return ""
    return "<h2>Warnings</h2>" + "".join(f'<div class="warn">{esc(w)}</div>' for w in warnings)


# ------------------------------------------------------------------------------------------------ metrics
def metric_rows(m: MetricRecord) -> list[tuple[str, str, dict]]:
    """``(metric, video folder, {"value", "std", "N"})`` rows of one record (the judges: one row per judge)."""
    name = metric_name(m)
    rows = []
    for folder, v in (m.record.get("values") or {}).items():
        if isinstance(v, dict) and "value" in v:
            rows.append((name, folder, {"value": v.get("mean", v["value"]), "std": v.get("std"), "N": v.get("N")}))
    for folder, v in (m.record.get("folders") or {}).items():
        for judge in JUDGE_KEYS:
            if isinstance(v, dict) and v.get(judge) is not None:
                rows.append((judge, folder, {"value": v[judge], "std": v.get(f"{judge}_std"), "N": v.get("n")}))
    return rows


def metrics_html(sources: list[ResultsSource]) -> str:
    """The table of every record of these runs (a value/std/N column group per results folder), a note row per
    record with random weights, then records of other runs apart."""
    cells: dict[tuple[str, str], dict[int, dict]] = {}
    info: dict[tuple[str, str], MetricRecord] = {}
    apart = []
    for n, s in enumerate(sources):
        for m in s.metrics:
            if not m.same_run:
                apart.append(m)
                continue
            for metric, folder, values in metric_rows(m):
                cells.setdefault((metric, folder), {})[n] = values
                info.setdefault((metric, folder), m)
    if not cells and not apart:
        return "<p>no metrics_*.json in the results folder (run the metric tools first)</p>"
    names = [s.name for s in sources]
    head = ["metric", "videos", *(f"{p}{' ' + nm if len(names) > 1 else ''}" for nm in names
                                  for p in ("value", "± std", "N")), "protocol", "backbone", "weights sha256"]
    body, randoms = [], set()
    for (metric, folder), by_source in cells.items():
        m = info[(metric, folder)]
        backbone = m.record.get("backbone") or {}
        values = [x for n in range(len(sources)) for x in _triple(by_source.get(n))]
        body.append([metric, folder, *values, m.record.get("protocol"), backbone.get("name"),
                     (backbone.get("sha256") or "")[:12] or None])
        if backbone.get("random_weights") and metric_name(m) not in randoms:
            randoms.add(metric_name(m))
            body.append([Raw(f'<b>{esc(metric_name(m))}: the {esc(backbone.get("name"))} weights are seeded random '
                             "values; these numbers do not measure quality</b>")])
    html = [table(head, body, "metrics")]
    if apart:
        html.append("<h3>Records of another run (shown apart)</h3>")
        for m in apart:
            html.append(f'<div class="warn">{esc(m.path)}: {esc(m.reason)}</div>')
            rows = [[metric, folder, *_triple(v)] for metric, folder, v in metric_rows(m)]
            if rows:
                html.append(table(["metric", "videos", "value", "± std", "N"], rows, "metrics-apart apart"))
    return "\n".join(html)


def _triple(values: dict | None) -> list[object]:
    if values is None:
        return [None, None, None]
    return [values.get("value"), values.get("std"), values.get("N")]


def quality_html(path: Path) -> str:
    """The demo's ``quality.json`` (stage -> judges) as a table."""
    if not path.is_file():
        raise InputError(f"--quality {path}: no such file; pass the demo's results/demo/quality.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise InputError(f"--quality {path}: not JSON ({err})") from None
    columns = ("n", "psnr", "frame0_psnr", *JUDGE_KEYS[:-2])
    rows = [[stage, *(v.get(c) if isinstance(v.get(c), (int, float)) else None for c in columns)]
            for stage, v in data.items() if isinstance(v, dict)]
    return f"<h2>Judges per stage ({esc(path.name)})</h2>" + table(["stage", *columns], rows, "quality")


# ------------------------------------------------------------------------------------------------ plots
def draw_plots(out: Path, runs: Sequence[str | os.PathLike], bench: Sequence[str | os.PathLike]
               ) -> tuple[list[Path], list[str], list[str]]:
    """Training curves per run folder and charts per benchmark file; returns (files, html, notes)."""
    files, html, notes = [], [], []
    for k, run in enumerate(map(Path, runs)):
        jsonl = run / "metrics.jsonl" if run.is_dir() else run
        if not jsonl.is_file():
            raise InputError(f"--runs {run}: no metrics.jsonl there; pass a training run folder")
        svg, more = plots.training_curves(jsonl, out / "plots" / f"run-{k}-{run.name}.svg", f"training: {run.name}")
        notes += more
        if svg is not None:
            files.append(svg)
    for k, path in enumerate(map(Path, bench)):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise InputError(f"--bench {path}: cannot read it as JSON ({err})") from None
        tables = plots.bench_tables(record)
        if not tables:
            notes.append(f"--bench {path}: no bench_quality.py tables in it; not drawn")
        for name, rows in tables.items():
            for kind, draw in (("bars", plots.bench_bars), ("time", plots.bench_tradeoff)):
                svg = draw(name, rows, out / "plots" / f"bench-{k}-{name}-{kind}.svg")
                if svg is not None:
                    files.append(svg)
    if files:
        html.append("<h2>Plots</h2>")
        html += [f'<p><img class="plot" src="{esc(f.relative_to(out).as_posix())}" alt="{esc(f.stem)}"></p>'
                 for f in files]
    return files, html, notes


__all__ = ["Report", "build_report", "fmt"]
