"""Typed configuration of the three TIA2V U-Nets.

One dataclass covers the three parts, which share guided-diffusion's U-Net skeleton:

- ``content``: a 2D per-frame U-Net on ``(B·F, C, H, W)`` frames; spatial transformers with first-frame K/V
  self-attention and a text + image cross-attention (``attention_ti``);
- ``motion``: ``content`` plus a temporal conv in every ResBlock and a dual temporal transformer (audio /
  text) after every spatial transformer;
- ``shr``: a 3D U-Net on ``(B, C, F, H, W)`` clips (frames never resampled), spatial transformers with
  first-frame K/V and a text cross-attention (``attention_3d``).

``attention_resolutions`` keeps guided-diffusion's meaning (spatial sizes for ``image_size``); like upstream,
a size without a level (8 for the 64 px content model) is allowed and simply never matches.

Switches: ``double_residual`` is part of the released content/motion architecture (an ordinary option);
``dual_block_frame_collapse`` and ``audio_row_mapping`` (†) reproduce the two motion-model bugs that shaped the
released weights. The corrected blocks ignore them; when one is on, the U-Net gets the upstream block of
:mod:`tav.compat.tia2v` instead (``compat="tia2v"`` in :func:`tav.tia2v.load.load_tia2v_unet` turns them on
for released weights; ``docs/upstream.md`` lists every such switch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tav.config import from_dict, load_yaml, preset_path
from tav.diffusion.config import UNetShape, check_head_widths, check_norm_widths
from tav.errors import InputError
from tav.utils.attention import IMPLS

PARTS = ("content", "motion", "shr")
PRESETS = ("content", "motion", "shr", "content-tiny", "motion-tiny", "shr-tiny")
MOTION_ONLY = ("dual_block_frame_collapse", "audio_row_mapping")  # † the upstream motion bugs (tav.compat.tia2v)


@dataclass
class TIA2VUNetConfig(UNetShape):
    """Architecture of one TIA2V U-Net; defaults are the released 64 px content/motion networks.

    Derived sizes (``attention_ds``, ``level_ds``, ``learn_sigma``, ``spatial_divisor``, ``time_embed_dim``,
    ``heads_for``) come from :class:`tav.diffusion.config.UNetShape`, shared with the TA2V U-Net.
    """

    part: Literal["content", "motion", "shr"] = "content"  # which of the three networks
    image_size: int = 64  # training H = W; turns attention_resolutions into down-sampling factors
    in_channels: int = 3  # channels of x_t
    out_channels: int = 6  # 2 * in_channels with learned sigma: epsilon, then the variance interpolation v
    model_channels: int = 64  # width of level 0; level i is model_channels * channel_mult[i] wide
    channel_mult: tuple[int, ...] = (1, 2, 3)  # width multiplier per level (len - 1 spatial down-samplings)
    num_res_blocks: int = 2  # ResBlocks per level on the way down (one more per level on the way up)
    attention_resolutions: tuple[int, ...] = (16, 8)  # spatial sizes with transformers (image_size // ds)
    num_heads: int = 4  # attention heads (when num_head_channels == -1); head width = width // heads
    num_head_channels: int = -1  # fixed width per head instead of a fixed head count; -1 = use num_heads
    use_scale_shift_norm: bool = True  # FiLM: norm(h) * (1 + scale) + shift from the timestep embedding
    dropout: float = 0.0  # dropout in ResBlocks and attention outputs
    transformer_depth: int = 1  # transformer blocks per spatial / temporal transformer
    context_dim: int = 768  # width of the spatial context tokens (CLIP-L text hidden states, image embedding)
    context_dim_temp: int = 768  # motion: width of the temporal context tokens (BEATs audio, CLIP-L text)
    num_frames: int = 16  # F: frames per clip; content/motion inputs are (B·F, C, H, W), b-major
    text_tokens: int = 77  # text tokens at the head of the spatial context; the rest are image tokens
    audio_tokens: int = 8  # motion: audio tokens per frame at the head of the temporal context
    mix_ratio: float = 0.7  # motion: dual block output = x + mix·(T_audio(x)−x) + (1−mix)·(T_text(x)−x)
    temporal_dropout: float = 0.1  # motion: dropout in stages 2-4 of every temporal conv
    double_residual: bool | None = None  # x' = (x+A_text)+(x+A_image) (released content/motion); None = per part
    dual_block_frame_collapse: bool = False  # † motion, compat: every frame gets frame 0 of clip 0 (upstream `[0]`)
    audio_row_mapping: bool = False  # † motion, compat: feature row h hears frame h's audio (upstream repeat)
    temporal_pos_emb: Literal["none", "sinusoidal", "learned"] = "none"  # motion: frame position embedding
    first_frame: Literal["noised", "clean"] = "noised"  # motion: frame 0 noised like the others (upstream), or
    # the given image kept clean at t = 0 in training and sampling, the other frames denoised around it (tav)
    gradient_checkpointing: bool = False  # recompute block activations in the backward pass
    attention_impl: Literal["auto", "sdpa", "math"] = "auto"  # tav.utils.attention: SDPA, written out, or the
    # faster of the two (written out on a CPU in bf16 for short sequences with a gradient)

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        if self.double_residual is None:  # the released content/motion transformers count x twice; SHR does not
            self.double_residual = self.part in ("content", "motion")
        _validate(self)

    @property
    def dims(self) -> int:
        """2 for the per-frame content/motion U-Nets, 3 for the SHR video U-Net."""
        return 3 if self.part == "shr" else 2

    @property
    def is_motion(self) -> bool:
        """True for the motion U-Net (temporal convs, dual temporal transformers, ``context_temp``)."""
        return self.part == "motion"


def _validate(cfg: TIA2VUNetConfig) -> None:
    """Reject configs that cannot be built, naming the field."""
    if cfg.part not in PARTS:
        raise InputError(f"tia2v.part={cfg.part!r}: must be one of {PARTS}")
    for name in ("image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks", "num_heads",
                 "transformer_depth", "context_dim", "context_dim_temp", "num_frames", "text_tokens",
                 "audio_tokens"):
        if getattr(cfg, name) < 1:
            raise InputError(f"tia2v.{name}={getattr(cfg, name)}: must be >= 1")
    if not cfg.channel_mult or min(cfg.channel_mult) < 1:
        raise InputError(f"tia2v.channel_mult={cfg.channel_mult}: need one or more positive multipliers")
    if cfg.first_frame not in ("noised", "clean"):
        raise InputError(f"tia2v.first_frame={cfg.first_frame!r}: must be 'noised' or 'clean'")
    if cfg.first_frame == "clean" and cfg.part != "motion":
        raise InputError(f"tia2v.first_frame=clean is a motion-model setting; the {cfg.part} U-Net has no given frame")
    for name in ("dropout", "temporal_dropout"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise InputError(f"tia2v.{name}={getattr(cfg, name)}: must be in [0, 1)")
    if not 0.0 <= cfg.mix_ratio <= 1.0:
        raise InputError(f"tia2v.mix_ratio={cfg.mix_ratio}: must be in [0, 1]")
    if cfg.attention_impl not in IMPLS:
        raise InputError(f"tia2v.attention_impl={cfg.attention_impl!r}: must be one of {', '.join(IMPLS)}")
    if cfg.temporal_pos_emb not in ("none", "sinusoidal", "learned"):
        raise InputError(f"tia2v.temporal_pos_emb={cfg.temporal_pos_emb!r}: must be 'none', 'sinusoidal' or 'learned'")
    if cfg.num_head_channels != -1 and cfg.num_head_channels < 1:
        raise InputError(f"tia2v.num_head_channels={cfg.num_head_channels}: must be >= 1, or -1 to use num_heads")
    _validate_switches(cfg)
    _validate_widths(cfg)


def _validate_switches(cfg: TIA2VUNetConfig) -> None:
    if not cfg.is_motion:
        for name in MOTION_ONLY:
            if getattr(cfg, name):
                raise InputError(f"tia2v.{name}=True is a motion-model switch; the {cfg.part} U-Net has no dual "
                                 "temporal block: set it to false")
        if cfg.temporal_pos_emb != "none":
            raise InputError(f"tia2v.temporal_pos_emb={cfg.temporal_pos_emb!r}: only the motion U-Net has temporal "
                             "attention; use 'none'")
    if cfg.part == "shr" and cfg.double_residual:
        raise InputError("tia2v.double_residual=True: the SHR transformer has a single text cross-attention; "
                         "set it to false (or leave it unset)")


def _validate_widths(cfg: TIA2VUNetConfig) -> None:
    check_norm_widths(cfg, "tia2v")
    for res in cfg.attention_resolutions:
        if res < 1 or cfg.image_size % res:
            raise InputError(f"tia2v.attention_resolutions={cfg.attention_resolutions}: {res} does not divide "
                             f"image_size={cfg.image_size}")
    check_head_widths(cfg, "tia2v")


def tia2v_config_from_dict(data: dict[str, Any], where: str = "tia2v") -> TIA2VUNetConfig:
    """``TIA2VUNetConfig`` from a plain dict (a YAML ``model:`` section or a checkpoint's ``config.unet``)."""
    return from_dict(TIA2VUNetConfig, data, where)


def tia2v_preset(name: str) -> TIA2VUNetConfig:
    """The ``model:`` section of ``configs/tia2v/<name>.yaml`` (or of a YAML path) as a fresh config.

    Names: ``content``, ``motion``, ``shr`` (the released networks: 16.32 M, 33.11 M, 73.77 M parameters)
    and ``content-tiny``, ``motion-tiny``, ``shr-tiny`` (CPU tests). The released ``motion`` preset has the
    † switches off (the fixed behaviour); released weights turn them on through ``compat="tia2v"``.
    """
    path = preset_path("tia2v", name)
    if not path.is_file():
        raise InputError(f"unknown TIA2V U-Net preset {name!r} ({path} not found); known: {list(PRESETS)}")
    data = load_yaml(path)
    if not isinstance(data.get("model"), dict):
        raise InputError(f"{path}: needs a 'model:' section with the TIA2VUNetConfig fields")
    return tia2v_config_from_dict(data["model"], where=f"{path}: model")

