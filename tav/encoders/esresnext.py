"""ESResNeXt-fbsp: AudioCLIP's audio tower, a clean port with the released key layout.

A waveform in the int16 range is rescaled to [-1, 1], cut into windowed frames, projected onto a
*learnable* Fourier basis (``fbsp``: per-bin centre frequency ``fc``, bandwidth ``fb`` and window
exponent ``m``), turned into a dB power spectrogram whose frequency axis is split into ``bands`` equal
bands stacked as image channels, and classified by a ResNeXt with sigmoid attention gates after every
stage and after the global pooling. ``fc`` maps the pooled features to the joint embedding.

Source: Guzhov et al., "ESResNe(X)t-fbsp" (arXiv:2104.11587) and AudioCLIP (arXiv:2106.13043);
https://github.com/AndreyGuzhov/AudioCLIP/tree/main/model/esresnet (layout and maths; written fresh).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import scipy.signal
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

INT16_MIN, INT16_MAX = -32768.0, 32767.0  # the waveform range the tower expects
LOG10_FLOOR = 1e-18  # power values <= 0 are replaced by this before the dB conversion (upstream)

# (kernel, padding) of the depthwise conv of each attention gate att1..att5: alternately along
# frequency (rows) and time (columns); the last one sees both.
_GATE_KERNELS = (((3, 1), (1, 0)), ((1, 5), (0, 2)), ((3, 1), (1, 0)), ((1, 5), (0, 2)), ((3, 5), (1, 2)))


@dataclass
class ESResNeXtConfig:
    """STFT front end and ResNeXt trunk of the audio tower. Defaults = ``AudioCLIP-Full-Training.pt``."""

    n_fft: int = 2048  # frame length after zero-padding = input width of the Fourier basis
    hop_length: int = 561  # samples between frames (at 44.1 kHz: 12.7 ms)
    win_length: int = 1654  # samples per frame before zero-padding to n_fft (37.5 ms)
    window: str = "blackmanharris"  # scipy.signal.get_window name (periodic); the buffer is in the state dict
    normalized: bool = True  # divide the basis by sqrt(n_fft)
    onesided: bool = True  # n_fft // 2 + 1 frequency bins instead of n_fft
    apply_attention: bool = True  # sigmoid attention gates att1..att5
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)  # bottleneck blocks per stage (ResNeXt-50)
    width: int = 64  # stem channels = planes of stage 1; stage i has width * 2**i planes
    groups: int = 32  # grouped 3x3 convs (the "32" of 32x4d)
    width_per_group: int = 4  # bottleneck width = int(planes * width_per_group / 64) * groups
    bands: int = 3  # frequency bands stacked as the input channels of conv1

    def __post_init__(self) -> None:
        self.layers = tuple(int(n) for n in self.layers)
        if len(self.layers) != 4 or min(self.layers) < 1:
            raise ValueError(f"audio layers must be four positive block counts, got {self.layers}")
        if int(self.width * self.width_per_group / 64) < 1:
            raise ValueError(f"audio width {self.width} with width_per_group {self.width_per_group} gives "
                             "empty bottlenecks; raise width_per_group")

    @property
    def n_bins(self) -> int:
        """Frequency bins of the Fourier basis: 1025 for n_fft 2048, onesided."""
        return self.n_fft // 2 + 1 if self.onesided else self.n_fft

    @property
    def stage_planes(self) -> tuple[int, int, int, int]:
        return tuple(self.width * 2**i for i in range(4))

    @property
    def feature_dim(self) -> int:
        """Channels of the pooled features (input of ``fc``): 2048 for ResNeXt-50."""
        return self.stage_planes[-1] * Bottleneck.expansion


def analysis_window(name: str, length: int) -> Tensor:
    """Periodic window ``(length,)`` in the default dtype, as upstream builds it (scipy ``fftbins=True``)."""
    return torch.as_tensor(scipy.signal.get_window(name, length, fftbins=True), dtype=torch.get_default_dtype())


def frame_signal(x: Tensor, frame_length: int, hop_length: int, window: Tensor) -> Tensor:
    """``(N, S)`` -> windowed frames ``(N, F, frame_length)``.

    ``F = 1`` if ``S <= frame_length`` else ``1 + ceil((S - frame_length) / hop)``; the signal is
    zero-padded on both sides (left gets the smaller half) to exactly cover ``F`` frames. Unlike
    ``torch.stft`` there is no centring, so a chunk shorter than one window gives one frame.
    """
    length = x.shape[-1]
    n_frames = 1 if length <= frame_length else 1 + -(-(length - frame_length) // hop_length)
    pad = (n_frames - 1) * hop_length + frame_length - length
    if pad > 0:
        x = F.pad(x, (pad // 2, pad - pad // 2))
    return x.unfold(-1, frame_length, hop_length) * window  # (N, F, frame_length)


class FourierBasis(nn.Module):
    """Learnable complex filterbank replacing the DFT (upstream ``LinearFBSP``, no bias).

    Bin ``k`` is ``sqrt(fb_k) * sinc(fb_k t / m_k) ** m_k * exp(-i fc_k t)`` sampled at ``t`` in
    [-pi, pi]. At init (``m = 0``, ``fb = 1``, ``fc = k``) it is a plain DFT: bin ``k`` responds to
    ``k / (n_in - 1)`` cycles per sample. Parameters ``m``, ``fb``, ``fc``: ``(n_bins,)``; ``bias`` is an
    empty parameter kept only because the released state dict has it.
    """

    eps = 1e-8

    def __init__(self, n_bins: int, normalized: bool) -> None:
        super().__init__()
        self.n_bins = n_bins
        self.normalized = normalized
        self.m = nn.Parameter(torch.zeros(n_bins))
        self.fb = nn.Parameter(torch.ones(n_bins))
        self.fc = nn.Parameter(torch.arange(n_bins, dtype=torch.get_default_dtype()))
        self.bias = nn.Parameter(torch.empty(0))

    def basis(self, n_in: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The complex basis ``(n_bins, n_in, 2)`` (last dim: re, im)."""
        t = math.pi * torch.linspace(-1.0, 1.0, n_in, dtype=dtype, device=device).view(1, -1, 1) + self.eps
        m, fb, fc = (p.view(-1, 1, 1) for p in (self.m, self.fb, self.fc))  # (n_bins, 1, 1) each
        kernel_re, kernel_im = torch.cos(fc * t), -torch.sin(fc * t)  # exp(-i fc t), (n_bins, n_in, 1)
        arg = fb * t / (m + self.eps)
        sinc = torch.where(arg == 0, torch.ones_like(arg), torch.sin(arg) / arg)
        # sinc ** m for a real base and real exponent, through polar form as upstream does: the phase
        # is pi where sinc < 0, so the window turns complex there for non-integer m. |sinc| is taken as
        # (sinc^2)^0.5 and squared again, not simplified: torch's pow rounds differently from abs, and
        # this order keeps the basis bit-identical to upstream's.
        phase = torch.atan2(torch.zeros_like(sinc), sinc)
        magnitude = ((sinc**2) ** 0.5) ** 2
        win_mag = magnitude.pow(0.5 * m)
        win_re, win_im = win_mag * torch.cos(m * phase), win_mag * torch.sin(m * phase)
        scale = fb.sqrt()
        basis_re = scale * (win_re * kernel_re - win_im * kernel_im)
        basis_im = scale * (win_re * kernel_im + win_im * kernel_re)
        basis = torch.cat((basis_re, basis_im), dim=-1)
        return basis / n_in**0.5 if self.normalized else basis

    def forward(self, frames: Tensor) -> Tensor:
        """Real frames ``(..., n_in)`` -> complex coefficients ``(..., n_bins, 2)`` (last dim: re, im)."""
        basis = self.basis(frames.shape[-1], frames.dtype, frames.device)
        # strided re/im views of one tensor, as upstream: for a single frame BLAS sums a contiguous
        # weight in another order, and the last bits would differ
        return torch.stack((F.linear(frames, basis[..., 0]), F.linear(frames, basis[..., 1])), dim=-1)


