"""Build a VAT dataset (``<out>/{train,test}/{mp4,audio,txt,stft_pickle}``) from raw videos with sound.

    python tools/prepare_dataset.py --videos raw/ --captions captions.csv --out datasets/mine \
        --load_vid_len 30 --fps 10 [--size 128] [--sample_rate 48000] [--workers 4]

Re-running resumes: sources already cut are skipped. See ``tav.data.prepare`` for the details.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from tav.data.prepare import MANIFEST, PrepareConfig, prepare_dataset
from tav.errors import InputError
from tav.utils.console import configure_output


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=Path, required=True, help="folder of source videos (searched recursively)")
    p.add_argument("--captions", type=Path, default=None,
                   help="CSV (file,caption) or JSONL captions; default: <video>.txt next to each video")
    p.add_argument("--out", type=Path, required=True, help="dataset root to write")
    p.add_argument("--load_vid_len", type=int, required=True, help="frames per clip")
    p.add_argument("--fps", type=float, required=True, help="frame rate of the clips")
    p.add_argument("--size", type=int, default=128, help="shorter side of the clips in pixels (even)")
    p.add_argument("--sample_rate", type=int, default=48000, help="audio rate of the clips")
    p.add_argument("--test_fraction", type=float, default=0.2, help="share of source videos in test/")
    p.add_argument("--seed", type=int, default=0, help="salt of the per-source train/test split")
    p.add_argument("--workers", type=int, default=0, help="processes (0: run in this process)")
    p.add_argument("--stride", type=int, default=None,
                   help="frames between clip starts (default: --load_vid_len, no overlap)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="debug logging and third-party warnings")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_output(args.verbose)
    cfg = PrepareConfig(
        videos=args.videos, out=args.out, load_vid_len=args.load_vid_len, fps=args.fps,
        captions=args.captions, size=args.size, sample_rate=args.sample_rate,
        test_fraction=args.test_fraction, seed=args.seed, workers=args.workers, stride=args.stride,
        progress=not args.no_progress,
    )
    try:
        with logging_redirect_tqdm():  # log lines print above the progress bar, not through it
            summary = prepare_dataset(cfg)
    except InputError as e:
        print(f"prepare_dataset: error: {e}", file=sys.stderr)
        return 2
    print(summary.format())
    if not any(summary.clips.values()):  # every source failed: leave no empty dataset behind
        (Path(args.out) / MANIFEST).unlink(missing_ok=True)
        print(f"prepare_dataset: error: no clip in {args.out}: all {summary.found} source videos failed; fix or "
              "remove them (the warnings above say why)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
