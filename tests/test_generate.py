"""Bring your own sound (scripts/generate.py, tav.pipelines.generate / long_video / windows): multi-window TA2V and
TIA2V with tiny models, the GPT continuation context, the TIA2V hand-over frame, the output's length and sound,
--batch_file resume, and every bad input of the issue."""

import csv
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from tav.data.audio import write_wav
from tav.data.video import probe_video, read_video, write_video
from tav.diffusion.config import UNetConfig
from tav.diffusion.load import save_unet
from tav.diffusion.schedule import ProcessConfig
from tav.diffusion.unet3d import UNet
from tav.encoders.beats import save_tiny_beats
from tav.encoders.clip_l import save_tiny_clip_l
from tav.encoders.registry import save_tiny_encoders
from tav.gpt import GPT, gpt_preset, save_gpt
from tav.gpt.load import file_sha256
from tav.gpt.sampling import sample_codes
from tav.pipelines import long_video
from tav.pipelines.windows import WindowedNet, decode_long, window_starts
from tav.tia2v.config import tia2v_preset
from tav.tia2v.load import save_tia2v_unet
from tav.tia2v.unet import TIA2VUNet
from tav.vqgan import VQGAN, save_vqgan
from tav_scripts import generate as script

from .helpers import run_script, tiny_vqgan_cfg

RATE = 48000
DATA = {"name": "urmp", "fps": 30.0, "sample_rate": RATE}


def _noisy(net: torch.nn.Module) -> torch.nn.Module:
    for p in net.parameters():  # a fresh U-Net's zero head would predict exactly 0
        torch.nn.init.normal_(p, std=0.02)
    return net


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """Tiny TA2V (VQGAN 4 frames at 16 px -> 2x4x4 codes, GPT, U-Net) and TIA2V (motion + SHR, CLIP-L, BEATs)."""
    root = tmp_path_factory.mktemp("gen")
    torch.manual_seed(0)
    vq = save_vqgan(VQGAN(tiny_vqgan_cfg()).eval(), root / "vqgan.ckpt")
    gcfg = dataclasses.replace(gpt_preset("tiny"), n_codes=32, latent_shape=(2, 4, 4), vqgan_hash=file_sha256(vq))
    gpt = save_gpt(GPT(gcfg), root / "gpt.ckpt", data=DATA)
    net = _noisy(UNet(UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                 attention_resolutions=(8,), num_heads=2)))
    unet = save_unet(net, root / "unet.pt", ProcessConfig(steps=100))
    enc = save_tiny_encoders(root / "encoders")
    process = ProcessConfig(steps=1000, loss="rescaled_mse")
    motion = save_tia2v_unet(_noisy(TIA2VUNet(tia2v_preset("motion-tiny"))), root / "motion.pt", process,
                             beats_mode="fixed", data=DATA)
    shr = save_tia2v_unet(_noisy(TIA2VUNet(tia2v_preset("shr-tiny"))), root / "shr.pt", process)
    save_tiny_clip_l(root / "clip_l")
    save_tiny_beats(root / "beats.pt", encoder_embed_dim=32, encoder_attention_heads=4)
    return {"root": root, "vqgan": vq, "gpt": gpt, "unet": unet, "enc": enc, "motion": motion, "shr": shr,
            "clip_l": root / "clip_l", "beats": root / "beats.pt"}


def melody(path: Path, seconds: float, rate: int = RATE, channels: int = 1, amp: float = 0.5) -> Path:
    t = np.arange(round(seconds * rate)) / rate
    wave = (amp * np.sin(2 * np.pi * (440 + 220 * (t > seconds / 2)) * t)).astype(np.float32)
    if path.suffix == ".wav" and channels == 1:
        return write_wav(path, wave, rate)
    if path.suffix == ".wav":  # interleaved 16-bit PCM through the standard library
        import wave as wavfile

        with wavfile.open(str(path), "wb") as f:
            f.setnchannels(channels)
            f.setsampwidth(2)
            f.setframerate(rate)
            f.writeframes((np.repeat(wave[:, None], channels, 1) * 32767).astype("<i2").tobytes())
        return path
    frames = np.zeros((max(1, round(seconds * 10)), 16, 16, 3), np.uint8)
    return write_video(path, frames, 10, audio=wave, sample_rate=rate)