class AttentionGate(nn.Module):
    """Sigmoid gate from a stage's input to its output: max-pool to the output grid, depthwise conv,
    pointwise conv, BatchNorm, sigmoid (upstream ``Attention2d`` with one kernel per channel)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int], padding: tuple[int, int]):
        super().__init__()
        self.conv_depth = nn.Conv2d(in_channels, in_channels, kernel, padding=padding, groups=in_channels)
        self.conv_point = nn.Conv2d(in_channels, out_channels, (1, 1))
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """``(N, C_in, H, W)`` -> gate ``(N, C_out, *size)`` in (0, 1)."""
        x = F.adaptive_max_pool2d(x, size)
        return torch.sigmoid(self.bn(self.conv_point(self.conv_depth(x))))


class ESResNeXtFBSP(nn.Module):
    """Waveform ``(N, S)`` in the int16 range -> embedding ``(N, out_dim)`` (unnormalised)."""

    def __init__(self, cfg: ESResNeXtConfig | None = None, out_dim: int = 1024) -> None:
        super().__init__()
        cfg = cfg or ESResNeXtConfig()
        self.cfg = cfg
        self.register_buffer("window", analysis_window(cfg.window, cfg.win_length))
        self.conv1 = nn.Conv2d(cfg.bands, cfg.width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_ch = cfg.width
        for i, (planes, blocks) in enumerate(zip(cfg.stage_planes, cfg.layers, strict=True)):
            stage = self._make_stage(in_ch, planes, blocks, stride=1 if i == 0 else 2)
            setattr(self, f"layer{i + 1}", stage)
            if cfg.apply_attention:  # gate from the stage input (in_ch) to its output
                setattr(self, f"att{i + 1}", AttentionGate(in_ch, planes * Bottleneck.expansion, *_GATE_KERNELS[i]))
            in_ch = planes * Bottleneck.expansion
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        if cfg.apply_attention:
            self.att5 = AttentionGate(in_ch, in_ch, *_GATE_KERNELS[4])
        self.fc = nn.Linear(cfg.feature_dim, out_dim)
        self._init_weights()
        self.fbsp = FourierBasis(cfg.n_bins, cfg.normalized)

    def _make_stage(self, in_ch: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        cfg, out_ch = self.cfg, planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or in_ch != out_ch:
            downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
        layers = [Bottleneck(in_ch, planes, stride, downsample, cfg.groups, cfg.width_per_group)]
        layers += [Bottleneck(out_ch, planes, groups=cfg.groups, base_width=cfg.width_per_group)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # torchvision ResNet init, as upstream applies it (the gates included); fc keeps Linear's default.
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(mod, nn.BatchNorm2d):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)

    def spectrogram(self, audio: Tensor) -> Tensor:
        """``(N, S)`` in [-1, 1] -> complex spectrogram ``(N, n_bins, F, 2)`` (F frames, last dim re/im)."""
        cfg = self.cfg
        frames = frame_signal(audio, cfg.win_length, cfg.hop_length, self.window)  # (N, F, win_length)
        if cfg.n_fft > cfg.win_length:
            pad = cfg.n_fft - cfg.win_length
            frames = F.pad(frames, (pad // 2, pad - pad // 2))  # (N, F, n_fft)
        return self.fbsp(frames).transpose(-2, -3)  # (N, F, n_bins, 2) -> (N, n_bins, F, 2)

    def log_power(self, audio: Tensor) -> Tensor:
        """``(N, S)`` in [-1, 1] -> dB power ``(N, bands, n_bins // bands, F)``: the ResNeXt's input image.

        The top ``n_bins % bands`` bins are dropped; band ``b`` holds bins ``[b * h, (b + 1) * h)``.
        """
        spec = self.spectrogram(audio)
        n, bands = spec.shape[0], self.cfg.bands
        height = spec.shape[1] // bands
        spec = spec[:, : bands * height].reshape(n, bands, height, *spec.shape[-2:])  # (N, bands, h, F, 2)
        power = spec[..., 0] ** 2 + spec[..., 1] ** 2
        power = torch.where(power > 0.0, power, torch.full_like(power, LOG10_FLOOR))
        return torch.log10(power).mul(10.0)

    def features(self, image: Tensor) -> Tensor:
        """dB image ``(N, bands, h, F)`` -> pooled features ``(N, feature_dim)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(image))))
        for i in range(1, 5):
            gate_input = x
            x = getattr(self, f"layer{i}")(x)
            if self.cfg.apply_attention:
                x = x * getattr(self, f"att{i}")(gate_input, x.shape[-2:])
        pooled = self.avgpool(x)
        if self.cfg.apply_attention:
            pooled = pooled * self.att5(x, pooled.shape[-2:])
        return torch.flatten(pooled, 1)

    def forward(self, audio: Tensor) -> Tensor:
        """``(N, S)`` waveforms in the int16 range [-32768, 32767] -> ``(N, out_dim)`` features.

        Any ``S >= 1`` works; upstream trained on 5 s at 44.1 kHz. The input is cast to the tower's dtype.
        """
        if audio.dim() != 2:
            raise ValueError(f"audioclip: audio must be (N, S) mono waveforms, got {tuple(audio.shape)}")
        x = audio.to(self.window.dtype)
        x = ((x - INT16_MIN) * 2.0) / (INT16_MAX - INT16_MIN) - 1.0  # int16 range -> [-1, 1], as upstream
        return self.fc(self.features(self.log_power(x)))
