"""Typed configuration of the diffusion U-Net (guided-diffusion ``UNetModel`` layout).

Defaults are the TA2V released network (``model300000.pt``): 128 px, widths 128/128/256/384/512, three
ResBlocks per level, attention at 16² and 8² (plus the middle block), FiLM conditioning on the timestep,
legacy QKV channel order, 3D convs that never down-sample frames. The released file is a bare state dict,
so :func:`unet_config_from_state_dict` reads the architecture back from its tensor shapes.

``attention_resolutions`` keeps guided-diffusion's meaning: *spatial sizes* (for ``image_size``) at which
the levels get attention; :attr:`UNetConfig.attention_ds` is the same set as down-sampling factors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from tav.config import from_dict
from tav.errors import InputError
from tav.utils.attention import IMPLS

NORM_GROUPS = 32  # GroupNorm(32, C) everywhere, as upstream


class UNetShape:
    """What follows from the fields every guided-diffusion-style U-Net config has; mixed into
    :class:`UNetConfig` and ``tav.tia2v.config.TIA2VUNetConfig`` (both dataclasses define the fields below)."""

    image_size: int
    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    attention_resolutions: tuple[int, ...]
    num_heads: int
    num_head_channels: int

    @property
    def attention_ds(self) -> tuple[int, ...]:
        """Down-sampling factors (1, 2, 4, ...) with attention, sorted: ``image_size // r`` per resolution r."""
        return tuple(sorted(self.image_size // r for r in self.attention_resolutions))

    @property
    def level_ds(self) -> tuple[int, ...]:
        """Down-sampling factor of every level: (1, 2, 4, ...)."""
        return tuple(2**i for i in range(len(self.channel_mult)))

    @property
    def learn_sigma(self) -> bool:
        """True when the network also outputs the variance interpolation (out = 2 * in channels)."""
        return self.out_channels == 2 * self.in_channels

    @property
    def spatial_divisor(self) -> int:
        """H and W must be multiples of this: ``2 ** (len(channel_mult) - 1)``."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def time_embed_dim(self) -> int:
        """Width of the timestep embedding MLP: ``4 * model_channels``."""
        return 4 * self.model_channels

    def heads_for(self, channels: int) -> int:
        """Attention heads of a block ``channels`` wide (head width ``channels // heads``)."""
        return self.num_heads if self.num_head_channels == -1 else channels // self.num_head_channels


def check_norm_widths(cfg: UNetShape, prefix: str) -> None:
    """Every level width (and ``model_channels``) must split into the GroupNorm groups; ``prefix`` names the
    config section in the one-line ``InputError``."""
    for width in [cfg.model_channels, *(cfg.model_channels * m for m in cfg.channel_mult)]:
        if width % NORM_GROUPS:
            raise InputError(f"{prefix}.model_channels={cfg.model_channels}, channel_mult={cfg.channel_mult}: width "
                             f"{width} is not divisible by the {NORM_GROUPS} GroupNorm groups")


def check_head_widths(cfg: UNetShape, prefix: str) -> None:
    """The heads must divide the width of every attention level that exists, and of the middle block."""
    widths = [cfg.model_channels * m for m in cfg.channel_mult]
    level_ds = cfg.level_ds
    for width in [widths[level_ds.index(d)] for d in cfg.attention_ds if d in level_ds] + [widths[-1]]:
        if cfg.num_head_channels != -1 and width % cfg.num_head_channels:
            raise InputError(f"{prefix}.num_head_channels={cfg.num_head_channels} does not divide attention width "
                             f"{width}")
        if width % cfg.heads_for(width):
            raise InputError(f"{prefix}.num_heads={cfg.heads_for(width)} does not divide attention width {width}")


@dataclass
class UNetConfig(UNetShape):
    """Architecture of one guided-diffusion U-Net (2D images or 3D videos)."""

    image_size: int = 128  # training H = W; only used to turn attention_resolutions into factors
    in_channels: int = 3  # channels of x_t
    model_channels: int = 128  # width of level 0; level i is model_channels * channel_mult[i] wide
    out_channels: int = 6  # 2 * in_channels = epsilon and the learned-variance interpolation (learn_sigma)
    channel_mult: tuple[int, ...] = (1, 1, 2, 3, 4)  # width multiplier per level (len - 1 down-samplings)
    num_res_blocks: int = 3  # ResBlocks per level on the way down (one more per level on the way up)
    attention_resolutions: tuple[int, ...] = (16, 8)  # spatial sizes with attention (image_size // ds)
    num_heads: int = 4  # attention heads (used when num_head_channels == -1)
    num_head_channels: int = -1  # fixed width per head instead of a fixed head count; -1 = use num_heads
    use_scale_shift_norm: bool = True  # FiLM: norm(h) * (1 + scale) + shift from the timestep embedding
    dropout: float = 0.0  # dropout inside each ResBlock
    dims: int = 3  # 3 = videos (B, C, T, H, W) with frames never down-sampled; 2 = images (B, C, H, W)
    use_new_attention_order: bool = False  # False = legacy per-head (q, k, v) channel order of the weights
    gradient_checkpointing: bool = False  # recompute ResBlock/attention activations in the backward pass
    attention_impl: Literal["auto", "sdpa", "math"] = "auto"  # tav.utils.attention: SDPA, written out, or the
    # faster of the two (written out on a CPU in bf16 for short sequences with a gradient)

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        _validate(self)


def _validate(cfg: UNetConfig) -> None:
    """Reject configs that cannot be built, naming the field."""
    for name in ("image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks", "num_heads"):
        if getattr(cfg, name) < 1:
            raise InputError(f"unet.{name}={getattr(cfg, name)}: must be >= 1")
    if not cfg.channel_mult or min(cfg.channel_mult) < 1:
        raise InputError(f"unet.channel_mult={cfg.channel_mult}: need one or more positive multipliers")
    if cfg.dims not in (2, 3):
        raise InputError(f"unet.dims={cfg.dims}: must be 2 (images) or 3 (videos)")
    if not 0.0 <= cfg.dropout < 1.0:
        raise InputError(f"unet.dropout={cfg.dropout}: must be in [0, 1)")
    if cfg.attention_impl not in IMPLS:
        raise InputError(f"unet.attention_impl={cfg.attention_impl!r}: must be one of {', '.join(IMPLS)}")
    if cfg.num_head_channels != -1 and cfg.num_head_channels < 1:
        raise InputError(f"unet.num_head_channels={cfg.num_head_channels}: must be >= 1, or -1 to use num_heads")
    check_norm_widths(cfg, "unet")
    level_ds = cfg.level_ds
    for res in cfg.attention_resolutions:
        if res < 1 or cfg.image_size % res or cfg.image_size // res not in level_ds:
            raise InputError(f"unet.attention_resolutions={cfg.attention_resolutions}: {res} is not the spatial "
                             f"size of a level for image_size={cfg.image_size} (levels: "
                             f"{[cfg.image_size // d for d in level_ds]})")
    check_head_widths(cfg, "unet")


def unet_config_from_dict(data: dict[str, Any], where: str = "unet") -> UNetConfig:
    """``UNetConfig`` from a plain dict (YAML ``model:`` section or a checkpoint's ``config``)."""
    return from_dict(UNetConfig, data, where)


UNET_PRESETS: dict[str, UNetConfig] = {
    "unet3d-ta2v": UNetConfig(),
    "unet3d-tiny": UNetConfig(image_size=32, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                              attention_resolutions=(16,), num_heads=2),
}


def unet_preset(name: str) -> UNetConfig:
    """A fresh copy of preset ``name``: ``unet3d-ta2v`` (released TA2V network) or ``unet3d-tiny`` (CPU tests)."""
    if name not in UNET_PRESETS:
        raise InputError(f"unknown U-Net preset {name!r}; known: {sorted(UNET_PRESETS)}")
    return dataclasses.replace(UNET_PRESETS[name])


# ------------------------------------------------------------------------------ reading a bare state dict
_NOT_INFERRED = ("image_size", "num_heads", "num_head_channels", "use_new_attention_order", "dropout",
                 "gradient_checkpointing", "attention_impl")


def require_key(sd: Mapping[str, Tensor], key: str, what: str = "guided-diffusion U-Net") -> Tensor:
    """``sd[key]``, or a one-line ``InputError`` saying ``sd`` is not a ``what`` state dict."""
    if key not in sd:
        raise InputError(f"not a {what} state dict: missing key {key!r}")
    return sd[key]


def input_levels(sd: Mapping[str, Tensor], attention: str = "qkv.weight",
                 what: str = "guided-diffusion U-Net") -> list[list[tuple[int, bool]]]:
    """``(width, has_attention)`` of each ResBlock of ``input_blocks``, grouped by level (Downsamples split).

    ``attention``: the key, after ``input_blocks.<n>.1.``, of the layer that follows a ResBlock at attention
    levels (``qkv.weight`` for ``AttentionBlock``, ``proj_in.weight`` for a spatial transformer). Levels of
    unequal length or mixed widths/attention raise ``InputError`` naming ``what``.
    """
    levels: list[list[tuple[int, bool]]] = [[]]
    n = 1
    while any(k.startswith(f"input_blocks.{n}.") for k in sd):
        if f"input_blocks.{n}.0.op.weight" in sd:
            levels.append([])
        else:
            width = require_key(sd, f"input_blocks.{n}.0.out_layers.3.weight", what).shape[0]
            levels[-1].append((int(width), f"input_blocks.{n}.1.{attention}" in sd))
        n += 1
    if not levels[0] or any(len(level) != len(levels[0]) for level in levels):
        raise InputError(f"{what} state dict: input_blocks hold {[len(lv) for lv in levels]} ResBlocks per level; "
                         "expected the same non-zero number at every level")
    for i, level in enumerate(levels):
        if len(set(level)) != 1:
            raise InputError(f"{what} state dict: level {i} of input_blocks mixes widths or attention: {level}")
    return levels


def unet_config_from_state_dict(state_dict: dict[str, Tensor], **overrides: Any) -> UNetConfig:
    """Architecture of a guided-diffusion ``UNetModel`` state dict, read from its tensor shapes.

    ``overrides`` set what the tensors cannot tell: ``image_size`` (default 128; turns the attention
    factors into ``attention_resolutions``), ``num_heads``, ``num_head_channels``,
    ``use_new_attention_order``, ``dropout``, ``gradient_checkpointing``, ``attention_impl``. Any other
    name raises ``InputError``, as does a state dict that is not a U-Net of this family (naming the key).
    """
    unknown = set(overrides) - set(_NOT_INFERRED)
    if unknown:
        raise InputError(f"unet_config_from_state_dict: cannot override {sorted(unknown)}; only {_NOT_INFERRED} "
                         "(the rest is read from the tensors)")
    conv_in = require_key(state_dict, "input_blocks.0.0.weight")  # (model_channels, in_channels, k, k[, k])
    out_channels = require_key(state_dict, "out.2.weight").shape[0]
    require_key(state_dict, "time_embed.0.weight")
    require_key(state_dict, "middle_block.1.qkv.weight")
    model_channels = int(conv_in.shape[0])
    levels = input_levels(state_dict)
    mults = []
    for level in levels:
        width = level[0][0]
        if width % model_channels:
            raise InputError(f"U-Net state dict: width {width} is not a multiple of model_channels {model_channels}")
        mults.append(width // model_channels)
    film = require_key(state_dict, "input_blocks.1.0.emb_layers.1.weight").shape[0] == 2 * levels[0][0][0]
    image_size = overrides.get("image_size", UNetConfig.image_size)
    attention_ds = [2**i for i, level in enumerate(levels) if level[0][1]]
    kwargs = dict(overrides, image_size=image_size, in_channels=int(conv_in.shape[1]),
                  model_channels=model_channels, out_channels=int(out_channels), channel_mult=tuple(mults),
                  num_res_blocks=len(levels[0]), attention_resolutions=tuple(image_size // d for d in attention_ds),
                  use_scale_shift_norm=bool(film), dims=conv_in.ndim - 2)
    return UNetConfig(**kwargs)
