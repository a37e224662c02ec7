"""TIA2V conditions: the offline condition cache and the context tensors the U-Nets read.

Cache layout: ``<cache_dir>/<split>/<R>px/<stem>.pt``, one plain dict per clip file at training frame size ``R``
(``torch.save``; read back with ``weights_only=True``). The frame size has its own folder because the three
models of one project read the same clips at different sizes (the SHR model at the output size, the content and
motion models smaller): their trainings, run one after the other or at once, keep their entries apart instead of
overwriting each other's. Each entry holds:

- ``text`` ``(77, D)`` float32: CLIP-L text states of the caption's first line;
- ``img`` ``(L, D)`` float32: CLIP-L projected image embedding of **every** frame of the file (the item's image
  is the first frame of its window, and the window start varies);
- ``audio_tokens`` ``(L, P, D_a)`` float32: per-frame audio tokens (BEATs), only when an audio function is given;
- ``key`` (what the tensors depend on: encoder hashes, BEATs mode, resolution, cache version), ``source``
  (caption and file sizes of the clip), ``frames`` (L).

The image of frame ``i`` is computed as upstream does for frame 0 of an item: the frame resized and cropped to
the training resolution (``resize_center_crop``), shifted to [0, 1], quantised to uint8 by truncation (what
``ToPILImage`` does), then CLIP-preprocessed (``CLIPLEncoder.preprocess_images``, the torch equivalent of
``CLIPProcessor``).

An entry whose key or source differs from the request is **recomputed** (overwritten). The build is resumable:
entries are written atomically, valid ones are skipped, and ``<cache_dir>/<split>/<R>px/manifest.json`` (the key
and every entry's source) is written last; ``TIA2VDataset`` requires it. Version 1 kept every size in
``<cache_dir>/<split>/`` (its files are left alone and no longer read).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tav.data.audio import fit_length, read_audio
from tav.data.config import DataConfig
from tav.data.dataset import list_stems, read_caption, split_clip_limit
from tav.data.layout import clip_files
from tav.data.video import read_video, resize_center_crop, to_model_range
from tav.encoders.clip_l import first_line
from tav.errors import InputError
from tav.utils.fileio import remove_stale_temps, save_torch_atomic, write_text_atomic

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: one folder per frame size
MANIFEST = "manifest.json"
# fn(wave (S,) float32 mono in [-1, 1], rate Hz, n_frames, fps) -> (n_frames, P, D_a) audio tokens
AudioTokenFn = Callable[[np.ndarray, int, int, float], Tensor]
CACHE_COMMAND = ("the TIA2V scripts build it before they start (scripts/train_content.py, train_temp.py, "
                 "train_diffusion_3d_withtext.py, sample_motion_optim.py; flags --cache_dir, --clip_l_ckpt, "
                 "--beats_ckpt), or call TIA2VDataModule.build_cache(split)")


def tia2v_data_config(cfg: DataConfig) -> DataConfig:
    """``cfg`` for TIA2V items: no caption token ids, no raw audio, no spectrogram (the cache holds them)."""
    return replace(cfg, tokenizer="none", load_audio=False, load_stft=False)


def split_cache_dir(cache_dir: str | os.PathLike, split: str, resolution: int) -> Path:
    """``<cache_dir>/<split>/<resolution>px``: the entries of one split at one training frame size."""
    return Path(cache_dir) / split / f"{int(resolution)}px"


def entry_path(cache_dir: str | os.PathLike, split: str, stem: str, resolution: int) -> Path:
    """``<cache_dir>/<split>/<resolution>px/<stem>.pt``."""
    return split_cache_dir(cache_dir, split, resolution) / f"{stem}.pt"


def full_key(key: dict, data_cfg: DataConfig) -> dict:
    """The key stored in entries: ``key`` (JSON-able primitives) plus the frame size and cache version."""
    try:
        plain = json.loads(json.dumps(key, sort_keys=True))
    except TypeError as err:
        raise TypeError(f"condition cache key must hold JSON-able values: {err}") from None
    return {**plain, "resolution": int(data_cfg.resolution), "cache_version": CACHE_VERSION}


def key_satisfies(stored: dict, wanted: dict) -> bool:
    """True when every item of ``wanted`` is in ``stored`` (an entry built with BEATs also serves the content
    and SHR models, whose key has no BEATs entries)."""
    return all(k in stored and stored[k] == v for k, v in wanted.items())


def clip_source(split_dir: Path, stem: str) -> dict:
    """What an entry's tensors were computed from: the caption and the byte sizes of the video and audio."""
    f = clip_files(split_dir, stem)
    audio = f.audio.stat().st_size if f.audio.is_file() else -1
    return {"caption": read_caption(f.txt), "mp4_bytes": f.mp4.stat().st_size, "audio_bytes": audio}


