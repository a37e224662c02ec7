"""Judge videos of the synthetic demo domain by their pixels and sound: colour and shape against the caption,
motion events against the audio's onsets, height against pitch, flicker, and a Fréchet distance over the
judges' own measurements.

    python tools/synthetic_judge.py --split datasets/demo/test --json OUT.json
    python tools/synthetic_judge.py --results results/demo/17_tav_URMP --json OUT.json

``--split`` judges a dataset split (``mp4/``, ``txt/``, ``wav/`` or ``audio/``); ``--results`` every video
folder of a results folder (``real``, ``fake_stage1``, ``fake_stage2``). The table gives mean ± std and N per
folder; the JSON holds ``{"folders": {name: {"n", "colour_acc", "shape_acc", "onset_f1", "pitch_height",
"flicker", "unjudged", ...}}}``. The judges are defined in ``tav.metrics.synthetic`` and docs/metrics.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tav.errors import InputError
from tav.metrics.runs import write_record
from tav.metrics.synthetic import JUDGES
from tav.metrics.synthetic_folders import judge_folders, results_items, split_items
from tav_tools.metric_common import run_tool

TOOL = "synthetic_judge.py"
COLUMNS = (*JUDGES[:3], "onset_f1_chance", *JUDGES[3:], "av_align", "fd_judge")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--split", type=Path, help="a dataset split folder (mp4/, txt/, wav/ or audio/)")
    src.add_argument("--results", type=Path, help="a results folder (real/, fake_stage1/, fake_stage2/, ...)")
    p.add_argument("--json", type=Path, default=None,
                   help="JSON output (default: <results>/metrics_synthetic.json; none for --split)")
    p.add_argument("--progress", action="store_true", help="a bar over videos")
    p.add_argument("--verbose", action="store_true", help="debug logging and third-party warnings")
    return p


def format_table(record: dict) -> str:
    """The folders' means ± std, N and unjudged counts, one row per folder."""
    lines = [f"{'folder':<14}{'n':>4}  " + "  ".join(f"{c:>15}" for c in COLUMNS) + f"  {'unjudged':>8}"]
    for name, s in record["folders"].items():
        cells = []
        for c in COLUMNS:
            v, sd = s.get(c), s.get(f"{c}_std")
            cells.append(f"{'-':>15}" if v is None else f"{v:>7.3f} ± {sd:5.3f}" if sd is not None else f"{v:>15.3f}")
        lines.append(f"{name:<14}{s['n']:>4}  " + "  ".join(cells) + f"  {s['unjudged']:>8}")
    return "\n".join(lines)


def judge(argv: list[str] | None = None) -> dict:
    """Run the judges; prints the table and writes the JSON. Returns the record."""
    args = build_parser().parse_args(argv)
    if args.split is not None:
        items, notes = split_items(args.split)
        folders = {args.split.name: items}
    else:
        folders, notes = results_items(args.results)
    for note in notes:
        print(f"note: {note}")
    bar = None
    if args.progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(v) for v in folders.values()), desc="judging", unit="video")
    record = judge_folders(folders, progress=bar.update if bar is not None else None)
    if bar is not None:
        bar.close()
    record.update(tool=TOOL, source=str(args.split or args.results), notes=notes)
    print(format_table(record))
    for name, s in record["folders"].items():
        if s["unjudged"]:
            print(f"{name}: {s['unjudged']} clip(s) whose caption names no known colour or shape were not judged "
                  "on colour/shape")
    print(f"{record['seconds_per_video']:.3f} s per video")
    out = args.json or (args.results / "metrics_synthetic.json" if args.results is not None else None)
    if out is not None:
        if not out.parent.is_dir():
            raise InputError(f"--json {out}: the folder {out.parent} does not exist; create it or pass another path")
        write_record(out, record)
        print(f"JSON: {out}")
    return record


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 for bad input (one line on stderr)."""
    return run_tool(TOOL, judge, argv)


if __name__ == "__main__":
    sys.exit(main())
