"""Typed configuration of the text -> video-token GPT (minGPT).

Defaults are the README recipe (12 layers, 8 heads, 512 wide, context 1024, dropouts 0.2) with the
**fixed** text-vocabulary offset: video code ``c`` has id ``c + video_offset`` and ``video_offset``
defaults to the tokenizer's vocabulary size (30522 for bert-base-uncased), so word-piece ids and video
ids never collide. ``text_vocab_offset=21128`` is the compatibility value of the released weights
(``docs/upstream.md``). Presets live in ``configs/gpt/``; derived sizes are properties here and nowhere else.

The combined vocabulary (``bert`` mode) is ``[0, video_offset)`` text ids, then ``n_codes`` video ids:
``vocab_size = video_offset + n_codes`` rows in the token embedding and the output head.

``clip`` mode (a ``tav`` design, not upstream's): the prefix is ``text_seq_len`` continuous CLIP text
features of width ``clip_dim`` (e.g. ``encode_text`` output, or per-token CLIP features), mapped to the
model width by a learned ``Linear(clip_dim, n_embd)``. The vocabulary then holds the video codes only
(``video_offset = 0``). Upstream instead quantised CLIP features into pseudo token ids
(``long(1000 f - min(1000 f))``, declared vocabulary 6244 that the values can exceed), which is
ill-defined and is not reproduced.

The VQGAN dependency is part of the config: ``n_codes`` and ``latent_shape`` are the codebook size and
code grid of the VQGAN the GPT was trained on, and ``vqgan_hash`` (optional) the sha256 of that VQGAN's
checkpoint file; ``tav.gpt.check_vqgan_compat`` compares them with a VQGAN before sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from tav.config import from_dict, load_yaml, preset_path
from tav.errors import InputError

BERT_VOCAB_SIZE = 30522  # bert-base-uncased word pieces
UPSTREAM_TEXT_OFFSET = 21128  # upstream's hard-coded "bert" vocabulary size (bert-base-chinese's)


@dataclass
class GPTConfig:
    """Architecture, sequence layout and sampling defaults of one text-conditioned video GPT."""

    text_mode: Literal["bert", "clip"] = "bert"  # prefix: BERT word-piece ids, or CLIP text features
    text_vocab_size: int = BERT_VOCAB_SIZE  # bert: word-piece ids are in [0, text_vocab_size)
    text_vocab_offset: int | None = None  # bert: id of video code 0; None = text_vocab_size; 21128 = compat
    text_seq_len: int = 12  # prefix length (word pieces, or CLIP feature vectors)
    clip_dim: int = 512  # clip: width of each prefix feature vector
    n_codes: int = 16384  # VQGAN codebook size: video codes are in [0, n_codes)
    latent_shape: tuple[int, int, int] = (4, 12, 12)  # VQGAN code grid (t, h, w) of one clip, raster order
    block_size: int = 1024  # context length (positions of the learned position embedding)
    n_layer: int = 12  # transformer blocks
    n_head: int = 8  # attention heads
    n_embd: int = 512  # model width
    embd_pdrop: float = 0.2  # dropout on token + position embeddings
    resid_pdrop: float = 0.2  # dropout on each residual branch
    attn_pdrop: float = 0.2  # dropout on attention weights
    pos_emb: Literal["absolute", "axial"] = "absolute"  # absolute: one learned vector per position (upstream);
    # axial: also learned time, row and column vectors added at each video position (shared across the grid)
    mask_text_logits_at_sampling: bool = True  # sample video ids only; False = upstream (full vocabulary)
    text_dropout: float = 0.0  # training: share of clips whose prefix is the null prefix (all [PAD] ids, or zero CLIP
    # features), which teaches the unconditional model that classifier-free guidance (sample_codes' cfg_scale) needs
    vqgan_hash: str | None = None  # sha256 of the VQGAN checkpoint file trained on (None = unknown)

    def __post_init__(self) -> None:
        self.latent_shape = tuple(int(s) for s in self.latent_shape)
        _validate(self)

    @property
    def video_offset(self) -> int:
        """Id of video code 0 in the combined vocabulary (0 in clip mode: no text ids there)."""
        if self.text_mode == "clip":
            return 0
        return self.text_vocab_size if self.text_vocab_offset is None else self.text_vocab_offset

    @property
    def vocab_size(self) -> int:
        """Rows of the token embedding and of the output head: ``video_offset + n_codes``."""
        return self.video_offset + self.n_codes

    @property
    def video_seq_len(self) -> int:
        """Video tokens per clip: ``t * h * w`` (576 for URMP, 256 for Landscape)."""
        return math.prod(self.latent_shape)

    @property
    def seq_len(self) -> int:
        """Full training sequence ``text_seq_len + video_seq_len``; the model sees ``seq_len - 1``."""
        return self.text_seq_len + self.video_seq_len

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head


def _validate(cfg: GPTConfig) -> None:
    """Reject configs that cannot be built or cannot hold one clip."""
    for name in ("text_vocab_size", "text_seq_len", "clip_dim", "n_codes", "block_size", "n_layer", "n_head",
                 "n_embd"):
        if getattr(cfg, name) < 1:
            raise InputError(f"gpt.{name}={getattr(cfg, name)}: must be >= 1")
    if len(cfg.latent_shape) != 3 or min(cfg.latent_shape) < 1:
        raise InputError(f"gpt.latent_shape={cfg.latent_shape}: need three positive sizes (t, h, w)")
    if cfg.n_embd % cfg.n_head:
        raise InputError(f"gpt.n_embd={cfg.n_embd} is not divisible by gpt.n_head={cfg.n_head}")
    if cfg.text_vocab_offset is not None:
        if cfg.text_mode == "clip":
            raise InputError("gpt.text_vocab_offset: only for text_mode bert (clip mode has no text ids)")
        if cfg.text_vocab_offset < 0:
            raise InputError(f"gpt.text_vocab_offset={cfg.text_vocab_offset}: must be >= 0")
    if cfg.text_mode == "bert" and cfg.vocab_size < cfg.text_vocab_size:
        raise InputError(f"gpt.text_vocab_offset={cfg.text_vocab_offset}: the vocabulary ({cfg.vocab_size} ids) does "
                         f"not cover the {cfg.text_vocab_size} text ids")
    if cfg.seq_len - 1 > cfg.block_size:
        raise InputError(f"gpt.block_size={cfg.block_size} is too small for {cfg.text_seq_len} text + "
                         f"{cfg.video_seq_len} video tokens (needs >= {cfg.seq_len - 1})")
    if cfg.pos_emb not in ("absolute", "axial"):
        raise InputError(f"gpt.pos_emb={cfg.pos_emb!r}: must be 'absolute' or 'axial'")
    for name in ("embd_pdrop", "resid_pdrop", "attn_pdrop", "text_dropout"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise InputError(f"gpt.{name}={getattr(cfg, name)}: must be in [0, 1)")


def gpt_config_from_dict(data: dict[str, Any], where: str = "gpt") -> GPTConfig:
    """``GPTConfig`` from a plain dict (YAML ``model:`` section or a checkpoint's ``config``)."""
    return from_dict(GPTConfig, data, where)


def gpt_preset(name: str) -> GPTConfig:
    """Preset ``configs/gpt/<name>.yaml`` (``tiny``, ``urmp``, ``landscape``, ``urmp_upstream``) or a path.

    The file holds the config fields under ``model:``; other keys (``train:``) are ignored here.
    """
    path = preset_path("gpt", name)
    data = load_yaml(path)
    if not isinstance(data.get("model"), dict):
        raise InputError(f"{path}: expected a 'model:' mapping of GPTConfig fields")
    return gpt_config_from_dict(data["model"], where=f"{path}:model")
