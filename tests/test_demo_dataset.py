"""The synthetic demo dataset (tav.data.demo), the contact sheet, and scripts/{make_demo_dataset,demo}.py."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from tav.data.audio import read_audio
from tav.data.demo import COLOURS, INSTRUMENTS, SHAPES, build_demo_dataset, get_preset, make_clip
from tav.data.layout import clip_files
from tav.data.video import probe_video, read_video
from tav.errors import InputError
from tav.utils.contact_sheet import LABEL_HEIGHT, contact_sheet, save_png
from tav_scripts import demo as demo_script
from tav_scripts import make_demo_dataset

from .helpers import REPO, run_script


def _frame_change(frames: np.ndarray) -> np.ndarray:
    """Mean absolute change from frame i-1 to frame i, for i = 1..T-1: float (T-1,)."""
    return np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))


def test_same_seed_same_clip_other_seed_other_clip():
    f1, a1, c1, m1 = make_clip(7, "urmp", 32)
    f2, a2, c2, m2 = make_clip(7, "urmp", 32)
    assert np.array_equal(f1, f2) and np.array_equal(a1, a2) and c1 == c2 and m1 == m2
    f3, a3, _, _ = make_clip(8, "urmp", 32)
    assert not np.array_equal(f1, f3) and not np.array_equal(a1, a3)


def test_two_builds_in_two_processes_write_identical_files(tmp_path):
    """Every file of the dataset (mp4 bytes included) is the same in two builds, each in a fresh process, the
    second writing its clips from two worker processes; 64 px clips are the width at which x264's lookahead used
    to depend on the heap."""
    for name, workers in (("one", 1), ("two", 2)):
        run_script("scripts/make_demo_dataset.py", ["--out", tmp_path / name, "--n_train", 6, "--n_test", 2,
                                                    "--workers", workers])
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".mp4"]) == 8
    assert files == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f


@pytest.mark.parametrize("preset, frames, fps", [("urmp", 90, 30), ("landscape", 30, 10)])
def test_presets_shapes_and_ranges(preset, frames, fps):
    f, a, _, meta = make_clip(3, preset, 48)
    assert f.shape == (frames, 48, 48, 3) and f.dtype == np.uint8
    assert a.shape == (144000,) and a.dtype == np.float32
    assert 0.2 < np.abs(a).max() <= 1.0
    assert meta["frames"] == frames and meta["fps"] == fps and meta["sample_rate"] == 48000
    # the melody depends on the seed only: the same notes at the same times in both presets
    assert meta["onset_samples"] == make_clip(3, "urmp", 16)[3]["onset_samples"]


@pytest.mark.parametrize("preset", ["urmp", "landscape"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_picture_jumps_exactly_at_note_onsets(preset, seed):
    frames, _, _, meta = make_clip(seed, preset, 32)
    onsets = meta["onsets"]
    assert onsets[0] == 0 and len(onsets) >= 5
    change = _frame_change(frames)
    at_onset = np.zeros(len(frames), bool)
    at_onset[onsets[1:]] = True
    assert change[at_onset[1:]].min() > 1.0  # every onset moves the shape visibly
    assert change[~at_onset[1:]].max() == 0.0  # and nothing moves between onsets


def test_sound_starts_at_each_onset():
    _, audio, _, meta = make_clip(5, "urmp", 16)
    env = np.abs(audio)
    for start in meta["onset_samples"]:
        # each note fades in from silence (attack) and is loud a few ms later
        assert env[start] < 0.05 and env[start + 480 : start + 2400].max() > 0.2


def test_caption_names_colour_shape_and_instrument():
    seen = set()
    for seed in range(12):
        _, _, caption, meta = make_clip(seed, "landscape", 16)
        assert meta["colour"] in COLOURS and meta["shape"] in SHAPES and meta["instrument"] in INSTRUMENTS
        words = caption.rstrip(".").split()
        assert meta["colour"] in words and meta["shape"] in words
        assert words[-1] == meta["instrument"]  # URMP-style: the class is the last word before the period
        seen.add(meta["instrument"])
    assert len(seen) >= 3


def test_pitch_drives_height():
    frames, _, _, meta = make_clip(11, "urmp", 64)
    shape_rows = []
    for onset in meta["onsets"]:
        mask = np.abs(frames[onset].astype(int) - frames[onset][0, 0].astype(int)).sum(-1) > 60
        shape_rows.append(np.nonzero(mask)[0].mean())
    order = np.argsort(meta["pitches"])
    assert np.all(np.diff(np.array(shape_rows)[order]) <= 1.0)  # higher pitch -> higher up (smaller row)


def test_unknown_preset_raises():
    with pytest.raises(InputError, match="urmp"):
        get_preset("nope")


def test_build_tiny_dataset_and_resume(tmp_path):
    out = tmp_path / "demo"
    s = build_demo_dataset(out, preset="urmp", n_train=3, n_test=2, size=32, seed=1)
    assert (s.written, s.skipped, s.clips) == (5, 0, {"train": 3, "test": 2})
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["split"] for r in rows] == ["train"] * 3 + ["test"] * 2
    assert len({r["stem"] for r in rows}) == 5
    for r in rows:
        f = clip_files(out / r["split"], r["stem"])
        frames, fps = read_video(f.mp4)
        assert frames.shape == (90, 32, 32, 3) and fps == 30
        assert probe_video(f.mp4).has_audio
        wav, from_mp4 = read_audio(f.audio, 48000), read_audio(f.mp4, 48000)
        assert len(wav) == 144000 and abs(len(from_mp4) - 144000) <= 1024
        assert f.txt.read_text().strip() == r["caption"]
        assert np.load(f.stft).shape == (90, 96, 16)
        ref, ref_audio, _, meta = make_clip(r["seed"], "urmp", 32)
        assert meta["onsets"] == r["onsets"]
        assert np.abs(frames.astype(int) - ref).mean() < 3  # lossy H.264, same picture
        assert np.abs(wav - ref_audio).max() < 1e-3  # 16-bit wav
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")}
    again = build_demo_dataset(out, preset="urmp", n_train=3, n_test=2, size=32, seed=1)
    assert (again.written, again.skipped) == (0, 5)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")} == mtimes
    with pytest.raises(InputError, match="another --out"):
        build_demo_dataset(out, preset="urmp", n_train=3, n_test=2, size=48, seed=1)
    # resumed by two workers: only the clip that lost a file is written again, the manifest is the same
    manifest = (out / "manifest.jsonl").read_bytes()
    clip_files(out / "train", rows[1]["stem"]).mp4.unlink()
    resumed = build_demo_dataset(out, preset="urmp", n_train=3, n_test=2, size=32, seed=1, workers=2)
    assert (resumed.written, resumed.skipped) == (1, 4)
    assert (out / "manifest.jsonl").read_bytes() == manifest
    with pytest.raises(InputError, match="workers >= 1"):
        build_demo_dataset(out, preset="urmp", n_train=3, n_test=2, size=32, seed=1, workers=0)


def test_make_demo_dataset_script_landscape(tmp_path, capsys):
    make_demo_dataset.main(["--out", str(tmp_path), "--preset", "landscape", "--n_train", "1", "--n_test", "1",
                            "--size", "16"])
    assert "1 train, 1 test" in capsys.readouterr().out
    (mp4,) = (tmp_path / "test" / "mp4").glob("*.mp4")
    frames, fps = read_video(mp4)
    assert frames.shape == (30, 16, 16, 3) and fps == 10


def test_contact_sheet_shape_and_png(tmp_path):
    videos = [np.full((9, 10, 12, 3), i * 40, np.uint8) for i in range(3)]
    videos[1] = np.arange(5, dtype=np.uint8)[:, None, None, None].repeat(10, 1).repeat(12, 2).repeat(3, 3)
    sheet = contact_sheet(videos, n_frames=4, pad=2)
    assert sheet.shape == (3 * 12 + 2, 4 * 14 + 2, 3) and sheet.dtype == np.uint8
    assert [sheet[14 + 2, 2 + 14 * c, 0] for c in range(4)] == [0, 1, 3, 4]  # evenly spaced, ends included
    labelled = contact_sheet(videos, n_frames=4, labels=["a", "b", "c"])
    assert labelled.shape == (3 * (12 + LABEL_HEIGHT) + 2, 4 * 14 + 2, 3)
    path = save_png(tmp_path / "sheet.png", labelled)
    assert np.array_equal(np.asarray(Image.open(path)), labelled)
    with pytest.raises(ValueError):
        contact_sheet([videos[0], np.zeros((4, 8, 8, 3), np.uint8)])


def test_demo_script_tiny(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--n_train", "2", "--n_test", "1", "--size", "32", "--sheet_frames", "4",
            "--stages", "data"]
    run = demo_script.main(argv)
    text = capsys.readouterr().out
    assert "[data]" in text and "2 train, 1 test" in text and "48000 Hz" in text
    sheet = np.asarray(Image.open(out / "contact_sheet.png"))
    assert sheet.shape == (3 * (32 + 2 + LABEL_HEIGHT) + 2, 4 * 34 + 2, 3)
    frames, fps = read_video(out / "sample.mp4")
    assert frames.shape == (90, 32, 32, 3) and fps == 30 and probe_video(out / "sample.mp4").has_audio
    assert len(run.state["manifest"]) == 3
    demo_script.main(argv)  # resumed: nothing rebuilt
    assert "0 written, 3 already complete" in capsys.readouterr().out
    # a later stage alone finds the dataset in --out, and names the stage it still lacks
    with pytest.raises(InputError, match=r"no finished vqgan stage; run it first \(--stages vqgan gpt\)"):
        demo_script.main([*argv[:-1], "gpt"])


def test_demo_stage_without_its_inputs_is_one_line(tmp_path):
    """``scripts/demo.py --stages sample`` on an empty ``--out``: exit 2 and one line naming the stage to run."""
    out = tmp_path / "none"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--out", str(out), "--stages", "sample"],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [f"demo.py: error: --stages sample: {out} has no finished data stage; "
                                                "run it first (--stages data sample)"]


@pytest.mark.parametrize("extra,message", [
    (["--n_train", "-1"], "--n_train -1: must be >= 0"), (["--size", "7"], "--size 7: must be >= 8"),
    (["--n_train", "0", "--n_test", "0"], "--n_train + --n_test must be at least 1")])
def test_make_demo_dataset_bad_numbers(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as stop:
        make_demo_dataset.main(["--out", str(tmp_path / "d"), *extra])
    assert stop.value.code == 2 and message in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_make_demo_dataset_bad_out_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        make_demo_dataset.main(["--out", str(tmp_path / "file")])
    assert "is a file, not a folder" in capsys.readouterr().err
    assert make_demo_dataset.main(["--out", str(tmp_path / "file" / "d"), "--n_train", "1", "--n_test", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("make_demo_dataset: error: --out ") and "cannot write" in err
    assert make_demo_dataset.main(["--out", str(tmp_path / "ok"), "--n_train", "1", "--n_test", "0"]) == 0
    assert make_demo_dataset.main(["--out", str(tmp_path / "ok"), "--n_train", "1", "--n_test", "0", "--seed",
                                   "5"]) == 2  # another seed into the same folder
    assert "use another --out or delete the folder" in capsys.readouterr().err


def test_captions_fit_the_gpt_text_prefix_untruncated():
    """Every demo caption fits text_seq_len=12 word pieces, so the instrument name is never cut off."""
    from tav.data.text import load_bert_tokenizer

    tok = load_bert_tokenizer()
    for seed in range(40):
        caption = make_clip(seed, "landscape", size=16)[2]
        ids = tok(caption)["input_ids"]
        assert len(ids) <= 12, caption
        assert caption.split()[-1].rstrip(".").lower() in tok.decode(ids)


def test_demo_model_stages_tiny(tmp_path, capsys):
    """The VQGAN, GPT and diffusion stages train a few steps, reconstruct and sample, and reuse their runs."""
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--n_train", "8", "--base_clips", "6", "--n_test", "2", "--size", "32",
            "--vqgan_steps", "2", "--gpt_steps", "2", "--diffusion_steps", "2", "--n_sample", "1", "--ckpt_dir",
            str(tmp_path / "ckpts"),
            "--sample_args", "--timestep_respacing 8 --skip_timesteps 2", "--tia2v_steps", "2",
            "--tia2v_motion_steps", "2", "--tia2v_shr_steps", "2", "--tia2v_sample_args", "--timestep_respacing 8",
            "--joint_steps", "2",
            "--generate_seconds", "0.5", "--generate_args", "--timestep_respacing ddim8 --skip_timesteps 2"]
    run = demo_script.main(argv)
    text = capsys.readouterr().out
    assert "[vqgan]" in text and "[gpt]" in text and "[diffusion]" in text and "PSNR" in text
    side, fps = read_video(out / "vqgan_recon.mp4")
    assert side.shape == (90, 32, 64, 3) and fps == 30 and probe_video(out / "vqgan_recon.mp4").has_audio
    sheet = np.asarray(Image.open(out / "gpt_samples.png"))
    assert sheet.shape[0] == 2 * (32 + 2 + LABEL_HEIGHT) + 2  # one row per test caption
    assert run.state["vqgan_ckpt"].is_file()
    # --base_clips: every training but the GPT's reads the first 6 of the 8 training clips
    for stage, clips in (("vqgan", 6), ("gpt", 0), ("diffusion", 6), ("joint", 6), ("tia2v_motion", 6)):
        assert yaml.safe_load((out / stage / "config.yaml").read_text())["data"]["max_clips"] == clips, stage
    assert len(list((out / "tia2v_cache" / "train" / "16px").glob("*.pt"))) == 6
    sheet = np.asarray(Image.open(out / "diffusion_samples.png"))  # 4 prior samples at 32 px (trained on 16-px windows)
    assert sheet.shape[0] == 4 * (32 + 2 + LABEL_HEIGHT) + 2
    assert (out / "diffusion" / "ema000002.pt").is_file()
    assert len(list((out / "17_tav_URMP" / "fake_stage2").iterdir())) == 1  # --n_sample 1
    assert (out / "tav_samples.png").is_file()
    script = (tmp_path / "ckpts" / "sample_tav.sh").read_text()
    assert "--audio_guidance_lambda 10000" in script and '"$@"' in script
    assert "--gpt_cfg_scale 2.0" in script and "--gpt_cfg_scale 2.0" in (tmp_path / "ckpts" / "generate.sh").read_text()
    assert "--audio_emb_model joint" in script and "[joint]" in text and "retrieval R@1 among 2 test clips" in text
    tia = out / "0_tacm_urmp"  # TIA2V: tiny content, motion, SHR; one sample through all three folders
    for folder, name in (("real", "groundtruth_0"), ("fake_stage1", "video_0"), ("fake_stage2", "video_0")):
        assert (tia / folder / f"{name}.mp4").is_file()
    assert read_video(tia / "fake_stage2" / "video_0.mp4")[0].shape == (4, 32, 32, 3)
    assert (out / "tia2v_samples.png").is_file() and "[tia2v]" in text
    assert '"$@"' in (tmp_path / "ckpts" / "sample_motion_optim.sh").read_text()
    quality = json.loads((out / "quality.json").read_text())  # the judges per stage, and the demo's last lines
    assert list(quality) == ["real", "vqgan_recon", "stage1", "stage2", "tia2v_motion", "tia2v_shr", "generate_ta2v"]
    assert quality["real"]["colour_acc"] == 1.0 and quality["real"]["n"] == 2
    assert 0 < quality["vqgan_recon"]["psnr"] < 100 and quality["stage2"]["n"] == 1
    assert all(0 <= quality[k][j] <= 1 for k in quality for j in ("colour_acc", "shape_acc")
               if quality[k].get(j) is not None)
    assert quality["tia2v_motion"]["frame0_psnr"] >= 30  # the given first frame is held
    assert text.rstrip().splitlines()[-1].split()[:2] == ["generate_ta2v", "1"]
    report = (out / "report" / "index.html").read_text()  # TA2V and TIA2V per clip, the song, curves, judges
    assert f"[demo] HTML report: {out / 'report' / 'index.html'}" in text
    logged = [r for r in demo_script.REPORT_RUNS if (out / r / "metrics.jsonl").is_file()
              and (out / r / "metrics.jsonl").read_text().strip()]  # 2 steps: some runs log nothing yet
    assert report.count("<video ") == 3 + 2 + 1 and report.count('<img class="plot"') == len(logged) >= 1
    assert "tia2v_shr" in report and "0_tacm_urmp: SHR" in report
    made = out / "generate" / "ta2v_0.5s.mp4"  # generate.sh on the demo's own song: 15 frames of 32 px, with sound
    assert read_video(made)[0].shape == (15, 32, 32, 3) and probe_video(made).has_audio
    assert json.loads(made.with_suffix(".json").read_text())["frames"] == 15
    tia2v_out = tmp_path / "gen" / "t.mp4"  # the TIA2V form of generate.sh
    Image.fromarray(read_video(made)[0][0]).save(tmp_path / "first.png")
    subprocess.run(["bash", str(tmp_path / "ckpts" / "generate.sh"), "--method", "tia2v", "--audio",
                    str(out / "generate" / "melody_0.5s.wav"), "--caption", "A red circle moves to a Flute.", "--image",
                    str(tmp_path / "first.png"), "--out", str(tia2v_out), "--progress", "False",
                    "--timestep_respacing", "8"], check=True, capture_output=True)
    assert read_video(tia2v_out)[0].shape == (15, 32, 32, 3) and tia2v_out.with_suffix(".json").is_file()
    demo_script.main(argv)
    assert capsys.readouterr().out.count("reusing") == 8
    again = demo_script.main([*argv, "--stages", "gpt", "sample"])  # some stages alone: the rest read from --out
    assert "[vqgan]" not in capsys.readouterr().out
    for key in ("data_root", "vqgan_ckpt", "gpt_ckpt", "diffusion_ckpt"):
        assert again.state[key] == run.state[key], key
