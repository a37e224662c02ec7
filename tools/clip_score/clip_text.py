"""CLIP-text score of a results folder: ``100 · cos(frame, caption)`` with CLIP
ViT-B/32, averaged over frames, then over videos.

The README seed line runs as written:

    python tools/clip_score/clip_text.py --exp_tag 1_tav_URMP --txt_folder txt --video_folder fake_stage2 --batch_size 5

Without ``--video_folder`` it evaluates real, fake_stage1 and fake_stage2. ``--protocol ta2v`` reproduces
upstream (BGR, plain resize, no CLIP normalisation, per-line captions, dropped remainder). Writes
``<run>/metrics_clip_text.json``.
"""

from __future__ import annotations

import argparse
import sys

from tav.errors import InputError
from tav.metrics.clip_score import frame_text_scores, image_features, text_features
from tav.metrics.folders import RunFolder, Source, find_run, load_videos, open_run, read_caption
from tav.metrics.runs import metric_record, score_summary
from tav_tools import metric_common as mc

TOOL = "clip_text.py"


def build_parser() -> argparse.ArgumentParser:
    p = mc.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--txt_folder", default="txt", help="caption folder of the run")
    p.add_argument("--text_emb_model", choices=("clip", "joint"), default="clip",
                   help="frame and caption towers: CLIP ViT-B/32, or a joint encoder trained on your clips")
    p.add_argument("--real_tag", default=None, help="take the real videos from the run folder of this tag")
    p.add_argument("--sequence_length", type=int, default=16, help="frames per video (the first ones)")
    mc.add_batch_size(p, 2, "videos per batch")
    p.add_argument("--clamp_zero", action="store_true", help="also report max(100·cos, 0) per frame (torchmetrics)")
    mc.add_video_folder_flags(p)
    return p


def preprocessing(args: argparse.Namespace, image_size: int) -> dict:
    return {**mc.clip_frame_preprocessing(args, image_size),
            "frames_per_video": args.sequence_length, "score": "100*cos, mean over frames then videos",
            "caption": ("txt lines scored separately" if args.protocol == "ta2v"
                        else "manifest caption (else the txt lines joined)")}


def captions(pairs, protocol: str) -> list:
    out = []
    for pair in pairs:
        if protocol == "ta2v" or pair.caption is None:
            lines = read_caption(pair.files["txt"])
            if not lines:
                raise InputError(f"{pair.files['txt']}: empty caption file; write the sample's caption there or "
                                 "re-run the sampler")
            out.append(lines if protocol == "ta2v" else " ".join(lines))
        else:
            out.append(pair.caption)
    return out


def evaluate_folder(args, encoder, weights, run: RunFolder, video_run: RunFolder, folder: str) -> tuple[dict, dict]:
    sources = {"video": Source(video_run, folder), "txt": Source(run, args.txt_folder, "txt")}
    pairs = mc.protocol_pairs(args, sources, video_run.path / folder)
    paths = [p.files["video"] for p in pairs]
    videos = mc.video_summary(paths)
    cache = mc.frame_cache(args, run, weights["sha256"], encoder.image_size)
    feats = cache.features(paths, lambda ps: image_features(
        encoder, load_videos(ps, args.sequence_length, args.resize), args.protocol))
    txt = text_features(encoder, captions(pairs, args.protocol), args.protocol)
    groups = mc.groups_of(args, len(pairs), folder)
    chunked = args.mode == "size"
    summary = score_summary(frame_text_scores(feats, txt), groups, [p.key for p in pairs], chunked=chunked)
    if args.clamp_zero:
        summary["clamp_zero"] = score_summary(frame_text_scores(feats, txt, clamp_zero=True), groups, chunked=chunked)
    summary["cache"] = {"hits": cache.hits, "misses": cache.misses}
    return summary, videos


def evaluate(argv: list[str] | None) -> None:
    args = build_parser().parse_args(argv)
    runs, folders = mc.score_runs(args)
    encoder, weights = mc.clip_encoder(args, mc.device_of(args), args.text_emb_model)
    records = []
    for run in runs:
        real_run = open_run(find_run(args.results_root, args.real_tag)) if args.real_tag else run
        values, videos = {}, {}
        for folder in folders:
            video_run = real_run if folder == args.real_video_folder else run
            values[folder], videos[folder] = evaluate_folder(args, encoder, weights, run, video_run, folder)
        compared = {f: str((real_run if f == args.real_video_folder else run).path / f) for f in folders}
        compared["txt"] = str(run.path / args.txt_folder)
        records.append((run, metric_record(
            "clip_text", args.protocol, values, weights, preprocessing(args, encoder.image_size), videos, compared,
            run.path, run.manifest_sha256, mode=args.mode, size=args.size, command=mc.command_line(TOOL, argv))))
    mc.finish(TOOL, "clip_text", args, records)


def main(argv: list[str] | None = None) -> int:
    return mc.run_tool(TOOL, evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
