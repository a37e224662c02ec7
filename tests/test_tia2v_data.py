"""TIA2V conditions: the CLIP-L encoder (tokens, text states, image embeddings), the offline condition cache and
the TIA2V dataset, with a tiny random CLIP-L and the tiny VAT clips (8 frames, 16x16, 30 fps)."""

from __future__ import annotations

import importlib.util
import json
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from tav.data.audio import read_audio
from tav.data.config import load_data_config
from tav.data.layout import clip_files
from tav.encoders.clip_l import (
    CLIPLEncoder,
    HFTokenizer,
    OpenCLIPTokenizer,
    load_clip_l,
    save_tiny_clip_l,
    tiny_clip_l_config,
    write_tokenizer_files,
)
from tav.errors import InputError
from tav.tia2v.conditions import (
    build_condition_cache,
    clip_conditions,
    clip_image_input,
    entry_path,
    motion_context,
)
from tav.tia2v.data import TIA2VDataset

from .helpers import make_tiny_vat

P, D = 3, 32  # fake audio tokens per frame and width (= the tiny CLIP-L width)
VIOLIN = [49406, 320, 2533, 533, 1629, 17058, 269, 49407]  # "a person is playing violin." (HF CLIPTokenizer)
CAPTIONS = ["a person is playing violin.", "Two  Guitars\tand a DRUM; it’s LOUD!!", "café 123 naïve &amp; co",
            "x " * 100, "", "don't stop—the horn's 2nd part", "first line\nsecond line"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip_l(tmp_path_factory.mktemp("clip") / "clip-vit-large-patch14", seed=0)


@pytest.fixture(scope="module")
def clip_l(clip_dir) -> CLIPLEncoder:
    return load_clip_l(clip_dir)


@pytest.fixture(scope="module")
def hf_folder(clip_dir, tmp_path_factory):
    """The same weights plus tokenizer files (HF's own CLIPTokenizer path)."""
    folder = tmp_path_factory.mktemp("clip_tok") / "clip"
    save_tiny_clip_l(folder, seed=0, tokenizer_files=True)
    return folder


def data_cfg(**kw):
    base = dict(frames_per_file=8, resolution=16, sequence_length=4, downsample=[1, 2, 2], tokenizer="none")
    return load_data_config("urmp", **{**base, **kw})


class FakeAudio:
    """Deterministic per-frame tokens: token (p, d) of frame i = mean(frame i's samples) * (p * D + d + 1)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, wave, rate, n_frames, fps):
        self.calls += 1
        assert rate == 48000 and fps == 30 and len(wave) == n_frames * 1600
        means = torch.from_numpy(np.asarray(wave).reshape(n_frames, -1).mean(1)).float()
        return means[:, None, None] * torch.arange(1, P * D + 1, dtype=torch.float32).view(P, D)


@pytest.fixture(scope="module")
def built(clip_l, tmp_path_factory):
    """A tiny VAT dataset with both splits cached (fake audio tokens)."""
    root = make_tiny_vat(tmp_path_factory.mktemp("vat"))
    cache, fake = root / "cache", FakeAudio()
    for split in ("train", "test"):
        build_condition_cache(root, split, data_cfg(), clip_l, fake, cache, key={"clip_l": "tiny"}, batch_size=3)
    return root, cache


# ------------------------------------------------------------------------------------------------ encoder

def test_round_trip_and_token_ids(clip_dir, clip_l, hf_folder):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        from transformers import CLIPModel
        ref = CLIPModel(tiny_clip_l_config()).state_dict()
    loaded = clip_l.model.state_dict()
    assert set(loaded) == set(ref) and all(torch.equal(loaded[k], ref[k]) for k in ref)
    assert not any(p.requires_grad for p in clip_l.parameters()) and not clip_l.training
    assert isinstance(clip_l.tokenize, OpenCLIPTokenizer)  # no tokenizer files in the tiny folder
    ids = clip_l.token_ids(["a person is playing violin."])
    assert ids.shape == (1, 77) and ids[0, :8].tolist() == VIOLIN and (ids[0, 8:] == 49407).all()
    hf = load_clip_l(hf_folder)
    assert isinstance(hf.tokenize, HFTokenizer)
    a, b = clip_l.token_ids(CAPTIONS), hf.token_ids(CAPTIONS)
    assert torch.equal(a, b)  # open_clip fallback == HF CLIPTokenizer on the same vocabulary
    assert a[3, 0] == 49406 and a[3, 76] == 49407 and (a[3, 1:76] == 343).all()  # truncated to 77
    assert torch.equal(a[6], clip_l.token_ids(["first line"])[0])  # first caption line only


def test_text_states_equal_hf_text_model(clip_l, hf_folder):
    from transformers import CLIPTextModel, CLIPTokenizer

    states = clip_l.encode_text_states(CAPTIONS[:3])
    assert states.shape == (3, 77, 32)
    tok = CLIPTokenizer.from_pretrained(str(hf_folder), local_files_only=True)  # upstream's path
    ids = tok(CAPTIONS[:3], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    text_model = CLIPTextModel.from_pretrained(str(hf_folder), local_files_only=True).eval()
    with torch.no_grad():
        ref = text_model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(states, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(states[0], states[1])
    pooled = clip_l.encode_texts(CAPTIONS[:2])
    assert pooled.shape == (2, 32)


def test_image_embeds_equal_hand_preprocessing(clip_l):
    from transformers import CLIPImageProcessor

    small = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(1))
    images = F.interpolate(small, size=(40, 56), mode="bilinear", align_corners=False)  # smooth, in [0, 1]
    x = F.interpolate(images, size=(224, 313), mode="bicubic", align_corners=False, antialias=True)
    x = x.clamp(0, 1)[:, :, :, 44:268]  # shorter side 224, long side int(224 * 56 / 40) = 313, centre crop
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    x = (x - mean) / std
    hf = CLIPImageProcessor(do_rescale=False)(images=list(images), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(x, hf, atol=1e-5, rtol=0)  # the hand recipe is CLIPImageProcessor's
    with torch.no_grad():
        out = clip_l.model.get_image_features(pixel_values=x)
    ref = out if isinstance(out, torch.Tensor) else out.pooler_output
    got = clip_l.encode_image_embeds(images)
    assert got.shape == (2, 32)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(clip_l.encode_images(images), got)


def test_missing_clip_l_folder(tmp_path):
    with pytest.raises(InputError, match="clip-vit-large-patch14") as err:
        load_clip_l(tmp_path / "clip-vit-large-patch14")
    msg = str(err.value)
    assert "--clip_l_ckpt" in msg and "huggingface.co/openai/clip-vit-large-patch14" in msg and "\n" not in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="--clip_l_ckpt"):
        load_clip_l(tmp_path / "empty")


def test_tokenizer_files_from_open_clip(tmp_path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(write_tokenizer_files(tmp_path)), local_files_only=True)
    assert len(tok) == 49408 and tok.pad_token_id == tok.eos_token_id == 49407 and tok.bos_token_id == 49406


# ------------------------------------------------------------------------------------------------ contexts

def test_clip_image_input_truncates_like_to_pil():
    frames = torch.tensor([-0.5, 0.0, 0.1, 0.5, 0.7]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    got = clip_image_input(frames)[0, 0, 0] * 255
    assert got.tolist() == pytest.approx([0, 127, 153, 255, 255])  # floor(255 * (x + 0.5)), clamped


def test_clip_conditions_and_motion_context(clip_l):
    frames = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)) - 0.5
    ctx = clip_conditions(clip_l, ["a cat", "a dog"], frames)
    assert ctx.shape == (2, 78, 32)
    with torch.no_grad():
        torch.testing.assert_close(ctx[:, :77], clip_l.encode_text_states(["a cat", "a dog"]))
        torch.testing.assert_close(ctx[:, 77], clip_l.encode_image_embeds(clip_image_input(frames)))
    audio = torch.randn(2, 4, P, 32)
    text = torch.randn(2, 77, 32)
    c = motion_context(audio, text)
    assert c.shape == (8, P + 77, 32)
    assert torch.equal(c[1 * 4 + 2, :P], audio[1, 2]) and torch.equal(c[1 * 4 + 2, P:], text[1])
    assert torch.equal(c[3, P:], text[0])
    with pytest.raises(InputError):
        motion_context(audio, text[:1])

    from transformers import CLIPModel

    cfg = tiny_clip_l_config()
    cfg.projection_dim = 16
    with torch.random.fork_rng(devices=[]):
        narrow = CLIPLEncoder(CLIPModel(cfg), clip_l.tokenize)
    with pytest.raises(InputError, match="projection width 16"):
        clip_conditions(narrow, ["a"], frames[:1])


# ------------------------------------------------------------------------------------------------ cache

def test_cache_is_resumable_and_keyed(clip_l, tmp_path):
    root = make_tiny_vat(tmp_path / "vat")
    cache, fake, cfg = tmp_path / "cache", FakeAudio(), data_cfg()
    build = partial(build_condition_cache, root, "train", cfg, clip_l, fake, cache, batch_size=4)
    seen = []
    build(key={"clip_l": "A", "beats": "B", "beats_mode": "fixed"}, progress=lambda d, n: seen.append((d, n)))
    assert fake.calls == 2 and seen == [(1, 2), (2, 2)]
    entry = torch.load(entry_path(cache, "train", "a_1", 16), weights_only=True)
    assert entry["text"].shape == (77, 32) and entry["img"].shape == (8, 32)
    assert entry["audio_tokens"].shape == (8, P, D)
    assert entry["frames"] == 8 and entry["key"]["resolution"] == 16 and entry["key"]["beats"] == "B"
    assert not torch.allclose(entry["img"][0], entry["img"][1])  # every frame has its own embedding
    build(key={"clip_l": "A", "beats": "B", "beats_mode": "fixed"})
    assert fake.calls == 2  # nothing recomputed
    build(key={"clip_l": "A", "beats": "B", "beats_mode": "compat"})
    assert fake.calls == 4  # another key: everything recomputed
    # the content model's key (no BEATs) is served by the motion entries: nothing recomputed, no audio listed
    build_condition_cache(root, "train", cfg, clip_l, None, cache, key={"clip_l": "A"})
    assert fake.calls == 4
    manifest = json.loads((cache / "train" / "16px" / "manifest.json").read_text())
    assert manifest["audio_tokens"] is False and sorted(manifest["entries"]) == ["a_1", "b_2"]
    assert "audio_tokens" not in TIA2VDataset(root, "train", cfg, cache)[0]
    # a changed caption recomputes that clip only
    clip_files(root / "train", "b_2").txt.write_text("a new caption\n")
    build(key={"clip_l": "A", "beats": "B", "beats_mode": "compat"})
    assert fake.calls == 5


def test_cache_and_items_of_the_first_clips_only(clip_l, tmp_path):
    """``data.max_clips 1``: the train split's cache holds the first stem's entry only, and the dataset reads that
    clip; the test split's cache holds every clip."""
    root = make_tiny_vat(tmp_path / "vat")
    cache, fake, cfg = tmp_path / "cache", FakeAudio(), data_cfg(max_clips=1)
    build_condition_cache(root, "train", cfg, clip_l, fake, cache, key={"clip_l": "A"}, batch_size=4)
    assert fake.calls == 1
    manifest = json.loads((cache / "train" / "16px" / "manifest.json").read_text())
    assert sorted(manifest["entries"]) == ["a_1"] and not entry_path(cache, "train", "b_2", 16).exists()
    ds = TIA2VDataset(root, "train", cfg, cache)
    assert len(ds) == 1 and ds[0]["stem"] == "a_1"
    build_condition_cache(root, "test", cfg, clip_l, fake, cache, key={"clip_l": "A"}, batch_size=4)
    assert fake.calls == 3  # the test split is read whole
    assert sorted(json.loads((cache / "test" / "16px" / "manifest.json").read_text())["entries"]) == ["a_1", "b_2"]


def test_motion_build_adds_audio_to_content_entries(clip_l, tmp_path, monkeypatch):
    """Content first, then motion (the training order): the motion build computes the audio tokens alone and
    keeps the CLIP tensors; the entries equal those of a motion build from scratch."""
    import tav.tia2v.conditions as conditions

    root = make_tiny_vat(tmp_path / "vat")
    cfg, motion_key = data_cfg(), {"clip_l": "A", "beats": "B", "beats_mode": "fixed"}
    build_condition_cache(root, "train", cfg, clip_l, None, tmp_path / "c", key={"clip_l": "A"})
    content = torch.load(entry_path(tmp_path / "c", "train", "a_1", 16), weights_only=True)
    assert "audio_tokens" not in content
    calls = []
    real_embeds = conditions.image_embeds
    monkeypatch.setattr(conditions, "image_embeds", lambda *a, **k: calls.append(1) or real_embeds(*a, **k))
    fake = FakeAudio()
    build_condition_cache(root, "train", cfg, clip_l, fake, tmp_path / "c", key=motion_key)
    assert calls == [] and fake.calls == 2  # no CLIP image pass, one audio pass per clip
    added = torch.load(entry_path(tmp_path / "c", "train", "a_1", 16), weights_only=True)
    assert added["key"]["beats"] == "B" and added["frames"] == 8
    build_condition_cache(root, "train", cfg, clip_l, FakeAudio(), tmp_path / "fresh", key=motion_key)
    fresh = torch.load(entry_path(tmp_path / "fresh", "train", "a_1", 16), weights_only=True)
    for name in ("text", "img", "audio_tokens"):
        torch.testing.assert_close(added[name], fresh[name], rtol=0, atol=0)
    assert added["key"] == fresh["key"] and added["source"] == fresh["source"]
    # an entry of another CLIP-L is not patched: everything is recomputed
    build_condition_cache(root, "train", cfg, clip_l, FakeAudio(), tmp_path / "c", key={**motion_key, "clip_l": "Z"})
    assert calls  # the CLIP image pass ran again


def test_frame_sizes_keep_their_own_entries(clip_l, tmp_path):
    """The SHR model reads the clips at another size than the content and motion models: building its cache
    leaves theirs valid (nothing recomputed), and each size's dataset reads its own entries."""
    root = make_tiny_vat(tmp_path / "vat")
    cache, fake = tmp_path / "cache", FakeAudio()
    motion_key = {"clip_l": "A", "beats": "B", "beats_mode": "fixed"}
    build_condition_cache(root, "train", data_cfg(), clip_l, fake, cache, key=motion_key)
    small = torch.load(entry_path(cache, "train", "a_1", 16), weights_only=True)
    build_condition_cache(root, "train", data_cfg(resolution=8), clip_l, None, cache, key={"clip_l": "A"})
    large = torch.load(entry_path(cache, "train", "a_1", 8), weights_only=True)
    assert small["key"]["resolution"] == 16 and large["key"]["resolution"] == 8
    assert not torch.allclose(small["img"], large["img"])  # the image embeddings depend on the frame size
    build_condition_cache(root, "train", data_cfg(), clip_l, fake, cache, key=motion_key)
    assert fake.calls == 2  # the 16-px entries survived the 8-px build
    assert TIA2VDataset(root, "train", data_cfg(), cache)[0]["video"].shape[-1] == 16
    assert TIA2VDataset(root, "train", data_cfg(resolution=8), cache)[0]["video"].shape[-1] == 8


# ------------------------------------------------------------------------------------------------ dataset

def test_dataset_items_come_from_the_cache(built, clip_l):
    root, cache = built
    cfg = data_cfg()
    ds = TIA2VDataset(root, "test", cfg, cache)
    again = TIA2VDataset(root, "test", cfg, cache)
    assert [ds[i]["start"] for i in range(len(ds))] == [again[i]["start"] for i in range(len(ds))]
    for i in range(len(ds)):
        item = ds[i]
        entry = torch.load(entry_path(cache, "test", item["stem"], 16), weights_only=True)
        s = item["start"]
        assert item["video"].shape == (3, 4, 16, 16) and item["video"].abs().max() <= 0.5
        assert torch.equal(item["text"], entry["text"]) and torch.equal(item["image"], entry["img"][s])
        assert torch.equal(item["audio_tokens"], entry["audio_tokens"][s: s + 4])
        # the cached row is the window's first frame, and the tokens are those of the window's frames
        with torch.no_grad():
            emb = clip_l.encode_image_embeds(clip_image_input(item["video"][:, 0][None]))[0]
        torch.testing.assert_close(item["image"], emb, atol=1e-5, rtol=1e-5)
        expect = (torch.arange(s, s + 4) + 1) / 200.0
        torch.testing.assert_close(item["audio_tokens"][:, 0, 0], expect, atol=1e-4, rtol=0)
    batch = next(iter(DataLoader(TIA2VDataset(root, "train", cfg, cache), batch_size=2, num_workers=0)))
    assert batch["video"].shape == (2, 3, 4, 16, 16) and batch["text"].shape == (2, 77, 32)
    assert batch["image"].shape == (2, 32) and batch["audio_tokens"].shape == (2, 4, P, D)
    assert batch["start"].shape == (2,) and len(batch["caption"]) == 2 and batch["stem"] == ["a_1", "b_2"]
    ctx = motion_context(batch["audio_tokens"], batch["text"])
    assert ctx.shape == (8, P + 77, 32)


def test_missing_or_stale_cache_names_the_command(built, tmp_path):
    root, cache = built
    with pytest.raises(InputError) as err:
        TIA2VDataset(root, "test", data_cfg(), tmp_path / "nothing")
    msg = str(err.value)
    assert "--cache_dir" in msg and "train_temp.py" in msg and "build_cache" in msg and "\n" not in msg
    with pytest.raises(InputError, match="no condition cache for split 'test' at 8 px.*--cache_dir"):
        TIA2VDataset(root, "test", data_cfg(resolution=8), cache)
    entry_path(cache, "test", "b_2", 16).unlink()
    ds = TIA2VDataset(root, "test", data_cfg(), cache)
    with pytest.raises(InputError, match="b_2.pt.*--cache_dir"):
        ds[1]


@pytest.mark.skipif(importlib.util.find_spec("tav.encoders.beats") is None, reason="no tav.encoders.beats")
def test_cache_with_tiny_beats(clip_l, tmp_path):
    from tav.encoders.beats import beats_frame_tokens, load_beats, save_tiny_beats

    beats = load_beats(save_tiny_beats(tmp_path / "beats.pt", seed=0))
    root = make_tiny_vat(tmp_path / "vat", stems=("a_1",))
    audio_fn = partial(beats_frame_tokens, beats, mode="fixed")
    build_condition_cache(root, "test", data_cfg(), clip_l, lambda w, r, n, f: audio_fn(w, r, n, f), tmp_path / "c",
                          key={"beats_mode": "fixed"})
    entry = torch.load(entry_path(tmp_path / "c", "test", "a_1", 16), weights_only=True)
    wave = read_audio(clip_files(root / "test", "a_1").audio, 48000)
    with torch.no_grad():
        ref = beats_frame_tokens(beats, wave, 48000, 8, 30.0, "fixed")
    assert entry["audio_tokens"].shape == (8, 8, 64)
    torch.testing.assert_close(entry["audio_tokens"], ref, atol=1e-5, rtol=1e-5)
