"""AudioCLIP encoder: released key layout, config inference, strict loading, STFT front end, towers."""

from __future__ import annotations

import math

import pytest
import torch

from tav.encoders.audioclip import (
    AudioCLIP,
    AudioCLIPConfig,
    audioclip_config_from_state_dict,
    load_audioclip,
    save_tiny_audioclip,
    tiny_audioclip_config,
)
from tav.encoders.esresnext import ESResNeXtFBSP, frame_signal
from tav.errors import InputError

from .helpers import read_tsv, spec_tsv

RATE = 44100


def _tsv_meta_state_dict() -> dict[str, torch.Tensor]:
    rows, _ = read_tsv(spec_tsv("audioclip.tsv"))
    return {k: torch.empty(shape, dtype=getattr(torch, dtype), device="meta") for k, shape, dtype in rows}


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return save_tiny_audioclip(tmp_path_factory.mktemp("audioclip") / "tiny.pt", seed=0)


@pytest.fixture(scope="module")
def tiny(tiny_file):
    return load_audioclip(tiny_file)


def _tone(freq: float, seconds: float, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * RATE), dtype=torch.float64) / RATE
    return (amplitude * torch.sin(2 * math.pi * freq * t)).float()


def test_full_config_reproduces_released_keys_shapes_and_counts():
    rows, header = read_tsv(spec_tsv("audioclip.tsv"))
    with torch.device("meta"):
        model = AudioCLIP(AudioCLIPConfig())
    sd = model.state_dict()
    assert list(sd) == [k for k, _, _ in rows]  # same keys, same order
    assert {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()} == {
        k: (shape, dtype) for k, shape, dtype in rows}
    n_params = sum(p.numel() for p in model.parameters())
    n_elements = sum(v.numel() for v in sd.values())
    assert (n_params, n_elements) == (134_111_910, 134_246_925)
    assert "134,111,910" in header and "134,246,925" in header
    assert model.dim == 1024 and model.image_size == 224 and model.audio_rate == 44100


def test_config_inferred_from_shapes():
    assert audioclip_config_from_state_dict(_tsv_meta_state_dict()) == AudioCLIPConfig()
    tiny_cfg = tiny_audioclip_config()
    model = AudioCLIP(tiny_cfg)
    assert audioclip_config_from_state_dict(model.state_dict()) == tiny_cfg
    assert sum(p.numel() for p in model.parameters()) < 3_000_000


def test_save_load_round_trip_same_outputs(tiny_file, tiny):
    direct = AudioCLIP(tiny_audioclip_config())
    direct.load_state_dict(torch.load(tiny_file, weights_only=True))
    assert not any(p.requires_grad for p in tiny.parameters()) and not tiny.training
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=g)
    captions = ["a man plays the violin", "rain over the mountains"]
    audio = (torch.rand(2, 4000, generator=g) * 2 - 1) * 20000
    with torch.no_grad():
        for a, b in [(tiny.encode_images(images), direct.encode_images(images)),
                     (tiny.encode_texts(captions), direct.encode_texts(captions)),
                     (tiny.encode_audio(audio), direct.encode_audio(audio))]:
            assert a.shape == (2, 64) and torch.isfinite(a).all()
            assert torch.equal(a, b)
            assert (a[0] - a[1]).abs().max() > 1e-4  # inputs are told apart
    # seeded: the same seed writes the same weights, another seed other weights
    again = torch.load(save_tiny_audioclip(tiny_file.with_name("again.pt"), seed=0), weights_only=True)
    other = torch.load(save_tiny_audioclip(tiny_file.with_name("other.pt"), seed=1), weights_only=True)
    first = torch.load(tiny_file, weights_only=True)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["visual.conv1.weight"], other["visual.conv1.weight"])


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_load_accepts_wrapped_state_dict(tiny_file, tiny, wrapper, tmp_path):
    path = tmp_path / "wrapped.pt"
    torch.save({wrapper: torch.load(tiny_file, weights_only=True), "epoch": 3}, path)
    loaded = load_audioclip(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), tiny.state_dict().values(),
                                                  strict=True))


def test_missing_file_names_file_and_option(tmp_path, monkeypatch):
    with pytest.raises(InputError) as err:
        load_audioclip(tmp_path / "nope.pt")
    msg = str(err.value)
    assert "nope.pt" in msg and "--audioclip_ckpt" in msg and "\n" not in msg
    monkeypatch.setenv("TAV_CKPT_DIR", str(tmp_path))
    with pytest.raises(InputError, match="AudioCLIP-Full-Training.pt: AudioCLIP weights not found"):
        load_audioclip()


