"""The joint audio-video-text encoder: towers and loading (tav.encoders.joint), its training items
(tav.data.frame_audio), the loss (tav.training.joint_module), scripts/train_joint_encoder.py, retrieval, and its
use as a guide (tav.guidance) and a scorer (tools/clip_score)."""

from __future__ import annotations

import json

import pytest
import torch

from tav.data.frame_audio import FrameAudioConfig, FrameAudioDataset, clip_items
from tav.encoders.audioclip import load_audioclip, save_tiny_audioclip
from tav.encoders.joint import JointConfig, JointModel, load_joint, save_joint, save_tiny_joint
from tav.encoders.registry import clear_encoder_cache, get_encoder
from tav.errors import InputError
from tav.metrics.retrieval import retrieval_r1
from tav.training.joint_module import (
    CHANNEL_ORDERS,
    JointTrainConfig,
    caption_nce,
    degrade_frames,
    multi_positive_nce,
    shuffle_colours,
)
from tav_scripts import train_joint_encoder as script

TINY = dict(dim=16, width=8, audio_width=16, text_width=16, text_buckets=256, n_mels=32, image_size=32)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from tav.data.demo import build_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    build_demo_dataset(root, n_train=6, n_test=4, size=32)
    return root


def test_towers_shapes_any_window_and_gradients():
    torch.manual_seed(0)
    model = JointModel(JointConfig(**TINY))
    frames = torch.rand(3, 3, 32, 32, requires_grad=True)
    assert model.encode_frames(frames).shape == (3, 16)
    for samples in (4000, 8000, 16000):  # any window length pools to the same width
        assert model.encode_audio(torch.randn(2, samples) * 0.1).shape == (2, 16)
    ids = torch.tensor([[101, 2417, 4418, 102, 0, 0], [101, 2630, 102, 0, 0, 0]])
    assert model.encode_tokens(ids).shape == (2, 16)
    model.encode_frames(frames).sum().backward()
    assert frames.grad is not None and frames.grad.abs().sum() > 0  # guidance differentiates through frames


def test_padding_does_not_change_the_caption_embedding():
    model = JointModel(JointConfig(**TINY))
    short = torch.tensor([[101, 2417, 102]])
    padded = torch.tensor([[101, 2417, 102, 0, 0, 0, 0]])
    torch.testing.assert_close(model.encode_tokens(short), model.encode_tokens(padded), rtol=1e-6, atol=1e-6)


def test_multi_positive_nce_known_values():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    one = torch.tensor([[True, False, False], [False, True, False]])
    expected = -(torch.log_softmax(logits, 1)[0, 0] + torch.log_softmax(logits, 1)[1, 1]) / 2
    torch.testing.assert_close(multi_positive_nce(logits, one), expected)
    both = torch.tensor([[True, False, False], [False, True, True]])
    p = torch.softmax(logits, 1)
    expected = -(torch.log(p[0, 0]) + torch.log(p[1, 1] + p[1, 2])) / 2  # row 1: two positives share the mass
    torch.testing.assert_close(multi_positive_nce(logits, both), expected)
    assert multi_positive_nce(logits, both) < multi_positive_nce(logits, one)


