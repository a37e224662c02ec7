"""The BEATs audio transformer (iter3+ layout), inference only (keys:
``tests/data/state_dicts/beats_iter3plus.tsv``).

Source: BEATs (Chen et al. 2022, "Audio Pre-Training with Acoustic Tokenizers", microsoft/unilm ``beats/``)
and WavLM's gated relative position bias; the maths is re-derived here, the module tree keeps the released
tensor names so the checkpoint loads strictly.

Pipeline of ``BEATs.extract_features``:
1. waveform in [-1, 1] at 16 kHz -> x 2^15 -> Kaldi fbank (128 mel, 25 ms / 10 ms, snip edges) per waveform
   -> ``(fbank - 15.41663) / (2 * 6.55582)``;
2. patches: Conv2d(1 -> embed_dim, kernel = stride = 16) over (time x mel) -> ``floor(T / 16) * 8`` tokens,
   time-major -> LayerNorm -> Linear(embed_dim -> encoder_embed_dim);
3. encoder: x + GELU(weight-normed grouped Conv1d(x)) -> LayerNorm -> post-LN layers with DeepNorm residual
   scaling ``x * (2 L)^(1/4)`` and a gated relative position bias computed once (layer 0's bucket table,
   which every layer shares, as upstream ties them) and re-gated in every layer from its own queries.

Dropout, layer drop and layer-wise gradient decay are training-only and are not built.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi
from torch import Tensor, nn

SAMPLE_RATE = 16000  # Hz BEATs' fbank assumes
FBANK_MEAN = 15.41663
FBANK_STD = 6.55582
NUM_MEL_BINS = 128
WINDOW_SAMPLES = 400  # 25 ms at 16 kHz
HOP_SAMPLES = 160  # 10 ms at 16 kHz

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu, "gelu_accurate": partial(F.gelu, approximate="tanh"),
    "gelu_fast": partial(F.gelu, approximate="tanh"), "relu": F.relu, "tanh": torch.tanh, "linear": lambda x: x,
}


@dataclass
class BEATsConfig:
    """BEATs architecture. Defaults are the iter3+ pre-trained model; released files store every field."""

    input_patch_size: int = 16  # square patch (fbank frames x mel bins)
    embed_dim: int = 512  # patch embedding width
    conv_bias: bool = False  # bias in the patch embedding conv
    encoder_layers: int = 12
    encoder_embed_dim: int = 768  # transformer width D
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"  # FFN activation
    layer_norm_first: bool = False  # pre-LN (True) or post-LN (False) layers
    deep_norm: bool = True  # post-LN residual scaled by (2 * encoder_layers) ** 0.25
    conv_pos: int = 128  # kernel of the convolutional positional embedding
    conv_pos_groups: int = 16
    relative_position_embedding: bool = True  # bucketed relative position bias (T5/WavLM style)
    num_buckets: int = 320
    max_distance: int = 800
    gru_rel_pos: bool = True  # WavLM gate on the relative position bias
    finetuned_model: bool = False  # fine-tuned files carry a (unused here) class predictor
    predictor_class: int = 527
    # training-only fields, read and kept so the cfg round-trips; unused at inference
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.05
    dropout_input: float = 0.0
    layer_wise_gradient_decay_ratio: float = 0.6
    predictor_dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ValueError(f"encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                             f"encoder_attention_heads {self.encoder_attention_heads}")
        if self.input_patch_size <= 0 or NUM_MEL_BINS % self.input_patch_size:
            raise ValueError(f"input_patch_size {self.input_patch_size} must divide the {NUM_MEL_BINS} mel bins")
        if self.deep_norm and self.layer_norm_first:
            raise ValueError("deep_norm needs post-LN layers (layer_norm_first=False)")
        if self.activation_fn not in _ACTIVATIONS:
            raise ValueError(f"activation_fn {self.activation_fn!r} unsupported; one of {', '.join(_ACTIVATIONS)}")

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> BEATsConfig:
        """The config from a checkpoint's ``cfg`` dict; unknown keys are ignored, missing ones keep defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def head_dim(self) -> int:
        return self.encoder_embed_dim // self.encoder_attention_heads

    @property
    def mel_patches(self) -> int:
        """Tokens per time patch (8 for 16-wide patches over 128 mel bins)."""
        return NUM_MEL_BINS // self.input_patch_size

    @property
    def residual_scale(self) -> float:
        """DeepNorm's residual multiplier (1 without deep_norm)."""
        return (2.0 * self.encoder_layers) ** 0.25 if self.deep_norm else 1.0


def fbank_frames(n_samples: int) -> int:
    """Kaldi fbank frames of ``n_samples`` at 16 kHz (snip edges): ``1 + (n - 400) // 160``, 0 if shorter."""
    return 0 if n_samples < WINDOW_SAMPLES else 1 + (n_samples - WINDOW_SAMPLES) // HOP_SAMPLES


