"""The synthetic-domain judges on a demo test split: right captions and audio, captions rotated by one clip, audio
rotated by one clip; and the judges' seconds per video.

    python benchmarks/bench_judges.py [--split results/demo/data/test] [--json OUT]

Without ``--split`` a 16-clip demo test split is built in a temporary folder first.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tav.data.audio import read_audio
from tav.data.demo import build_demo_dataset
from tav.data.layout import clip_files
from tav.data.video import read_video
from tav.metrics.synthetic import judge_video, summarize

KEYS = ("colour_acc", "shape_acc", "onset_f1", "pitch_height", "flicker")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    tmp = None
    if args.split is None:
        tmp = tempfile.TemporaryDirectory()
        build_demo_dataset(tmp.name, n_train=0, n_test=16, size=64)
        args.split = Path(tmp.name) / "test"
    stems = sorted(f.stem for f in (args.split / "mp4").glob("*.mp4"))
    clips = []
    for stem in stems:
        files = clip_files(args.split, stem)
        frames, fps = read_video(files.mp4)
        clips.append((frames, fps, read_audio(files.audio, 48000), files.txt.read_text().strip()))
    out, n = {}, len(clips)
    for name, rot_caption, rot_audio in (("right", 0, 0), ("captions rotated", 1, 0), ("audio rotated", 0, 1)):
        t0 = time.perf_counter()
        judged = [judge_video(clips[i][0], clips[i][1], clips[(i + rot_audio) % n][2], 48000,
                              clips[(i + rot_caption) % n][3]) for i in range(n)]
        s = summarize(judged)
        out[name] = {**{k: s[k] for k in KEYS}, "n": n, "seconds_per_video": (time.perf_counter() - t0) / n}
    print(f"{'':<18}" + "".join(f"{k:>14}" for k in (*KEYS, "s/video")))
    for name, s in out.items():
        print(f"{name:<18}" + "".join(f"{s[k]:>14.3f}" for k in KEYS) + f"{s['seconds_per_video']:>14.3f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
