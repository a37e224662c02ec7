"""Video/audio I/O round trips and value-range conversions."""

import numpy as np
import pytest
import torch

from tav.data.audio import chunk_per_frame, read_audio, resample, spectrogram, write_wav
from tav.data.video import probe_video, read_video, resize_center_crop, to_model_range, to_uint8, write_video
from tav.errors import InputError


def _clip(t=30, h=48, w=64):
    y, x = np.mgrid[0:h, 0:w]
    frames = np.stack([np.stack([(x * 4 + i * 3) % 256, (y * 5) % 256, np.full_like(x, 128)], -1)
                       for i in range(t)]).astype(np.uint8)
    return frames


def test_mp4_with_audio_round_trip(tmp_path):
    frames = _clip()
    sr, fps = 48000, 30
    audio = (0.4 * np.sin(2 * np.pi * 440 * np.arange(48000) / sr)).astype(np.float32)
    path = write_video(tmp_path / "a.mp4", frames, fps, audio=audio, sample_rate=sr)
    info = probe_video(path)
    assert (info.frames, info.fps, info.width, info.height, info.has_audio) == (30, 30.0, 64, 48, True)
    back, fps_back = read_video(path)
    assert back.shape == frames.shape and fps_back == 30.0
    assert np.abs(back.astype(int) - frames).mean() < 6  # H.264 crf 17 on a busy pattern
    wave = read_audio(path, sr)
    assert len(wave) == len(audio)  # exact: the AAC tail padding is trimmed
    assert np.abs(wave - audio).mean() < 0.02
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left


def test_h264_stream_is_a_function_of_the_frames(tmp_path):
    """The same frames give the same file, whatever the process allocated before (x264's macroblock-tree
    lookahead read uninitialised heap memory at 64 px wide frames: each re-encode in a process whose heap had
    been reused gave another stream). Encoded here 4 times with the heap dirtied in between."""
    rng = np.random.default_rng(0)
    blobs = rng.integers(0, 256, (90, 8, 8, 3)).astype(np.float32)
    frames = torch.nn.functional.interpolate(torch.from_numpy(blobs).permute(0, 3, 1, 2), size=(64, 64),
                                             mode="bilinear")  # smooth moving colour fields, like model output
    frames = frames.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy()
    audio = (0.3 * np.sin(np.arange(144000) * 0.05)).astype(np.float32)
    noise = np.random.default_rng(1)
    files = []
    for i in range(4):
        garbage = [noise.bytes(int(n)) for n in noise.integers(1_000, 3_000_000, 30)]  # freed: dirty heap
        del garbage
        files.append(write_video(tmp_path / f"{i}.mp4", frames, 30, audio=audio).read_bytes())
    assert all(f == files[0] for f in files[1:])


def test_lossless_round_trip_is_exact(tmp_path):
    frames = _clip(t=7, h=33, w=35)  # odd sizes too
    back, _ = read_video(write_video(tmp_path / "l.mp4", frames, 10, lossless=True))
    assert np.array_equal(back, frames)


def test_odd_size_lossy_and_window_read(tmp_path):
    frames = _clip(t=20, h=31, w=45)
    path = write_video(tmp_path / "o.mp4", frames, 25)
    window, _ = read_video(path, start=5, num_frames=4)
    assert window.shape == (4, 31, 45, 3)
    assert np.abs(window.astype(int) - frames[5:9]).mean() < 8
    with pytest.raises(InputError, match="o.mp4"):
        read_video(path, start=18, num_frames=5)


def test_wav_round_trip_and_resampling(tmp_path):
    sr = 44100
    tone = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(sr) / sr)).astype(np.float32)
    path = write_wav(tmp_path / "t.wav", tone, sr)
    assert np.abs(read_audio(path, sr) - tone).max() < 1e-4  # 16-bit PCM
    up = read_audio(path, 48000)
    assert len(up) == 48000
    ref = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(48000) / 48000)
    assert np.abs(up[100:-100] - ref[100:-100]).max() < 5e-3
    assert len(resample(np.zeros(1001, np.float32), 48000, 16000)) == 334  # round(1001/3)


def test_stereo_integer_audio_is_averaged_to_mono(tmp_path):
    import av
    path = tmp_path / "s.wav"
    sr = 16000
    left = (np.full(1600, 0.5) * 32767).astype(np.int16)
    right = np.zeros(1600, np.int16)
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=sr)
        s.layout = "stereo"
        fr = av.AudioFrame.from_ndarray(np.stack([left, right]).T.reshape(1, -1).copy(), format="s16",
                                        layout="stereo")
        fr.sample_rate = sr
        c.mux(s.encode(fr))
        c.mux(s.encode(None))
    wave = read_audio(path, sr)
    assert len(wave) == 1600 and np.allclose(wave, 0.25, atol=1e-3)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InputError, match="nope.mp4"):
        read_video(tmp_path / "nope.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(InputError, match="bad.mp4"):
        read_video(bad)
    silent = write_video(tmp_path / "silent.mp4", _clip(t=3), 10)
    with pytest.raises(InputError, match="no audio track"):
        read_audio(silent, 48000)


def test_truncated_mp4_is_a_one_line_error(tmp_path):
    path = write_video(tmp_path / "t.mp4", _clip(t=30), 30)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="t.mp4") as e:
        read_video(path, 0, 30)
    assert "\n" not in str(e.value)


def test_value_range_conversions():
    frames = torch.randint(0, 256, (5, 8, 9, 3), dtype=torch.uint8)
    video = to_model_range(frames)
    assert video.shape == (3, 5, 8, 9) and video.min() >= -0.5 and video.max() <= 0.5
    assert torch.equal(to_uint8(video), frames)
    assert torch.equal(to_uint8(video[None] * 3)[0].max(), torch.tensor(255, dtype=torch.uint8))


def test_resize_center_crop_upstream_recipe():
    video = torch.arange(2 * 1 * 4 * 6, dtype=torch.float32).reshape(2, 1, 4, 6)
    out = resize_center_crop(video, 4)  # shorter side already 4: plain centre crop of the width
    assert torch.equal(out, video[:, :, :, 1:5])
    tall = torch.rand(3, 2, 100, 75)
    assert resize_center_crop(tall, 96).shape == (3, 2, 96, 96)  # 100x75 -> 128x96 -> crop


def test_chunking_and_spectrogram():
    wave = np.arange(12, dtype=np.float32)
    assert np.array_equal(chunk_per_frame(wave, 3, 4)[1], [4, 5, 6, 7])
    sr = 48000
    tone = np.sin(2 * np.pi * 3000 * np.arange(sr) / sr).astype(np.float32)
    spec = spectrogram(tone, num_frames=10)
    assert spec.shape == (10, 96, 16) and spec.min() >= 0 and spec.max() == pytest.approx(1.0)
    assert int(spec.mean(axis=(0, 2)).argmax()) == 32  # 3 kHz at 93.75 Hz per bin


def test_samples_per_frame_is_exact_or_an_error():
    from tav.data.audio import samples_per_frame
    assert samples_per_frame(48000, 30) == 1600 and samples_per_frame(48000, 10.0) == 4800
    assert samples_per_frame(44100, 29.4) == 1500  # exact in decimal, not in binary floating point
    with pytest.raises(InputError, match="--fps 7 = 6857.143 audio samples per video frame"):
        samples_per_frame(48000, 7, "--sample_rate", "--fps")
