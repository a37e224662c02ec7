"""BEATs as a frozen audio ``Encoder``, its checkpoint I/O, and per-video-frame audio tokens.

The released ``BEATs_iter3_plus_AS20K.pt`` is ``{'cfg': dict, 'model': state_dict}``; ``load_beats`` builds
``BEATs(BEATsConfig.from_cfg(cfg))`` and loads strictly. ``beats_frame_tokens`` turns one clip's audio into
``(n_frames, P, D)`` tokens in one of two modes:

- ``"compat"`` (released motion weights): the clip resampled to 96 kHz (90-frame files) or 48 kHz (others),
  cut into ``n_frames`` equal rows, each row fed to BEATs *as if* it were 16 kHz (pitch-shifted and slowed by
  6x / 3x). 3200- or 4800-sample rows give one time patch: 8 tokens per frame.
- ``"fixed"`` (default, new training): the clip resampled to 16 kHz and one window per frame, centred on the
  frame's centre time. See ``fixed_window_samples`` for the exact length (0.175 s, 8 tokens, by default).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from tav.checkpoint import check_finite, safe_load
from tav.data.audio import resample
from tav.encoders.base import Encoder
from tav.encoders.beats_model import (
    SAMPLE_RATE,
    BEATs,
    BEATsConfig,
    fbank_frames,
    samples_for_patches,
)
from tav.errors import InputError
from tav.utils.fileio import save_torch_atomic
from tav.utils.paths import ckpt_dir

BEATS_FILE = "BEATs_iter3_plus_AS20K.pt"
BEATS_FLAG = "--beats_ckpt"
BEATS_SOURCE = "the BEATs release of microsoft/unilm (https://github.com/microsoft/unilm/tree/master/beats)"
TINY_BEATS_CFG = dict(encoder_layers=2, embed_dim=32, encoder_embed_dim=64, encoder_attention_heads=4,
                      encoder_ffn_embed_dim=128, conv_pos=16, conv_pos_groups=4, num_buckets=32, max_distance=64,
                      input_patch_size=16)

BeatsMode = Literal["fixed", "compat"]


class BEATsEncoder(Encoder):
    """Frozen BEATs audio tower: ``(N, S)`` 16 kHz waveforms in [-1, 1] -> ``(N, P, dim)`` token features.

    Unlike the joint-space encoders, ``encode_audio`` returns the **last layer's tokens** (no pooling, no
    projection), ``P = floor(T_fbank / 16) * 8``. ``dim`` is the cfg's ``encoder_embed_dim`` (768 released).
    """

    name = "beats"
    audio_rate = SAMPLE_RATE
    audio_scale = 1.0

    def __init__(self, model: BEATs):
        super().__init__()
        self.model = model
        self.cfg = model.cfg
        self.dim = model.cfg.encoder_embed_dim
        self.freeze()

    def encode_audio(self, audio: Tensor) -> Tensor:
        """``(N, S)`` float waveforms at 16 kHz in [-1, 1], S >= 2800 -> ``(N, P, dim)`` float32, no grad."""
        if audio.dim() != 2:
            raise ValueError(f"{self.name}: audio must be (N, S), got {tuple(audio.shape)}")
        with torch.no_grad():
            return self.model.extract_features(audio.to(self.device, torch.float32))


def _missing_file_message(path: Path) -> str:
    return (f"{path}: BEATs weights not found; download {BEATS_FILE} from {BEATS_SOURCE} into saved_ckpts/ "
            f"(or $TAV_CKPT_DIR), or pass {BEATS_FLAG} PATH")


def _read_checkpoint(path: Path) -> tuple[BEATsConfig, dict[str, Tensor]]:
    if not path.is_file():
        raise InputError(_missing_file_message(path))
    obj = safe_load(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("cfg"), dict) or not isinstance(obj.get("model"), dict):
        raise InputError(f"{path}: not a BEATs checkpoint (expected a {{'cfg': dict, 'model': state_dict}} file "
                         f"such as {BEATS_FILE}); pass the right file with {BEATS_FLAG}")
    try:
        cfg = BEATsConfig.from_cfg(obj["cfg"])
    except (TypeError, ValueError) as err:
        raise InputError(f"{path}: unusable BEATs cfg: {err}") from None
    return cfg, obj["model"]


def _few(keys: list[str], n: int = 3) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_beats(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> BEATsEncoder:
    """The frozen BEATs encoder from ``path`` (default ``ckpt_dir() / BEATs_iter3_plus_AS20K.pt``) on ``device``.

    Reads ``{'cfg', 'model'}`` with ``torch.load(weights_only=True)``, builds the model from the file's cfg and
    loads it strictly. Raises ``InputError`` naming the file for a missing file (with where to get it and the
    ``--beats_ckpt`` flag), a wrong format, or missing/unexpected/mis-shaped tensors.
    """
    path = Path(path) if path is not None else ckpt_dir() / BEATS_FILE
    cfg, state = _read_checkpoint(path)
    with torch.device("meta"):  # no random init of 90 M weights: every tensor comes from the file
        model = BEATs(cfg)
    expected = list(model.state_dict())
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in set(expected)]
    if missing or unexpected:
        raise InputError(f"{path}: tensors do not fit BEATs built from the file's cfg: missing [{_few(missing)}], "
                         f"unexpected [{_few(unexpected)}]; pass a BEATs {{'cfg','model'}} file with {BEATS_FLAG}")
    check_finite(state, str(path))
    model = model.to_empty(device=device)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raise InputError(f"{path}: tensors do not fit BEATs built from the file's cfg: "
                         f"{' '.join(lines[1:2] or lines)[:300]}") from None
    return BEATsEncoder(model.eval())


def tiny_beats_config(**overrides) -> BEATsConfig:
    """A tiny BEATs (2 layers, width 64, 4 heads) with the real patching (16, 128 mel): same token counts."""
    return BEATsConfig.from_cfg({**TINY_BEATS_CFG, **overrides})


def save_tiny_beats(path: str | os.PathLike, seed: int = 0, **cfg_overrides) -> Path:
    """Write a seeded random ``BEATs(tiny_beats_config(**cfg_overrides))`` as ``{'cfg', 'model'}`` (atomically).

    The format of the released file, so ``load_beats`` reads it. The global RNG is left untouched.
    """
    cfg = tiny_beats_config(**cfg_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BEATs(cfg)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    path = Path(path)
    save_torch_atomic({"cfg": cfg.to_dict(), "model": state}, path)
    return path


# ----------------------------------------------------------------------------------------- per-frame tokens

def upstream_compat_rate(n_frames: int) -> int:
    """Upstream's load rate for BEATs rows: 96 kHz for 90-frame files (URMP), else 48 kHz."""
    return 96000 if n_frames == 90 else 48000