def test_save_load_round_trip_and_wrong_files(tmp_path):
    path = save_tiny_joint(tmp_path / "joint.pt", seed=3, **TINY)
    enc = load_joint(path)
    again = JointModel(JointConfig(**TINY))
    again.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    frames = torch.rand(2, 3, 40, 40)  # any size: resized to image_size
    torch.testing.assert_close(enc.encode_images(frames), again.encode_frames((torch.nn.functional.interpolate(
        frames, size=(32, 32), mode="bilinear", align_corners=False) - 0.5) / 0.5), rtol=1e-5, atol=1e-6)
    assert enc.encode_texts(["A red circle moves to a Flute."]).shape == (1, 16)
    assert not any(p.requires_grad for p in enc.parameters())
    audioclip = save_tiny_audioclip(tmp_path / "audioclip.pt")
    with pytest.raises(InputError, match=r"audioclip\.pt: holds an AudioCLIP checkpoint, but a joint"):
        load_joint(audioclip)
    with pytest.raises(InputError, match=r"joint\.pt: holds a tav 'joint' checkpoint, but an AudioCLIP"):
        load_audioclip(path)
    with pytest.raises(InputError, match="missing.pt: no joint-encoder file"):
        load_joint(tmp_path / "missing.pt")
    other = save_joint(JointModel(JointConfig(**{**TINY, "dim": 8})), tmp_path / "other.pt")
    sd = torch.load(other, weights_only=True)
    sd["config"]["dim"] = 16  # a config that does not match the tensors
    torch.save(sd, other)
    with pytest.raises(InputError, match="weights do not fit the the joint encoder config"):
        load_joint(other)


def test_items_hold_frames_and_their_centred_audio(demo):
    cfg = FrameAudioConfig(frames_per_item=3, image_size=32, window_s=0.2)
    train, test = FrameAudioDataset(demo, "train", cfg, train=True), FrameAudioDataset(demo, "test", cfg, False)
    item = test[0]
    assert item["images"].shape == (3, 3, 32, 32) and item["audio"].shape == (3, 3200)
    assert 0 <= float(item["images"].min()) and float(item["images"].max()) <= 1 and item["text"].dtype == torch.long
    torch.testing.assert_close(test[0]["images"], item["images"])  # evaluation frames are fixed
    assert test.frame_indices(90).tolist() == [0, 44, 90 - 1] or test.frame_indices(90).tolist() == [0, 45, 89]
    torch.manual_seed(0)
    picks = {tuple(train.frame_indices(90).tolist()) for _ in range(5)}
    assert len(picks) > 1 and all(len(set(p)) == 3 for p in picks)  # training frames: random, distinct
    torch.manual_seed(1)
    anywhere = train.frame_indices(90)
    torch.manual_seed(1)
    assert torch.equal(torch.randperm(90)[:3].sort().values, anywhere)  # frame_span 0: the draw as before
    near = FrameAudioDataset(demo, "train", FrameAudioConfig(frames_per_item=3, frame_span=4, image_size=32), True)
    torch.manual_seed(0)
    spans = [near.frame_indices(90).tolist() for _ in range(20)]
    assert all(len(set(p)) == 3 and p == sorted(p) and p[-1] - p[0] <= 3 for p in spans)
    assert len({p[0] for p in spans}) > 5  # the run of 4 frames moves through the clip
    assert FrameAudioDataset(demo, "train", FrameAudioConfig(frames_per_item=5, frame_span=2, image_size=32),
                             True).frame_indices(90).tolist() in ([i, i + 1] for i in range(89))


def test_max_clips_keeps_the_first_training_clips(demo):
    whole = FrameAudioDataset(demo, "train", FrameAudioConfig(image_size=16), train=True)
    first = FrameAudioDataset(demo, "train", FrameAudioConfig(image_size=16, max_clips=2), train=True)
    assert len(whole) > 2 and first.stems == whole.stems[:2]
    test = FrameAudioDataset(demo, "test", FrameAudioConfig(image_size=16), train=False)
    cut = FrameAudioDataset(demo, "test", FrameAudioConfig(image_size=16, max_clips=1), train=False)
    assert len(test) > 1 and cut.stems == test.stems  # other splits are read whole
    with pytest.raises(InputError, match="max_clips must be >= 0"):
        FrameAudioConfig(max_clips=-1)
    with pytest.raises(InputError, match="frame_span"):
        FrameAudioConfig(frame_span=-2)


