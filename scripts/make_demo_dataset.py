"""Write the synthetic demo VAT dataset (sound drives picture; see ``tav.data.demo``).

    python scripts/make_demo_dataset.py --out datasets/demo_urmp [--preset urmp|landscape] \
        [--n_train 64] [--n_test 16] [--size 64] [--seed 0] [--workers 1]

Writes ``<out>/{train,test}/{mp4,audio,txt,stft_pickle}/`` and ``<out>/manifest.jsonl``; a second run
skips the clips already complete.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tav.config import list_presets
from tav.data.demo import build_demo_dataset, format_summary
from tav.errors import InputError
from tav_scripts.cli_common import command_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="dataset root to write (created; resumed if present)")
    p.add_argument("--preset", default="urmp", choices=list_presets("data"),
                   help="clip geometry: urmp = 90 frames @ 30 fps, landscape = 30 frames @ 10 fps (3 s)")
    p.add_argument("--n_train", type=int, default=64, help="clips in train/")
    p.add_argument("--n_test", type=int, default=16, help="clips in test/")
    p.add_argument("--size", type=int, default=64, help="frame height = width, pixels")
    p.add_argument("--seed", type=int, default=0, help="dataset seed; clip seeds derive from it")
    p.add_argument("--workers", type=int, default=1,
                   help="processes writing clips (the files are the same for any number)")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    args = p.parse_args(argv)
    for flag, value, low in (("--workers", args.workers, 1), ("--n_train", args.n_train, 0),
                             ("--n_test", args.n_test, 0), ("--size", args.size, 8)):
        if value < low:
            p.error(f"{flag} {value}: must be >= {low}")
    if args.n_train + args.n_test < 1:
        p.error("--n_train + --n_test must be at least 1")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        p.error(f"--out {out}: is a file, not a folder; pick another --out")
    return args


def build(argv: list[str] | None = None) -> None:
    """Parse ``argv``, write (or resume) the dataset and print its summary."""
    args = parse_args(argv)
    try:
        summary = build_demo_dataset(args.out, preset=args.preset, n_train=args.n_train, n_test=args.n_test,
                                     size=args.size, seed=args.seed, progress=args.progress,
                                     workers=args.workers)
    except OSError as e:  # the folder cannot be made or written
        raise InputError(f"--out {args.out}: cannot write the dataset there ({e.strerror or e}); pick another "
                         "--out") from e
    print(format_summary(summary))
    print(f"done in {summary.wall_s:.1f} s")


def main(argv: list[str] | None = None) -> int:
    """``build`` with bad input as one line ``make_demo_dataset: error: ...`` on stderr (exit 2)."""
    return command_main("make_demo_dataset", build, argv, result="dataset")


if __name__ == "__main__":
    sys.exit(main())
