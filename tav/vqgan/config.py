"""Typed configuration of the video VQGAN (TATS architecture).

Defaults are upstream's code defaults; the URMP / Landscape README recipes are the YAML presets in
``configs/vqgan/``. Derived sizes (latent grid, stage count, channel widths) are properties here and
nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from tav.config import from_dict, load_yaml, preset_path
from tav.errors import InputError


@dataclass
class VQGANConfig:
    """Architecture, codebook and loss settings of one video VQGAN."""

    embedding_dim: int = 256  # width D of each codebook vector (= channels of the latent grid)
    n_codes: int = 16384  # codebook size K
    n_hiddens: int = 32  # width of the first encoder conv; stage i has n_hiddens * 2**(i+1) channels
    downsample: tuple[int, int, int] = (4, 8, 8)  # (T, H, W) down-sampling factors, powers of two
    norm: Literal["group", "batch"] = "group"  # GroupNorm(32, eps 1e-6) or BatchNorm3d in the autoencoder
    padding_type: Literal["replicate", "constant", "reflect", "circular"] = "replicate"  # encoder conv padding
    image_channels: int = 3  # input/output channels of the video
    resolution: int = 96  # training H = W; inputs of other sizes also work (padded, see model.py)
    sequence_length: int = 16  # training T
    disc_channels: int = 64  # width of the first PatchGAN conv
    disc_layers: int = 3  # stride-2 layers of the PatchGANs
    disc_loss_type: Literal["hinge", "vanilla"] = "hinge"  # discriminator loss
    image_gan_weight: float = 1.0  # weight of the 2D (single-frame) PatchGAN terms
    video_gan_weight: float = 1.0  # weight of the 3D PatchGAN terms
    l1_weight: float = 4.0  # weight of the L1 reconstruction loss
    l2_weight: float = 0.0  # weight of an MSE reconstruction term (0 = upstream; small demo models learn faster)
    grad_weight: float = 0.0  # weight of an edge term on spatial finite differences (0 = upstream)
    grad_exponent: Literal[1, 2] = 1  # of that term: 1 = L1, 2 = squared (a high-frequency-weighted MSE)
    chroma_weight: float = 0.0  # weight of an MSE on chroma (each pixel minus its channel mean; 0 = upstream)
    gan_feat_weight: float = 4.0  # weight of discriminator feature matching
    perceptual_weight: float = 4.0  # weight of the LPIPS loss on one random frame per clip
    discriminator_iter_start: int = 10000  # global step from which the GAN terms are switched on
    commitment_weight: float = 0.25  # beta of the commitment loss
    ema_decay: float = 0.99  # decay of the EMA codebook statistics
    random_restart: bool = True  # re-seed codes with EMA count < restart_thres (README: off)
    restart_thres: float = 1.0  # EMA count below which a code counts as dead
    # restart pool: random rows (upstream), or rows drawn in proportion to their squared distance to their code
    # (k-means++'s D^2 weighting: dead codes go where the codebook fits the data worst)
    restart_sampling: Literal["uniform", "error"] = "uniform"
    restart_reset_ema: bool = False  # a restart also sets the code's EMA count and sum (upstream: they pull it back)
    lpips_input_scale: float = 2.0  # LPIPS sees scale * x; 2 maps [-0.5,0.5] to [-1,1]; compat value 1.0
    lr: float = 3e-5  # base learning rate (the training script scales it by batch and accumulation)
    betas: tuple[float, float] = (0.5, 0.9)  # Adam betas of both optimisers

    def __post_init__(self) -> None:
        self.downsample = tuple(int(d) for d in self.downsample)
        self.betas = tuple(float(b) for b in self.betas)
        _validate(self)

    @property
    def n_stages(self) -> int:
        """Number of strided encoder (and decoder) stages: log2 of the largest factor."""
        return max(self.downsample).bit_length() - 1

    @property
    def encoder_channels(self) -> int:
        """Channels at the bottom of the encoder (before ``pre_vq_conv``): 256 for n_hiddens 32."""
        return self.n_hiddens * 2**self.n_stages

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Training clip size ``(T, H, W)``."""
        return (self.sequence_length, self.resolution, self.resolution)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """Code grid ``(t, h, w)`` of a training clip: ceil(size / factor) per axis, e.g. (4, 12, 12)."""
        return latent_shape_for(self.input_shape, self.downsample)

    @property
    def n_latents(self) -> int:
        """Tokens per clip: t * h * w (576 for URMP, 256 for Landscape)."""
        return math.prod(self.latent_shape)


