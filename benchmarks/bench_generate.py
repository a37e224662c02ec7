"""Seams and speed of long generation (``scripts/generate.py``) on demo melodies, measured by the judges.

    python benchmarks/bench_generate.py [--script saved_ckpts/demo/generate.sh] [--n 3] [--seconds 30]
                                        [--methods ta2v tia2v] [--json OUT.json] [--md OUT.md]

Needs ``make demo`` (its ``generate.sh`` names the demo's checkpoints). For each of ``--n`` demo melodies of
``--seconds`` (synthesised like the demo clips, so their colour, onsets and pitch are known) and each setting,
the script is run once (outputs in ``--work``, reused on a rerun) and the video is judged over its whole length:

- ``seam flicker`` / ``inside flicker``: mean frame-to-frame change into the first frame each window made after
  what it was given (the seam), and into every other frame, away from note onsets (where the shape should
  jump); the goal is a ratio <= 1.5;
- ``colour (all frames)`` / ``colour (last third)``: share of frames showing the caption's colour, over the whole
  video and over its last third (does the colour drift away over the windows?);
- ``onset_f1`` over the whole video; ``s per s``: generation seconds per second of video (models loaded).

Settings: TA2V ``sliding`` (the GPT continues from the last latent frame, generate.py's default for the demo GPT;
stage 2 windows overlap by half and are blended at every step), ``independent`` (no GPT context, stage-2 windows
side by side: every window alone, as a single-window sampler would make it), ``independent GPT, sliding stage 2``
(no GPT context, stage-2 windows blended: the demo's ``generate.sh``) and ``sliding, bf16``; TIA2V ``hand-over``
(window k+1 starts from window k's last frame), ``independent`` (every window starts from the given image) and
``hand-over, bf16``; TIA2V rows measure the motion model alone (no SHR) at 25 respaced steps, to keep the run
under an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# generate.py's default GPT context, half the demo GPT's grid of 2 latent frames (the demo's generate.sh draws
# independent windows, --context_frames 0)
SLIDING = ["--context_frames", "1"]
SETTINGS = {
    "ta2v": [("sliding", SLIDING), ("independent", ["--context_frames", "0", "--stage2_stride", "0"]),
             ("independent GPT, sliding stage 2", ["--context_frames", "0"]),
             ("sliding, bf16", [*SLIDING, "--precision", "bf16"])],
    "tia2v": [("hand-over", ["--hand_over", "True"]), ("independent", ["--hand_over", "False"]),
              ("hand-over, bf16", ["--hand_over", "True", "--precision", "bf16"])],
}
# TIA2V: the motion model's windows are what is measured; SHR (which only refines, in one fused chain) is left
# out and the motion chain runs 25 respaced steps, so that the table takes well under an hour on 2 cores.
COMMON = {"ta2v": [], "tia2v": ["--skip_shr", "--timestep_respacing", "25"]}
COLUMNS = ("seam_flicker", "inside_flicker", "seam_ratio", "colour_frame_acc", "colour_last_third", "onset_f1",
           "s_per_s")


def seams_of(sidecar: dict) -> list[int]:
    """The seam frames of a generation: the first frame each window after the first made itself."""
    return [w["start"] + w["given"] for w in sidecar["windows"][1:]]


def judge_long(video: Path, wave: np.ndarray, rate: int, caption: str) -> dict:
    """The seam, colour and onset figures of one long video (its sidecar next to it)."""
    from tav.data.video import read_video
    from tav.metrics.synthetic import frame_objects, judge_video, onset_frames, parse_caption, seam_flicker

    frames, fps = read_video(video)
    sidecar = json.loads(video.with_suffix(".json").read_text(encoding="utf-8"))
    onsets = onset_frames(wave, rate, fps, len(frames))
    seam, inside = seam_flicker(frames, seams_of(sidecar), onsets)
    colour, _ = parse_caption(caption)
    shown = frame_objects(frames[2 * len(frames) // 3:]).colour
    verdict = judge_video(frames, fps, wave, rate, caption)
    return {"seam_flicker": seam, "inside_flicker": inside, "seam_ratio": seam / inside if inside else math.nan,
            "colour_frame_acc": verdict.colour_frame_acc,
            "colour_last_third": float(np.mean([c == colour for c in shown])), "onset_f1": verdict.onset_f1,
            "s_per_s": sidecar["seconds"] / (len(frames) / fps), "frames": len(frames),
            "windows": len(seams_of(sidecar)) + 1}


def first_frame(song_frames: np.ndarray, path: Path) -> Path:
    """The melody's first frame as the domain draws it (TIA2V's --image), as a PNG."""
    from PIL import Image

    Image.fromarray(song_frames[0]).save(path)
    return path


def run_one(script: Path, method: str, wav: Path, caption: str, image: Path, out: Path, extra: list[str]) -> None:
    if out.is_file() and out.with_suffix(".json").is_file():
        return
    argv = ["bash", str(script), "--method", method, "--audio", str(wav), "--caption", caption, "--out", str(out),
            "--progress", "False", *extra]
    if method == "tia2v":
        argv += ["--image", str(image)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench_generate: {shlex.join(argv)} failed: {done.stderr.strip().splitlines()[-1:]}")


def mean_of(rows: list[dict]) -> dict:
    out = {}
    for key in COLUMNS:
        values = [r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        out[key] = float(np.mean(values)) if values else None
    return out


def markdown(results: dict, n: int, seconds: float) -> str:
    heads = ("seam flicker", "inside flicker", "seam / inside", "colour (all frames)", "colour (last third)",
             "onset_f1", "s per s of video")
    lines = [f"**long generation** ({n} demo melodies of {seconds:g} s, means)", "",
             "| method | setting | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    for method, rows in results.items():
        for label, values in rows.items():
            cells = ["-" if values[k] is None else f"{values[k]:.3f}" for k in COLUMNS]
            lines.append(f"| {method} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--script", default=str(REPO / "saved_ckpts" / "demo" / "generate.sh"))
    p.add_argument("--n", type=int, default=3, help="melodies")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--methods", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--work", default=str(REPO / "results" / "bench_generate"), help="outputs (reused on a rerun)")
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    from tav_scripts.demo_generate import demo_song

    args = parse_args(argv)
    script, work = Path(args.script), Path(args.work)
    if not script.is_file():
        raise SystemExit(f"bench_generate: {script}: no such script; run `make demo` first (it writes generate.sh)")
    songs = [demo_song(work / f"song{i}", args.seconds, seed=2000 + i) for i in range(args.n)]
    results: dict[str, dict[str, dict]] = {}
    for method in args.methods:
        results[method] = {}
        for label, extra in SETTINGS[method]:
            rows = []
            for i, (wav, caption, frames, wave) in enumerate(songs):
                out = work / f"{method}_{label.replace(', ', '_').replace(' ', '_')}_{i}.mp4"
                run_one(script, method, wav, caption, first_frame(frames, work / f"song{i}" / "first.png"), out,
                        [*COMMON[method], *extra])
                rows.append(judge_long(out, wave, 48000, caption))
            results[method][label] = mean_of(rows)
            print(f"{method:6s} {label:18s} " + "  ".join(
                f"{k} {v:.3f}" for k, v in results[method][label].items() if v is not None), flush=True)
    table = markdown(results, args.n, args.seconds)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"n": args.n, "seconds": args.seconds, "results": results}, indent=1)
                                   + "\n", encoding="utf-8")
    if args.md:
        Path(args.md).write_text(table, encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
