"""The motion model's audio reliance (tav.tia2v.reliance): a model whose audio path is cut scores the same with
any sound; one that hears it does not; changed frames, the two starts and the input checks."""

from __future__ import annotations

import pytest
import torch

from tav.diffusion.schedule import ProcessConfig
from tav.errors import InputError
from tav.tia2v.config import tia2v_preset
from tav.tia2v.reliance import Reliance, audio_reliance, changed_frames
from tav.tia2v.unet import TIA2VUNet

B, F, R = 3, 4, 16


def motion_net(cut_audio: bool, first_frame: str = "clean") -> TIA2VUNet:
    """A tiny motion U-Net with random weights (std 0.02; the audio transformers' 0.3, so the sound matters);
    ``cut_audio``: the audio transformers' output projections stay zero, so the audio cannot reach the output."""
    from dataclasses import replace

    torch.manual_seed(0)
    net = TIA2VUNet(replace(tia2v_preset("motion-tiny"), first_frame=first_frame)).eval()
    for name, p in net.named_parameters():
        if not (cut_audio and "transformers.0.proj_out" in name):
            torch.nn.init.normal_(p, std=0.3 if "transformers.0." in name else 0.02)
    net.process = ProcessConfig(steps=100, noise_schedule="cosine", learn_sigma=True, loss="rescaled_mse")
    return net


def clips(static: bool = False) -> dict:
    """``B`` clips: a bright square that jumps at frame 2 (stays put with ``static``), and their conditions."""
    g = torch.Generator().manual_seed(1)
    video = torch.full((B, 3, F, R, R), -0.4)
    for b in range(B):
        video[b, :, :, 2:6, 2 + b:6 + b] = 0.4
        if not static:
            video[b, :, 2:, 2:6, 2 + b:6 + b] = -0.4
            video[b, :, 2:, 10:14, 8:12] = 0.4
    return {"video": video, "text": torch.randn(B, 77, 32, generator=g), "image": torch.randn(B, 32, generator=g),
            "audio_tokens": torch.randn(B, F, 8, 32, generator=g)}


def test_changed_frames_marks_the_jump():
    changed = changed_frames(clips()["video"])
    assert changed.tolist() == [[False, True, False]] * B
    assert not changed_frames(clips(static=True)["video"]).any()


def test_a_model_deaf_to_its_sound_scores_the_same_three_ways():
    rows = audio_reliance(motion_net(cut_audio=True), clips(), [10, 60])
    assert [r.t for r in rows] == [10, 60] and all(r.frames == B * (F - 1) and r.changed == B for r in rows)
    for r in rows:
        assert r.own == r.other == r.null and r.own_changed == r.other_changed and r.gain == 0.0
    assert rows[1].own > rows[0].own  # more noise, a worse guess (the same model and clips)


def test_a_model_that_hears_scores_differently_and_gain_is_the_share_removed():
    rows = audio_reliance(motion_net(cut_audio=False), clips(), [60], start="first")
    r = rows[0]
    assert r.own != r.other and r.own != r.null and r.own_changed != r.other_changed
    assert r.gain == pytest.approx((r.other_changed - r.own_changed) / r.other_changed)
    assert set(r.to_dict()) >= {"t", "start", "own", "other", "null", "gain"}
    assert Reliance(1, "data", 3, 0, 1.0, 1.0, 1.0, None, None, None).gain is None  # nothing changed


def test_the_two_starts_agree_on_clips_that_do_not_move_and_differ_on_clips_that_do():
    for first_frame in ("clean", "noised"):
        net = motion_net(cut_audio=False, first_frame=first_frame)
        still = clips(static=True)
        a, b = (audio_reliance(net, still, [40], start=s)[0] for s in ("data", "first"))
        assert (a.own, a.other, a.null) == (b.own, b.other, b.null)  # copies of frame 0 are the clip itself
        moving = clips()
        a, b = (audio_reliance(net, moving, [40], start=s)[0] for s in ("data", "first"))
        assert a.own_changed < b.own_changed  # from copies the jump must come from the model


def test_same_seed_same_figures_and_input_checks():
    net, batch = motion_net(cut_audio=False), clips()
    assert audio_reliance(net, batch, [30], seed=3) == audio_reliance(net, batch, [30], seed=3)
    assert audio_reliance(net, batch, [30], seed=3) != audio_reliance(net, batch, [30], seed=4)
    with pytest.raises(InputError, match=r"timesteps \[100\]: each must be in \[1, 100\)"):
        audio_reliance(net, batch, [100])
    with pytest.raises(InputError, match="start 'zeros'"):
        audio_reliance(net, batch, [30], start="zeros")
    with pytest.raises(InputError, match="at least 2 clips"):
        audio_reliance(net, {k: v[:1] for k, v in batch.items()}, [30])
    with pytest.raises(InputError, match=r"batch\['video'\] \(B, 3, F, H, W\); got \(3, 3, 16, 16\)"):
        audio_reliance(net, {**batch, "video": batch["video"][:, :, 0]}, [30])
    with pytest.raises(InputError, match="missing \\['audio_tokens'\\]"):
        audio_reliance(net, {k: v for k, v in batch.items() if k != "audio_tokens"}, [30])
    del net.process
    with pytest.raises(InputError, match="needs the motion U-Net's process .*load_tia2v_unet"):
        audio_reliance(net, batch, [30])
    content = TIA2VUNet(tia2v_preset("content-tiny"))
    with pytest.raises(InputError, match="needs a motion U-Net, got a content model"):
        audio_reliance(content, batch, [30])
