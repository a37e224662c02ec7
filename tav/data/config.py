"""``DataConfig``: frames per file, fps, audio rate, crop and tokenizer settings, with YAML presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tav.config import from_dict, load_yaml, preset_path
from tav.data.audio import samples_per_frame
from tav.errors import InputError

CROP_MODES = ("random", "center", "seeded")


@dataclass
class DataConfig:
    """How VAT clips are cut and shaped. Presets: ``configs/data/urmp.yaml``, ``configs/data/landscape.yaml``."""

    name: str = "urmp"  # preset name, recorded in run directories
    frames_per_file: int = 90  # upstream --load_vid_len: frames in each pre-cut mp4 (the real count wins)
    fps: float = 30.0  # frame rate of the pre-cut clips
    sample_rate: int = 48000  # audio is resampled to this rate (Hz), mono
    resolution: int = 96  # shorter side resized to this, then centre-cropped square
    sequence_length: int = 16  # frames per training item
    sample_every_n_frames: int = 1  # temporal subsampling inside the crop
    text_seq_len: int = 12  # BERT word pieces per caption ([CLS] ... [SEP] [PAD]...)
    tokenizer: str = "bert"  # bert | clip | none
    tokenizer_path: str | None = None  # folder with vocab.txt; None searches saved_ckpts/ then offline defaults
    train_crop: str = "random"  # random | center | seeded | <int start frame>
    eval_crop: str = "seeded"  # test/val crops are deterministic: seeded per stem, centre, or fixed
    crop_seed: int = 0  # seed of the "seeded" crop start
    # ours: share of the training windows (train_crop random) drawn in proportion to how much the picture changes
    # in them (frames 1.. against the frame before) instead of uniformly; 0 = uniform, as upstream
    moving_windows: float = 0.0
    downsample: tuple[int, ...] = (4, 8, 8)  # VQGAN (T, H, W) downsampling the clips must divide into
    load_audio: bool = True  # return `audio`; video-only stages (VQGAN, GPT) turn it off to skip the decode
    audio_context_s: float = 0.0  # > 0: also return `audio_context`, the sound this many seconds around the item
    load_stft: bool = False  # also return the stft_pickle spectrogram as `stft`
    stft_size: tuple[int, ...] = (96, 16)  # (freq, time) size the per-frame spectrogram is resized to
    cache_clips: int = 0  # decoded files kept in memory per process (0: decode every item; small datasets: all)
    max_clips: int = 0  # > 0: only the first N clips of the train split, in stem order (0: all of them)

    def __post_init__(self) -> None:
        samples_per_frame(self.sample_rate, self.fps, "data config: sample_rate", "fps")
        if self.sequence_length < 1 or self.sample_every_n_frames < 1:
            raise InputError("data config: sequence_length and sample_every_n_frames must be >= 1")
        if self.max_clips < 0:
            raise InputError(f"data config: max_clips must be >= 0 (0 = every clip), got {self.max_clips}")
        if not 0.0 <= self.moving_windows <= 1.0:
            raise InputError(f"data config: moving_windows must be in [0, 1], got {self.moving_windows}")
        if self.moving_windows > 0 and self.train_crop != "random":
            raise InputError(f"data config: moving_windows={self.moving_windows} picks among random training crops; "
                             f"set train_crop to random (it is {self.train_crop!r}) or moving_windows to 0")
        if self.audio_context_s < 0:
            raise InputError(f"data config: audio_context_s must be >= 0 seconds, got {self.audio_context_s}")
        for mode in (self.train_crop, self.eval_crop):
            if mode not in CROP_MODES and not str(mode).lstrip("-").isdigit():
                raise InputError(f"data config: crop {mode!r} is not one of {CROP_MODES} or a start frame")
        check_divisible(self.resolution, self.sequence_length, self.downsample)

    @property
    def samples_per_frame(self) -> int:
        """Audio samples owned by one video frame: 1600 for URMP (48 kHz / 30 fps), 4800 for Landscape."""
        return samples_per_frame(self.sample_rate, self.fps)

    @property
    def span(self) -> int:
        """Frames of the file one item covers (before subsampling)."""
        return self.sequence_length * self.sample_every_n_frames


def data_record(cfg: DataConfig) -> dict:
    """What a checkpoint records of its training data: the model's frame rate (the clips' fps over the temporal
    subsampling), the audio rate and the preset name. ``generate.py`` takes its default ``--fps`` from it."""
    return {"name": cfg.name, "fps": cfg.fps / cfg.sample_every_n_frames, "sample_rate": cfg.sample_rate}


def check_divisible(resolution: int, sequence_length: int, downsample: tuple[int, ...]) -> None:
    """One-line error when the clip shape cannot be tiled by the VQGAN's (T, H, W) downsampling."""
    dt, dh, dw = downsample
    if resolution < 1 or resolution % dh or resolution % dw:
        if resolution == 9:
            hint = "96 (the seed README's `--resolution 9` is a typo for 96, the URMP setting)"
        else:
            hint = str(max(dh, round(resolution / dh) * dh))
        raise InputError(f"--resolution {resolution} is not divisible by the VQGAN spatial downsampling "
                         f"{dh}x{dw}: use a multiple of {dh}, e.g. {hint}")
    if sequence_length % dt:
        raise InputError(f"--sequence_length {sequence_length} is not divisible by the VQGAN temporal "
                         f"downsampling {dt}: use a multiple of {dt}, e.g. 16")


def load_data_config(preset: str = "urmp", **overrides: Any) -> DataConfig:
    """The preset ``configs/data/<preset>.yaml`` (or a YAML path) with keyword overrides (None ones ignored)."""
    data = load_yaml(preset_path("data", preset))
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(DataConfig, data, where=str(preset_path("data", preset)))