def read_entry(path: Path, mmap: bool = False) -> dict | None:
    """The entry at ``path`` (``weights_only=True``), or None when it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        log.warning("%s: unreadable condition cache entry (%s); recomputing", path, err)
        return None
    return entry if isinstance(entry, dict) else None


def entry_valid(entry: dict | None, key: dict, source: dict, need_audio: bool) -> bool:
    """True when ``entry`` was built under ``key`` from ``source`` and has audio tokens if ``need_audio``."""
    return (entry is not None and key_satisfies(entry.get("key", {}), key) and entry.get("source") == source
            and (not need_audio or "audio_tokens" in entry))


def clip_image_input(frames: Tensor) -> Tensor:
    """``(N, 3, H, W)`` in [-0.5, 0.5] -> ``(N, 3, H, W)`` in [0, 1] as upstream hands a frame to CLIPProcessor:
    +0.5, then ``ToPILImage``'s uint8 truncation (``x * 255`` cast to uint8, clamped first)."""
    return (frames.float() + 0.5).clamp(0, 1).mul(255).to(torch.uint8).float().div(255)


def file_frames(split_dir: Path, stem: str, resolution: int) -> Tensor:
    """Every frame of the clip at the training resolution: ``(L, 3, R, R)`` float32 in [-0.5, 0.5]."""
    frames, _ = read_video(clip_files(split_dir, stem).mp4)
    video = resize_center_crop(to_model_range(frames), resolution)  # (3, L, R, R)
    return video.permute(1, 0, 2, 3).contiguous()


def file_audio(split_dir: Path, stem: str, n_frames: int, cfg: DataConfig) -> np.ndarray:
    """The clip's mono audio at ``cfg.sample_rate``, fitted to ``n_frames`` frames: ``(n_frames * spf,)``."""
    f = clip_files(split_dir, stem)
    wave = read_audio(f.audio if f.audio.is_file() else f.mp4, cfg.sample_rate)
    return fit_length(wave, n_frames * cfg.samples_per_frame)


def image_embeds(clip_l, frames: Tensor, batch_size: int) -> Tensor:
    """``(L, 3, R, R)`` in [-0.5, 0.5] -> ``(L, D)`` CLIP-L image embeddings, ``batch_size`` frames per call."""
    out = [clip_l.encode_image_embeds(clip_image_input(frames[i: i + batch_size]).to(clip_l.device))
           for i in range(0, len(frames), batch_size)]
    return torch.cat(out).float().cpu()


def compute_entry(split_dir: Path, stem: str, data_cfg: DataConfig, clip_l, audio_fn: AudioTokenFn | None,
                  batch_size: int) -> dict[str, Tensor]:
    """The tensors of one clip file: ``text (77, D)``, ``img (L, D)`` and, with ``audio_fn``, ``audio_tokens
    (L, P, D_a)``, all float32 on CPU."""
    caption = first_line(clip_files(split_dir, stem).txt.read_text(encoding="utf-8"))
    frames = file_frames(split_dir, stem, data_cfg.resolution)
    n = len(frames)
    out = {"text": clip_l.encode_text_states([caption])[0].float().cpu(),
           "img": image_embeds(clip_l, frames, batch_size)}
    if audio_fn is not None:
        out["audio_tokens"] = file_audio_tokens(split_dir, stem, n, data_cfg, audio_fn)
    return out


