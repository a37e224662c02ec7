"""CLIP / wav2clip encoders, per-frame encoder audio, and the encoder registry (tiny random weights on CPU)."""

from __future__ import annotations

import sys
import types
import warnings

import numpy as np
import open_clip
import pytest
import torch
import wav2clip

from tav.data.audio import resample
from tav.encoders.audio import encoder_audio, frame_windows, window_starts
from tav.encoders.base import CLIP_MEAN, CLIP_STD, Encoder
from tav.encoders.clip import CLIPEncoder, load_clip, save_tiny_clip, tiny_clip_model
from tav.encoders.registry import (
    DEFAULT_ENCODERS,
    ENCODER_FILES,
    ENCODER_FLAGS,
    clear_encoder_cache,
    get_encoder,
    save_tiny_encoders,
)
from tav.encoders.wav2clip import (
    Wav2CLIPEncoder,
    build_wav2clip_model,
    load_wav2clip,
    save_tiny_wav2clip,
    to_module_keys,
)
from tav.errors import InputError

from .helpers import read_tsv, spec_tsv

CAPTIONS = ["a violin and a cello playing", "waves crashing on a rocky shore"]


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "ViT-B-32.pt", seed=3)


@pytest.fixture(scope="module")
def wav2clip_file(tmp_path_factory):
    return save_tiny_wav2clip(tmp_path_factory.mktemp("w2c") / "Wav2CLIP.pt", seed=5)


