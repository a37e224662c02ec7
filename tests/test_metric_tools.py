"""Metric tools (tools/clip_score/*.py, tools/tf_fvd/*.py) and tav.metrics.{folders,clip_score,cache,runs}: the
README seed lines on a tiny results folder with tiny weight files, values against hand computations, the
protocol switch, --mode size, folder lookup and pairing errors, and the feature cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tav.data.audio import write_wav
from tav.data.video import read_video, write_video
from tav.encoders.registry import get_encoder, save_tiny_encoders
from tav.errors import InputError
from tav.metrics import folders
from tav.metrics.cache import FeatureCache
from tav.metrics.clip_score import clip_text_scores, image_features
from tav.metrics.i3d import save_tiny_i3d
from tav.metrics.inception import save_tiny_inception
from tav.utils.fileio import write_text_atomic
from tav_tools.clip_score import clip_audio, clip_text
from tav_tools.tf_fvd import fid, fvd

N, T, SIZE, FPS, RATE = 3, 16, 32, 30, 48000
STEMS = ("a_1", "b_2", "c_3")
CAPTIONS = ("a violin plays", "a cello and a flute", "drums")
RECORD_KEYS = {"metric", "values", "N", "protocol", "backbone", "weights_sha256", "preprocessing", "fps", "frames",
               "videos", "folders", "run_folder", "manifest_sha256", "tav_version"}
PREFIX = {"real": "groundtruth", "fake_stage1": "generation_stage1", "fake_stage2": "generation_stage2"}


def _video(seed: int, colour: tuple[int, int, int] | None = None, frames: int = T) -> np.ndarray:
    """``(frames, SIZE, SIZE, 3)`` uint8: a smooth random pattern drifting over time, or one flat colour."""
    if colour is not None:
        return np.broadcast_to(np.array(colour, np.uint8), (frames, SIZE, SIZE, 3)).copy()
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(SIZE, SIZE), mode="bilinear")[0]
    frames = [torch.roll(base, shifts=t, dims=-1) for t in range(frames)]
    return (torch.stack(frames).permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


def make_results(run: Path, colour: tuple[int, int, int] | None = None, frames: int = T) -> Path:
    """A results folder of N samples of ``frames`` frames in the ``tav.pipelines.results`` layout, with
    manifest.jsonl."""
    rows = []
    n_audio = frames * RATE // FPS
    for i, (stem, caption) in enumerate(zip(STEMS, CAPTIONS, strict=True)):
        key = f"{stem}_{i}"
        audio = 0.3 * np.sin(2 * np.pi * (220 + 110 * i) * np.arange(n_audio) / RATE).astype(np.float32)
        files = {"audio": f"audio/groundtruth_{key}.wav", "txt": f"txt/groundtruth_{key}.txt"}
        for k, (folder, prefix) in enumerate(PREFIX.items()):
            files[folder] = f"{folder}/{prefix}_{key}.mp4"
            write_video(run / files[folder], _video(10 * i + k, colour, frames), FPS, audio=audio, sample_rate=RATE)
        write_wav(run / files["audio"], audio, RATE)
        write_text_atomic(run / files["txt"], caption + "\n")
        rows.append({"id": i, "stem": stem, "caption": caption, "fps": FPS, "sample_rate": RATE, "files": files})
    (run / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    enc = save_tiny_encoders(root / "weights")
    results = root / "results"
    make_results(results / "1_tav_URMP")
    make_results(results / "9_red", colour=(255, 0, 0))
    make_results(root / "short" / "1_tav_URMP", frames=2)  # FID: the full-size tiny Inception costs per frame
    weights = ["--clip_ckpt", str(enc["clip"]), "--audioclip_ckpt", str(enc["audioclip"]),
               "--wav2clip_ckpt", str(enc["wav2clip"]), "--i3d_ckpt", str(save_tiny_i3d(root / "weights/i3d.pt")),
               "--inception_ckpt", str(save_tiny_inception(root / "weights/inception.pt"))]
    return {"root": root, "results": results, "run": results / "1_tav_URMP", "enc": enc, "weights": weights}


def run_tool(module, kit, line: str, *extra: str, out: Path | None = None) -> dict:
    argv = [*line.split(), "--results_root", str(kit["results"]), *kit["weights"], *extra]
    if out is not None:
        argv += ["--out", str(out)]
    assert module.main(argv) == 0
    path = out if out is not None else kit["results"] / line.split()[1] / f"metrics_{module.TOOL[:-3]}.json"
    return json.loads(path.read_text())


CLIP_AUDIO = "--exp_tag 1_tav_URMP --audio_folder audio --video_folder fake_stage2 --audio_emb_model audioclip"
CLIP_TEXT = "--exp_tag 1_tav_URMP --txt_folder txt --video_folder fake_stage2 --batch_size 5"


def test_clip_text_seed_line_equals_hand_computation(kit):
    rec = run_tool(clip_text, kit, CLIP_TEXT)
    assert RECORD_KEYS <= rec.keys()
    assert rec["N"] == 3 and rec["protocol"] == "tav" and rec["fps"] == [FPS] and rec["frames"] == [T]
    assert rec["weights_sha256"] == folders.file_sha256(kit["enc"]["clip"])
    assert rec["manifest_sha256"] == folders.file_sha256(kit["run"] / "manifest.jsonl")
    enc = get_encoder("clip", kit["enc"]["clip"])
    per_video = []
    with torch.no_grad():
        for i in range(N):
            frames, _ = read_video(kit["run"] / f"fake_stage2/generation_stage2_{STEMS[i]}_{i}.mp4")
            x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255  # RGB [0,1]
            x = F.interpolate(x, size=(224, 224), mode="bicubic", antialias=True).clamp(0, 1)
            img = F.normalize(enc.encode_images(x).double(), dim=-1)
            txt = F.normalize(enc.encode_texts([CAPTIONS[i]]).double(), dim=-1)
            per_video.append(float((100 * img @ txt.T).mean()))
    value = rec["values"]["fake_stage2"]
    assert value["value"] == pytest.approx(np.mean(per_video), abs=1e-4)
    assert value["std"] == pytest.approx(np.std(per_video), abs=1e-4)
    assert [v["score"] for v in value["per_video"]] == pytest.approx(per_video, abs=1e-4)


def test_batch_remainder_only_dropped_under_ta2v(kit, tmp_path):
    line = "--exp_tag 1_tav_URMP --video_folder fake_stage2 --batch_size 2"
    assert run_tool(clip_text, kit, line, out=tmp_path / "a.json")["N"] == 3
    rec = run_tool(clip_text, kit, line, "--protocol", "ta2v", out=tmp_path / "b.json")
    assert rec["N"] == 2 and rec["protocol"] == "ta2v" and rec["preprocessing"]["colour"] == "BGR"


def test_protocol_switch_sees_bgr(kit, tmp_path):
    """A pure-red video is blue to upstream's BGR pipeline: the ta2v frame features are the raw tower's on
    a pure-blue frame, and the score changes with the protocol."""
    enc = get_encoder("clip", kit["enc"]["clip"])
    red, blue = _video(0, (255, 0, 0))[None], _video(0, (0, 0, 255))[None]
    ta2v = image_features(enc, red, "ta2v")
    with torch.no_grad():
        x = torch.from_numpy(blue[0]).permute(0, 3, 1, 2).float() / 255
        raw = enc.model.encode_image(F.interpolate(x, size=(224, 224), mode="bilinear"))
    assert np.allclose(ta2v[0], F.normalize(raw.double(), dim=-1).numpy(), atol=1e-5)
    line = "--exp_tag red --video_folder fake_stage2"
    tav = run_tool(clip_text, kit, line, out=tmp_path / "tav.json")["values"]["fake_stage2"]["value"]
    up = run_tool(clip_text, kit, line, "--protocol", "ta2v", "--batch_size", "1",
                  out=tmp_path / "ta2v.json")["values"]["fake_stage2"]["value"]
    assert abs(tav - up) > 1e-3


def test_mode_size_chunks_in_manifest_order(kit, tmp_path):
    rec = run_tool(clip_text, kit, "--exp_tag 1_tav_URMP --video_folder fake_stage2 --mode size --size 2",
                   out=tmp_path / "size.json")
    v = rec["values"]["fake_stage2"]
    scores = [p["score"] for p in v["per_video"]]
    assert [p["key"] for p in v["per_video"]] == [0, 1, 2]
    assert v["chunk_sizes"] == [2, 1]
    assert v["values"] == pytest.approx([np.mean(scores[:2]), scores[2]])
    assert v["mean"] == pytest.approx(np.mean(v["values"])) and v["std"] == pytest.approx(np.std(v["values"]))
    one = run_tool(clip_text, kit, "--exp_tag 1_tav_URMP --video_folder fake_stage2 --mode size --size 5",
                   out=tmp_path / "one.json")["values"]["fake_stage2"]
    assert one["chunk_sizes"] == [3] and one["std"] == 0 and one["mean"] == pytest.approx(np.mean(scores))


def test_clip_audio_seed_line_and_wav2clip(kit, tmp_path):
    rec = run_tool(clip_audio, kit, CLIP_AUDIO)
    assert RECORD_KEYS <= rec.keys() and rec["N"] == 3
    v = rec["values"]["fake_stage2"]
    scale = v["logit_scaled"]["scale"]
    assert 1.0 <= scale <= 100.0
    assert v["logit_scaled"]["value"] == pytest.approx(v["value"] * scale / 100, rel=1e-6)
    assert abs(v["value"]) <= 100
    up = run_tool(clip_audio, kit, CLIP_AUDIO, "--protocol", "ta2v", out=tmp_path / "up.json")
    assert up["N"] == 2 and up["values"]["fake_stage2"]["value"] == up["values"]["fake_stage2"]["logit_scaled"]["value"]
    w2c = run_tool(clip_audio, kit, "--exp_tag 1_tav_URMP --audio_emb_model wav2clip", out=tmp_path / "w.json")
    assert set(w2c["values"]) == {"real", "fake_stage1", "fake_stage2"}
    assert w2c["backbone"]["image_tower"]["sha256"] == folders.file_sha256(kit["enc"]["clip"])


def test_joint_encoder_scores_audio_and_text(kit, tmp_path):
    """``--audio_emb_model joint`` / ``--text_emb_model joint``: the joint encoder's frame tower against its audio
    and caption towers, 100·cos as for CLIP; the text score equals a hand computation."""
    from tav.encoders.joint import save_tiny_joint

    joint = save_tiny_joint(tmp_path / "joint.pt", seed=1)
    audio = run_tool(clip_audio, kit, "--exp_tag 1_tav_URMP --audio_emb_model joint --video_folder fake_stage2",
                     "--joint_ckpt", str(joint), out=tmp_path / "a.json")
    assert audio["N"] == 3 and audio["backbone"]["sha256"] == folders.file_sha256(joint)
    assert "logit_scaled" not in audio["values"]["fake_stage2"] and abs(audio["values"]["fake_stage2"]["value"]) <= 100
    text = run_tool(clip_text, kit, CLIP_TEXT, "--text_emb_model", "joint", "--joint_ckpt", str(joint),
                    out=tmp_path / "t.json")
    enc = get_encoder("joint", joint)
    with torch.no_grad():
        frames, _ = read_video(kit["run"] / f"fake_stage2/generation_stage2_{STEMS[0]}_0.mp4")
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
        x = F.interpolate(x, size=(64, 64), mode="bicubic", antialias=True).clamp(0, 1)
        img = F.normalize(enc.encode_images(x).double(), dim=-1)
        txt = F.normalize(enc.encode_texts([CAPTIONS[0]]).double(), dim=-1)
    first = text["values"]["fake_stage2"]["per_video"][0]["score"]
    assert first == pytest.approx(float((100 * img @ txt.T).mean()), abs=1e-4)


def test_run_folder_lookup(kit, tmp_path, capsys):
    assert folders.find_run(kit["results"], "tav_URMP") == kit["run"]
    assert folders.find_run(kit["results"], "1_tav_URMP") == kit["run"]
    root = tmp_path / "two"
    for name in ("1_tav_URMP", "2_tav_URMP", "other"):
        (root / name).mkdir(parents=True)
    with pytest.raises(InputError, match="1_tav_URMP, 2_tav_URMP"):
        folders.find_run(root, "tav_URMP")
    assert clip_text.main(["--exp_tag", "nothing", "--results_root", str(kit["results"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clip_text.py: error:") and "\n" not in err and "1_tav_URMP, 9_red" in err


def test_missing_partner_is_one_line_naming_it(kit, tmp_path, capsys):
    run = tmp_path / "results" / "5_tav_URMP"
    shutil.copytree(kit["run"], run)
    gone = run / "fake_stage2" / "generation_stage2_b_2_1.mp4"
    gone.unlink()
    argv = ["--exp_tag", "tav_URMP", "--results_root", str(run.parent), "--video_folder", "fake_stage2",
            *kit["weights"]]
    assert clip_text.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(gone) in err
    (run / "manifest.jsonl").unlink()  # suffix pairing: the txt of sample 1 has no video partner
    assert clip_text.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no file ending in _1.mp4" in err and "groundtruth_b_2_1.txt" in err


def test_pairing_by_suffix_and_sorted_order(tmp_path):
    run = tmp_path / "r"
    for folder, names in {"real": ["x_10", "y_2"], "fake": ["q_2", "p_10", "z_10_it0"]}.items():
        (run / folder).mkdir(parents=True)
        for name in names:
            (run / folder / f"{name}.mp4").write_bytes(b"")
    rf = folders.open_run(run)
    src = {"real": folders.Source(rf, "real"), "fake": folders.Source(rf, "fake")}
    by_key = folders.pair_sources(src)
    assert [(p.key, p.files["real"].stem, p.files["fake"].stem) for p in by_key] == [(2, "y_2", "q_2"),
                                                                                    (10, "x_10", "p_10")]
    upstream = folders.pair_sources(src, "ta2v")
    assert [(p.files["real"].stem, p.files["fake"].stem) for p in upstream] == [("x_10", "p_10"), ("y_2", "q_2")]
    assert len(folders.drop_remainder(by_key, 3)) == 0 and len(folders.drop_remainder(by_key, 1)) == 2


def test_feature_cache_keys(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"abc")
    calls = []

    def compute(paths):
        calls.append(len(paths))
        return np.ones((len(paths), 4))

    cache = FeatureCache(tmp_path / "cache", "net", "tav", {"resize": "torch"})
    assert cache.features([video, video], compute).shape == (2, 4) and calls == [2]
    again = FeatureCache(tmp_path / "cache", "net", "tav", {"resize": "torch"})
    assert again.features([video], compute).shape == (1, 4) and (again.hits, again.misses) == (1, 0)
    assert calls == [2]  # reused
    FeatureCache(tmp_path / "cache", "net", "ta2v", {"resize": "torch"}).features([video], compute)
    FeatureCache(tmp_path / "cache", "other", "tav", {"resize": "torch"}).features([video], compute)
    FeatureCache(tmp_path / "cache", "net", "tav", {"resize": "tf1"}).features([video], compute)
    video.write_bytes(b"abd")
    FeatureCache(tmp_path / "cache", "net", "tav", {"resize": "torch"}).features([video], compute)
    assert calls == [2, 1, 1, 1, 1]
    assert not list((tmp_path / "cache").glob(".*"))  # no temp files left


def test_clip_text_scores_function_matches_tool_pieces(kit):
    enc = get_encoder("clip", kit["enc"]["clip"])
    videos = np.stack([_video(i) for i in range(2)])
    scores = clip_text_scores(enc, videos, ["a violin plays", ["a", "cello"]])
    lines = clip_text_scores(enc, videos, ["a violin plays", ["a", "cello"]], protocol="ta2v")
    assert scores.shape == (2,) and lines.shape == (2,) and np.all(np.abs(scores) <= 100)
    assert clip_text_scores(enc, videos[1:], ["a cello"])[0] == pytest.approx(scores[1], abs=1e-6)


def test_seed_line_runs_as_a_file(kit):
    """``python tools/clip_score/clip_text.py <seed line>`` from the repository root (the tools' import path)."""
    repo = Path(__file__).resolve().parents[1]
    argv = [sys.executable, "tools/clip_score/clip_text.py", *CLIP_TEXT.split(), "--results_root",
            str(kit["results"]), *kit["weights"], "--out", str(kit["root"] / "as_file.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "N=3" in done.stdout and "sha256" in done.stdout
    assert json.loads((kit["root"] / "as_file.json").read_text())["N"] == 3


FVD = "--exp_tag 1_tav_URMP --real_folder real --fake_folder fake_stage2 --mode full"


def test_fvd_seed_line_cache_and_identical_sets(kit, monkeypatch, tmp_path):
    """The seed line; a second run computes no I3D features (all cached); real against itself is ~0 and
    reuses the cached real features; ta2v drops the odd clip and computes tf1-resized BGR features anew."""
    counted, real_fn = [], fvd.i3d_features

    def counting(model, videos, **kw):
        counted.append(len(videos))
        return real_fn(model, videos, **kw)

    monkeypatch.setattr(fvd, "i3d_features", counting)
    cache = ["--feature_cache", str(tmp_path / "cache")]
    rec = run_tool(fvd, kit, FVD, *cache)
    assert RECORD_KEYS <= rec.keys() and rec["N"] == 3 and rec["frames"] == [T]
    assert rec["folders"]["fake"] == [str(kit["run"] / "fake_stage2")]
    assert counted == [3, 3] and rec["values"]["fake_stage2"]["value"] > 0
    again = run_tool(fvd, kit, FVD, *cache, out=tmp_path / "again.json")
    assert counted == [3, 3] and again["values"]["fake_stage2"]["cache"] == {"hits": 6, "misses": 0}
    assert again["values"]["fake_stage2"]["value"] == rec["values"]["fake_stage2"]["value"]
    same = run_tool(fvd, kit, "--exp_tag 1_tav_URMP --fake_folder real", *cache, out=tmp_path / "same.json")
    assert counted == [3, 3] and abs(same["values"]["real"]["value"]) < 1e-6
    size = run_tool(fvd, kit, FVD.replace("full", "size"), "--size", "2", *cache, out=tmp_path / "size.json")
    v = size["values"]["fake_stage2"]
    assert counted == [3, 3] and v["chunk_sizes"] == [2] and v["skipped_chunks"] == [1] and len(v["values"]) == 1


def test_fvd_ta2v_feeds_bgr_tf1_and_drops_the_remainder(kit, monkeypatch, tmp_path):
    """What --protocol ta2v hands the feature network (a cheap stand-in): BGR frames, tf1 resize, 2 clips."""
    seen = []

    def stand_in(model, videos, resize="torch", **kw):
        seen.append((videos.copy(), resize))
        return torch.from_numpy(videos.reshape(len(videos), -1)[:, :400].astype(np.float64))

    monkeypatch.setattr(fvd, "i3d_features", stand_in)
    line = "--exp_tag red --fake_folder fake_stage2 --feature_cache none"
    up = run_tool(fvd, kit, line, "--protocol", "ta2v", out=tmp_path / "up.json")
    assert up["N"] == 2 and up["preprocessing"]["colour"] == "BGR" and up["notes"]
    (real, resize), _ = seen
    assert resize == "tf1" and real.shape == (2, T, SIZE, SIZE, 3)
    assert real[..., 2].mean() > 200 and real[..., 0].mean() < 50  # red video, BGR order
    seen.clear()
    tav = run_tool(fvd, kit, line, out=tmp_path / "tav.json")
    (real, resize), _ = seen
    assert tav["N"] == 3 and resize == "torch" and real[..., 0].mean() > 200


def test_fid_seed_line_per_frame(kit, tmp_path):
    root = kit["root"] / "short"
    argv = [*"--exp_tag 1_tav_URMP --real_folder real --fake_folder fake_stage2 --mode full".split(),
            "--results_root", str(root), *kit["weights"]]
    assert fid.main(argv) == 0
    rec = json.loads((root / "1_tav_URMP" / "metrics_fid.json").read_text())
    assert RECORD_KEYS <= rec.keys() and rec["N"] == 3 and rec["frames"] == [2]
    assert "T*N samples" in rec["preprocessing"]["samples"] and rec["values"]["fake_stage2"]["value"] > 0
    assert rec["weights_sha256"] == folders.file_sha256(kit["root"] / "weights/inception.pt")
    assert rec["values"]["fake_stage2"]["samples_per_side"] == 3 * 2


def test_missing_weight_file_is_one_line(kit, capsys):
    argv = [*CLIP_TEXT.split(), "--results_root", str(kit["results"]), "--clip_ckpt", str(kit["root"] / "no.pt")]
    assert clip_text.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(kit["root"] / "no.pt") in err and "--clip_ckpt" in err


@pytest.mark.parametrize("module, flags", [
    (clip_audio, "--audio_tag 2_tav_URMP --real_video_folder real --fake1_video_folder fake_stage1 "
                 "--fake2_video_folder fake_stage2 --sequence_length 16 --batch_size 2 --num_workers 8 --resize 64 64 "
                 "--idx 0 --num_folds 1 --print_256 --audio_emb_model wav2clip"),
    (clip_text, "--real_tag 2_tav_URMP --real_video_folder real --fake1_video_folder fake_stage1 "
                "--fake2_video_folder fake_stage2 --sequence_length 16 --batch_size 2 --num_workers 8 --resize 64 64 "
                "--idx 0 --num_folds 1 --print_256"),
    (fvd, "--fake1_folder fake --fake2_folder fake --size 256 --resize 64 64 --num_workers 8 --mode size"),
    (fid, "--fake1_folder fake --fake2_folder fake --size 256 --resize 64 64 --num_workers 8 --mode size"),
])
def test_upstream_flags_parse(module, flags):
    args = module.build_parser().parse_args(["--exp_tag", "1_tav_URMP", *flags.split()])
    assert args.exp_tag == "1_tav_URMP" and args.resize == [64, 64] and args.protocol == "tav"


def test_binary_caption_and_unwritable_outputs_are_one_line(kit, tmp_path, capsys):
    """A caption that is not text, and a record that cannot be written, stop before any weights load."""
    results = tmp_path / "results"
    shutil.copytree(kit["run"], results / "1_tav_URMP")
    (results / "1_tav_URMP" / "manifest.jsonl").unlink()  # captions come from txt/
    bad = next((results / "1_tav_URMP" / "txt").glob("*.txt"))
    bad.write_bytes(b"\xff\xfe\x00binary\x9c")
    argv = [*CLIP_TEXT.split(), "--results_root", str(results), *kit["weights"]]
    assert clip_text.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(bad) in err and "not UTF-8" in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = ["--exp_tag", "1_tav_URMP", "--real_folder", "real", "--fake_folder", "fake_stage2",
            "--results_root", str(kit["results"]), *kit["weights"], "--out", str(blocker / "fvd.json")]
    assert fvd.main(line) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--out" in err and "cannot write there" in err
