"""The report's charts, drawn with matplotlib (Agg) as SVG with fixed ids, so the same data gives the same bytes:

- training curves of a run folder's ``metrics.jsonl`` (one panel per group: losses, codebook perplexity,
  learning rate, the rest), against the step;
- the tables of a ``bench_quality.py`` JSON (``{"judges": [...], "tables": {table: {setting: {judge: [mean,
  ci95], "s_per_video": s}}}}``): a bar chart per table (mean ± 95% CI per judge) and, for tables that time
  their settings (steps against quality), each judge against seconds per video.
"""

from __future__ import annotations

import math
from pathlib import Path

from tav.report.sources import read_jsonl

SKIP_KEYS = {"step", "time", "epoch"}
GROUPS = (("losses", ("loss",)), ("codebook perplexity", ("perplexity",)), ("learning rate", ("lr", "learning_rate")))
BAR_JUDGES = ("colour_acc", "shape_acc", "onset_f1")  # in [0, 1]; flicker and pitch are on other scales


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "tav-report", "svg.fonttype": "none", "font.size": 9})
    return plt


def _save(fig, path: Path) -> Path:
    from tav.utils.fileio import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="svg", metadata={"Date": None})
    _pyplot().close(fig)
    return path


def _group(key: str) -> str:
    name = key.rsplit("/", 1)[-1].lower()
    for group, parts in GROUPS:
        if any(p == name or name.endswith(p) or p in name.split("_") for p in parts):
            return group
    return "other"


def curve_series(rows: list[dict]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """``{group: {key: (steps, values)}}`` of every finite numeric key of the rows (``step`` on the x axis;
    rows without a step use their line number)."""
    out: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for n, row in enumerate(rows):
        step = row.get("step")
        x = float(step) if isinstance(step, (int, float)) else float(n)
        for key, value in row.items():
            if key in SKIP_KEYS or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if not math.isfinite(value):
                continue
            xs, ys = out.setdefault(_group(key), {}).setdefault(key, ([], []))
            xs.append(x)
            ys.append(float(value))
    return {g: out[g] for g in (*(name for name, _ in GROUPS), "other") if g in out}


def training_curves(metrics_jsonl: Path, out: Path, title: str) -> tuple[Path | None, list[str]]:
    """Draw the run's curves into ``out`` (SVG). Returns the file (``None`` with nothing to draw) and notes."""
    rows, bad = read_jsonl(metrics_jsonl)
    notes = [f"{metrics_jsonl}: {bad} line(s) are not JSON objects and were skipped"] if bad else []
    series = curve_series(rows)
    if not series:
        return None, [*notes, f"{metrics_jsonl}: no numeric values to plot"]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(3.6 * len(series), 2.8), squeeze=False,
                             layout="constrained")
    for ax, (group, curves) in zip(axes[0], series.items(), strict=True):
        for key, (xs, ys) in sorted(curves.items()):
            ax.plot(xs, ys, label=key, linewidth=1)
        positive = all(v > 0 for _, ys in curves.values() for v in ys)
        if group in ("losses",) and positive:
            ax.set_yscale("log")
        ax.set_title(group)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, out), notes


def bench_tables(record: dict) -> dict[str, dict[str, dict]]:
    """The ``tables`` of a ``bench_quality.py`` record (``{}`` when the JSON is of another kind)."""
    tables = record.get("tables")
    if not isinstance(tables, dict):
        return {}
    return {name: rows for name, rows in tables.items()
            if isinstance(rows, dict) and all(isinstance(r, dict) for r in rows.values())}


def _mean_ci(row: dict, judge: str) -> tuple[float, float] | None:
    value = row.get(judge)
    if not isinstance(value, (list, tuple)) or not value or value[0] is None:
        return None
    return float(value[0]), float(value[1] or 0.0) if len(value) > 1 else 0.0


def bench_bars(name: str, rows: dict[str, dict], out: Path) -> Path | None:
    """Bars of the judges in [0, 1] per setting, with 95% CI whiskers (``None``: no such judge)."""
    judges = [j for j in BAR_JUDGES if any(_mean_ci(r, j) for r in rows.values())]
    if not judges:
        return None
    plt = _pyplot()
    labels = list(rows)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(labels) + 1.5), 3.0), layout="constrained")
    width = 0.8 / len(judges)
    for j, judge in enumerate(judges):
        cells = [_mean_ci(rows[label], judge) or (math.nan, 0.0) for label in labels]
        xs = [i + (j - (len(judges) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, [c[0] for c in cells], width, yerr=[c[1] for c in cells], capsize=2, label=judge)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{name} (mean ± 95% CI)")
    ax.legend(fontsize=7)
    return _save(fig, out)


def bench_tradeoff(name: str, rows: dict[str, dict], out: Path) -> Path | None:
    """Each judge in [0, 1] against seconds per video, one labelled point per timed setting (``None``: fewer
    than two timed settings)."""
    timed = {k: r for k, r in rows.items() if isinstance(r.get("s_per_video"), (int, float))}
    judges = [j for j in BAR_JUDGES if any(_mean_ci(r, j) for r in timed.values())]
    if len(timed) < 2 or not judges:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(judges), figsize=(3.4 * len(judges), 2.8), squeeze=False,
                             layout="constrained")
    for ax, judge in zip(axes[0], judges, strict=True):
        for label, row in timed.items():
            cell = _mean_ci(row, judge)
            if cell is None:
                continue
            ax.errorbar([row["s_per_video"]], [cell[0]], yerr=[cell[1]], fmt="o", capsize=2, markersize=3)
            ax.annotate(label, (row["s_per_video"], cell[0]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("seconds per video")
        ax.set_title(judge)
        ax.set_ylim(0, 1.05)
    fig.suptitle(f"{name}: quality against time")
    return _save(fig, out)