def _images(seed=0, shape=(2, 3, 48, 64)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ CLIP
def test_tiny_clip_round_trip(clip_file):
    ref = CLIPEncoder(tiny_clip_model(seed=3))
    enc = load_clip(clip_file)
    assert (enc.name, enc.dim, enc.image_size, enc.context_length) == ("clip", 512, 224, 77)
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.training
    images = _images()
    torch.testing.assert_close(enc.encode_images(images), ref.encode_images(images), rtol=0, atol=0)
    torch.testing.assert_close(enc.encode_texts(CAPTIONS), ref.encode_texts(CAPTIONS), rtol=0, atol=0)
    assert enc.encode_texts(CAPTIONS).shape == (2, 512)
    # a different seed is a different model: the comparison above can fail
    assert not torch.allclose(CLIPEncoder(tiny_clip_model(seed=4)).encode_images(images), ref.encode_images(images))


def _ops_and_grad(enc_fn, images: torch.Tensor) -> tuple[set[str], torch.Tensor, torch.Tensor]:
    """Operators of a bf16-autocast image pass + backward to the pixels, the features and the pixel gradient."""
    from torch.profiler import ProfilerActivity, profile

    x = images.clone().requires_grad_()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats = enc_fn(x).float()
        grad, = torch.autograd.grad(feats.square().sum(), x)
    return {e.key for e in prof.key_averages()}, feats.detach(), grad


def test_clip_runs_sequence_first_with_the_same_results():
    # Batch-first attention fed its input projection a strided view, which bf16 autocast turned into a bmm
    # over an expanded, copied weight (4x slower than fp32); sequence-first does the same maths without it.
    import copy

    model = tiny_clip_model(seed=3)
    batch_first = copy.deepcopy(model).requires_grad_(False)
    enc = CLIPEncoder(model)
    assert not enc.model.visual.transformer.batch_first and not enc.model.transformer.batch_first
    assert not any(b.attn.batch_first for b in enc.model.visual.transformer.resblocks)
    images = _images()
    ops, feats, grad = _ops_and_grad(enc.encode_images, images)
    ref_ops, ref_feats, ref_grad = _ops_and_grad(lambda x: batch_first.encode_image(enc.preprocess_images(x)), images)
    torch.testing.assert_close(feats, ref_feats, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-9)
    assert "aten::bmm" in ref_ops and "aten::bmm" not in ops
    with torch.no_grad():
        ref_text = batch_first.encode_text(open_clip.tokenize(CAPTIONS, context_length=enc.context_length))
        torch.testing.assert_close(enc.encode_texts(CAPTIONS), ref_text, rtol=1e-5, atol=1e-5)


def test_clip_missing_file_is_one_line(tmp_path):
    path = tmp_path / "nowhere" / "ViT-B-32.pt"
    with pytest.raises(InputError) as err:
        load_clip(path)
    text = str(err.value)
    assert "\n" not in text and str(path) in text and "--clip_ckpt" in text and "ViT-B-32.pt" in text


def test_clip_torchscript_archive_and_openai_extras(tmp_path, clip_file):
    """A traced tiny CLIP stands in for OpenAI's TorchScript ``ViT-B-32.pt``: its ``state_dict()`` has the CLIP's
    keys plus the causal ``attn_mask`` buffer. The plain-dict path also drops OpenAI's scalar entries."""
    model = tiny_clip_model(seed=3)
    images, tokens = _images(shape=(1, 3, 224, 224)), torch.zeros(1, 77, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (images, tokens), check_trace=False)
        traced.save(str(tmp_path / "jit.pt"))
    enc_jit = load_clip(tmp_path / "jit.pt")
    ref = load_clip(clip_file)
    torch.testing.assert_close(enc_jit.encode_images(images), ref.encode_images(images), rtol=0, atol=0)

    state = torch.load(clip_file, weights_only=True)
    state.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    torch.save(state, tmp_path / "extras.pt")
    torch.testing.assert_close(load_clip(tmp_path / "extras.pt").encode_texts(CAPTIONS), ref.encode_texts(CAPTIONS))

    del state["visual.proj"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(InputError, match="broken.pt"):
        load_clip(tmp_path / "broken.pt")


def test_preprocess_images_known_values_and_grad():
    enc = CLIPEncoder(tiny_clip_model(seed=0))
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    # a constant colour stays constant through the bilinear resize
    flat = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1).expand(1, 3, 17, 31)
    out = enc.preprocess_images(flat)
    assert out.shape == (1, 3, 224, 224)
    expected = (torch.tensor([0.2, 0.5, 0.9]) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out[0, :, 100, 7], expected)
    torch.testing.assert_close(out[0, 0, 0, 0], torch.tensor((0.2 - 0.48145466) / 0.26862954))
    # a 2x2 image: corners are the corner pixels (align_corners=False clamps at the border)
    tiny = _images(shape=(1, 3, 2, 2))
    out = enc.preprocess_images(tiny)
    torch.testing.assert_close(out[..., 0, 0], ((tiny - mean) / std)[..., 0, 0])
    torch.testing.assert_close(out[..., -1, -1], ((tiny - mean) / std)[..., -1, -1])
    # at 224 it is only the normalisation
    full = _images(shape=(1, 3, 224, 224))
    torch.testing.assert_close(enc.preprocess_images(full), (full - mean) / std)
    # gradients reach the frames through the frozen tower
    frames = _images(shape=(2, 3, 32, 32)).requires_grad_()
    enc.encode_images(frames).pow(2).sum().backward()
    assert frames.grad is not None and torch.isfinite(frames.grad).all() and frames.grad.abs().sum() > 0


def test_clip_has_no_audio_tower():
    with pytest.raises(NotImplementedError, match="clip"):
        CLIPEncoder(tiny_clip_model()).encode_audio(torch.zeros(1, 16000))


# -------------------------------------------------------------------------------------------- wav2clip
def test_wav2clip_keys_match_the_spec_table(wav2clip_file):
    rows, header = read_tsv(spec_tsv("wav2clip.tsv"))
    state = build_wav2clip_model().state_dict()
    assert [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()] == rows
    released = torch.load(wav2clip_file, weights_only=True)
    assert all(k.startswith(("audio_encoder.", "audio_transform.")) for k in released)
    assert list(to_module_keys(released)) == [k for k, _, _ in rows]
    assert sum(p.numel() for p in build_wav2clip_model().parameters()) == 11_695_552  # header of the table


def test_wav2clip_round_trip_and_package_maths(wav2clip_file):
    enc = load_wav2clip(wav2clip_file)
    assert (enc.name, enc.dim, enc.audio_rate, enc.audio_scale) == ("wav2clip", 512, 16000, 1.0)
    released = to_module_keys(torch.load(wav2clip_file, weights_only=True))
    loaded = enc.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in released.items())
    assert not torch.equal(loaded["encoder.bn1.running_mean"], torch.zeros(64))  # buffers came from the file
    again = torch.load(save_tiny_wav2clip(wav2clip_file.parent / "again.pt", seed=5), weights_only=True)
    assert all(torch.equal(again[k], v) for k, v in torch.load(wav2clip_file, weights_only=True).items())

    audio = (torch.rand(3, 8000, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 0.3
    feats = enc.encode_audio(audio)
    assert feats.shape == (3, 512) and not feats.requires_grad
    package = wav2clip.embed_audio(audio.numpy(), enc.model)  # the package's own numpy entry point
    np.testing.assert_allclose(feats.numpy(), package, rtol=1e-5, atol=1e-5)
    # per-item normalisation: a row's embedding no longer depends on its batch-mates
    per_item = Wav2CLIPEncoder(enc.model, per_item_norm=True)
    np.testing.assert_allclose(per_item.encode_audio(audio)[1:2].numpy(), wav2clip.embed_audio(audio[1:2].numpy(),
                                                                                                enc.model), atol=1e-5)
    assert not np.allclose(feats[1].numpy(), per_item.encode_audio(audio)[1].numpy(), atol=1e-4)
    with pytest.raises(NotImplementedError, match="wav2clip"):
        enc.encode_texts(["x"])


def test_wav2clip_errors(tmp_path):
    with pytest.raises(InputError) as err:
        load_wav2clip(tmp_path / "Wav2CLIP.pt")
    text = str(err.value)
    assert "\n" not in text and "Wav2CLIP.pt" in text and "--wav2clip_ckpt" in text
    assert "github.com/descriptinc/lyrebird-wav2clip/releases" in text
    torch.save({"audio_encoder.conv1.weight": torch.zeros(64, 1, 7, 7)}, tmp_path / "partial.pt")
    with pytest.raises(InputError, match="partial.pt.*Missing key"):
        load_wav2clip(tmp_path / "partial.pt")
    torch.save({"something.else": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a wav2clip checkpoint"):
        load_wav2clip(tmp_path / "other.pt")


# --------------------------------------------------------------------------------------- encoder audio
class _StubEncoder(Encoder):
    def __init__(self, rate, scale):
        super().__init__()
        self.audio_rate, self.audio_scale = rate, scale


def _peak_hz(row: torch.Tensor, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(row.numpy().astype(np.float64)))
    return float(np.argmax(spectrum)) * rate / len(row)


@pytest.mark.parametrize("rate, scale, window", [(44100, 32767.0, 22050), (16000, 1.0, 8000)])
def test_encoder_audio_resamples_windows_and_scales(rate, scale, window):
    n = 16 * 1600  # 16 frames of 30 fps video at 48 kHz
    t = np.arange(n) / 48000
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)[None]
    out = encoder_audio(tone, 48000, _StubEncoder(rate, scale), 16)
    assert out.shape == (1, 16, window) and out.dtype == torch.float32
    for frame in (0, 7, 15):
        assert abs(_peak_hz(out[0, frame], rate) - 1000) <= rate / window  # within one FFT bin
    # int16 scaling: the peak is scale x amplitude away from the clip ends (where the polyphase filter rings)
    assert abs(out[0, 7].abs().max().item() - 0.5 * scale) < 0.005 * 0.5 * scale
    assert out.abs().max().item() < 1.1 * 0.5 * scale
    # torch input gives the same, and a window longer than the clip is capped at the whole clip
    torch.testing.assert_close(encoder_audio(torch.from_numpy(tone), 48000, _StubEncoder(rate, scale), 16), out)
    long = encoder_audio(tone, 48000, _StubEncoder(rate, scale), 16, window_s=5.0)
    assert long.shape == (1, 16, round(n * rate / 48000)) and torch.equal(long[0, 0], long[0, 15])


def test_encoder_audio_upstream_rows_are_raw():
    audio = torch.rand(2, 16 * 1600, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = encoder_audio(audio, 48000, _StubEncoder(44100, 32767.0), 16, mode="upstream")
    assert out.shape == (2, 16, 1600)
    assert torch.equal(out, audio.reshape(2, 16, 1600))  # no resampling, no int16 scaling
    assert torch.equal(out[1, 3], audio[1, 3 * 1600:4 * 1600])
    with pytest.raises(ValueError, match="divisible"):
        encoder_audio(audio[:, :-1], 48000, _StubEncoder(44100, 1.0), 16, mode="upstream")
    with pytest.raises(ValueError, match="no audio tower"):
        encoder_audio(audio, 48000, CLIPEncoder(tiny_clip_model()), 16)


def test_frame_windows_centres_and_clamping():
    ramp = torch.arange(100.0)
    # frames own 25 samples, centres 12.5, 37.5, 62.5, 87.5; starts 12.5-15 -> 0 (clamped), 23, 48, 73 -> 70
    assert window_starts(100, 4, 30).tolist() == [0, 23, 48, 70]
    rows = frame_windows(ramp, 4, 30)
    assert rows.shape == (4, 30)
    assert torch.equal(rows, torch.tensor([0, 23, 48, 70])[:, None] + torch.arange(30.0))
    # odd window: centred exactly when the centre falls on a sample boundary
    assert window_starts(100, 4, 5).tolist() == [10, 35, 60, 85]
    assert window_starts(8, 4, 1).tolist() == [1, 3, 5, 7]
    # the whole clip: every row is the clip; batched input keeps its leading dims
    batch = torch.stack([ramp, -ramp])
    full = frame_windows(batch, 3, 100)
    assert full.shape == (2, 3, 100) and torch.equal(full[1, 2], -ramp)
    with pytest.raises(ValueError):
        window_starts(10, 2, 11)



def test_frame_windows_inside_a_longer_wave():
    # the clip owns samples [40, 60) of 100; frames own 5 samples each, centres 42.5, 47.5, 52.5, 57.5
    assert window_starts(100, 4, 30, (40, 60)).tolist() == [28, 33, 38, 43]
    # near the ends the windows are still clamped to the wave
    assert window_starts(100, 4, 30, (0, 20)).tolist() == [0, 0, 0, 3]
    assert window_starts(100, 4, 30, (80, 100)).tolist() == [68, 70, 70, 70]
    # a clip inside a file: its frames' windows equal the whole file's windows of the same frames
    wave = torch.arange(1000.0)
    whole = frame_windows(wave, 50, 60)  # 20 samples per frame
    for k in (5, 20, 42):
        torch.testing.assert_close(frame_windows(wave, 8, 60, (20 * k, 20 * (k + 8))), whole[k: k + 8], rtol=0, atol=0)
    for bad in ((-1, 20), (20, 20), (50, 101)):
        with pytest.raises(ValueError, match="span"):
            window_starts(100, 4, 30, bad)


def test_encoder_audio_spans_centre_windows_on_short_clips():
    """A clip shorter than the window: without the sound around it every frame gets the same window; with it each
    frame's window is centred on that frame, as if cut from the whole recording."""
    rate = 16000
    enc = _StubEncoder(rate, 1.0)
    gen = torch.Generator().manual_seed(0)
    file = torch.rand(1, 90 * 1600, generator=gen) * 2 - 1  # 3 s at 48 kHz, 90 frames of 30 fps
    a, b = 40 * 1600, 48 * 1600  # an 8-frame clip (0.27 s) from frame 40
    alone = encoder_audio(file[:, a:b], 48000, enc, 8, window_s=0.5)
    assert alone.shape == (1, 8, round(8 * 1600 / 3)) and torch.equal(alone[0, 0], alone[0, 7])
    m = 12000  # 0.25 s each side
    around = encoder_audio(file[:, a - m: b + m], 48000, enc, 8, window_s=0.5, spans=torch.tensor([[m, m + b - a]]))
    assert around.shape == (1, 8, 8000)
    assert not torch.allclose(around[0, 0], around[0, 7])
    # each window is the resampled recording's 0.5 s centred on its frame (within a sample of the exact centre)
    ref = torch.from_numpy(resample(file[0, a - m: b + m].numpy(), 48000, rate))
    starts = window_starts(len(ref), 8, 8000, (m // 3, round((m + b - a) / 3)))
    for i in range(8):
        assert abs(starts[i].item() + 4000 - (m + (i + 0.5) * 1600) / 3) <= 1.0
        torch.testing.assert_close(around[0, i], ref[starts[i]: starts[i] + 8000], rtol=0, atol=0)
    # a batch with different spans, and the spans' shape is checked
    two = encoder_audio(torch.cat([file[:, :b - a + 2 * m], file[:, a - m: b + m]]), 48000, enc, 8, window_s=0.5,
                        spans=torch.tensor([[0, b - a], [m, m + b - a]]))
    torch.testing.assert_close(two[1], around[0], rtol=0, atol=0)
    assert not torch.equal(two[0, 0], two[1, 0])
    with pytest.raises(ValueError, match="spans must be"):
        encoder_audio(file[:, a - m: b + m], 48000, enc, 8, spans=torch.tensor([m, m + b - a]))
    # upstream rows read only the clip
    up = encoder_audio(file[:, a - m: b + m], 48000, enc, 8, mode="upstream", spans=torch.tensor([[m, m + b - a]]))
    assert torch.equal(up[0], file[0, a:b].reshape(8, 1600))


# -------------------------------------------------------------------------------------------- registry
def test_get_encoder_builds_once(tmp_path, monkeypatch, clip_file):
    monkeypatch.setenv("TAV_CKPT_DIR", str(clip_file.parent))
    clear_encoder_cache()
    first = get_encoder("clip")
    assert isinstance(first, CLIPEncoder)
    assert get_encoder("clip") is first
    assert get_encoder("clip", path=clip_file, device="cpu") is first  # same resolved path and device
    clear_encoder_cache()
    second = get_encoder("clip")
    assert second is not first
    assert get_encoder("clip") is second
    with pytest.raises(InputError, match="unknown encoder"):
        get_encoder("bert")
    with pytest.raises(InputError, match="--wav2clip_ckpt"):
        get_encoder("wav2clip", path=tmp_path / "missing.pt")
    assert set(ENCODER_FLAGS) == set(ENCODER_FILES) == {"clip", "audioclip", "wav2clip", "beats", "clip_l", "joint"}
    assert set(DEFAULT_ENCODERS) == {"clip", "audioclip", "wav2clip"}
    clear_encoder_cache()


def _fake_audioclip_module():
    """Stand-in for ``tav.encoders.audioclip`` (written separately): checks the registry's lazy wiring only."""

    class FakeAudioCLIP(Encoder):
        name, dim, audio_rate, audio_scale = "audioclip", 4, 44100, 32767.0

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    def save_tiny_audioclip(path, seed=0):
        torch.save({"w": torch.full((1,), float(seed))}, path)
        return path

    def load_audioclip(path=None, device="cpu"):
        torch.load(path, weights_only=True)
        return FakeAudioCLIP().to(device)

    module = types.ModuleType("tav.encoders.audioclip")
    module.save_tiny_audioclip, module.load_audioclip = save_tiny_audioclip, load_audioclip
    return module


@pytest.mark.parametrize("real_audioclip", [False, True])
def test_save_tiny_encoders(tmp_path, monkeypatch, real_audioclip):
    if real_audioclip:
        pytest.importorskip("tav.encoders.audioclip")
    else:
        monkeypatch.setitem(sys.modules, "tav.encoders.audioclip", _fake_audioclip_module())
    paths = save_tiny_encoders(tmp_path, seed=1)
    assert {name: p.name for name, p in paths.items()} == {n: ENCODER_FILES[n] for n in DEFAULT_ENCODERS}
    assert all(p.is_file() and p.parent == tmp_path for p in paths.values())
    monkeypatch.setenv("TAV_CKPT_DIR", str(tmp_path))
    clear_encoder_cache()
    try:
        for name in DEFAULT_ENCODERS:
            assert get_encoder(name).name == name
    finally:
        clear_encoder_cache()
