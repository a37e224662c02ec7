"""Temporal consistency of a results folder: per video, the mean over t ≤ T−2 of
``100 · cos(e_t, e_{t+1})`` with CLIP ViT-B/32 frame embeddings; then mean ± std over videos.

    python tools/tia2v/temporal_consistency.py --exp_tag tacm_URMP --video_folder fake_stage2

Flags, folder defaults and ``--protocol ta2v`` as ``first_frame_consistency.py`` (which holds the shared code).
Writes ``<run>/metrics_temporal_consistency.json``.
"""

from __future__ import annotations

import argparse
import sys

from tav_tools.tia2v import first_frame_consistency as ffc

TOOL = "temporal_consistency.py"
NAME = "temporal_consistency"


def build_parser() -> argparse.ArgumentParser:
    return ffc.build_parser(__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> int:
    return ffc.mc.run_tool(TOOL, lambda a: ffc.evaluate(NAME, TOOL, a), argv)


if __name__ == "__main__":
    sys.exit(main())
