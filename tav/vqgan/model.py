"""Video VQGAN of TATS: 3D conv encoder/decoder, EMA codebook, two PatchGANs.

Source: Ge et al. 2022, "Long Video Generation with Time-Agnostic VQGAN and Time-Sensitive Transformer"
(https://github.com/songweige/TATS). Module and attribute names follow upstream so that the released
TA2V checkpoints load with their own keys (``tests/data/state_dicts/ta2v_vqgan.tsv``); the only key we add is
``codebook.initialised``. LPIPS is not part of this module (see ``losses.build_perceptual``).

Videos are ``(B, C, T, H, W)`` float in [-0.5, 0.5]. Clips whose size is not a multiple of
``cfg.downsample`` are replicate-padded at the end of each axis before encoding and the reconstruction is
cropped back, so any size runs (e.g. the README's ``--resolution 9``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tav.errors import InputError
from tav.vqgan.config import VQGANConfig, latent_shape_for
from tav.vqgan.discriminators import PatchDiscriminator
from tav.vqgan.quantizer import EMACodebook


def _same_pad(kernel: int, stride: tuple[int, int, int]) -> tuple[int, ...]:
    """F.pad tuple (W, H, T order) padding k - s per axis, the extra element in front."""
    pad: list[int] = []
    for s in reversed(stride):
        p = kernel - s
        pad += [p // 2 + p % 2, p // 2]
    return tuple(pad)


def _triple(s: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (s, s, s) if isinstance(s, int) else tuple(s)


class SamePadConv3d(nn.Module):
    """Conv3d whose output is ceil(input / stride) per axis: pad k - s (front gets the extra), then conv."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int | tuple[int, int, int] = 1,
                 padding_type: str = "replicate"):
        super().__init__()
        stride = _triple(stride)
        self.pad, self.mode = _same_pad(kernel, stride), padding_type
        self.conv = nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad, mode=self.mode)
        return self.conv(x)


class SamePadConvTranspose3d(nn.Module):
    """ConvTranspose3d giving exactly ``stride`` x the input: same input padding, conv padding k - 1."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int | tuple[int, int, int]):
        super().__init__()
        stride = _triple(stride)
        self.pad = _same_pad(kernel, stride)
        self.convt = nn.ConvTranspose3d(c_in, c_out, kernel, stride=stride, padding=kernel - 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.convt(F.pad(x, self.pad, mode="replicate"))


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    """x + Conv(SiLU(Norm(Conv(SiLU(Norm(x)))))), 3x3x3 convs, constant width."""

    def __init__(self, channels: int, norm: str, padding_type: str = "replicate"):
        super().__init__()
        self.norm1 = _norm(norm, channels)
        self.conv1 = SamePadConv3d(channels, channels, 3, padding_type=padding_type)
        self.norm2 = _norm(norm, channels)
        self.conv2 = SamePadConv3d(channels, channels, 3, padding_type=padding_type)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


def _stage_strides(cfg: VQGANConfig) -> list[tuple[int, int, int]]:
    """Stride of each stage: 2 on an axis while its remaining log2 factor is > 0, e.g. (2,2,2),(2,2,2),(1,2,2)."""
    left = [d.bit_length() - 1 for d in cfg.downsample]
    strides = []
    for _ in range(cfg.n_stages):
        strides.append(tuple(2 if n > 0 else 1 for n in left))
        left = [n - 1 for n in left]
    return strides


class _DownStage(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: tuple[int, int, int], cfg: VQGANConfig):
        super().__init__()
        self.down = SamePadConv3d(c_in, c_out, 4, stride=stride, padding_type=cfg.padding_type)
        self.res = ResBlock(c_out, cfg.norm, cfg.padding_type)

    def forward(self, x: Tensor) -> Tensor:
        return self.res(self.down(x))


class _UpStage(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: tuple[int, int, int], cfg: VQGANConfig):
        super().__init__()
        self.up = SamePadConvTranspose3d(c_in, c_out, 4, stride=stride)
        self.res1 = ResBlock(c_out, cfg.norm)
        self.res2 = ResBlock(c_out, cfg.norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.res2(self.res1(self.up(x)))


class Encoder(nn.Module):
    """``(B, C, T, H, W)`` -> ``(B, encoder_channels, T/dt, H/dh, W/dw)`` (inputs already multiples)."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        h = cfg.n_hiddens
        self.conv_blocks = nn.ModuleList(
            _DownStage(h * 2**i, h * 2 ** (i + 1), s, cfg) for i, s in enumerate(_stage_strides(cfg)))
        self.conv_first = SamePadConv3d(cfg.image_channels, h, 3, padding_type=cfg.padding_type)
        self.final_block = nn.Sequential(_norm(cfg.norm, cfg.encoder_channels), nn.SiLU())

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_first(x)
        for stage in self.conv_blocks:
            h = stage(h)
        return self.final_block(h)