def ta2v_argv(kit, audio, out, *extra) -> list[str]:
    e = kit["enc"]
    return ["--method", "ta2v", "--audio", str(audio), "--caption", "A red circle moves to a Flute.", "--out",
            str(out), "--gpt_text_ckpt", str(kit["gpt"]), "--vqgan_ckpt", str(kit["vqgan"]), "--diffusion_ckpt",
            str(kit["unet"]),
            "--model_output_size", "16", "--timestep_respacing", "10", "--skip_timesteps", "5", "--device", "cpu",
            "--audioclip_ckpt", str(e["audioclip"]), "--clip_ckpt", str(e["clip"]), "--progress", "False",
            "--precision", "32", *map(str, extra)]  # fp32 on both CPU kinds


def tia2v_argv(kit, audio, out, *extra) -> list[str]:
    return ["--method", "tia2v", "--audio", str(audio), "--caption", "A red circle moves to a Flute.", "--out",
            str(out), "--model_path", str(kit["motion"]), "--diffusion_ckpt", str(kit["shr"]), "--clip_l_ckpt",
            str(kit["clip_l"]), "--beats_ckpt", str(kit["beats"]), "--timestep_respacing", "5",
            "--model_output_size", "32", "--device", "cpu", "--progress", "False", "--precision", "32",
            *map(str, extra)]


def audio_seconds(path: Path) -> float:
    import av

    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        return float(sum(f.samples for f in c.decode(s))) / s.rate


# ------------------------------------------------------------------------------------------ windows
def test_ddim_flag_takes_the_seed_scripts_form_too():
    base = ["--method", "tia2v", "--audio", "a.wav", "--caption", "x", "--out", "o.mp4"]
    assert [script.parse_args([*base, *extra]).ddim for extra in
            ([], ["--ddim"], ["--use_ddim"], ["--use_ddim", "True"], ["--use_ddim", "False"])] == [
        False, True, True, True, False]


def test_window_plans():
    assert window_starts(4, 8, 4) == [0] and window_starts(20, 8, 4) == [0, 4, 8, 12]
    assert window_starts(19, 8, 4) == [0, 4, 8, 11]
    w = long_video.tia2v_windows(10, 4)
    assert [(x.start, x.end, x.given) for x in w] == [(0, 4, 0), (3, 7, 1), (6, 10, 1)]
    with pytest.raises(Exception, match="stride"):
        window_starts(10, 4, 5)


def test_windowed_net_matches_a_framewise_net_and_blends():
    """A network that treats frames independently gives the same output windowed; a window-dependent one is
    blended: every output frame is a convex combination of the windows' outputs."""
    conv = torch.nn.Conv3d(3, 6, (1, 3, 3), padding=(0, 1, 1))
    x, t = torch.randn(2, 3, 11, 8, 8), torch.zeros(2, dtype=torch.long)
    full = conv(x)
    windowed = WindowedNet(lambda v, tt: conv(v), 4, 2, batch_windows=3)
    torch.testing.assert_close(windowed.forward(x, t), full, atol=1e-5, rtol=1e-5)

    def offset(v, tt):  # output = the window's own mean frame: differs per window
        return v.mean(dim=2, keepdim=True).expand_as(v)

    out = WindowedNet(offset, 4, 2).forward(x, t)
    means = [x[:, :, s: s + 4].mean(2) for s in window_starts(11, 4, 2)]
    assert torch.allclose(out[:, :, 0], means[0], atol=1e-6)  # frame 0: only window 0
    assert torch.allclose(out[:, :, 10], means[-1], atol=1e-6)