def file_audio_tokens(split_dir: Path, stem: str, n: int, data_cfg: DataConfig, audio_fn: AudioTokenFn) -> Tensor:
    """Per-frame audio tokens of a clip of ``n`` frames: ``(n, P, D_a)`` float32 on CPU."""
    wave = file_audio(split_dir, stem, n, data_cfg)
    tokens = torch.as_tensor(audio_fn(wave, data_cfg.sample_rate, n, data_cfg.fps)).float().cpu()
    if tokens.dim() != 3 or tokens.shape[0] != n:
        raise ValueError(f"audio token function returned {tuple(tokens.shape)} for {n} frames; expected ({n}, P, D)")
    return tokens.contiguous()


def lacks_only_audio(entry: dict | None, key: dict, source: dict) -> bool:
    """True when ``entry`` has no audio tokens but was built from ``source`` under a part of ``key`` (the
    content or SHR models' key, without the BEATs items): its CLIP tensors stand, only the audio is missing."""
    stored = entry.get("key") if entry is not None else None
    return (isinstance(stored, dict) and "audio_tokens" not in entry and entry.get("source") == source
            and all(k in stored for k in ("clip_l", "resolution", "cache_version"))
            and all(key.get(k) == v for k, v in stored.items()))


def _entry_tensors(split_dir: Path, stem: str, data_cfg: DataConfig, clip_l, audio_fn: AudioTokenFn | None,
                   batch_size: int, old: dict | None, key: dict, source: dict) -> dict[str, Tensor]:
    """The tensors of a stale entry: the audio tokens alone where ``old`` lacks only them, else all of them."""
    if audio_fn is not None and lacks_only_audio(old, key, source):
        n = len(old["img"])
        return {"text": old["text"].clone(), "img": old["img"].clone(),
                "audio_tokens": file_audio_tokens(split_dir, stem, n, data_cfg, audio_fn)}
    return compute_entry(split_dir, stem, data_cfg, clip_l, audio_fn, batch_size)


def build_condition_cache(root: str | os.PathLike, split: str, data_cfg: DataConfig, clip_l,
                          audio_fn: AudioTokenFn | None, cache_dir: str | os.PathLike, *, key: dict,
                          batch_size: int = 16, progress: Callable[[int, int], None] | None = None) -> Path:
    """Fill ``<cache_dir>/<split>/<R>px`` (``R = data_cfg.resolution``) for every clip of ``<root>/<split>``;
    returns that folder.

    ``clip_l``: a ``CLIPLEncoder`` (on the device to compute on); ``audio_fn``: per-frame audio tokens of a
    whole file (e.g. BEATs through ``tav.encoders.beats.beats_frame_tokens``), None for no audio tokens;
    ``key``: what the tensors depend on (encoder weight hashes, BEATs input mode), stored in every entry.
    Valid entries are skipped; stale ones (other key or changed clip) are recomputed, except that an entry the
    content or SHR models built without audio tokens only gets them added. ``progress(done,
    total)`` is called after each file. Runs under ``torch.no_grad``.
    """
    split_dir = Path(root) / split
    out_dir = split_cache_dir(cache_dir, split, data_cfg.resolution)
    remove_stale_temps(out_dir)
    wanted = full_key(key, data_cfg)
    stems = list_stems(split_dir, split_clip_limit(split, data_cfg.max_clips))
    manifest = {"key": wanted, "audio_tokens": audio_fn is not None, "entries": {}}
    _drop_other_manifest(out_dir / MANIFEST, manifest)
    computed = 0
    for done, stem in enumerate(stems, 1):
        source = clip_source(split_dir, stem)
        path = out_dir / f"{stem}.pt"
        old = read_entry(path, mmap=True)
        if not entry_valid(old, wanted, source, audio_fn is not None):
            with torch.no_grad():
                tensors = _entry_tensors(split_dir, stem, data_cfg, clip_l, audio_fn, batch_size, old, wanted, source)
            entry = {**tensors, "key": wanted, "source": source, "frames": len(tensors["img"])}
            save_torch_atomic(entry, path)
            computed += 1
        manifest["entries"][stem] = source
        if progress is not None:
            progress(done, len(stems))
    write_text_atomic(out_dir / MANIFEST, json.dumps(manifest, sort_keys=True, indent=1) + "\n")
    log.info("condition cache %s: %d of %d entries computed", out_dir, computed, len(stems))
    return out_dir


