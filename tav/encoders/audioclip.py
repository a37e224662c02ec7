"""AudioCLIP: CLIP RN50 image + text towers and an ESResNeXt-fbsp audio tower in one
1024-d space, loaded strictly from the released ``AudioCLIP-Full-Training.pt`` (a bare state dict).

The module tree reproduces the released keys and their order (``tests/data/state_dicts/audioclip.tsv``):
``positional_embedding``, ``text_projection``, ``logit_scale``, ``logit_scale_ai``, ``logit_scale_at``,
``visual.*`` (open_clip's ``ModifiedResNet``, the same layout and maths as OpenAI's), ``transformer.*``,
``token_embedding``, ``ln_final``, ``audio.*`` (``tav.encoders.esresnext``).

Source: Guzhov et al., AudioCLIP (arXiv:2106.13043), https://github.com/AndreyGuzhov/AudioCLIP
(``model/audioclip.py``); CLIP text tower: https://github.com/openai/CLIP/blob/main/clip/model.py
(written fresh).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch
from open_clip.modified_resnet import ModifiedResNet
from torch import Tensor, nn

from tav.checkpoint import check_finite, read_checkpoint
from tav.encoders.base import Encoder
from tav.encoders.esresnext import ESResNeXtConfig, ESResNeXtFBSP
from tav.errors import InputError
from tav.utils.fileio import save_torch_atomic
from tav.utils.paths import ckpt_dir

AUDIOCLIP_FILE = "AudioCLIP-Full-Training.pt"
_MISSING = ("{path}: AudioCLIP weights not found; download AudioCLIP-Full-Training.pt from the AudioCLIP v0.1 "
            "release (https://github.com/AndreyGuzhov/AudioCLIP/releases) into saved_ckpts/ (or $TAV_CKPT_DIR), "
            "or pass --audioclip_ckpt PATH")


@dataclass
class AudioCLIPConfig:
    """Architecture of AudioCLIP. Defaults = the released ``AudioCLIP-Full-Training.pt``."""

    embed_dim: int = 1024  # joint embedding width (all three towers)
    image_resolution: int = 224  # square input of the image tower; a multiple of 32
    vision_layers: tuple[int, int, int, int] = (3, 4, 6, 3)  # ModifiedResNet-50 blocks per stage
    vision_width: int = 64  # stem width of the image ResNet; features are vision_width * 32 wide
    context_length: int = 77  # text tokens (BPE, with start/end tokens)
    vocab_size: int = 49408  # CLIP BPE vocabulary
    transformer_width: int = 512  # text transformer width
    transformer_heads: int = 8  # text attention heads (CLIP: width // 64)
    transformer_layers: int = 12  # text transformer blocks
    audio: ESResNeXtConfig = field(default_factory=ESResNeXtConfig)  # audio tower (STFT + ResNeXt-50 32x4d)

    def __post_init__(self) -> None:
        self.vision_layers = tuple(int(n) for n in self.vision_layers)
        if isinstance(self.audio, Mapping):
            self.audio = ESResNeXtConfig(**self.audio)
        if self.image_resolution % 32:
            raise ValueError(f"image_resolution must be a multiple of 32, got {self.image_resolution}")

    @property
    def vision_heads(self) -> int:
        """Heads of the image tower's attention pool (CLIP: 64-wide heads over vision_width * 32)."""
        return self.vision_width * 32 // 64


