"""TIA2V metrics (``tav.metrics.av_align``, ``tav.metrics.consistency``, ``tools/tia2v/*.py``): AV-Align against
hand computations and synthetic clips whose motion bursts do or do not meet audio clicks, FFC/TC against
embeddings computed by hand with a tiny CLIP, the protocol switch, and the tools on TA2V- and TIA2V-style results
folders (upstream's legacy folder names included)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tav.data.audio import resample, write_wav
from tav.data.video import read_video, write_video
from tav.encoders.clip import save_tiny_clip
from tav.encoders.registry import get_encoder
from tav.errors import InputError
from tav.metrics import consistency, folders
from tav.metrics.av_align import (
    align_score,
    audio_onsets,
    av_align_folder,
    av_align_iou,
    motion_trajectory,
    summarize,
    video_motion_peaks,
)
from tav.metrics.clip_score import image_features
from tav.metrics.consistency import consistency_scores
from tav.utils.fileio import write_text_atomic
from tav_tools.tia2v import av_align, first_frame_consistency, temporal_consistency

T, SIZE, FPS, RATE = 24, 32, 10, 16000
BURSTS = ((4, 10, 17), (6, 13), ())  # per sample: frames where the square jumps (sample 2: static and silent)
RECORD_KEYS = {"metric", "N", "mean", "std", "backbone", "preprocessing", "protocol", "values", "fps", "frames",
               "videos", "folders", "run_folder", "manifest_sha256", "tav_version", "command"}


def jumping_square(bursts, frames: int = T) -> np.ndarray:
    """uint8 ``(frames, SIZE, SIZE, 3)``: a white square on black that jumps sideways at each burst frame and
    stands still otherwise (identical frames: zero flow)."""
    out = np.zeros((frames, SIZE, SIZE, 3), np.uint8)
    left = 2
    for t in range(frames):
        if t in bursts:
            left = 18 if left == 2 else 2
        out[t, 10:22, left : left + 12] = 255
    return out


def clicks(times, seconds: float = T / FPS) -> np.ndarray:
    """Mono float32 at RATE: 10-ms decaying noise bursts starting at ``times`` (s), silence elsewhere."""
    wave = np.zeros(round(seconds * RATE), np.float32)
    burst = int(0.01 * RATE)
    rng = np.random.default_rng(0)
    for t in times:
        i = round(t * RATE)
        env = np.exp(-np.arange(burst) / (0.003 * RATE))
        wave[i : i + burst] += (0.8 * rng.standard_normal(burst) * env)[: len(wave) - i].astype(np.float32)
    return wave


def drifting(seed: int, frames: int) -> np.ndarray:
    """uint8 ``(frames, SIZE, SIZE, 3)``: a smooth random pattern rolling sideways."""
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(SIZE, SIZE), mode="bilinear")[0]
    clip = torch.stack([torch.roll(base, shifts=3 * t, dims=-1) for t in range(frames)])
    return (clip.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


# ----------------------------------------------------------------------------------------- AV-Align maths
def test_iou_hand_computation_and_strict_window():
    audio, video = [0.5, 1.0, 2.0], [0.55, 1.1, 1.5, 3.0]
    # 0.5 hits 0.55; 1.1 is exactly one frame from 1.0 (outside); 1.5 is 5 frames from 2.0
    assert av_align_iou(audio, video, FPS) == pytest.approx(1 / (3 + 4 - 1))
    assert av_align_iou(audio, video, FPS, window_frames=6) == pytest.approx(3 / (3 + 4 - 3))
    # |0.3 - 0.2| * 10 rounds to 0.9999999999999998: still exactly one frame, so outside the open window
    assert av_align_iou([0.2], [0.3], FPS) == 0.0
    assert av_align_iou([0.2], [0.2999], FPS) == 1.0
    assert av_align_iou([1.0], [0.95, 1.05], FPS) == pytest.approx(1 / 2)  # one onset counts once
    assert av_align_iou([], [0.4], FPS) == 0.0 and av_align_iou([0.4], [], FPS) == 0.0
    assert math.isnan(av_align_iou([], [], FPS))
    s = summarize([align_score(jumping_square(()), np.zeros(RATE, np.float32), RATE, FPS)])
    assert (s["N"], s["n_skipped"]) == (0, 1) and math.isnan(s["mean"])


def test_video_motion_peaks_find_the_bursts(tmp_path):
    frames = jumping_square(BURSTS[0])
    traj = motion_trajectory(frames)
    assert traj.shape == (T,) and traj[0] == traj[1]
    assert set(np.flatnonzero(traj > 0.1)) == set(BURSTS[0])
    assert np.allclose(video_motion_peaks(frames, FPS), np.array(BURSTS[0]) / FPS)
    assert np.allclose(video_motion_peaks(frames, 25), np.array(BURSTS[0]) / 25)
    assert len(video_motion_peaks(jumping_square(()), FPS)) == 0  # no motion: no strict maximum
    path = write_video(tmp_path / "v.mp4", frames, FPS, lossless=True)
    decoded, fps = read_video(path)
    assert fps == FPS and np.allclose(video_motion_peaks(decoded, fps), np.array(BURSTS[0]) / FPS)


def test_audio_onsets_find_the_clicks():
    times = np.array(BURSTS[0]) / FPS
    onsets = audio_onsets(clicks(times), RATE)
    assert len(onsets) == len(times) and np.all(np.abs(onsets - times) < 0.05)
    native = audio_onsets(resample(clicks(times), RATE, 22050), 22050)  # already at librosa's rate: as is
    assert len(native) == len(times) and np.all(np.abs(native - onsets) < 0.03)


def test_aligned_clicks_score_higher_than_shifted_or_shuffled():
    """The issue's test: motion bursts at frames k with audio clicks at k/fps beat the same video with the clicks
    shifted by 1.5 frames or moved to shuffled times."""
    frames = jumping_square(BURSTS[0])
    times = np.array(BURSTS[0]) / FPS
    aligned = align_score(frames, clicks(times), RATE, FPS)
    shifted = align_score(frames, clicks(times + 1.5 / FPS), RATE, FPS)
    shuffled = align_score(frames, clicks(np.array([1, 8, 14, 21]) / FPS), RATE, FPS)
    assert aligned.iou == 1.0 and (aligned.n_audio, aligned.n_video, aligned.hits) == (3, 3, 3)
    assert shifted.iou == 0.0 and shuffled.iou < aligned.iou
    assert align_score(frames, clicks(times + 1.5 / FPS), RATE, FPS, window_frames=3).iou == 1.0


# ------------------------------------------------------------------------------------------ FFC and TC
@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "ViT-B-32.pt")


def _by_hand(enc, frames: np.ndarray) -> np.ndarray:
    """Unit-norm embeddings ``(T, D)`` of RGB uint8 frames with CLIP's preprocessing, one frame at a time."""
    rows = []
    with torch.no_grad():
        for f in frames:
            x = torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255
            x = F.interpolate(x, size=(224, 224), mode="bicubic", antialias=True).clamp(0, 1)
            rows.append(F.normalize(enc.encode_images(x).double(), dim=-1)[0].numpy())
    return np.stack(rows)


