"""First-frame consistency of a results folder: per video, the mean over t ≥ 1 of
``100 · cos(e_t, e_0)`` with CLIP ViT-B/32 frame embeddings; then mean ± std over videos.

    python tools/tia2v/first_frame_consistency.py --exp_tag tacm_URMP --video_folder fake_stage2

Without ``--video_folder`` it evaluates ``fake_stage2`` (or upstream's ``fake2_6fps``), else ``fake_stage1`` (or
``fake1_6fps``/``fake1_30fps``), else ``fake``. ``--protocol ta2v`` reproduces upstream (BGR/255, plain bilinear
resize to 224, no CLIP normalisation, the remainder of ``N // batch_size`` dropped). Writes
``<run>/metrics_first_frame_consistency.json``. ``temporal_consistency.py`` shares this code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tav.errors import InputError
from tav.metrics.consistency import SCORERS, frame_embeddings
from tav.metrics.folders import RunFolder, Source, default_fake_folder, load_videos
from tav.metrics.runs import metric_record, score_summary
from tav_tools import metric_common as mc

TOOL = "first_frame_consistency.py"
NAME = "first_frame_consistency"
DEFINITIONS = {"first_frame_consistency": "100*cos(e_t, e_0) averaged over t=1..T-1, then mean/std over videos",
               "temporal_consistency": "100*cos(e_t, e_t+1) averaged over t=0..T-2, then mean/std over videos"}


def build_parser(description: str = __doc__.split("\n\n")[0]) -> argparse.ArgumentParser:
    p = mc.base_parser(description)
    p.add_argument("--video_folder", default=None,
                   help="video folder to evaluate (default: fake_stage2, else fake_stage1, legacy TIA2V names too)")
    p.add_argument("--sequence_length", type=int, default=None,
                   help="frames per video (the first ones; default: all, the same count in every file)")
    mc.add_batch_size(p, 2, "videos whose frames share one CLIP forward pass")
    return p


def preprocessing(args: argparse.Namespace, name: str, image_size: int) -> dict:
    return {**mc.clip_frame_preprocessing(args, image_size), "frames_per_video": args.sequence_length or "all",
            "score": DEFINITIONS[name]}


def video_folder(args: argparse.Namespace, run: RunFolder) -> str:
    """``--video_folder``, or the run's stage-2 folder (else stage 1) with a warning when falling back."""
    if args.video_folder is not None:
        return args.video_folder
    folder = default_fake_folder(run)
    if "2" not in folder:
        mc.log.warning("%s: no stage-2 folder; evaluating %s", run.path, folder)
    return folder


def evaluate_folder(args, name: str, encoder, weights: dict, run: RunFolder, folder: str) -> tuple[dict, dict]:
    if args.batch_size < 1:
        raise InputError(f"--batch_size {args.batch_size}: must be at least 1")
    pairs = mc.protocol_pairs(args, {"video": Source(run, folder)}, run.path / folder)
    paths = [p.files["video"] for p in pairs]
    videos = mc.video_summary(paths)
    cache = mc.frame_cache(args, run, weights["sha256"], encoder.image_size)

    def compute(ps: list[Path]):
        clips = load_videos(ps, args.sequence_length, tuple(args.resize) if args.resize else None)
        if clips.shape[1] < 2:
            raise InputError(f"{ps[0]}: {clips.shape[1]} frame(s); consistency needs at least 2 per video")
        return frame_embeddings(encoder, clips, args.protocol, frames_per_batch=args.batch_size * clips.shape[1])

    feats = cache.features(paths, compute)
    if feats.shape[1] < 2:  # cached features of 1-frame videos
        raise InputError(f"{run.path / folder}: {feats.shape[1]} frame(s) per video; consistency needs at least 2")
    groups = mc.groups_of(args, len(pairs), folder)
    summary = score_summary(SCORERS[name](feats), groups, [p.key for p in pairs], chunked=args.mode == "size")
    summary["cache"] = {"hits": cache.hits, "misses": cache.misses}
    return summary, videos


def evaluate(name: str, tool: str, argv: list[str] | None) -> None:
    """Parse ``argv``, score ``name`` (a key of ``SCORERS``) on each run folder, print and write the JSON."""
    args = build_parser(f"{name.replace('_', ' ')} of a results folder").parse_args(argv)
    runs = mc.run_folders(args)  # a wrong --exp_tag fails before any weights load
    encoder, weights = mc.clip_encoder(args, mc.device_of(args))
    records = []
    for run in runs:
        folder = video_folder(args, run)
        summary, videos = evaluate_folder(args, name, encoder, weights, run, folder)
        records.append((run, metric_record(
            name, args.protocol, {folder: summary}, weights, preprocessing(args, name, encoder.image_size),
            {folder: videos}, {"video": str(run.path / folder)}, run.path, run.manifest_sha256,
            mean=summary["value"], std=summary["std"], scale="x100 cosine", mode=args.mode, size=args.size,
            notes=["rewards static videos: report it together with FVD or a motion statistic"],
            command=mc.command_line(tool, argv))))
    mc.finish(tool, name, args, records)


def main(argv: list[str] | None = None) -> int:
    return mc.run_tool(TOOL, lambda a: evaluate(NAME, TOOL, a), argv)


if __name__ == "__main__":
    sys.exit(main())