def test_training_script_learns_exports_resumes_and_scores(demo, tmp_path):
    root = tmp_path / "run"
    argv = ["--data_path", str(demo), "--save_dir", str(root), "--accelerator", "cpu", "--devices", "1",
            "--progress_bar_refresh_rate", "0", "--batch_size", "3", "--max_steps", "30", "--num_workers", "0",
            *[a for k, v in TINY.items() for a in ("--set", f"model.{k}={v}")], "--set", "train.log_interval=1",
            "--set", "train.warmup_steps=1", "--frames_per_item", "3"]
    path = script.train(argv)
    assert path == root / "joint_encoder.pt" and (root / "checkpoints" / "last.ckpt").is_file()
    rows = [json.loads(x) for x in (root / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert len(losses) == 30 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5  # it learns
    scores = json.loads((root / "retrieval.json").read_text())
    assert scores["candidates"] == 4 and 0 <= scores["audio_to_frame"] <= 1
    enc = load_joint(path)
    same_items = clip_items(demo, "test", FrameAudioConfig(frames_per_item=3, image_size=32), n=16)
    assert scores == retrieval_r1(enc, same_items)
    assert script.train([*argv, "--max_steps", "32", "--resume", "last"]) == path  # continues from step 30
    assert json.loads((root / "metrics.jsonl").read_text().splitlines()[-1])["step"] >= 31


def test_guidance_and_scores_with_the_joint_encoder(tmp_path):
    from tav.diffusion.schedule import GaussianSchedule, ProcessConfig
    from tav.guidance import GuidanceConfig, build_guidance

    path = save_tiny_joint(tmp_path / "joint.pt", **TINY)
    schedule = GaussianSchedule.from_config(ProcessConfig(steps=100), respacing="10")
    cfg = GuidanceConfig(audio_encoder="joint", text_encoder="joint", range_lambda=0)
    guide = build_guidance(cfg, schedule, weights={"joint": str(path)})
    assert guide.audio_encoder is guide.clip and guide.clip is get_encoder("joint", path)
    cond = guide.prepare(torch.rand(2, 4 * 1600) - 0.5, ["A red circle moves to a Flute.", "A blue square."],
                         48000, 4)
    x = torch.rand(2, 3, 4, 16, 16, requires_grad=True) - 0.5
    out = {"pred_xstart": x}
    grad = guide.cond_fn(cond)(x, torch.tensor([5, 5]), out)
    assert grad.shape == x.shape and grad.abs().sum() > 0 and set(guide.last_terms) == {"audio", "direction", "text",
                                                                                       "range"}
    with pytest.raises(InputError, match="wav2clip compares CLIP"):
        GuidanceConfig(audio_encoder="wav2clip", text_encoder="joint")
    clear_encoder_cache()


def test_degrade_frames_known_properties():
    import torch.nn.functional as F

    frames = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(degrade_frames(frames, (), 0.5, 0.0), frames)
    torch.testing.assert_close(degrade_frames(frames, (8,), 0.0, 0.0, generator=torch.Generator()), frames)
    shrunk = degrade_frames(frames, (8,), 1.0, 0.0, generator=torch.Generator().manual_seed(1))
    small = F.interpolate(frames, size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(shrunk, F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False))
    draw = [degrade_frames(frames, (8, 16), 0.5, 0.2, 0.1, torch.Generator().manual_seed(s)) for s in (4, 4, 5)]
    torch.testing.assert_close(draw[0], draw[1])  # seeded
    assert not torch.allclose(draw[0], draw[2])
    zeros = torch.zeros(400, 3, 32, 32)
    noise = degrade_frames(zeros, (), 0.0, 0.2, generator=torch.Generator().manual_seed(2))
    per_frame = noise.flatten(1).std(dim=1)  # sigma ~ U(0, 0.2) per frame
    assert float(per_frame.max()) < 0.2 * 1.05 and abs(float(per_frame.mean()) - 0.1) < 0.01
    tint = degrade_frames(zeros, (), 0.0, 0.0, 0.1, torch.Generator().manual_seed(3))
    assert 0.07 < float(tint.std()) < 0.13  # a colour field of std ~0.1 ...
    step = (tint[..., 1:] - tint[..., :-1]).abs().max()
    assert float(step) < 0.3 * float(tint.abs().max())  # ... that changes slowly across the frame
    with pytest.raises(InputError, match="degrade_p"):
        JointTrainConfig(degrade_p=1.5)
    with pytest.raises(InputError, match="noise_std"):
        JointTrainConfig(noise_std=-0.1)


def test_training_with_degraded_frames_is_seeded_and_differs(demo, tmp_path):
    base = ["--data_path", str(demo), "--accelerator", "cpu", "--devices", "1", "--progress_bar_refresh_rate", "0",
            "--batch_size", "3", "--max_steps", "4", "--num_workers", "0",
            *[a for k, v in TINY.items() for a in ("--set", f"model.{k}={v}")], "--set", "train.warmup_steps=1",
            "--frames_per_item", "2"]
    degrade = ["--set", "train.degrade_sizes=[8,16]", "--set", "train.noise_std=0.2", "--set", "train.tint_std=0.1"]
    runs = [script.train([*base, "--save_dir", str(tmp_path / name), *extra])
            for name, extra in (("a", degrade), ("b", degrade), ("plain", []))]
    weights = [load_joint(p).model.state_dict() for p in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_shuffle_colours_recolours_a_share_in_other_rgb_orders():
    frames = torch.rand(400, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    out, chosen = shuffle_colours(frames, 0.5, torch.Generator().manual_seed(1))
    assert 150 < int(chosen.sum()) < 250
    torch.testing.assert_close(out[~chosen], frames[~chosen])
    for i in torch.nonzero(chosen).flatten().tolist():  # a chosen frame is one non-identity order of its channels
        hits = [o for o in CHANNEL_ORDERS if torch.equal(out[i], frames[i, list(o)])]
        assert len(hits) == 1
    again, chosen2 = shuffle_colours(frames, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(again, out) and torch.equal(chosen2, chosen)  # seeded
    none, nothing = shuffle_colours(frames, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(none, frames) and not nothing.any()
    with pytest.raises(InputError, match="colour_shuffle_p"):
        JointTrainConfig(colour_shuffle_p=1.0)


def test_caption_nce_leaves_out_the_recoloured_frames():
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    clip = torch.tensor([0, 0, 1, 1, 2, 2])
    positive = torch.nn.functional.one_hot(clip, 3).bool()
    full = (multi_positive_nce(logits, positive) + multi_positive_nce(logits.T, positive.T)) / 2
    torch.testing.assert_close(caption_nce(logits, positive, torch.ones(6, dtype=torch.bool)), full)
    keep = torch.tensor([True, False, True, True, False, False])  # clip 2 has no kept frame: caption 2 drops out
    kept, pos = logits[keep], positive[keep]
    expected = (multi_positive_nce(kept, pos) + multi_positive_nce(kept.T[:2], pos.T[:2])) / 2
    torch.testing.assert_close(caption_nce(logits, positive, keep), expected)
    nothing = caption_nce(logits.requires_grad_(), positive, torch.zeros(6, dtype=torch.bool))
    assert float(nothing) == 0.0 and nothing.requires_grad


def test_training_with_recoloured_frames_is_seeded_and_differs(demo, tmp_path):
    base = ["--data_path", str(demo), "--accelerator", "cpu", "--devices", "1", "--progress_bar_refresh_rate", "0",
            "--batch_size", "3", "--max_steps", "3", "--num_workers", "0",
            *[a for k, v in TINY.items() for a in ("--set", f"model.{k}={v}")], "--set", "train.warmup_steps=1",
            "--frames_per_item", "2"]
    shuffle = ["--set", "train.colour_shuffle_p=0.5"]
    runs = [script.train([*base, "--save_dir", str(tmp_path / name), *extra])
            for name, extra in (("a", shuffle), ("b", shuffle), ("plain", []), ("zero", ["--set",
                                                                                          "train.colour_shuffle_p=0"]))]
    weights = [load_joint(p).model.state_dict() for p in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    assert all(torch.equal(weights[2][k], weights[3][k]) for k in weights[2])  # p = 0 is the plain training
