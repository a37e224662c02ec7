"""BEATs: key layout of the released model, strict loading, fbank/token maths, per-frame tokens (tiny weights)."""

from __future__ import annotations

import ast
import re

import numpy as np
import pytest
import torch

from tav.data.audio import resample
from tav.encoders.beats import (
    BEATS_FILE,
    BEATsEncoder,
    beats_frame_tokens,
    compat_rows,
    fixed_window_samples,
    fixed_windows,
    load_beats,
    save_tiny_beats,
    tiny_beats_config,
)
from tav.encoders.beats_model import BEATs, BEATsConfig, fbank_frames, samples_for_patches, token_count
from tav.encoders.registry import clear_encoder_cache, get_encoder, save_tiny_encoders
from tav.errors import InputError

from .helpers import read_tsv, spec_tsv

TSV = "beats_iter3plus.tsv"


def _tsv_cfg(header: str) -> dict:
    """The ``key=value`` config of the table's ``# config:`` line."""
    line = next(ln for ln in header.splitlines() if ln.startswith("# config:"))
    cfg = {}
    for key, value in re.findall(r"(\w+)=(\S+)", line):
        try:
            cfg[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            cfg[key] = value
    return cfg


def _tone(freq: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    """A 0.5-amplitude sine with 50 ms raised-cosine fades (band-limited at both rates, no edge clicks)."""
    t = np.arange(round(seconds * rate)) / rate
    fade = np.clip(np.minimum(t, seconds - t) / 0.05, 0, 1)
    return (0.5 * np.sin(2 * np.pi * freq * t) * (0.5 - 0.5 * np.cos(np.pi * fade))).astype(np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> BEATsEncoder:
    return load_beats(save_tiny_beats(tmp_path_factory.mktemp("beats") / BEATS_FILE, seed=2))


def test_released_layout_keys_shapes_and_counts():
    rows, header = read_tsv(spec_tsv(TSV))
    cfg = BEATsConfig.from_cfg({**_tsv_cfg(header), "not_a_field": 1})
    assert cfg == BEATsConfig()  # the iter3+ defaults are the table's config
    with torch.device("meta"):
        model = BEATs(cfg)
    state = model.state_dict()
    assert [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()] == rows
    assert len(state) == 250
    assert sum(p.numel() for p in model.parameters()) == 90_311_792  # the shared bucket table counted once
    assert sum(v.numel() for v in state.values()) == 90_354_032  # ... and once per layer in the state dict
    assert "90,311,792" in header and "90,354,032" in header
    tables = {id(layer.self_attn.relative_attention_bias) for layer in model.encoder.layers}
    assert len(tables) == 1


def test_random_released_state_loads_strictly(tmp_path):
    rows, header = read_tsv(spec_tsv(TSV))
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=g) for k, shape, _ in rows}
    table = state["encoder.layers.0.self_attn.relative_attention_bias.weight"]
    for k in state:  # a real file saves the one shared table under every layer's name
        if k.endswith("relative_attention_bias.weight"):
            state[k] = table
    path = tmp_path / BEATS_FILE
    torch.save({"cfg": _tsv_cfg(header), "model": state}, path)
    enc = load_beats(path)
    assert enc.dim == 768 and not enc.training
    assert not any(p.requires_grad for p in enc.parameters())
    loaded = enc.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    del state["encoder.layers.3.fc1.bias"]
    state["encoder.extra.weight"] = torch.zeros(1)
    torch.save({"cfg": _tsv_cfg(header), "model": state}, path)
    with pytest.raises(InputError, match=r"(?s)BEATs_iter3_plus_AS20K\.pt.*layers\.3\.fc1\.bias.*encoder\.extra"):
        load_beats(path)


def test_fbank_and_token_counts(tiny):
    assert (fbank_frames(399), fbank_frames(400), fbank_frames(3200), fbank_frames(4800)) == (0, 1, 18, 28)
    assert samples_for_patches(1) == 2800 and samples_for_patches(2) == 5360
    for n, p in [(2800, 8), (3200, 8), (4800, 8), (5359, 8), (5360, 16), (16000, 48)]:
        assert token_count(n) == p
        wave = torch.rand(2, n) - 0.5
        assert BEATs.fbank(wave).shape == (2, fbank_frames(n), 128)
        assert tiny.encode_audio(wave).shape == (2, p, 64)
    with pytest.raises(ValueError, match="2800"):
        tiny.encode_audio(torch.zeros(1, 2799))
    # default window: one patch (2800 samples); longer spans round down to whole patches
    assert fixed_window_samples(0.2, 30) == 2800
    assert fixed_window_samples(0.2, 2) == samples_for_patches(3) == 7920  # 0.5 s -> 48 frames -> 3 patches
    # tokens are time-major: the first 8 come from the first 16 fbank frames alone
    fbank = torch.randn(1, 32, 128)
    with torch.no_grad():
        assert torch.allclose(tiny.model.patch_tokens(fbank)[:, :8], tiny.model.patch_tokens(fbank[:, :16]), atol=1e-6)


def test_resample_keeps_tone_frequency():
    out = resample(_tone(1000, 48000), 48000, 16000)
    spectrum = np.abs(np.fft.rfft(out))
    assert len(out) == 16000 and np.argmax(spectrum) * 16000 / len(out) == pytest.approx(1000, abs=1)


def test_fixed_windows_are_centred_and_clamped():
    ramp = np.arange(16000, dtype=np.float32)  # 1 s at 16 kHz: a window's first value is its start
    rows = fixed_windows(ramp, 16000, n_frames=10, fps=10)
    assert rows.shape == (10, 2800)
    # frame i centred at 1600 (i + 1/2): start 1600 i - 600, clamped to [0, 16000 - 2800]
    assert rows[:, 0].tolist() == [0, 1000, 2600, 4200, 5800, 7400, 9000, 10600, 12200, 13200]
    assert torch.equal(rows[5], torch.arange(7400, 10200, dtype=torch.float32))
    short = fixed_windows(np.ones(1000, np.float32), 16000, n_frames=2, fps=30)
    assert short.shape == (2, 2800) and short[:, 1000:].abs().max() == 0  # zero tail for a short clip


def test_fixed_mode_is_rate_independent(tiny):
    at_16k = beats_frame_tokens(tiny, _tone(1000, 16000), 16000, n_frames=10, fps=10)
    at_48k = beats_frame_tokens(tiny, _tone(1000, 48000), 48000, n_frames=10, fps=10, mode="fixed")
    other = beats_frame_tokens(tiny, _tone(3000, 16000), 16000, n_frames=10, fps=10)
    assert at_16k.shape == (10, 8, 64)
    # features are O(1); the resampler's ~1e-3 passband error moves them by ~1e-3 on average (most in the
    # near-empty top mel bins), a 3 kHz tone by ~0.5
    assert (at_16k - at_48k).abs().max() < 2e-2 and (at_16k - at_48k).abs().mean() < 2e-3
    assert (at_16k - other).abs().mean() > 0.2
    assert (at_16k - other).abs().mean() > 100 * (at_16k - at_48k).abs().mean()
    assert at_16k.dtype == torch.float32


def test_compat_mode_rows_and_tokens(tiny):
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, 3 * 48000).astype(np.float32)
    rows90 = compat_rows(wave, 48000, 90)  # 90-frame files: 96 kHz -> 3200-sample rows
    assert rows90.shape == (90, 3200)
    assert torch.equal(rows90.flatten(), torch.from_numpy(resample(wave, 48000, 96000)))
    tokens90 = beats_frame_tokens(tiny, wave, 48000, n_frames=90, fps=30, mode="compat")
    assert tokens90.shape == (90, 8, 64)
    torch.testing.assert_close(tokens90[17], tiny.encode_audio(rows90[17:18])[0], atol=1e-5, rtol=1e-5)
    tokens30 = beats_frame_tokens(tiny, wave, 48000, n_frames=30, fps=10, mode="compat")  # 48 kHz, 4800 rows
    assert tokens30.shape == (30, 8, 64)
    torch.testing.assert_close(tokens30[4], tiny.encode_audio(torch.from_numpy(wave[4 * 4800:5 * 4800])[None])[0],
                               atol=1e-5, rtol=1e-5)
    assert compat_rows(wave[:-7], 48000, 30).shape == (30, 4799)  # ragged tail dropped, not an error
    with pytest.raises(InputError, match="fixed"):
        compat_rows(wave, 48000, 90, compat_rate=48000)  # 1600-sample rows: no patch
    with pytest.raises(InputError, match="'fixed' or 'compat'"):
        beats_frame_tokens(tiny, wave, 48000, 30, 10, mode="upstream")


