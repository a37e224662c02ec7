"""Encoders by name, built once per process: ``get_encoder(name, path, device)``.

Names: the joint-space guidance/metric encoders ``"clip"``, ``"audioclip"``, ``"wav2clip"``
(``DEFAULT_ENCODERS``) and ``"joint"`` (trained on your own clips by ``scripts/train_joint_encoder.py``), and
the TIA2V condition encoders ``"beats"`` (audio tokens) and ``"clip_l"`` (CLIP ViT-L/14, a Hugging Face
folder). Weight files default to ``ckpt_dir() / ENCODER_FILES[name]``; ``ENCODER_FLAGS`` names the
command-line option that overrides each one (for error messages and scripts).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from tav.encoders.base import Encoder
from tav.errors import InputError
from tav.utils.paths import ckpt_dir

ENCODER_FILES = {"clip": "ViT-B-32.pt", "audioclip": "AudioCLIP-Full-Training.pt", "wav2clip": "Wav2CLIP.pt",
                 "beats": "BEATs_iter3_plus_AS20K.pt", "clip_l": "clip-vit-large-patch14", "joint": "joint_encoder.pt"}
ENCODER_FLAGS = {"clip": "--clip_ckpt", "audioclip": "--audioclip_ckpt", "wav2clip": "--wav2clip_ckpt",
                 "beats": "--beats_ckpt", "clip_l": "--clip_l_ckpt", "joint": "--joint_ckpt"}
DEFAULT_ENCODERS = ("clip", "audioclip", "wav2clip")  # what save_tiny_encoders writes by default

_CACHE: dict[tuple[str, str, str], Encoder] = {}


def _loader(name: str) -> Callable[..., Encoder]:
    # Imported lazily: each loader pulls in its own third-party package.
    if name == "clip":
        from tav.encoders.clip import load_clip
        return load_clip
    if name == "wav2clip":
        from tav.encoders.wav2clip import load_wav2clip
        return load_wav2clip
    if name == "beats":
        from tav.encoders.beats import load_beats
        return load_beats
    if name == "clip_l":
        from tav.encoders.clip_l import load_clip_l
        return load_clip_l
    if name == "joint":
        from tav.encoders.joint import load_joint
        return load_joint
    from tav.encoders.audioclip import load_audioclip
    return load_audioclip


def resolve_encoder_path(name: str, path: str | os.PathLike | None = None) -> Path:
    """Absolute weight-file path for ``name``: ``path`` or ``ckpt_dir() / ENCODER_FILES[name]``."""
    if name not in ENCODER_FILES:
        raise InputError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODER_FILES)}")
    return Path(path if path is not None else ckpt_dir() / ENCODER_FILES[name]).expanduser().resolve()


def get_encoder(name: str, path: str | os.PathLike | None = None,
                device: str | torch.device = "cpu") -> Encoder:
    """The frozen encoder ``name`` from ``path`` on ``device``, built on first use and cached.

    The cache key is (name, absolute path, device), so guidance and metrics in one process share one copy.
    Raises ``InputError`` for an unknown name or a missing/unfit weight file (naming the file and flag).
    """
    resolved = resolve_encoder_path(name, path)
    key = (name, str(resolved), str(torch.device(device)))
    if key not in _CACHE:
        _CACHE[key] = _loader(name)(resolved, device=device)
    return _CACHE[key]


def clear_encoder_cache() -> None:
    """Forget every cached encoder (tests; freeing memory)."""
    _CACHE.clear()


def _tiny_saver(name: str) -> Callable[..., object]:
    if name == "clip":
        from tav.encoders.clip import save_tiny_clip
        return save_tiny_clip
    if name == "audioclip":
        from tav.encoders.audioclip import save_tiny_audioclip
        return save_tiny_audioclip
    if name == "wav2clip":
        from tav.encoders.wav2clip import save_tiny_wav2clip
        return save_tiny_wav2clip
    if name == "beats":
        from tav.encoders.beats import save_tiny_beats
        return save_tiny_beats
    if name == "joint":
        from tav.encoders.joint import save_tiny_joint
        return save_tiny_joint
    from tav.encoders.clip_l import save_tiny_clip_l
    return save_tiny_clip_l


def save_tiny_encoders(folder: str | os.PathLike, seed: int = 0,
                       names: Sequence[str] | None = None) -> dict[str, Path]:
    """Write tiny random stand-ins for encoders ``names`` under their ``ENCODER_FILES`` names in ``folder``.

    ``names=None`` writes the three joint-space encoders (``DEFAULT_ENCODERS``); e.g. ``("beats", "clip_l")``
    writes the TIA2V condition encoders (``clip_l`` is a folder). For tests and smoke runs: point
    ``$TAV_CKPT_DIR`` at ``folder`` and ``get_encoder`` finds them.
    """
    names = DEFAULT_ENCODERS if names is None else tuple(names)
    for name in names:
        resolve_encoder_path(name)  # unknown name -> InputError
    folder = Path(folder)
    return {name: Path(_tiny_saver(name)(folder / ENCODER_FILES[name], seed=seed)) for name in names}
