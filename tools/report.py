"""Write a static HTML report of results folders: the videos with their sound side by side, captions, seeds,
per-sample scores, the metrics table, training curves and benchmark charts. It opens from the file system (no
network, no CDN).

    python tools/report.py results/demo/17_tav_URMP --out results/demo/report
    python tools/report.py RUN_A RUN_B --runs RUN_DIR ... --bench bench_quality.json --out DIR

Several results folders give one comparison page. ``--web auto`` writes VP9/Opus WebM copies of videos browsers
cannot play (H.264 4:4:4, MPEG-4 Part 2); the originals are never changed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tav.report import build_report
from tav.report.media import WEB_MODES
from tav_tools.metric_common import run_tool

TOOL = "report.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=TOOL, description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="results folders (sample_tav.py, sample_motion_optim.py, "
                   "generate.py outputs)")
    p.add_argument("--out", type=Path, required=True, help="the report folder (index.html is written there)")
    p.add_argument("--runs", nargs="*", type=Path, default=[], help="training run folders: curves of metrics.jsonl")
    p.add_argument("--bench", nargs="*", type=Path, default=[], help="bench_quality.py JSON files: charts")
    p.add_argument("--quality", type=Path, default=None, help="a demo quality.json: the judges per stage")
    p.add_argument("--page_size", type=int, default=50, help="gallery rows per page")
    p.add_argument("--web", choices=WEB_MODES, default="auto", help="WebM copies: for videos browsers cannot play "
                   "(auto), for every video (always) or never")
    p.add_argument("--title", default=None, help="the page title")
    p.add_argument("--verbose", action="store_true", help="debug logging and third-party warnings")
    return p


def report(argv: list[str] | None = None) -> Path:
    """Build the report; prints a summary and the page's path, returns it."""
    args = build_parser().parse_args(argv)
    rep = build_report(args.results, args.out, args.runs, args.bench, args.quality, args.page_size, args.web,
                       args.title)
    for warning in rep.warnings:
        print(f"warning: {warning}")
    print(f"{rep.videos} videos shown ({rep.web_copies} as web copies), {rep.unshown} not shown, "
          f"{len(rep.pages)} gallery page(s), {len(rep.plots)} plot(s)")
    print(f"report: {rep.index.resolve()}")
    return rep.index


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 for bad input (one line on stderr)."""
    return run_tool(TOOL, report, argv)


def command_for(results: Path) -> str:
    """The one-line command that reports ``results`` (printed by the samplers and ``generate.py``)."""
    return f"python tools/report.py {results} --out {results / 'report'}"


if __name__ == "__main__":
    sys.exit(main())