def test_decode_long_matches_whole_decode(kit):
    from tav.vqgan import load_vqgan

    vq = load_vqgan(kit["vqgan"]).eval()
    codes = torch.randint(0, 32, (1, 6, 4, 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = vq.decode(codes)
        chunked = decode_long(vq, codes, 11, chunk=2, halo=6)
    assert chunked.shape == (1, 3, 11, 16, 16)
    torch.testing.assert_close(chunked, whole[:, :, :11], atol=1e-4, rtol=1e-4)


def test_sample_codes_context_continues_the_greedy_sequence(kit):
    from tav.gpt.load import load_gpt

    gpt = load_gpt(kit["gpt"]).eval()
    prefix = torch.randint(1, 1000, (1, gpt.cfg.text_seq_len), generator=torch.Generator().manual_seed(2))
    whole = sample_codes(gpt, prefix, temperature=0).reshape(1, -1)
    half = whole.shape[1] // 2
    rest = sample_codes(gpt, prefix, temperature=0, context=whole[:, :half])
    assert rest.shape == (1, whole.shape[1] - half) and torch.equal(rest, whole[:, half:])
    with pytest.raises(Exception, match="context"):
        sample_codes(gpt, prefix, context=torch.full((1, 3), 99))


# ------------------------------------------------------------------------------------------ TA2V
def test_ta2v_three_windows_frames_sound_and_context(kit, tmp_path, monkeypatch):
    """8 frames of sound at 30 fps -> 3 GPT windows (2 latent frames, 1 carried); each continuation's context is
    the trailing latent frame of the codes so far; the mp4 has 8 frames and the sound, the sidecar the windows."""
    calls = []
    real = long_video.sample_codes

    def spy(gpt, prefix, **kw):
        out = real(gpt, prefix, **kw)
        calls.append((None if kw.get("context") is None else kw["context"].clone(), out.clone()))
        return out

    monkeypatch.setattr(long_video, "sample_codes", spy)
    audio = melody(tmp_path / "song.wav", 8 / 30)
    out = tmp_path / "sub" / "video.mp4"  # the folder does not exist yet: created
    assert script.main(ta2v_argv(kit, audio, out)) == 0
    assert len(calls) == 3 and calls[0][0] is None
    sequence = calls[0][1].reshape(1, 2, 16)
    for ctx, new in calls[1:]:
        torch.testing.assert_close(ctx, sequence[:, -1])  # one latent frame (16 codes) of context
        sequence = torch.cat([sequence, new.reshape(1, 1, 16)], dim=1)
    frames = read_video(out)[0]
    assert frames.shape[:2] == (8, 16) and probe_video(out).has_audio
    assert abs(audio_seconds(out) - 8 / 30) <= 1 / 30
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["frames"] == 8 and side["fps"] == 30.0 and side["settings"]["fps_source"] == str(kit["gpt"])
    assert [(w["start"], w["end"], w["given"]) for w in side["windows"]] == [(0, 4, 0), (2, 6, 2), (4, 8, 2)]
    assert side["checkpoints"]["gpt_text_ckpt"] == file_sha256(kit["gpt"])
    assert side["stage2_windows"] == [[0, 4], [2, 6], [4, 8]]


def test_ta2v_independent_windows(kit, tmp_path):
    """The benchmark's baseline: no GPT context and stage-2 windows side by side."""
    audio = melody(tmp_path / "song.wav", 8 / 30)
    out = tmp_path / "ind.mp4"
    assert script.main(ta2v_argv(kit, audio, out, "--context_frames", 0, "--stage2_stride", 0)) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert [(w["start"], w["end"], w["given"]) for w in side["windows"]] == [(0, 4, 0), (4, 8, 0)]
    assert side["stage2_windows"] == [[0, 4], [4, 8]] and len(read_video(out)[0]) == 8


def test_seam_flicker_separates_seams_from_the_rest():
    from tav.metrics.synthetic import seam_flicker

    frames = np.zeros((10, 4, 4, 3), np.uint8)
    frames[5:] = 51  # one jump into frame 5 (a change of 0.2), none elsewhere
    assert seam_flicker(frames, [5], []) == pytest.approx((0.2, 0.0))
    assert seam_flicker(frames, [3], []) == pytest.approx((0.0, 0.2 / 8))
    seam, inside = seam_flicker(frames, [5], [5])  # an onset there: the jump is meant, nothing left at the seam
    assert np.isnan(seam) and inside == 0.0


def test_ta2v_video_file_stereo_and_fps(kit, tmp_path):
    """A video file's sound track (stereo wav too) drives the length: frames = round(duration * fps)."""
    clip = melody(tmp_path / "clip.mp4", 0.5)
    out = tmp_path / "a.mp4"
    assert script.main(ta2v_argv(kit, clip, out, "--fps", 10, "--skip_stage2")) == 0
    assert len(read_video(out)[0]) == 5
    stereo = melody(tmp_path / "st.wav", 0.2, channels=2, rate=44100)
    assert script.main(ta2v_argv(kit, stereo, tmp_path / "b.mp4", "--skip_stage2")) == 0
    assert len(read_video(tmp_path / "b.mp4")[0]) == 6


def test_same_command_same_bytes(kit, tmp_path):
    audio = melody(tmp_path / "s.wav", 0.2)
    outs = [tmp_path / f"{k}.mp4" for k in range(2)]
    for out in outs:
        run_script("scripts/generate.py", ta2v_argv(kit, audio, out))
    assert np.array_equal(read_video(outs[0])[0], read_video(outs[1])[0])


# ------------------------------------------------------------------------------------------ TIA2V
def test_tia2v_three_windows_hand_over_the_last_frame(kit, tmp_path, monkeypatch):
    from tav.pipelines.tia2v import TIA2VSampler

    firsts, clips = [], []
    real = TIA2VSampler.stage1

    def spy(self, first_frames, *a, **kw):
        out = real(self, first_frames, *a, **kw)
        firsts.append(first_frames.clone())
        clips.append(out.clone())
        return out

    monkeypatch.setattr(TIA2VSampler, "stage1", spy)
    audio = melody(tmp_path / "song.wav", 10 / 30)
    image = tmp_path / "first.png"
    from PIL import Image

    Image.fromarray(np.full((40, 60, 3), (230, 40, 40), np.uint8)).save(image)  # any size: resized and cropped
    out = tmp_path / "t.mp4"
    assert script.main(tia2v_argv(kit, audio, out, "--image", image)) == 0
    assert len(clips) == 3
    assert torch.allclose(firsts[0][0, 0], torch.full((16, 16), 230 / 255 - 0.5), atol=1e-3)
    for k in (1, 2):
        torch.testing.assert_close(firsts[k], clips[k - 1][:, :, -1].cpu())
    frames = read_video(out)[0]
    assert frames.shape[:2] == (10, 32)  # SHR size
    assert abs(audio_seconds(out) - 10 / 30) <= 1 / 30
    side = json.loads(out.with_suffix(".json").read_text())
    assert [(w["start"], w["end"], w["given"]) for w in side["windows"]] == [(0, 4, 0), (3, 7, 1), (6, 10, 1)]
    assert side["shr"] and side["settings"]["hand_over"] is True


# ------------------------------------------------------------------------------------------ batch file
def test_batch_file_skips_finished_outputs(kit, tmp_path):
    audio = melody(tmp_path / "s.wav", 0.2)
    rows = [{"audio": audio, "caption": "A blue square moves to a Violin.", "out": tmp_path / "x" / f"{k}.mp4"}
            for k in range(2)]
    table = tmp_path / "jobs.csv"
    with table.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["audio", "caption", "out"])
        w.writeheader()
        w.writerows(rows)
    args = ta2v_argv(kit, audio, tmp_path / "unused.mp4", "--skip_stage2")
    args = [a for i, a in enumerate(args) if a not in ("--audio", "--caption", "--out")
            and args[i - 1] not in ("--audio", "--caption", "--out")]
    assert script.main([*args, "--batch_file", str(table), "--shard", "1/2"]) == 0  # a second process's share
    assert rows[1]["out"].is_file() and not rows[0]["out"].exists()
    assert script.main([*args, "--batch_file", str(table)]) == 0
    first = rows[0]["out"].with_suffix(".json").read_text()
    rows[1]["out"].unlink()
    assert script.main([*args, "--batch_file", str(table)]) == 0
    assert rows[1]["out"].is_file() and rows[0]["out"].with_suffix(".json").read_text() == first
    assert not (tmp_path / "unused.mp4").exists()


def test_batch_file_checks_every_row_before_the_first_video(kit, tmp_path, capsys):
    good = melody(tmp_path / "s.wav", 0.2)
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    table = tmp_path / "jobs.csv"
    table.write_text(f"audio,caption,out\n{good},A red circle moves to a Flute.,{tmp_path / 'a.mp4'}\n"
                     f"{tmp_path / 'bad.wav'},A red circle moves to a Flute.,{tmp_path / 'b.mp4'}\n"
                     f"{good}, ,{tmp_path / 'c.mp4'}\n")
    args = ta2v_argv(kit, good, tmp_path / "unused.mp4", "--skip_stage2")
    args = [a for i, a in enumerate(args) if a not in ("--audio", "--caption", "--out")
            and args[i - 1] not in ("--audio", "--caption", "--out")]
    assert script.main([*args, "--batch_file", str(table)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--batch_file {table}, line 3: " in err and "bad.wav" in err
    assert not list(tmp_path.glob("*.mp4"))  # nothing generated before the bad row was found
    table.write_text("\n".join(table.read_text().splitlines()[:2] + table.read_text().splitlines()[3:]) + "\n")
    assert script.main([*args, "--batch_file", str(table)]) == 2
    assert "line 3: the caption is empty" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("case", ["short", "no_audio", "corrupt", "truncated", "empty_caption", "no_image",
                                  "bad_out"])
def test_bad_input_is_one_line_and_writes_nothing(kit, tmp_path, capsys, case):
    out = tmp_path / "o.mp4"
    audio = melody(tmp_path / "s.wav", 0.2)
    argv = ta2v_argv(kit, audio, out)
    if case == "short":
        argv = ta2v_argv(kit, melody(tmp_path / "tiny.wav", 0.01), out)
        match = "shorter than one video frame"
    elif case == "no_audio":
        silent_video = write_video(tmp_path / "v.mp4", np.zeros((3, 16, 16, 3), np.uint8), 10)
        argv = ta2v_argv(kit, silent_video, out)
        match = "no audio track"
    elif case == "corrupt":
        (tmp_path / "c.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
        argv = ta2v_argv(kit, tmp_path / "c.wav", out)
        match = "c.wav"
    elif case == "truncated":
        data = Path(melody(tmp_path / "full.wav", 1.0)).read_bytes()
        (tmp_path / "cut.wav").write_bytes(data[: len(data) // 3])
        argv = ta2v_argv(kit, tmp_path / "cut.wav", out)
        match = "truncated"
    elif case == "empty_caption":
        argv[argv.index("--caption") + 1] = "  "
        match = "--caption is empty"
    elif case == "no_image":
        argv = tia2v_argv(kit, audio, out)
        match = "--image"
    else:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        out = blocker / "o.mp4"
        argv = ta2v_argv(kit, audio, out)
        match = "--out"
    assert script.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.parametrize("flag,value", [("--fps", "0"), ("--fps", "-5"), ("--fps", "nan"), ("--steps", "0")])
def test_bad_numbers_are_refused_before_any_work(kit, tmp_path, capsys, flag, value):
    out = tmp_path / "o.mp4"
    with pytest.raises(SystemExit) as stop:
        script.main([*ta2v_argv(kit, melody(tmp_path / "s.wav", 0.2), out), flag, value])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and f"{flag} {value}: must be" in err and not out.exists()


def test_warnings_silent_long_caption_and_ignored_image(kit, tmp_path, caplog):
    silent = melody(tmp_path / "quiet.wav", 0.2, amp=0.0)
    long_caption = "A red circle moves to a Flute. " * 6
    argv = ta2v_argv(kit, silent, tmp_path / "q.mp4", "--skip_stage2", "--image", silent)
    argv[argv.index("--caption") + 1] = long_caption
    with caplog.at_level(logging.INFO):
        assert script.main(argv) == 0
    text = caplog.text
    assert "silent" in text and "ignored" in text
    assert "the text prefix holds 12, so the first 11 were kept" in text
    assert json.loads((tmp_path / "q.json").read_text())["silent"] is True