def token_count(n_samples: int, cfg: BEATsConfig | None = None) -> int:
    """Tokens ``P = floor(T_fbank / patch) * (128 / patch)`` BEATs emits for ``n_samples`` at 16 kHz."""
    cfg = cfg or BEATsConfig()
    return fbank_frames(n_samples) // cfg.input_patch_size * cfg.mel_patches


def samples_for_patches(n_patches: int, cfg: BEATsConfig | None = None) -> int:
    """Fewest samples giving ``n_patches`` time patches: ``400 + 160 * (patch * n_patches - 1)`` (2800 for 1)."""
    cfg = cfg or BEATsConfig()
    return WINDOW_SAMPLES + HOP_SAMPLES * (cfg.input_patch_size * n_patches - 1)


def relative_position_buckets(length: int, num_buckets: int, max_distance: int, device: torch.device) -> Tensor:
    """Bidirectional log-bucketed ``key - query`` offsets, ``(length, length)`` long in [0, num_buckets).

    Half the buckets hold positive offsets; in each half, offsets below a quarter of ``num_buckets`` get
    their own bucket and larger ones share log-spaced buckets up to ``max_distance``.
    """
    pos = torch.arange(length, device=device)
    rel = pos[None, :] - pos[:, None]
    half = num_buckets // 2
    exact = half // 2
    base = (rel > 0).long() * half
    dist = rel.abs()
    log_ratio = torch.log(dist.clamp(min=1).float() / exact) / math.log(max_distance / exact)
    large = (exact + (log_ratio * (half - exact)).long()).clamp(max=half - 1)
    return base + torch.where(dist < exact, dist, large)