def latent_shape_for(size: tuple[int, int, int], downsample: tuple[int, int, int]) -> tuple[int, int, int]:
    """Code grid of a clip of ``size = (T, H, W)``: inputs are replicate-padded up to a multiple first."""
    return tuple(-(-s // d) for s, d in zip(size, downsample, strict=True))


def _validate(cfg: VQGANConfig) -> None:
    """Reject what cannot be built. Sizes that are not multiples of the factors are fine (padded)."""
    if len(cfg.downsample) != 3 or any(d < 1 or d & (d - 1) for d in cfg.downsample):
        raise InputError(f"vqgan.downsample={cfg.downsample}: need three powers of two (T, H, W), e.g. 4 8 8")
    if max(cfg.downsample) < 2:
        raise InputError("vqgan.downsample: at least one factor must be >= 2 (the encoder needs a stage)")
    for name in ("embedding_dim", "n_codes", "n_hiddens", "image_channels", "resolution",
                 "sequence_length", "disc_channels", "disc_layers"):
        if getattr(cfg, name) < 1:
            raise InputError(f"vqgan.{name}={getattr(cfg, name)}: must be >= 1")
    if cfg.norm == "group" and (2 * cfg.n_hiddens) % 32:
        raise InputError(f"vqgan.n_hiddens={cfg.n_hiddens}: GroupNorm(32) needs 2*n_hiddens divisible by 32; "
                         "use a multiple of 16 or norm=batch")
    if not 0.0 < cfg.ema_decay < 1.0:
        raise InputError(f"vqgan.ema_decay={cfg.ema_decay}: must be in (0, 1)")
    for name in ("l1_weight", "l2_weight", "grad_weight", "chroma_weight"):
        if getattr(cfg, name) < 0:
            raise InputError(f"vqgan.{name}={getattr(cfg, name)}: must be >= 0 (a loss weight)")
    if cfg.grad_exponent not in (1, 2):
        raise InputError(f"vqgan.grad_exponent={cfg.grad_exponent}: must be 1 (L1) or 2 (squared)")
    if cfg.lpips_input_scale <= 0:
        raise InputError(f"vqgan.lpips_input_scale={cfg.lpips_input_scale}: must be > 0 (2.0, or 1.0 for compat)")
    if cfg.lr <= 0:
        raise InputError(f"vqgan.lr={cfg.lr}: must be > 0 (--lr)")


def vqgan_config_from_dict(data: dict[str, Any], where: str = "vqgan") -> VQGANConfig:
    """``VQGANConfig`` from a plain dict (YAML ``model:`` section or a checkpoint's ``config``)."""
    return from_dict(VQGANConfig, data, where)


def vqgan_preset(name: str) -> VQGANConfig:
    """Preset ``configs/vqgan/<name>.yaml`` (``tiny``, ``urmp``, ``landscape``) or a YAML path.

    The file holds the config fields under a ``model:`` key; other top-level keys (training, data) are
    ignored here.
    """
    path = preset_path("vqgan", name)
    data = load_yaml(path)
    if not isinstance(data.get("model"), dict):
        raise InputError(f"{path}: expected a 'model:' mapping of VQGANConfig fields")
    return vqgan_config_from_dict(data["model"], where=f"{path}:model")
