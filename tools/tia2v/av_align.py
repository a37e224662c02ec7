"""AV-Align of a results folder: per video, the IoU of its audio onsets (librosa, 22 050 Hz,
hop 512) and its motion peaks (OpenCV Farneback flow), an onset being matched by a peak strictly within
±``--window_frames`` frames; then mean ± std over videos.

    python tools/tia2v/av_align.py --exp_tag tacm_URMP --video_folder fake_stage2 --audio_folder audio

Videos and wavs pair by manifest id (else the ``_<i>`` suffix). The time axis of the video is the dataset fps
from the manifest (TIA2V's legacy 6-fps files hold frames at the dataset rate), else the container's; ``--fps``
overrides both. A video with no onset and no motion peak has no IoU: it is left out of the mean and counted in
``n_skipped``. ``--protocol ta2v`` reproduces upstream: sorted-order pairing and the container's fps. Without
``--video_folder`` it evaluates ``fake_stage2`` (or ``fake2_6fps``), else stage 1. Writes
``<run>/metrics_av_align.json``.
"""

from __future__ import annotations

import argparse
import sys

from tav.errors import InputError
from tav.metrics.av_align import AUDIO_RATE, FARNEBACK, HOP_LENGTH, WINDOW_FRAMES, av_align_folder
from tav.metrics.folders import RunFolder, Source
from tav.metrics.runs import metric_record, score_summary
from tav_tools import metric_common as mc
from tav_tools.tia2v.first_frame_consistency import video_folder

TOOL = "av_align.py"
NAME = "av_align"


def build_parser() -> argparse.ArgumentParser:
    p = mc.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--video_folder", default=None,
                   help="video folder to evaluate (default: fake_stage2, else fake_stage1, legacy TIA2V names too)")
    p.add_argument("--audio_folder", default="audio", help="wav folder of the run")
    p.add_argument("--window_frames", type=float, default=WINDOW_FRAMES,
                   help="an onset matches a motion peak strictly within ± this many frames (TempoTokens' paper: 3)")
    p.add_argument("--fps", type=float, default=None,
                   help="fps of the videos' time axis (default: the manifest's dataset fps, else the container's)")
    mc.add_batch_size(p, 1, "accepted for compatibility (videos are scored one by one)")
    return p


def backbone() -> dict:
    import cv2
    import librosa

    return {"name": "OpenCV Farneback optical flow + librosa onset detection", "path": None, "sha256": None,
            "opencv": cv2.__version__, "librosa": librosa.__version__, "farneback": dict(FARNEBACK)}


def preprocessing(args: argparse.Namespace) -> dict:
    return {"colour": "RGB frames -> grey (cv2 RGB2GRAY, equal to upstream's BGR2GRAY on BGR frames)",
            "pre_resize": args.resize and f"area {args.resize[0]}x{args.resize[1]}",
            "motion": "mean flow magnitude per consecutive pair, first entry repeated; strict local maxima at i/fps",
            "audio": f"mono, resampled to {AUDIO_RATE} Hz (librosa soxr_hq); onset_strength -> onset_detect, "
                     f"hop {HOP_LENGTH}",
            "window": f"strictly within ±{args.window_frames:g} frame(s) of each onset, each onset counted once",
            "score": "IoU = hits / (n_audio + n_video - hits) per video, then mean/std over videos; "
                     "videos with neither onsets nor peaks skipped"}


def pair_fps(args: argparse.Namespace, run: RunFolder, key: int) -> tuple[float | None, str]:
    """The fps of sample ``key``'s time axis and where it came from (``None``: read the container)."""
    if args.fps is not None:
        if not args.fps > 0:
            raise InputError(f"--fps {args.fps}: must be positive")
        return args.fps, "--fps"
    row = run.row(key) if args.protocol == "tav" else None
    if row is not None and row.get("fps"):
        return float(row["fps"]), "manifest"
    return None, "container"


def per_video(key: int, score) -> dict:
    """``{"key", "score" (the IoU, None when skipped), "n_audio", "n_video", "hits", "fps"}``."""
    d = score.as_dict()
    return {"key": key, "score": d.pop("iou"), **d}


def evaluate_folder(args, run: RunFolder, folder: str) -> tuple[dict, dict, list[str]]:
    sources = {"video": Source(run, folder), "audio": Source(run, args.audio_folder, "wav")}
    pairs = mc.protocol_pairs(args, sources, run.path / folder)
    fps, where = zip(*(pair_fps(args, run, p.key) for p in pairs), strict=True)
    scores = av_align_folder([p.files["video"] for p in pairs], [p.files["audio"] for p in pairs], list(fps),
                             args.window_frames, tuple(args.resize) if args.resize else None)
    kept = [i for i, s in enumerate(scores) if not s.skipped]
    if not kept:
        raise InputError(f"{run.path / folder}: no video has an audio onset or a motion peak; AV-Align is undefined")
    groups = mc.groups_of(args, len(kept), folder)
    summary = score_summary([scores[i].iou for i in kept], groups, [pairs[i].key for i in kept],
                            chunked=args.mode == "size")
    summary["per_video"] = [per_video(p.key, s) for p, s in zip(pairs, scores, strict=True)]
    summary["n_skipped"] = len(scores) - len(kept)
    summary["skipped_keys"] = [p.key for p, s in zip(pairs, scores, strict=True) if s.skipped]
    summary["fps_used"] = sorted({s.fps for s in scores})
    return summary, mc.video_summary([p.files["video"] for p in pairs]), sorted(set(where))


def evaluate(argv: list[str] | None) -> None:
    args = build_parser().parse_args(argv)
    if not args.window_frames > 0:
        raise InputError(f"--window_frames {args.window_frames}: must be positive")
    records, lines = [], []
    for run in mc.run_folders(args):
        folder = video_folder(args, run)
        summary, videos, fps_source = evaluate_folder(args, run, folder)
        records.append((run, metric_record(
            NAME, args.protocol, {folder: summary}, backbone(), preprocessing(args), {folder: videos},
            {"video": str(run.path / folder), "audio": str(run.path / args.audio_folder)}, run.path,
            run.manifest_sha256, mean=summary["value"], std=summary["std"], n_skipped=summary["n_skipped"],
            window_frames=args.window_frames, fps_source=fps_source, fps_used=summary["fps_used"],
            mode=args.mode, size=args.size, command=mc.command_line(TOOL, argv))))
        lines.append(f"  {run.path.name}/{folder}: {summary['n_skipped']} video(s) skipped (no onset and no "
                     f"motion peak); time axis from {', '.join(fps_source)}: fps {summary['fps_used']}; "
                     f"window ±{args.window_frames:g} frame(s)")
    mc.finish(TOOL, NAME, args, records)
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    return mc.run_tool(TOOL, evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
