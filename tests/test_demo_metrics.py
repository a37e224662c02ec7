"""The demo's ``metrics`` stage (scripts/demo_metrics.py) on a tiny fake results folder, and the random I3D
variant it uses so that FVD runs on the demo's 8-frame clips (tav.metrics.i3d.I3DConfig)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from tav.data.audio import write_wav
from tav.data.video import write_video
from tav.encoders.joint import save_tiny_joint
from tav.errors import InputError
from tav.metrics.i3d import I3D, MIN_FRAMES, TINY_I3D, I3DConfig, i3d_features, load_i3d, save_tiny_i3d
from tav.utils.fileio import write_text_atomic
from tav_scripts import demo as demo_script
from tav_scripts import demo_metrics

N, T, SIZE, FPS, RATE = 3, 4, 16, 30, 48000
PREFIX = {"real": "groundtruth", "fake_stage1": "generation_stage1", "fake_stage2": "generation_stage2"}


def _clip(rng: np.random.Generator, frames: int = T) -> np.ndarray:
    """``(frames, SIZE, SIZE, 3)`` uint8: smooth random blocks (they survive the mp4 round trip)."""
    small = rng.integers(0, 256, size=(frames, 4, 4, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, SIZE // 4, axis=1), SIZE // 4, axis=2)


def make_results(run) -> None:
    """N samples in the sampler's layout; ``fake_stage1`` holds byte copies of ``real`` (so its FVD/FID against
    ``real`` is 0 and its CLIP scores equal real's), ``fake_stage2`` other clips."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N):
        key = f"test_{i:04d}_clip_{i}"
        audio = (0.3 * np.sin(2 * np.pi * (220 + 110 * i) * np.arange(T * RATE // FPS) / RATE)).astype(np.float32)
        files = {f: f"{f}/{p}_{key}.mp4" for f, p in PREFIX.items()}
        files.update(audio=f"audio/groundtruth_{key}.wav", txt=f"txt/groundtruth_{key}.txt")
        write_video(run / files["real"], _clip(rng), FPS, audio=audio, sample_rate=RATE)
        (run / files["fake_stage1"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / files["real"], run / files["fake_stage1"])
        write_video(run / files["fake_stage2"], _clip(rng), FPS, audio=audio, sample_rate=RATE)
        write_wav(run / files["audio"], audio, RATE)
        caption = f"A shape moves to instrument {i}."
        write_text_atomic(run / files["txt"], caption + "\n")
        rows.append({"id": i, "stem": f"test_{i:04d}_clip", "caption": caption, "fps": FPS, "sample_rate": RATE,
                     "files": files})
    (run / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_metrics_stage_runs_the_four_tools_and_the_judges(tmp_path, capsys):
    out, ckpts = tmp_path / "demo", tmp_path / "ckpts"
    make_results(out / demo_metrics.RUN_TAG)
    with pytest.raises(InputError, match="run the demo's joint stage first"):
        demo_script.main(["--out", str(out), "--stages", "metrics", "--ckpt_dir", str(ckpts)])
    save_tiny_joint(ckpts / "joint_encoder.pt")  # what the joint stage leaves there
    run = demo_script.main(["--out", str(out), "--stages", "metrics", "--ckpt_dir", str(ckpts)])
    text = capsys.readouterr().out
    assert "[metrics]" in text and "meaningless" in text and "8-frame clips" in text
    records = {}
    for name in ("clip_audio", "clip_text", "fvd", "fid"):
        path = out / demo_metrics.RUN_TAG / f"metrics_{name}.json"
        assert run.state["metrics"][name] == path and str(path) in text
        rec = records[name] = json.loads(path.read_text())
        assert rec["metric"] == name and rec["N"] == N and rec["frames"] == [T]
        assert ("meaningless" if name in ("fvd", "fid") else "joint encoder") in rec["demo"]["note"]
        assert all(v["N"] == N and math.isfinite(v["value"]) for v in rec["values"].values())
    assert set(records["clip_text"]["values"]) == set(PREFIX)
    assert set(records["fvd"]["values"]) == set(records["fid"]["values"]) == {"fake_stage1", "fake_stage2"}
    assert records["fvd"]["demo"]["i3d_config"] == {"width": 0.25, "time_pool": 1}
    assert records["fvd"]["backbone"]["path"] == str(ckpts / demo_metrics.I3D_FILE)
    for name in ("fvd", "fid"):  # identical files: distance 0; different clips: clearly positive
        values = records[name]["values"]
        assert abs(values["fake_stage1"]["value"]) < 1e-6 and values["fake_stage2"]["value"] > 1e-3
    for name in ("clip_audio", "clip_text"):
        values = records[name]["values"]
        assert values["fake_stage1"]["value"] == pytest.approx(values["real"]["value"], abs=1e-9)
    assert records["fid"]["values"]["fake_stage1"]["samples_per_side"] == N * T  # per-frame FID
    assert "fvd.py" in (out / "metrics_tools.txt").read_text()  # the tools' own tables are kept
    assert records["clip_audio"]["backbone"]["path"] == str(ckpts / "joint_encoder.pt")
    judged = run.state["judges"][demo_metrics.RUN_TAG]["folders"]  # the judges, also in the results folder
    assert set(judged) == set(PREFIX) and judged["fake_stage1"]["fd_judge"] == pytest.approx(0, abs=1e-6)
    saved = json.loads((out / demo_metrics.RUN_TAG / "metrics_synthetic.json").read_text())["folders"]
    assert saved["real"]["n"] == N and saved["real"]["unjudged"] == N  # these captions name no colour or shape
    assert "judges of the synthetic domain" in text


def test_metrics_stage_needs_a_results_folder(tmp_path):
    with pytest.raises(InputError, match="sample stage first"):
        demo_script.main(["--out", str(tmp_path), "--stages", "metrics", "--ckpt_dir", str(tmp_path / "c")])


def test_tiny_i3d_variant_round_trip_and_frame_bounds(tmp_path):
    path = save_tiny_i3d(tmp_path / "i3d.pt", seed=3, config=TINY_I3D)
    model = load_i3d(path)
    assert isinstance(model, I3D) and model.config == TINY_I3D and model.min_frames == 1
    fresh = I3D(config=TINY_I3D)
    assert fresh.logits.conv3d.weight.shape == (400, 256, 1, 1, 1)  # a quarter of 1024 channels
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    clips = np.random.default_rng(0).integers(0, 256, size=(2, 8, 16, 16, 3), dtype=np.uint8)
    feats = i3d_features(model, clips)
    assert feats.shape == (2, 400) and torch.isfinite(feats).all() and (feats[0] - feats[1]).abs().max() > 1e-4
    # the Kinetics-400 architecture still refuses 8 frames (never padded) ...
    assert I3DConfig().min_frames == MIN_FRAMES == 9
    with pytest.raises(InputError, match="at least 9 frames"):
        i3d_features(I3D(), clips)
    # ... and the bound is tight: time_pool 2 runs on 9 frames, its final pool does not fit 8
    narrow = I3D(config=I3DConfig(width=0.125, time_pool=2)).eval()
    assert i3d_features(narrow, np.concatenate([clips, clips[:, :1]], axis=1)).shape == (2, 400)
    with torch.inference_mode(), pytest.raises(RuntimeError):
        narrow(torch.zeros(1, 3, 8, 224, 224))


def test_bad_i3d_config_in_file_is_one_line_error(tmp_path):
    path = save_tiny_i3d(tmp_path / "i3d.pt", config=TINY_I3D)
    obj = torch.load(path, weights_only=True)
    obj["config"]["depth"] = 3
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="unknown key"):
        load_i3d(tmp_path / "bad.pt")


def test_wrong_checkpoint_for_i3d_or_inception_names_what_it_holds(tmp_path):
    """A joint-encoder file as --i3d_ckpt, an I3D file as --inception_ckpt: one line naming the model the file
    holds, the key counts and the file to pass."""
    from tav.encoders.joint import save_tiny_joint
    from tav.metrics.inception import load_inception

    joint = save_tiny_joint(tmp_path / "joint.pt")
    with pytest.raises(InputError, match=r"it holds a tav joint checkpoint; \d+ missing \(first [^)]+\), \d+ "
                                         r"unexpected .*; pass --i3d_ckpt with i3d_pretrained_400.pt") as err:
        load_i3d(joint)
    assert "\n" not in str(err.value)
    i3d = save_tiny_i3d(tmp_path / "i3d.pt", config=TINY_I3D)
    with pytest.raises(InputError, match=r"do not fit the TF-FID Inception .*it holds a tav i3d checkpoint; .*"
                                         r"pass --inception_ckpt with pt_inception"):
        load_inception(i3d)