@pytest.mark.parametrize("edit, expected", [
    ("drop:audio.layer2.0.bn1.running_mean", "1 missing (first 'audio.layer2.0.bn1.running_mean')"),
    ("drop:text_projection", "missing 'text_projection'"),
    ("add:audio.extra.weight", "1 unexpected (first 'audio.extra.weight')"),
    ("reshape:logit_scale_ai", "1 mis-shaped (first 'logit_scale_ai': (1,) in the file, () expected)"),
])
def test_bad_state_dict_names_the_key(tiny_file, tmp_path, edit, expected):
    sd = torch.load(tiny_file, weights_only=True)
    action, key = edit.split(":")
    if action == "drop":
        del sd[key]
    elif action == "add":
        sd[key] = torch.zeros(3)
    else:
        sd[key] = sd[key].reshape(1)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(InputError) as err:
        load_audioclip(path)
    msg = str(err.value)
    assert expected in msg and str(path) in msg and "\n" not in msg


def test_fourier_basis_spectrogram_peaks_at_tone_bin():
    tower = ESResNeXtFBSP(tiny_audioclip_config().audio, out_dim=8)  # real STFT settings, fresh fbsp
    # at init bin k is a DFT bin over the 2048-sample zero-padded frame, sampled on [-pi, pi]:
    # k / (n_fft - 1) cycles per sample
    for k in (40, 100, 700):
        audio = _tone(k * RATE / 2047, 1.0)[None]
        spec = tower.spectrogram(audio)  # (1, 1025, F, 2)
        assert spec.shape == (1, 1025, 1 + math.ceil((RATE - 1654) / 561), 2)
        power = (spec**2).sum(-1).mean(-1)[0]  # (1025,)
        assert power.argmax().item() == k
        assert power[k] > 100 * power[k + 5] and power[k] > 100 * power[k - 5]
        db = tower.log_power(audio)  # (1, 3 bands, 341, F): bin k sits in band k // 341, row k % 341
        assert db.shape[:3] == (1, 3, 341)
        assert db.mean(-1)[0, k // 341].argmax().item() == k % 341
    window = tower.window  # periodic Blackman-Harris
    assert window.shape == (1654,) and window[827].item() == pytest.approx(1.0)
    assert window[0].item() == pytest.approx(0.35875 - 0.48829 + 0.14128 - 0.01168, abs=1e-7)


def test_frame_signal_counts_and_centres():
    window = torch.ones(6)
    frames = frame_signal(torch.arange(1.0, 5.0)[None], 6, 3, window)  # shorter than a window: one frame
    assert frames.tolist() == [[[0.0, 1.0, 2.0, 3.0, 4.0, 0.0]]]
    frames = frame_signal(torch.arange(1.0, 11.0)[None], 6, 3, window)  # 1 + ceil(4/3) = 3 frames, pad 1+1
    assert frames.shape == (1, 3, 6) and frames[0, 0, :2].tolist() == [0.0, 1.0] and frames[0, 2, -1] == 0


def test_encode_images_differentiable_any_size(tiny):
    images = torch.rand(2, 3, 40, 56, requires_grad=True)
    feats = tiny.encode_images(images)
    assert feats.shape == (2, 64)
    feats.square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert tiny.encode_images(torch.rand(1, 3, 97, 31)).shape == (1, 64)


def test_text_pooling_is_causal_at_end_token(tiny):
    import open_clip

    tokens = open_clip.tokenize(["a cat", "a cat"])
    eot = tokens[0].argmax().item()
    tokens[1, eot + 1:] = 123  # tokens after the end token must not change the pooled feature
    with torch.no_grad():
        feats = tiny.encode_tokens(tokens)
        assert torch.allclose(feats[0], feats[1], atol=1e-6)
        # a batch of 1 against a batch of 2: GEMM blocking depends on the row count, so last bits may differ
        torch.testing.assert_close(tiny.encode_texts(["a cat"])[0], feats[0], rtol=1e-5, atol=1e-6)


def test_encode_audio_rows_independent_and_short_chunks(tiny):
    g = torch.Generator().manual_seed(1)
    audio = (torch.rand(3, 1600, generator=g) * 2 - 1) * 32767  # one 33 ms chunk = one STFT frame
    with torch.no_grad():
        batch = tiny.encode_audio(audio)
        assert batch.shape == (3, 64)
        assert torch.allclose(batch[1], tiny.encode_audio(audio[1:2])[0], atol=1e-5)
        assert tiny.encode_audio(audio.to(torch.int16)).shape == (3, 64)  # int16 input is cast
    with pytest.raises(ValueError, match=r"\(N, S\)"):
        tiny.encode_audio(audio[None])


def test_logit_scales_clamped():
    model = AudioCLIP(tiny_audioclip_config())
    assert model.audio_image_scale.item() == pytest.approx(100.0)
    with torch.no_grad():
        model.logit_scale_ai.fill_(10.0)
        model.logit_scale_at.fill_(-3.0)
        model.logit_scale.fill_(math.log(20.0))
    assert model.audio_image_scale.item() == 100.0
    assert model.audio_text_scale.item() == 1.0
    assert model.image_text_scale.item() == pytest.approx(20.0)