class WeightNormConv1d(nn.Module):
    """Conv1d whose weight is ``weight_v * weight_g / ||weight_v||`` with the norm over all but the kernel axis
    (``torch.nn.utils.weight_norm(dim=2)``'s maths and ``bias``/``weight_g``/``weight_v`` tensor names).

    Input/output ``(B, C, L)``; "same" padding ``kernel // 2`` (one extra output step for even kernels).
    """

    def __init__(self, channels: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.padding, self.groups = kernel // 2, groups
        self.bias = nn.Parameter(torch.zeros(channels))
        v = torch.randn(channels, channels // groups, kernel) * math.sqrt(4.0 / (kernel * channels))
        self.weight_g = nn.Parameter(v.norm(dim=(0, 1), keepdim=True))
        self.weight_v = nn.Parameter(v)

    @property
    def weight(self) -> Tensor:
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight, self.bias, padding=self.padding, groups=self.groups)


class TrimEven(nn.Module):
    """Drop the last time step when the preceding "same" conv had an even kernel: ``(B, C, L+1) -> (B, C, L)``."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.remove = 1 if kernel % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        return x[..., : x.shape[-1] - self.remove]


class GatedRelPosAttention(nn.Module):
    """Multi-head self-attention with an optional (gated) relative position bias.

    ``shared_table``: the bucket table to reuse (layers 1.. share layer 0's, registered after the
    projections, which gives the released key order); ``None`` builds this layer's own table first.
    """

    def __init__(self, cfg: BEATsConfig, shared_table: nn.Embedding | None = None) -> None:
        super().__init__()
        dim, self.heads = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        self.num_buckets, self.max_distance = cfg.num_buckets, cfg.max_distance
        if cfg.relative_position_embedding and shared_table is None:
            self.relative_attention_bias = nn.Embedding(cfg.num_buckets, self.heads)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.gru_rel_pos = cfg.gru_rel_pos
        if cfg.gru_rel_pos:
            self.grep_linear = nn.Linear(cfg.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, self.heads, 1, 1))
        if cfg.relative_position_embedding and shared_table is not None:
            self.relative_attention_bias = shared_table

    def position_bias(self, length: int) -> Tensor:
        """Ungated bias ``(1, heads, length, length)`` from this layer's bucket table."""
        table = self.relative_attention_bias
        buckets = relative_position_buckets(length, self.num_buckets, self.max_distance, table.weight.device)
        return table(buckets).permute(2, 0, 1)[None]

    def forward(self, x: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``x (B, L, D)``, ``bias (1, heads, L, L)`` or None -> ``(B, L, D)`` and the ungated bias to pass on."""
        b, n, d = x.shape
        if bias is None and hasattr(self, "relative_attention_bias"):
            bias = self.position_bias(n).to(x.dtype)
        q, k, v = (p(x).view(b, n, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        mask = bias
        if bias is not None and self.gru_rel_pos:
            # gate per query from the unscaled query: two sigmoid gates, each a sum of 4 linear outputs
            gates = torch.sigmoid(self.grep_linear(q).view(b, self.heads, n, 2, 4).sum(-1))
            gate_a, gate_b = gates[..., :1], gates[..., 1:]
            mask = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * bias
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d)), bias


class EncoderLayer(nn.Module):
    """Transformer layer: attention + FFN, post-LN with DeepNorm scaling (or pre-LN); ``(B, L, D)`` -> same."""

    def __init__(self, cfg: BEATsConfig, shared_table: nn.Embedding | None = None) -> None:
        super().__init__()
        self.self_attn = GatedRelPosAttention(cfg, shared_table)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.encoder_embed_dim)
        self.fc1 = nn.Linear(cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, cfg.encoder_embed_dim)
        self.final_layer_norm = nn.LayerNorm(cfg.encoder_embed_dim)
        self.act = _ACTIVATIONS[cfg.activation_fn]
        self.pre_ln, self.alpha = cfg.layer_norm_first, cfg.residual_scale

    def forward(self, x: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if self.pre_ln:
            h, bias = self.self_attn(self.self_attn_layer_norm(x), bias)
            x = x + h
            return x + self.fc2(self.act(self.fc1(self.final_layer_norm(x)))), bias
        h, bias = self.self_attn(x, bias)
        x = self.self_attn_layer_norm(x * self.alpha + h)
        return self.final_layer_norm(x * self.alpha + self.fc2(self.act(self.fc1(x)))), bias


class TransformerEncoder(nn.Module):
    """Convolutional positional embedding + ``encoder_layers`` layers; ``(B, L, D)`` -> ``(B, L, D)``."""

    def __init__(self, cfg: BEATsConfig) -> None:
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.pos_conv = nn.Sequential(WeightNormConv1d(dim, cfg.conv_pos, cfg.conv_pos_groups),
                                      TrimEven(cfg.conv_pos), nn.GELU())
        first = EncoderLayer(cfg)
        table = getattr(first.self_attn, "relative_attention_bias", None)
        self.layers = nn.ModuleList([first] + [EncoderLayer(cfg, table) for _ in range(cfg.encoder_layers - 1)])
        self.layer_norm = nn.LayerNorm(dim)
        self.pre_ln = cfg.layer_norm_first

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.pre_ln:
            x = self.layer_norm(x)
        bias = None  # computed by the first layer, passed on ungated
        for layer in self.layers:
            x, bias = layer(x, bias)
        return self.layer_norm(x) if self.pre_ln else x


class BEATs(nn.Module):
    """BEATs: 16 kHz waveforms -> ``(N, P, encoder_embed_dim)`` last-layer features (no pooling)."""

    def __init__(self, cfg: BEATsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.post_extract_proj = (nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim)
                                  if cfg.embed_dim != cfg.encoder_embed_dim else None)
        p = cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(1, cfg.embed_dim, kernel_size=p, stride=p, bias=cfg.conv_bias)
        self.encoder = TransformerEncoder(cfg)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.predictor = nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class) if cfg.finetuned_model else None

    @staticmethod
    def fbank(wave: Tensor) -> Tensor:
        """``(N, S)`` waveforms in [-1, 1] at 16 kHz -> normalised log-mel ``(N, T, 128)``, T = 1 + (S-400)//160.

        Kaldi fbank of each waveform times 2^15 (the int16 range), then ``(x - 15.41663) / (2 * 6.55582)``.
        """
        if wave.dim() != 2 or wave.shape[1] < WINDOW_SAMPLES:
            raise ValueError(f"BEATs needs (N, S) waveforms with S >= {WINDOW_SAMPLES}, got {tuple(wave.shape)}")
        banks = [kaldi.fbank(w[None] * 2**15, num_mel_bins=NUM_MEL_BINS, sample_frequency=SAMPLE_RATE,
                             frame_length=25, frame_shift=10) for w in wave.float()]
        return (torch.stack(banks) - FBANK_MEAN) / (2 * FBANK_STD)

    def patch_tokens(self, fbank: Tensor) -> Tensor:
        """``(N, T, 128)`` fbank -> ``(N, floor(T/16) * 8, encoder_embed_dim)`` tokens, time-major."""
        x = self.patch_embedding(fbank[:, None])  # (N, E, T // 16, 8)
        x = self.layer_norm(x.flatten(2).transpose(1, 2))
        return self.post_extract_proj(x) if self.post_extract_proj is not None else x

    def extract_features(self, wave: Tensor) -> Tensor:
        """``(N, S)`` float waveforms at 16 kHz in [-1, 1] -> ``(N, P, D)``, ``P = floor(T/16) * 8``.

        All N waveforms must share S; the encoder runs once over the batch. Needs S >= 2800 (one patch).
        """
        fbank = self.fbank(wave.to(self.patch_embedding.weight.device))
        if fbank.shape[1] < self.cfg.input_patch_size:
            raise ValueError(f"BEATs: {wave.shape[1]} samples give {fbank.shape[1]} fbank frames, fewer than one "
                             f"{self.cfg.input_patch_size}-frame patch (needs >= {samples_for_patches(1, self.cfg)})")
        x = self.patch_tokens(fbank.to(self.patch_embedding.weight.dtype))
        return self.encoder(x)

    def forward(self, wave: Tensor) -> Tensor:
        return self.extract_features(wave)
