"""VAT dataset: item shapes, ranges, audio/frame alignment, crops, bad input."""

import logging
import os
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from tav.data.audio import fit_length, read_audio
from tav.data.config import DataConfig, check_divisible, load_data_config
from tav.data.datamodule import VATDataModule
from tav.data.dataset import VATDataset, split_clip_limit
from tav.data.layout import clip_files, write_clip
from tav.errors import InputError

from .vat_fixtures import GRAY_STEP, make_vat


def _frame_index(video: torch.Tensor) -> np.ndarray:
    """Frame indices recovered from the flat gray levels of a (3,T,R,R) item."""
    gray = (video + 0.5) * 255
    r = gray.shape[2]
    tens = gray[:, :, 2 : r // 2 - 2].mean(dim=(0, 2, 3)).numpy()  # away from the blurred middle
    ones = gray[:, :, r // 2 + 2 : -2].mean(dim=(0, 2, 3)).numpy()
    return (10 * np.round((tens - 20) / GRAY_STEP) + np.round((ones - 20) / GRAY_STEP)).astype(int)


@pytest.fixture(scope="module")
def urmp_root(tmp_path_factory):
    return make_vat(tmp_path_factory.mktemp("urmp"), n_frames=90, fps=30, stems=("1_vn_1_a_0", "2_fl_3_b_1"))


@pytest.fixture(scope="module")
def landscape_root(tmp_path_factory):
    return make_vat(tmp_path_factory.mktemp("land"), n_frames=30, fps=10, stems=("fire_1_0",), size=(72, 64))


@pytest.mark.parametrize("preset,fixture,spf", [("urmp", "urmp_root", 1600), ("landscape", "landscape_root", 4800)])
def test_items_shapes_ranges_alignment(request, preset, fixture, spf):
    root = request.getfixturevalue(fixture)
    cfg = load_data_config(preset, resolution=32)
    ds = VATDataset(root, "train", cfg)
    for _ in range(3):  # random crops
        item = ds[0]
        assert item["video"].shape == (3, 16, 32, 32) and item["video"].dtype == torch.float32
        assert item["video"].min() >= -0.5 and item["video"].max() <= 0.5
        assert item["audio"].shape == (16, spf) and item["audio"].dtype == torch.float32
        start = item["start"]
        assert np.array_equal(_frame_index(item["video"]), np.arange(start, start + 16))
        # audio row t belongs to frame start+t: its value is (start+t+1)/200
        expected = (np.arange(start, start + 16) + 1) / 200
        assert np.allclose(item["audio"].mean(dim=1).numpy(), expected, atol=2e-4)
        assert item["text"].shape == (12,) and item["text"][0] == 101 and item["stem"] == ds.stems[0]
        assert item["caption"].startswith("clip number 0")



def test_audio_context_around_the_item(urmp_root):
    """``audio_context_s``: the item's sound plus the sound around it, in the file's own samples."""
    cfg = load_data_config("urmp", resolution=32, sequence_length=8, audio_context_s=0.25)
    plain = VATDataset(urmp_root, "train", load_data_config("urmp", resolution=32, sequence_length=8))
    assert "audio_context" not in plain[0]
    ds = VATDataset(urmp_root, "train", cfg)
    file = fit_length(read_audio(clip_files(urmp_root / "train", ds.stems[0]).audio, 48000), 90 * 1600)
    m, n = 12000, 8 * 1600
    seen = set()
    for start in (0, 1, 40, 82):  # at the file's start, near it, inside, at its end
        cfg.train_crop = str(start)
        item = VATDataset(urmp_root, "train", cfg)[0]
        context, (a, b) = item["audio_context"].numpy(), item["audio_span"].tolist()
        assert item["start"] == start and context.shape == (n + 2 * m,) and b - a == n
        assert np.array_equal(context[a:b], item["audio"].reshape(-1).numpy())  # the clip itself
        lo = start * 1600 - a  # where the context starts in the file: inside it, as close to centred as fits
        assert lo == min(max(start * 1600 - m, 0), 90 * 1600 - n - 2 * m)
        assert np.array_equal(context, file[lo: lo + n + 2 * m])
        seen.add(a)
    assert seen == {0, 1600, m, 2 * m}  # the last item ends with the file: all the extra sound is before it
    with pytest.raises(InputError, match="audio_context_s"):
        DataConfig(audio_context_s=-1.0)


def test_test_crops_are_deterministic_and_seeded(urmp_root):
    cfg = load_data_config("urmp", resolution=32)
    a = [VATDataset(urmp_root, "test", cfg)[i]["start"] for i in range(2)]
    b = [VATDataset(urmp_root, "test", cfg)[i]["start"] for i in range(2)]
    assert a == b
    other = load_data_config("urmp", resolution=32, crop_seed=123)
    starts = {tuple(VATDataset(urmp_root, "test", load_data_config("urmp", resolution=32, crop_seed=s))[i]["start"]
                    for i in range(2)) for s in range(6)}
    assert len(starts) > 1  # the seed matters
    assert VATDataset(urmp_root, "test", other)[0]["start"] == VATDataset(urmp_root, "test", other)[0]["start"]
    center = load_data_config("urmp", resolution=32, eval_crop="center")
    assert VATDataset(urmp_root, "test", center)[0]["start"] == (90 - 16) // 2
    fixed = load_data_config("urmp", resolution=32, eval_crop="5")
    assert VATDataset(urmp_root, "test", fixed)[1]["start"] == 5


def test_decoded_clip_cache_gives_the_same_items(urmp_root):
    """``cache_clips`` keeps decoded files in memory: every item equals the one decoded from the window."""
    plain = VATDataset(urmp_root, "test", load_data_config("urmp", resolution=32))
    cached = VATDataset(urmp_root, "test", load_data_config("urmp", resolution=32, cache_clips=4))
    for i in range(len(plain)):
        a, b = plain[i], cached[i]
        assert a["start"] == b["start"] and torch.equal(a["video"], b["video"]) and torch.equal(a["audio"], b["audio"])
    assert cached._decoded.cache_info().currsize == len(plain) and plain._decoded is None


def test_max_clips_keeps_the_first_training_clips_in_stem_order(urmp_root):
    """``max_clips N`` reads the first N stems of the train split, the same items as the whole split's first N;
    other splits are read whole; 0 reads them all, a negative value is a one-line error."""
    cfg = load_data_config("urmp", resolution=32, train_crop="seeded")
    whole = VATDataset(urmp_root, "train", cfg)
    first = VATDataset(urmp_root, "train", load_data_config("urmp", resolution=32, train_crop="seeded", max_clips=1))
    assert len(whole) == 2 and list(first.stems) == list(whole.stems[:1]) == ["1_vn_1_a_0"]
    assert torch.equal(first[0]["video"], whole[0]["video"]) and first[0]["caption"] == whole[0]["caption"]
    assert len(VATDataset(urmp_root, "train", load_data_config("urmp", resolution=32, max_clips=5))) == 2
    assert len(VATDataset(urmp_root, "test", load_data_config("urmp", resolution=32, max_clips=1))) == 2
    assert split_clip_limit("train", 3) == 3 and split_clip_limit("test", 3) == split_clip_limit("val", 3) == 0
    with pytest.raises(InputError, match="max_clips must be >= 0"):
        load_data_config("urmp", max_clips=-1)


def test_a_video_without_a_caption_is_left_out_with_one_warning(tmp_path, caplog):
    root = make_vat(tmp_path, n_frames=30, fps=30, stems=("a_1", "b_2"), splits=("test",))
    (root / "test" / "txt" / "a_1.txt").unlink()
    with caplog.at_level("WARNING", logger="tav.data.dataset"):
        ds = VATDataset(root, "test", load_data_config("urmp", resolution=32, sequence_length=4))
    assert list(ds.stems) == ["b_2"]
    warned = [r.getMessage() for r in caplog.records if "no caption" in r.getMessage()]
    assert len(warned) == 1 and "1 video(s)" in warned[0] and "(first: a_1.mp4)" in warned[0]


def test_subsampling_and_stft(urmp_root):
    cfg = load_data_config("urmp", resolution=32, sample_every_n_frames=2, load_stft=True, eval_crop="4")
    item = VATDataset(urmp_root, "test", cfg)[0]
    assert np.array_equal(_frame_index(item["video"]), np.arange(4, 36, 2))
    assert item["audio"].shape == (16, 3200)
    assert item["stft"].shape == (1, 16, 96, 16)
    assert item["stft"].min() >= -1 and item["stft"].max() <= 1


def test_video_only_items_skip_audio(urmp_root, tmp_path):
    root = _copy(urmp_root, tmp_path / "d")
    for wav in (root / "test" / "audio").glob("*.wav"):
        wav.write_bytes(b"not audio")  # never read when audio is off
    item = VATDataset(root, "test", load_data_config("urmp", resolution=32, load_audio=False))[0]
    assert "audio" not in item and item["video"].shape == (3, 16, 32, 32)


def test_clip_tokenizer_and_collate(urmp_root):
    cfg = load_data_config("urmp", resolution=32, tokenizer="clip")
    dm = VATDataModule(urmp_root, cfg, batch_size=2, num_workers=0)
    batch = next(iter(dm.val_dataloader()))
    assert batch["video"].shape == (2, 3, 16, 32, 32) and batch["audio"].shape == (2, 16, 1600)
    assert batch["text"].shape == (2, 77) and batch["text"][0, 0] == 49406
    assert batch["caption"] == ["clip number 0 of test.", "clip number 1 of test."]


def test_frame_count_mismatch_warns_and_uses_real_count(urmp_root, caplog):
    cfg = load_data_config("urmp", resolution=32, frames_per_file=30)  # the seed's --load_vid_len 30 on URMP
    with caplog.at_level(logging.WARNING):
        ds = VATDataset(urmp_root, "test", cfg)
    assert "has 90 frames" in caplog.text and "load_vid_len=30" in caplog.text
    assert ds.frame_counts.tolist() == [90, 90]


def test_config_validation():
    with pytest.raises(InputError, match="typo for 96"):
        check_divisible(9, 16, (4, 8, 8))
    with pytest.raises(InputError, match="--sequence_length 10"):
        DataConfig(sequence_length=10)
    with pytest.raises(InputError, match="audio samples per video frame; it must be a whole number"):
        DataConfig(fps=7)
    with pytest.raises(InputError, match="unknown key"):
        load_data_config("urmp", resolutoin=96)
    assert load_data_config("landscape").samples_per_frame == 4800


def test_moving_windows_draw_the_windows_in_which_the_picture_changes(tmp_path):
    """``moving_windows``: window_motion is the change inside each window; with share 1 every training window
    holds the clip's one change, with share 0 the starts are the uniform draws of upstream."""
    frames = np.full((90, 32, 32, 3), 40, np.uint8)
    frames[50:] = 200  # one change, into frame 50
    audio = np.zeros(90 * 1600, np.float32)
    write_clip(tmp_path / "train", "one_change", frames, 30, audio, 48000, "A gray square turns white.", None)
    cfg = load_data_config("urmp", resolution=32, tokenizer="none", load_audio=False, cache_clips=4)
    ds = VATDataset(tmp_path, "train", replace(cfg, moving_windows=1.0))
    motion = ds.window_motion(0)
    assert motion.shape == (90 - 16 + 1,)
    inside = np.zeros(len(motion), bool)
    inside[50 - 15: 50] = True  # starts 35..49 hold frame 50 at window frames 1..15
    assert np.allclose(motion[inside], 160 / 255, atol=0.01) and motion[~inside].max() < 0.01
    torch.manual_seed(0)
    starts = [ds[0]["start"] for _ in range(200)]
    assert sum(inside[s] for s in starts) >= 195  # the encoder's ripple may weigh a few others
    assert len(set(starts)) > 8  # drawn among the moving windows, not one of them
    torch.manual_seed(0)
    uniform = [VATDataset(tmp_path, "train", cfg)[0]["start"] for _ in range(200)]
    assert sum(inside[s] for s in uniform) < 80  # 15 of 75 starts: about 40
    test_ds = VATDataset(tmp_path, "train", replace(cfg, moving_windows=1.0), train=False)
    assert {test_ds[0]["start"] for _ in range(3)} == {VATDataset(tmp_path, "train", cfg, train=False)[0]["start"]}
    with pytest.raises(InputError, match="moving_windows must be in"):
        replace(cfg, moving_windows=1.5)
    with pytest.raises(InputError, match="set train_crop to random"):
        replace(cfg, moving_windows=0.5, train_crop="center")


# --- bad input: each a one-line error naming the file -------------------------------------------------


def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def _one_line_error(root, match, split="test", **cfg_overrides):
    cfg = load_data_config("urmp", resolution=32, **cfg_overrides)
    with pytest.raises(InputError, match=match) as e:
        ds = VATDataset(root, split, cfg)
        ds[0]
        ds[1]
    assert "\n" not in str(e.value)
    return str(e.value)


def test_truncated_mp4(urmp_root, tmp_path):
    root = _copy(urmp_root, tmp_path / "d")
    mp4 = clip_files(root / "test", "1_vn_1_a_0").mp4
    mp4.write_bytes(mp4.read_bytes()[:5000])
    _one_line_error(root, "1_vn_1_a_0.mp4")


def test_missing_audio_file_and_no_audio_stream(urmp_root, tmp_path):
    from tav.data.video import read_video, write_video
    root = _copy(urmp_root, tmp_path / "d")
    files = clip_files(root / "test", "2_fl_3_b_1")
    files.audio.unlink()
    ds = VATDataset(root, "test", load_data_config("urmp", resolution=32))
    assert ds[1]["audio"].shape == (16, 1600)  # falls back to the mp4's own audio track
    frames, _ = read_video(files.mp4)
    write_video(files.mp4, frames, 30)  # now without sound
    msg = _one_line_error(root, "no audio track")
    assert "2_fl_3_b_1.mp4" in msg


def test_audio_shorter_than_clip(urmp_root, tmp_path):
    from tav.data.audio import write_wav
    root = _copy(urmp_root, tmp_path / "d")
    write_wav(clip_files(root / "test", "1_vn_1_a_0").audio, np.zeros(48000, np.float32), 48000)
    _one_line_error(root, r"1_vn_1_a_0.wav: audio has 48000 samples .* needs 144000")


def test_fewer_frames_than_one_item(urmp_root, tmp_path):
    from tav.data.video import read_video, write_video
    root = _copy(urmp_root, tmp_path / "d")
    mp4 = clip_files(root / "test", "1_vn_1_a_0").mp4
    frames, _ = read_video(mp4)
    write_video(mp4, frames[:10], 30)
    _one_line_error(root, "1_vn_1_a_0.mp4: has 10 frames, fewer than the 16")


@pytest.mark.parametrize("content,match", [(b"   \n\n", "caption is empty"), (b"\xff\xfe bad", "not UTF-8")])
def test_bad_captions(urmp_root, tmp_path, content, match):
    root = _copy(urmp_root, tmp_path / "d")
    clip_files(root / "test", "2_fl_3_b_1").txt.write_bytes(content)
    assert "2_fl_3_b_1.txt" in _one_line_error(root, match)


def test_caption_without_video(urmp_root, tmp_path):
    root = _copy(urmp_root, tmp_path / "d")
    (root / "test" / "txt" / "orphan.txt").write_text("a caption with no video\n")
    _one_line_error(root, r"orphan.txt: has a caption but .*orphan.mp4 is missing")


def test_missing_and_unreadable_directory(tmp_path, monkeypatch):
    _one_line_error(tmp_path / "nowhere", "no such folder")
    (tmp_path / "d" / "test" / "txt").mkdir(parents=True)

    def deny(path):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(os, "listdir", deny)
    _one_line_error(tmp_path / "d", "cannot list this folder")


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_stft_pickle_that_is_not_an_array_never_runs(urmp_root, tmp_path):
    root = _copy(urmp_root, tmp_path / "d")
    stft_dir = root / "test" / "stft_pickle"
    for f in stft_dir.glob("*.npy"):
        f.unlink()
    target = tmp_path / "pwned.txt"
    with open(stft_dir / "1_vn_1_a_0.pickle", "wb") as fh:
        pickle.dump({"x": _Evil(str(target))}, fh)
    np.save(stft_dir / "2_fl_3_b_1.npy", np.zeros((90, 4, 4), np.float32))
    _one_line_error(root, r"1_vn_1_a_0.pickle: refused to load .*io.open is not allowed", load_stft=True, eval_crop="0")
    assert not target.exists()


def test_resolution_not_divisible():
    with pytest.raises(InputError, match="--resolution 90 is not divisible .* e.g. 88"):
        load_data_config("urmp", resolution=90)


def test_datamodule_under_two_process_ddp(tmp_path):
    """Each rank loads a disjoint half of the clips (Lightning's DistributedSampler)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    stems = [f"s_{i}" for i in range(4)]
    root = make_vat(tmp_path / "data", n_frames=16, fps=30, stems=stems, size=(32, 32), spectrogram=False)
    probe = Path(__file__).with_name("ddp_data_probe.py")
    env = dict(os.environ, PYTHONPATH=str(probe.parent.parent))
    run = subprocess.run([sys.executable, str(probe), str(root), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for split in ("train", "val"):
        a, b = seen[0][split], seen[1][split]
        assert len(a) == len(b) == 2 and not set(a) & set(b)
        assert sorted(a + b) == stems


def test_too_few_training_clips_for_one_batch(urmp_root):
    dm = VATDataModule(urmp_root, load_data_config("urmp", resolution=32), batch_size=3, num_workers=0)
    with pytest.raises(InputError, match=r"2 training items, fewer than one batch \(3 x 1 processes\)"):
        dm.train_dataloader()
    assert len(dm.val_dataloader()) == 1  # validation keeps its incomplete batch