def fixed_window_samples(window_s: float, fps: float, patch: int = 16) -> int:
    """Samples of each ``"fixed"``-mode window at 16 kHz.

    The requested span ``max(window_s, 1 / fps)`` seconds is rounded **down** to whole 16-frame fbank patches
    (at least one): ``n = 400 + 160 * (16 k - 1)``, k = max(1, floor(T / 16)), T the fbank frames of the
    requested span. BEATs ignores samples past the last whole patch, so this is the span it actually sees,
    and it is the span we centre. Default 0.2 s -> k = 1, n = 2800 (0.175 s), 8 tokens per frame.
    """
    if window_s <= 0 or fps <= 0:
        raise ValueError(f"window_s and fps must be positive, got {window_s}, {fps}")
    requested = math.ceil(max(window_s, 1.0 / fps) * SAMPLE_RATE)
    k = max(1, fbank_frames(requested) // patch)
    return samples_for_patches(k, BEATsConfig(input_patch_size=patch))


def _mono(wave: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(wave, Tensor):
        wave = wave.detach().to("cpu", torch.float32).numpy()
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1 or wave.size == 0:
        raise ValueError(f"audio must be a non-empty mono waveform (S,), got shape {wave.shape}")
    return wave


def fixed_windows(wave: np.ndarray | Tensor, rate: int, n_frames: int, fps: float, window_s: float = 0.2) -> Tensor:
    """``"fixed"`` mode input: ``(n_frames, n)`` float32 windows of the clip resampled to 16 kHz.

    Frame ``i``'s window (``n = fixed_window_samples(window_s, fps)``) starts at
    ``floor(16000 * (i + 1/2) / fps - n / 2 + 1/2)``, i.e. it is centred on the frame's centre time, and is
    **clamped inside the clip** ``[0, S - n]`` (near the edges it is shifted, not zero-padded, so BEATs never
    sees artificial silence). A clip shorter than ``n`` is zero-padded at its end first.
    """
    audio = torch.from_numpy(resample(_mono(wave), rate, SAMPLE_RATE))
    n = fixed_window_samples(window_s, fps)
    if audio.numel() < n:
        audio = torch.nn.functional.pad(audio, (0, n - audio.numel()))
    centre = (np.arange(n_frames, dtype=np.float64) + 0.5) * SAMPLE_RATE / fps
    starts = np.clip(np.floor(centre - n / 2 + 0.5), 0, audio.numel() - n).astype(np.int64)
    index = torch.from_numpy(starts)[:, None] + torch.arange(n)
    return audio[index]


def compat_rows(wave: np.ndarray | Tensor, rate: int, n_frames: int, compat_rate: int | None = None) -> Tensor:
    """``"compat"`` mode input: ``(n_frames, spf)`` rows of the clip resampled to ``compat_rate``.

    ``compat_rate=None`` applies upstream's rule (``upstream_compat_rate``). Upstream reshaped the whole
    resampled clip to ``(n_frames, -1)``; when the length is not a multiple of ``n_frames`` (upstream would
    fail) the tail is dropped: ``spf = S // n_frames``.
    """
    rate_c = compat_rate or upstream_compat_rate(n_frames)
    audio = resample(_mono(wave), rate, rate_c)
    spf = len(audio) // n_frames
    if spf < samples_for_patches(1):
        raise InputError(f"beats compat mode: {len(audio)} samples at {rate_c} Hz give {spf}-sample rows for "
                         f"{n_frames} frames, fewer than the {samples_for_patches(1)} one BEATs patch needs; "
                         "use beats input mode 'fixed' or a higher compat rate")
    return torch.from_numpy(np.ascontiguousarray(audio[: n_frames * spf].reshape(n_frames, spf)))


def beats_frame_tokens(encoder: BEATsEncoder | BEATs, wave: np.ndarray | Tensor, rate: int, n_frames: int,
                       fps: float, mode: BeatsMode = "fixed", *, compat_rate: int | None = None,
                       window_s: float = 0.2) -> Tensor:
    """One clip's mono audio ``wave (S,)`` at ``rate`` Hz -> per-frame BEATs tokens ``(n_frames, P, D)`` float32.

    ``mode="fixed"``: ``fixed_windows`` (16 kHz, centred, ``P = 8`` for the default 0.2 s); ``mode="compat"``:
    ``compat_rows`` fed as if 16 kHz (``P = 8`` for 3200/4800-sample rows). All windows go through the encoder
    in one batch; the result lies on the encoder's device.
    """
    if n_frames <= 0:
        raise ValueError(f"n_frames must be positive, got {n_frames}")
    if mode == "fixed":
        rows = fixed_windows(wave, rate, n_frames, fps, window_s)
    elif mode == "compat":
        rows = compat_rows(wave, rate, n_frames, compat_rate)
    else:
        raise InputError(f"beats input mode {mode!r}: must be 'fixed' or 'compat'")
    if isinstance(encoder, Encoder):
        return encoder.encode_audio(rows)
    with torch.no_grad():
        return encoder.extract_features(rows)