def test_ffc_tc_equal_hand_computation(clip_path):
    enc = get_encoder("clip", clip_path)
    video = drifting(1, 4)
    e = _by_hand(enc, video)
    ffc = np.mean([100 * e[t] @ e[0] for t in (1, 2, 3)])
    tc = np.mean([100 * e[t] @ e[t + 1] for t in (0, 1, 2)])
    videos = np.stack([video, drifting(2, 4), video])
    scores = consistency_scores(enc, videos, frames_per_batch=5)  # batches straddle videos; none dropped
    assert scores.first_frame.shape == (3,) and scores.first_frame[0] == pytest.approx(ffc, abs=1e-4)
    assert scores.temporal[0] == pytest.approx(tc, abs=1e-4) and scores.temporal[2] == pytest.approx(tc, abs=1e-4)
    assert abs(ffc - tc) > 1e-3 and ffc < 100 - 1e-3
    static = consistency_scores(enc, np.repeat(video[:1], 4, axis=0)[None])
    assert static.first_frame[0] == pytest.approx(100, abs=1e-6) and static.temporal[0] == pytest.approx(100, abs=1e-6)
    # the definitions on known vectors: e0 = x, e1 = y, e2 = x  ->  FFC (0 + 100) / 2, TC (0 + 0) / 2
    known = np.array([[[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]])
    assert consistency.first_frame_consistency(known)[0] == pytest.approx(50)
    assert consistency.temporal_consistency(known)[0] == 0.0


def test_protocol_switch_on_pure_red(clip_path):
    """Upstream's BGR pipeline sees a pure-red video as blue, unnormalised, bilinear-resized."""
    enc = get_encoder("clip", clip_path)
    red = np.zeros((2, SIZE, SIZE, 3), np.uint8)
    red[..., 0] = 255
    up = image_features(enc, red[None], "ta2v")[0]
    with torch.no_grad():
        blue = torch.from_numpy(red[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 255
        raw = enc.model.encode_image(F.interpolate(blue, size=(224, 224), mode="bilinear"))
    assert np.allclose(up, F.normalize(raw.double(), dim=-1).numpy(), atol=1e-5)
    assert not np.allclose(up, image_features(enc, red[None], "tav")[0], atol=1e-3)
    video = red[[0, 0, 1, 0]].copy()
    video[2, :, :, 1] = 255  # one yellow frame (cyan to BGR)
    tav, ta2v = consistency_scores(enc, video[None], "tav"), consistency_scores(enc, video[None], "ta2v")
    assert abs(tav.first_frame[0] - ta2v.first_frame[0]) > 1e-3 and abs(tav.temporal[0] - ta2v.temporal[0]) > 1e-3


# ---------------------------------------------------------------------------------------- results folders
def _sample(i: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``i``'s video (a square jumping at ``BURSTS[i]``) and its audio (clicks at the burst times)."""
    return jumping_square(BURSTS[i]), clicks(np.array(BURSTS[i]) / FPS)


def make_run(run: Path, style: str) -> Path:
    """A 3-sample results folder. ``ta2v``: ``tav.pipelines.results`` names + manifest; ``tia2v``: TIA2V names
    (``video_<i>``, ``groundtruth_<i>``) + manifest; ``legacy``: upstream TIA2V folders (``fake1_6fps``,
    ``fake1_30fps``, ``fake2_6fps``, real at 6 fps), no manifest."""
    rows = []
    for i in range(len(BURSTS)):
        video, audio = _sample(i)
        if style == "ta2v":
            key = f"clip{i}_{i}"
            files = {"real": f"real/groundtruth_{key}.mp4", "fake_stage1": f"fake_stage1/generation_stage1_{key}.mp4",
                     "fake_stage2": f"fake_stage2/generation_stage2_{key}.mp4"}
        elif style == "tia2v":
            files = {"real": f"real/groundtruth_{i}.mp4", "fake_stage1": f"fake_stage1/video_{i}.mp4",
                     "fake_stage2": f"fake_stage2/video_{i}.mp4"}
        else:
            files = {"real": f"real/groundtruth_{i}.mp4", "fake1_6fps": f"fake1_6fps/video_{i}.mp4",
                     "fake1_30fps": f"fake1_30fps/video_{i}.mp4", "fake2_6fps": f"fake2_6fps/video_{i}.mp4"}
        stem = f"clip{i}_{i}" if style == "ta2v" else str(i)
        files |= {"audio": f"audio/groundtruth_{stem}.wav", "txt": f"txt/groundtruth_{stem}.txt"}
        for folder, name in files.items():
            if folder in ("audio", "txt"):
                continue
            fps = 30 if folder == "fake1_30fps" else 6 if style == "legacy" else FPS
            write_video(run / name, video[::-1] if "1" in folder else video, fps, lossless=True)
        write_wav(run / files["audio"], audio, RATE)
        write_text_atomic(run / files["txt"], "a square jumps\n")
        rows.append({"id": i, "stem": f"clip{i}", "caption": "a square jumps", "fps": FPS, "sample_rate": RATE,
                     "files": files})
    if style != "legacy":
        (run / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


@pytest.fixture(scope="module")
def kit(clip_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("tia2v_results")
    results = root / "results"
    runs = {"ta2v": make_run(results / "1_tav_URMP", "ta2v"), "tia2v": make_run(results / "0_tacm_URMP", "tia2v"),
            "legacy": make_run(results / "2_tacm_landscape", "legacy")}
    return {"root": root, "results": results, "runs": runs, "clip": clip_path}


def run_tool(module, kit, exp_tag: str, *extra: str, out: Path | None = None) -> dict:
    argv = ["--exp_tag", exp_tag, "--results_root", str(kit["results"]), "--clip_ckpt", str(kit["clip"]),
            "--feature_cache", "none", *extra]
    if out is not None:
        argv += ["--out", str(out)]
    assert module.main(argv) == 0
    path = out or folders.find_run(kit["results"], exp_tag) / f"metrics_{module.NAME}.json"
    return json.loads(path.read_text())


def test_folder_lookup_accepts_tia2v_runs(kit):
    runs = kit["runs"]
    assert folders.find_run(kit["results"], "tacm_URMP") == runs["tia2v"]
    assert folders.find_run(kit["results"], "tacm_landscape") == runs["legacy"]
    legacy = folders.open_run(runs["legacy"])
    assert folders.resolve_folder(legacy, "fake_stage2") == "fake2_6fps"
    assert folders.resolve_folder(legacy, "fake_stage1") == "fake1_6fps"
    assert folders.default_fake_folder(legacy) == "fake2_6fps"
    assert folders.default_fake_folder(folders.open_run(runs["tia2v"])) == "fake_stage2"
    pairs = folders.pair_sources({"video": folders.Source(legacy, "fake_stage2"),
                                  "audio": folders.Source(legacy, "audio", "wav")})
    assert [(p.key, p.files["video"].name, p.files["audio"].name) for p in pairs] == [
        (i, f"video_{i}.mp4", f"groundtruth_{i}.wav") for i in range(3)]
    with pytest.raises(InputError, match="folders there: audio, fake1_30fps, fake1_6fps, fake2_6fps, real, txt"):
        folders.pair_sources({"video": folders.Source(legacy, "fake")})


def _expected_align(run: Path, folder: str, fps: float | None) -> list:
    videos = sorted((run / folder).glob("*.mp4"))
    audios = sorted((run / "audio").glob("*.wav"))
    return av_align_folder(videos, audios, fps)


@pytest.mark.parametrize("style, exp_tag", [("ta2v", "1_tav_URMP"), ("tia2v", "tacm_URMP")])
def test_av_align_tool(kit, style, exp_tag, capsys):
    rec = run_tool(av_align, kit, exp_tag)
    assert RECORD_KEYS <= rec.keys() and rec["metric"] == "av_align" and rec["protocol"] == "tav"
    assert (rec["N"], rec["n_skipped"], rec["fps_source"], rec["window_frames"]) == (2, 1, ["manifest"], 1)
    assert rec["mean"] == 1.0 and rec["std"] == 0.0 and rec["fps"] == [FPS] and rec["frames"] == [T]
    v = rec["values"]["fake_stage2"]
    assert [p["score"] for p in v["per_video"]] == [1.0, 1.0, None] and v["skipped_keys"] == [2]
    assert rec["backbone"]["farneback"]["winsize"] == 15 and "22050" in rec["preprocessing"]["audio"]
    out = capsys.readouterr().out
    assert "N=2" in out and "1.0000 ± 0.0000" in out and "1 video(s) skipped" in out
    reversed_ = run_tool(av_align, kit, exp_tag, "--video_folder", "fake_stage1", out=kit["root"] / f"{style}.json")
    expected = summarize(_expected_align(kit["runs"][style], "fake_stage1", FPS))
    assert reversed_["mean"] == pytest.approx(expected["mean"]) and reversed_["mean"] < 1.0


def test_av_align_legacy_folders_time_axis(kit):
    """Upstream's 6-fps files without a manifest: the container's fps stretches the time axis and breaks the
    alignment; --fps with the dataset rate restores it."""
    rec = run_tool(av_align, kit, "tacm_landscape", out=kit["root"] / "legacy.json")
    assert "fake2_6fps" in rec["values"] and rec["fps_source"] == ["container"] and rec["fps"] == [6]
    assert rec["mean"] == pytest.approx(summarize(_expected_align(kit["runs"]["legacy"], "fake2_6fps", None))["mean"])
    assert rec["mean"] < 1.0
    fixed = run_tool(av_align, kit, "tacm_landscape", "--fps", str(FPS), out=kit["root"] / "legacy_fps.json")
    assert fixed["mean"] == 1.0 and fixed["fps_source"] == ["--fps"]


def _decoded(run: Path, folder: str) -> np.ndarray:
    return np.stack([read_video(p)[0] for p in sorted((run / folder).glob("*.mp4"))])


@pytest.mark.parametrize("module, field", [(first_frame_consistency, "first_frame"),
                                           (temporal_consistency, "temporal")])
def test_consistency_tools(kit, module, field):
    enc = get_encoder("clip", kit["clip"])
    for style, exp_tag in (("ta2v", "1_tav_URMP"), ("tia2v", "0_tacm_URMP"), ("legacy", "tacm_landscape")):
        rec = run_tool(module, kit, exp_tag, out=kit["root"] / f"{module.NAME}_{style}.json")
        folder = "fake2_6fps" if style == "legacy" else "fake_stage2"
        assert RECORD_KEYS <= rec.keys() and rec["metric"] == module.NAME and rec["N"] == 3
        expected = getattr(consistency_scores(enc, _decoded(kit["runs"][style], folder)), field)
        assert rec["mean"] == pytest.approx(expected.mean(), abs=1e-4)
        assert rec["std"] == pytest.approx(expected.std(), abs=1e-4)
        assert rec["values"][folder]["value"] == rec["mean"] and rec["backbone"]["name"] == "CLIP ViT-B/32"
        assert rec["preprocessing"]["colour"] == "RGB" and rec["preprocessing"]["normalisation"] == "CLIP mean/std"
    up = run_tool(module, kit, "tacm_URMP", "--video_folder", "fake_stage1", "--protocol", "ta2v",
                  "--batch_size", "2", out=kit["root"] / f"{module.NAME}_up.json")
    assert up["N"] == 2 and up["preprocessing"]["colour"] == "BGR" and "fake_stage1" in up["values"]
    expected = getattr(consistency_scores(enc, _decoded(kit["runs"]["tia2v"], "fake_stage1")[:2], "ta2v"), field)
    assert up["mean"] == pytest.approx(expected.mean(), abs=1e-4)


def test_tool_errors_are_one_line(kit, capsys):
    argv = ["--exp_tag", "tacm_URMP", "--results_root", str(kit["results"]), "--audio_folder", "nowhere"]
    assert av_align.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("av_align.py: error:") and "\n" not in err and "nowhere" in err
    argv = ["--exp_tag", "tacm_URMP", "--results_root", str(kit["results"]), "--clip_ckpt", str(kit["root"] / "x.pt")]
    assert temporal_consistency.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "x.pt" in err


def test_tool_runs_as_a_file(kit):
    repo = Path(__file__).resolve().parents[1]
    out = kit["root"] / "as_file.json"
    argv = [sys.executable, "tools/tia2v/temporal_consistency.py", "--exp_tag", "tacm_URMP", "--results_root",
            str(kit["results"]), "--clip_ckpt", str(kit["clip"]), "--video_folder", "fake_stage2", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr
    assert "N=3" in done.stdout and json.loads(out.read_text())["metric"] == "temporal_consistency"