def tiny_audioclip_config() -> AudioCLIPConfig:
    """A ~2 M-parameter AudioCLIP for CPU tests and ``make demo``; the real BPE tokenizer still works."""
    return AudioCLIPConfig(
        embed_dim=64, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=8,
        transformer_width=32, transformer_heads=1, transformer_layers=2,
        audio=ESResNeXtConfig(layers=(1, 1, 1, 1), width=8, groups=2, width_per_group=32),
    )


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, the GELU approximation CLIP was trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class TextBlock(nn.Module):
    """Pre-LN transformer block of CLIP's text tower, sequence-first ``(L, N, D)``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, width * 4), gelu=QuickGELU(), c_proj=nn.Linear(width * 4, width)))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    """A stack of ``TextBlock``s under ``resblocks`` (the released key prefix)."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.Sequential(*[TextBlock(width, heads) for _ in range(layers)])

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class AudioCLIP(Encoder):
    """Images, captions and 44.1 kHz audio -> unnormalised ``(N, embed_dim)`` features in one space.

    Built in eval mode; ``load_audioclip`` returns it frozen. Parameters and children are declared in
    the order of the released state dict.
    """

    name = "audioclip"
    audio_rate = 44100
    audio_scale = 32767.0  # int16 range; the audio tower maps [-32768, 32767] back to [-1, 1]

    def __init__(self, cfg: AudioCLIPConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or AudioCLIPConfig()
        self.cfg = cfg
        self.dim = cfg.embed_dim
        self.image_size = cfg.image_resolution
        width = cfg.transformer_width
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, width))
        self.text_projection = nn.Parameter(torch.empty(width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]))  # image-text (log scale; upstream's init)
        self.logit_scale_ai = nn.Parameter(torch.full([], 100.0).log())  # audio-image
        self.logit_scale_at = nn.Parameter(torch.full([], 100.0).log())  # audio-text
        self.visual = ModifiedResNet(list(cfg.vision_layers), cfg.embed_dim, heads=cfg.vision_heads,
                                     image_size=cfg.image_resolution, width=cfg.vision_width)
        self.transformer = TextTransformer(width, cfg.transformer_layers, cfg.transformer_heads)
        self.token_embedding = nn.Embedding(cfg.vocab_size, width)
        self.ln_final = nn.LayerNorm(width)
        self.audio = ESResNeXtFBSP(cfg.audio, out_dim=cfg.embed_dim)
        self._init_text_tower()
        self.eval()

    def _init_text_tower(self) -> None:
        # CLIP's initialize_parameters for the text side (the image tower initialises itself).
        width, layers = self.cfg.transformer_width, self.cfg.transformer_layers
        proj_std, attn_std, fc_std = width**-0.5 * (2 * layers) ** -0.5, width**-0.5, (2 * width) ** -0.5
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_images(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` RGB in [0, 1], any H, W -> ``(N, embed_dim)``; differentiable w.r.t. ``images``."""
        return self.visual(self.preprocess_images(images).to(self.dtype))

    def encode_tokens(self, tokens: Tensor) -> Tensor:
        """CLIP BPE ids ``(N, context_length)`` long -> ``(N, embed_dim)``, pooled at the end-of-text token
        (the largest id in each row)."""
        n_ctx = tokens.shape[1]
        x = self.token_embedding(tokens).to(self.dtype) + self.positional_embedding.to(self.dtype)  # (N, L, D)
        mask = torch.full((n_ctx, n_ctx), float("-inf"), device=x.device, dtype=x.dtype).triu_(1)  # causal
        x = self.transformer(x.permute(1, 0, 2), mask).permute(1, 0, 2)  # (L, N, D) inside
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)] @ self.text_projection

    def encode_texts(self, captions: Sequence[str]) -> Tensor:
        """``N`` captions -> ``(N, embed_dim)``; tokenised with open_clip's CLIP BPE (truncated to context)."""
        tokens = open_clip.tokenize(list(captions), context_length=self.cfg.context_length)
        return self.encode_tokens(tokens.to(self.device))

    def encode_audio(self, audio: Tensor) -> Tensor:
        """``(N, S)`` mono at 44.1 kHz in the int16 range [-32768, 32767] -> ``(N, embed_dim)``."""
        return self.audio(audio.to(self.device))

    @property
    def audio_image_scale(self) -> Tensor:
        """``exp(logit_scale_ai)`` clamped to [1, 100], as upstream's forward uses it (scalar tensor)."""
        return self.logit_scale_ai.exp().clamp(1.0, 100.0)

    @property
    def audio_text_scale(self) -> Tensor:
        """``exp(logit_scale_at)`` clamped to [1, 100] (scalar tensor)."""
        return self.logit_scale_at.exp().clamp(1.0, 100.0)

    @property
    def image_text_scale(self) -> Tensor:
        """``exp(logit_scale)`` clamped to [1, 100] (scalar tensor)."""
        return self.logit_scale.exp().clamp(1.0, 100.0)


def _shape(sd: Mapping[str, Tensor], key: str, where: str) -> tuple[int, ...]:
    if key not in sd:
        raise InputError(f"{where}: missing {key!r}, needed to infer the AudioCLIP architecture")
    return tuple(sd[key].shape)


def _n_blocks(sd: Mapping[str, Tensor], prefix: str) -> int:
    """Distinct block indices directly under ``prefix`` (e.g. ``"visual.layer1."``)."""
    return len({k[len(prefix):].split(".", 1)[0] for k in sd if k.startswith(prefix)})


def _audio_config_from_state_dict(sd: Mapping[str, Tensor], where: str) -> ESResNeXtConfig:
    # hop_length, window name and normalisation leave no trace in the shapes: defaults are kept.
    width, bands = _shape(sd, "audio.conv1.weight", where)[:2]
    bottleneck = _shape(sd, "audio.layer1.0.conv1.weight", where)[0]
    groups = bottleneck // _shape(sd, "audio.layer1.0.conv2.weight", where)[1]
    n_bins = _shape(sd, "audio.fbsp.m", where)[0]
    return ESResNeXtConfig(
        n_fft=2 * (n_bins - 1), win_length=_shape(sd, "audio.window", where)[0],
        apply_attention="audio.att1.conv_depth.weight" in sd,
        layers=tuple(_n_blocks(sd, f"audio.layer{i}.") for i in range(1, 5)),
        width=width, groups=groups, width_per_group=(bottleneck // groups) * 64 // width, bands=bands)


def audioclip_config_from_state_dict(sd: Mapping[str, Tensor], where: str = "state dict") -> AudioCLIPConfig:
    """The ``AudioCLIPConfig`` that the tensor shapes of ``sd`` imply (works on meta tensors).

    Text heads follow CLIP's ``width // 64`` (at least 1). Audio ``hop_length``, ``window`` and
    ``normalized`` are not recorded by shapes and keep their defaults. A key needed for the inference
    that is missing raises a one-line ``InputError`` naming it.
    """
    pool_tokens = _shape(sd, "visual.attnpool.positional_embedding", where)[0]
    grid = round((pool_tokens - 1) ** 0.5)
    width = _shape(sd, "ln_final.weight", where)[0]
    try:
        return AudioCLIPConfig(
            embed_dim=_shape(sd, "text_projection", where)[1],
            image_resolution=grid * 32,
            vision_layers=tuple(_n_blocks(sd, f"visual.layer{i}.") for i in range(1, 5)),
            vision_width=_shape(sd, "visual.layer1.0.conv1.weight", where)[0],
            context_length=_shape(sd, "positional_embedding", where)[0],
            vocab_size=_shape(sd, "token_embedding.weight", where)[0],
            transformer_width=width, transformer_heads=max(1, width // 64),
            transformer_layers=_n_blocks(sd, "transformer.resblocks."),
            audio=_audio_config_from_state_dict(sd, where))
    except ValueError as err:
        raise InputError(f"{where}: not an AudioCLIP state dict: {err}") from None


def _check_keys(expected: Mapping[str, Tensor], sd: Mapping[str, Tensor], where: str) -> None:
    """One-line ``InputError`` for missing, unexpected or mis-shaped tensors."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or wrong):
        return
    parts = [f"{len(missing)} missing" + (f" (first {missing[0]!r})" if missing else ""),
             f"{len(unexpected)} unexpected" + (f" (first {unexpected[0]!r})" if unexpected else ""),
             f"{len(wrong)} mis-shaped" + (f" (first {wrong[0]!r}: {tuple(sd[wrong[0]].shape)} in the file, "
                                           f"{tuple(expected[wrong[0]].shape)} expected)" if wrong else "")]
    raise InputError(f"{where}: state dict does not match AudioCLIP: {', '.join(parts)}")


def load_audioclip(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> AudioCLIP:
    """Frozen ``AudioCLIP`` on ``device`` from a bare state dict (or one under ``state_dict``/``model``).

    ``path`` defaults to ``ckpt_dir() / "AudioCLIP-Full-Training.pt"``. The architecture is inferred from
    the shapes; loading is strict. A missing file, or missing/unexpected/mis-shaped keys, raise a one-line
    ``InputError`` naming the file.
    """
    path = Path(path) if path is not None else ckpt_dir() / AUDIOCLIP_FILE
    if not path.is_file():
        raise InputError(_MISSING.format(path=path))
    sd = read_checkpoint(path, expect="audioclip").state_dict
    cfg = audioclip_config_from_state_dict(sd, where=str(path))
    with torch.device("meta"):  # no random init of 134 M parameters that are overwritten anyway
        model = AudioCLIP(cfg)
    _check_keys(model.state_dict(), sd, str(path))
    check_finite(sd, str(path))
    model.load_state_dict(sd, strict=True, assign=True)
    return model.to(device).freeze()


def _randomise_norms(model: nn.Module) -> None:
    # Fresh BatchNorms are identities (and CLIP zero-inits bn3), which would hide loading mistakes.
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            nn.init.normal_(mod.weight, 1.0, 0.1)
            nn.init.normal_(mod.bias, 0.0, 0.1)
            mod.running_mean.normal_(0.0, 0.1)
            mod.running_var.uniform_(0.5, 1.5)


def save_tiny_audioclip(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write the bare state dict of ``AudioCLIP(tiny_audioclip_config())`` with seeded random weights
    (like the released file) atomically to ``path``; the global RNG is left untouched. Returns ``path``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AudioCLIP(tiny_audioclip_config())
        with torch.no_grad():
            _randomise_norms(model)
    path = Path(path)
    save_torch_atomic(model.state_dict(), path)
    return path