def test_missing_file_names_file_source_and_flag(tmp_path, monkeypatch):
    monkeypatch.delenv("TAV_CKPT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as err:
        load_beats()
    msg = str(err.value)
    assert "\n" not in msg
    assert "saved_ckpts/BEATs_iter3_plus_AS20K.pt" in msg and "--beats_ckpt" in msg and "microsoft/unilm" in msg
    clear_encoder_cache()
    with pytest.raises(InputError, match="--beats_ckpt"):
        get_encoder("beats", path=tmp_path / "nope.pt")
    torch.save({"model": {}}, tmp_path / "bare.pt")
    with pytest.raises(InputError, match=r"bare\.pt.*'cfg'"):
        load_beats(tmp_path / "bare.pt")


def test_tiny_round_trip_and_registry(tmp_path, monkeypatch, tiny):
    path = save_tiny_beats(tmp_path / "b.pt", seed=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        ref = BEATs(tiny_beats_config()).eval()
    wave = torch.rand(3, 4800) * 2 - 1
    with torch.no_grad():
        expected = ref.extract_features(wave)
    assert torch.equal(load_beats(path).encode_audio(wave), expected)
    assert torch.equal(tiny.encode_audio(wave), expected)  # the module fixture: same seed, same weights
    assert save_tiny_beats(tmp_path / "c.pt", seed=3).read_bytes() != path.read_bytes()
    paths = save_tiny_encoders(tmp_path / "w", seed=2, names=("beats",))
    assert list(paths) == ["beats"] and paths["beats"].name == BEATS_FILE
    monkeypatch.setenv("TAV_CKPT_DIR", str(tmp_path / "w"))
    clear_encoder_cache()
    try:
        enc = get_encoder("beats")
        assert isinstance(enc, BEATsEncoder) and enc.name == "beats" and enc.audio_rate == 16000
        assert torch.equal(enc.encode_audio(wave), expected)
    finally:
        clear_encoder_cache()
    with pytest.raises(InputError, match="unknown encoder"):
        save_tiny_encoders(tmp_path, names=("bert",))