def _drop_other_manifest(path: Path, manifest: dict) -> None:
    # A manifest of another key would vouch for entries this build is replacing: the split counts as unbuilt
    # until the build finishes. One of the same key stays (other processes may be reading it).
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if (old.get("key"), old.get("audio_tokens")) != (manifest["key"], manifest["audio_tokens"]):
            path.unlink(missing_ok=True)


def read_manifest(cache_dir: str | os.PathLike, split: str, resolution: int) -> dict:
    """The manifest of the split at frame size ``resolution``; a missing one is an ``InputError`` saying how the
    cache is built."""
    path = split_cache_dir(cache_dir, split, resolution) / MANIFEST
    if not path.is_file():
        raise InputError(f"{path}: no condition cache for split {split!r} at {int(resolution)} px (or its build "
                         f"did not finish); {CACHE_COMMAND}")
    return json.loads(path.read_text(encoding="utf-8"))


def clip_conditions(clip_l, captions: Sequence[str], first_frames: Tensor) -> Tensor:
    """The spatial context c_ti for sampling: ``(B, 78, D)`` = 77 CLIP-L text states + 1 image embedding.

    ``first_frames``: ``(B, 3, H, W)`` in [-0.5, 0.5] at the training resolution. The image embedding must be
    as wide as the text states (768 for ViT-L/14); otherwise ``InputError``.
    """
    if clip_l.dim != clip_l.text_dim:
        raise InputError(f"CLIP-L projection width {clip_l.dim} != text width {clip_l.text_dim}: the image "
                         "embedding cannot join the text tokens; use a CLIP whose projection_dim equals its "
                         "text hidden size (openai/clip-vit-large-patch14: 768)")
    with torch.no_grad():
        text = clip_l.encode_text_states(captions)
        image = clip_l.encode_image_embeds(clip_image_input(first_frames).to(clip_l.device))
    return torch.cat([text, image[:, None].to(text.dtype)], dim=1)


def motion_context(audio_tokens: Tensor, text: Tensor) -> Tensor:
    """The temporal context c_at: per frame, its audio tokens followed by the caption's text tokens.

    audio_tokens ``(B, F, P, D)``, text ``(B, 77, D)`` -> ``(B·F, P + 77, D)`` (row ``b·F + f`` = clip b, frame
    f), in the text's dtype.
    """
    if audio_tokens.dim() != 4 or text.dim() != 3 or audio_tokens.shape[0] != text.shape[0] \
            or audio_tokens.shape[-1] != text.shape[-1]:
        raise InputError(f"motion context: audio tokens {tuple(audio_tokens.shape)} (B, F, P, D) and text "
                         f"{tuple(text.shape)} (B, 77, D) must agree in B and D")
    b, f, p, d = audio_tokens.shape
    per_frame = text[:, None].expand(b, f, *text.shape[1:])
    ctx = torch.cat([audio_tokens.to(text.dtype), per_frame], dim=2)  # (B, F, P + 77, D)
    return ctx.reshape(b * f, p + text.shape[1], d)