class Decoder(nn.Module):
    """``(B, encoder_channels, t, h, w)`` -> ``(B, C, t*dt, h*dh, w*dw)``, no output activation."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        h, n = cfg.n_hiddens, cfg.n_stages
        self.final_block = nn.Sequential(_norm(cfg.norm, cfg.encoder_channels), nn.SiLU())  # applied first
        widths = [cfg.encoder_channels] + [h * 2 ** (n - i) for i in range(n)]  # 256, 256, 128, 64
        self.conv_blocks = nn.ModuleList(
            _UpStage(widths[i], widths[i + 1], s, cfg) for i, s in enumerate(_stage_strides(cfg)))
        self.conv_last = SamePadConv3d(widths[-1], cfg.image_channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.final_block(x)
        for stage in self.conv_blocks:
            h = stage(h)
        return self.conv_last(h)


class VQGAN(nn.Module):
    """Video VQGAN: ``encode`` video -> code grid, ``decode`` codes -> video, ``forward`` for training.

    Holds the two PatchGAN discriminators too (their keys are in the released checkpoints); the
    training losses live in ``tav.vqgan.losses``.
    """

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.pre_vq_conv = SamePadConv3d(cfg.encoder_channels, cfg.embedding_dim, 1, padding_type=cfg.padding_type)
        self.post_vq_conv = SamePadConv3d(cfg.embedding_dim, cfg.encoder_channels, 1)
        self.codebook = EMACodebook(cfg.n_codes, cfg.embedding_dim, cfg.ema_decay, cfg.commitment_weight,
                                    cfg.random_restart, cfg.restart_thres, cfg.restart_sampling,
                                    cfg.restart_reset_ema)
        self.image_discriminator = PatchDiscriminator(cfg.image_channels, cfg.disc_channels, cfg.disc_layers, 2)
        self.video_discriminator = PatchDiscriminator(cfg.image_channels, cfg.disc_channels, cfg.disc_layers, 3)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """Code grid ``(t, h, w)`` of a configured training clip, e.g. (4, 12, 12)."""
        return self.cfg.latent_shape

    @property
    def n_codes(self) -> int:
        """Codebook size K: codes are in [0, K)."""
        return self.cfg.n_codes

    def autoencoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of the generator optimiser: encoder, decoder, pre/post-VQ convs."""
        mods = (self.encoder, self.decoder, self.pre_vq_conv, self.post_vq_conv)
        return [p for m in mods for p in m.parameters()]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        """Parameters of the discriminator optimiser: 2D and 3D PatchGANs."""
        return [*self.image_discriminator.parameters(), *self.video_discriminator.parameters()]

    def to_channels_last(self) -> VQGAN:
        """Store the 5D conv weights as ``channels_last_3d`` (faster 3D convs on cuDNN / oneDNN; about
        10% on CPU for decode in one measurement). Inputs may stay contiguous. Returns ``self``."""
        for part in (self.encoder, self.decoder, self.pre_vq_conv, self.post_vq_conv, self.video_discriminator):
            part.to(memory_format=torch.channels_last_3d)
        return self

    def _check(self, video: Tensor) -> None:
        if video.dim() != 5 or video.shape[1] != self.cfg.image_channels:
            raise InputError(f"VQGAN input: expected (B, {self.cfg.image_channels}, T, H, W) video, "
                             f"got shape {tuple(video.shape)}")

    def encode_latents(self, video: Tensor) -> Tensor:
        """Pre-quantisation latents: video ``(B, C, T, H, W)`` in [-0.5, 0.5] -> ``(B, D, t, h, w)`` float."""
        self._check(video)
        size = video.shape[2:]
        padded = [n * d for n, d in zip(latent_shape_for(tuple(size), self.cfg.downsample),
                                        self.cfg.downsample, strict=True)]
        pad = [0, padded[2] - size[2], 0, padded[1] - size[1], 0, padded[0] - size[0]]
        if any(pad):
            video = F.pad(video, pad, mode="replicate")
        return self.pre_vq_conv(self.encoder(video))

    def encode(self, video: Tensor) -> Tensor:
        """Video ``(B, C, T, H, W)`` float in [-0.5, 0.5] -> codes ``(B, t, h, w)`` long in [0, n_codes).

        ``t, h, w = ceil(T/dt), ceil(H/dh), ceil(W/dw)``. Never changes the codebook.
        """
        return self.codebook.assign(self.encode_latents(video))

    def decode_latents(self, z: Tensor, size: tuple[int, int, int] | None = None) -> Tensor:
        """Quantised latents ``(B, D, t, h, w)`` -> video ``(B, C, t*dt, h*dh, w*dw)`` cropped to ``size``."""
        video = self.decoder(self.post_vq_conv(z))
        if size is not None:
            video = video[:, :, : size[0], : size[1], : size[2]]
        return video

    def decode(self, codes: Tensor, size: tuple[int, int, int] | None = None) -> Tensor:
        """Codes ``(B, t, h, w)`` long -> video ``(B, C, T, H, W)`` float32, unclamped.

        The decoder has no output activation: values are roughly in [-0.5, 0.5] but not bounded; clamp
        before display or saving. ``size = (T, H, W)`` crops the output; by default codes of the
        configured ``latent_shape`` are cropped to ``cfg.input_shape`` and other grids are not cropped.
        """
        if size is None and tuple(codes.shape[1:]) == self.cfg.latent_shape:
            size = self.cfg.input_shape
        return self.decode_latents(self.codebook.lookup(codes), size)

    def forward(self, video: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Reconstruct ``video (B, C, T, H, W)`` in [-0.5, 0.5] through the codebook.

        Returns ``(recon, vq)``: recon has the input's shape (unclamped float); ``vq`` is the codebook
        dict (``codes``, ``commitment_loss``, ``perplexity``, ``embeddings``). In training mode the
        codebook is initialised on the first call and EMA-updated on every call.
        """
        vq = self.codebook(self.encode_latents(video))
        return self.decode_latents(vq["embeddings"], tuple(video.shape[2:])), vq
