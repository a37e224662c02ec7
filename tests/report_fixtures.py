"""Tiny results folders for the report tests: demo clips written through ``ResultsFolder`` (so the layout,
manifest and codecs are the samplers' own), judged by ``tools/synthetic_judge.py``, with hand-made metric
records."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np

from tav.data.demo import make_clip
from tav.data.video import to_model_range
from tav.metrics.i3d import mark_random_weights
from tav.metrics.runs import write_record
from tav.pipelines.results import ResultsFolder, SampleRecord
from tav.utils.fileio import file_sha256
from tav_tools import synthetic_judge

FRAMES, SIZE, FPS, RATE = 24, 32, 30.0, 16000


def demo_sample(seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray, str]:
    """A 24-frame demo clip: frames uint8 ``(T, size, size, 3)``, audio at 16 kHz, caption."""
    frames, audio, caption, _ = make_clip(seed, "urmp", size)
    wave = audio[:: 48000 // RATE][: round(FRAMES / FPS * RATE)]  # the demo sound at 16 kHz, cut to the clip
    return frames[:FRAMES], wave.astype(np.float32), caption


def make_results(root: Path, n: int = 3, naming: str = "ta2v", seed0: int = 200, size: int = SIZE) -> Path:
    """A results folder of ``n`` samples: real = the clip, stage 1 = the clip darkened, stage 2 = the clip;
    judged (``metrics_synthetic.json``) and with an FVD record whose backbone is marked random. An odd ``size``
    gives H.264 4:4:4 files, which browsers do not play."""
    results = ResultsFolder(root, FPS, RATE, naming=naming)
    for i in range(n):
        frames, wave, caption = demo_sample(seed0 + i, size)
        video = to_model_range(frames)
        info = {"seed": 7 + i, "checkpoints": {"diffusion_ckpt": "ab" * 32},
                "settings": {"timestep_respacing": "ddim50", "audio_guidance_lambda": 10000.0}}
        results.write(SampleRecord(i, f"clip{i}", caption, video, video * 0.5 - 0.25, [video], wave, info))
    assert synthetic_judge.main(["--results", str(root)]) == 0
    weights = root.parent / f"{root.name}-tiny_i3d.pt"
    weights.write_bytes(b"not really weights")
    mark_random_weights(weights, 0)
    write_record(root / "metrics_fvd.json", {
        "metric": "fvd", "protocol": "tav", "N": n, "run_folder": str(root),
        "manifest_sha256": file_sha256(root / "manifest.jsonl"),
        "backbone": {"name": "i3d (tiny)", "path": str(weights), "sha256": file_sha256(weights),
                     "random_weights": True},
        "values": {"fake_stage1": {"N": n, "value": 123.456789}, "fake_stage2": {"N": n, "value": 7.891234}}})
    return root


def as_mpeg4(path: Path) -> Path:
    """Rewrite ``path`` in place as MPEG-4 Part 2 video + AAC audio, what OpenCV's ``mp4v`` writer (upstream's
    samplers) leaves and browsers do not play."""
    import av

    from tav.data.audio import read_audio
    from tav.data.video import read_video

    frames, fps = read_video(path)
    wave = read_audio(path, RATE)
    with av.open(str(path), "w") as c:
        video = c.add_stream("mpeg4", rate=Fraction(fps).limit_denominator(1001))
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        audio = c.add_stream("aac", rate=RATE)
        audio.layout = "mono"
        for f in frames:
            c.mux(video.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(video.encode())
        frame = av.AudioFrame.from_ndarray(wave[None].astype(np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, 0, Fraction(1, RATE)
        c.mux(audio.encode(frame))
        c.mux(audio.encode(None))
    return path


def stale_record(root: Path) -> Path:
    """A metric record written for another manifest: the report shows it apart."""
    path = root / "metrics_clip_text.json"
    path.write_text(json.dumps({"metric": "clip_text", "protocol": "tav", "run_folder": str(root),
                                "manifest_sha256": "0" * 64, "backbone": {"name": "clip"},
                                "values": {"fake_stage2": {"N": 2, "value": 31.5, "std": 1.25}}}))
    return path
