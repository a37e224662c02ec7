"""The text -> video-token GPT (minGPT layout), with a preallocated KV cache.

Pre-LN causal transformer: token embedding + learned absolute position embedding (zeros at init; ``pos_emb:
axial`` adds learned time, row and column vectors of the code grid at the video positions),
``n_layer`` blocks ``x + Attn(LN(x)); x + MLP(LN(x))``, final LayerNorm, bias-free head. Attention goes
through ``tav.utils.attention.attention`` (``auto``: PyTorch's SDPA, causal via ``is_causal``, except where the
written-out form is faster, as when training in bf16 on a CPU); no mask buffer is kept.

Parameter names follow upstream's ``transformer_text.*`` keys (``tok_emb``, ``pos_emb``,
``blocks.N.{ln1,ln2,attn.{key,query,value,proj},mlp.{0,2}}``, ``ln_f``, ``head``), so released weights load
strictly once the prefix is removed. Upstream also stores a lower-triangular ``blocks.N.attn.mask``
buffer; ``tav.gpt.load`` checks it is causal and drops it.

Sequence (bert mode): ``[text ids (L_text) | video codes + video_offset (t*h*w, raster t, h, w)]``; the
model sees all but the last token and the loss is cross-entropy at the video positions (``token_loss``),
with the softmax over the video codes alone (``video_only=True``, the training default) or over the full
vocabulary (upstream; ``softmax: full`` in the training config). In clip mode the prefix is
``Linear(clip_dim, n_embd)`` of CLIP text features instead of embedded ids, and the vocabulary is the
video codes only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tav.errors import InputError
from tav.gpt.config import GPTConfig
from tav.utils.attention import attention


@dataclass
class KVCache:
    """Preallocated keys and values of every layer, filled in place by ``GPT.features(cache=...)``.

    ``k``, ``v``: ``(n_layer, B, n_head, capacity, head_dim)``. Position ``p`` of the sequence lives at
    index ``p``; a call with ``start=s`` on ``L`` new tokens writes ``[s, s + L)`` and attends to
    ``[0, s + L)``.
    """

    k: Tensor
    v: Tensor

    @property
    def capacity(self) -> int:
        """Number of positions the cache can hold."""
        return self.k.shape[3]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate ``key``/``query``/``value`` projections."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        d = cfg.n_embd
        self.n_head = cfg.n_head
        self.key = nn.Linear(d, d)
        self.query = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.proj = nn.Linear(d, d)
        self.attn_pdrop = cfg.attn_pdrop
        self.resid_drop = nn.Dropout(cfg.resid_pdrop)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None) -> Tensor:
        """Attention core: ``q (B, h, T, d)``, ``k, v (B, h, S, d)`` -> ``(B, h, T, d)``.

        ``causal`` aligns query i with key i (S == T); ``mask`` is a boolean ``(T, S)`` keep-mask.
        """
        p = self.attn_pdrop if self.training else 0.0
        return attention(q, k, v, "auto", mask, causal, p)

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor] | None = None, start: int = 0) -> Tensor:
        """``x (B, T, C)`` -> ``(B, T, C)``. With ``kv`` (this layer's cache), keys/values are written at
        ``[start, start + T)`` and the queries attend to every cached position before theirs."""
        b, t, c = x.shape
        q, k, v = (lin(x).view(b, t, self.n_head, -1).transpose(1, 2) for lin in (self.query, self.key, self.value))
        if kv is None:
            y = self.attend(q, k, v, causal=True, mask=None)
        else:
            k_cache, v_cache = kv
            end = start + t
            k_cache[:, :, start:end] = k
            v_cache[:, :, start:end] = v
            k, v = k_cache[:, :, :end], v_cache[:, :, :end]
            mask = None
            if t > 1 and start > 0:  # a chunk after cached positions: query i sees keys <= start + i
                mask = torch.ones(t, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = self.attend(q, k, v, causal=t > 1 and start == 0, mask=mask)
        y = y.transpose(1, 2).reshape(b, t, c)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))`` with an exact-erf GELU."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        d = cfg.n_embd
        self.ln1 = nn.LayerNorm(d)
        self.ln2 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(cfg.resid_pdrop))

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor] | None = None, start: int = 0) -> Tensor:
        x = x + self.attn(self.ln1(x), kv, start)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Text-prefixed autoregressive model over VQGAN video codes.

    ``logits(tokens)`` / ``forward(tokens)``: ``(B, L)`` ids of the combined vocabulary
    ``[text ids | video codes + video_offset]`` -> ``(B, L, vocab_size)`` next-token logits.
    ``training_logits(prefix, codes, video_only)`` + ``token_loss`` is the training objective (``loss`` composes
    the two); ``tav.gpt.sample_codes`` draws codes.
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.n_embd
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.block_size, d))
        if cfg.pos_emb == "axial":  # one learned vector per code-grid time, row and column (ours; N(0, 0.02))
            self.pos_t, self.pos_h, self.pos_w = (nn.Parameter(0.02 * torch.randn(n, d)) for n in cfg.latent_shape)
        self.text_proj = nn.Linear(cfg.clip_dim, d) if cfg.text_mode == "clip" else None
        self.drop = nn.Dropout(cfg.embd_pdrop)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.apply(_init_weights)

    # ------------------------------------------------------------------------------------- core
    def embed(self, tokens: Tensor | None, prefix_emb: Tensor | None = None, start: int = 0) -> Tensor:
        """Input embeddings ``(B, L, n_embd)`` at positions ``[start, start + L)``.

        ``prefix_emb (B, L_p, clip_dim)`` (clip mode) is projected and placed before ``tokens (B, L_t)``.
        """
        parts = []
        if prefix_emb is not None:
            if self.text_proj is None:
                raise InputError("GPT: prefix features are for text_mode 'clip'; this model takes BERT ids")
            parts.append(self.text_proj(prefix_emb.to(self.text_proj.weight.dtype)))
        if tokens is not None:
            parts.append(self.tok_emb(tokens))
        if not parts:
            raise InputError("GPT: nothing to embed (give tokens and/or prefix features)")
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        end = start + x.shape[1]
        if end > self.cfg.block_size:
            raise InputError(f"GPT: positions up to {end} exceed block_size {self.cfg.block_size}")
        return self.drop(x + self.positions(start, end))

    def positions(self, start: int, end: int) -> Tensor:
        """Position embeddings ``(1, end - start, n_embd)`` of positions ``[start, end)``.

        ``absolute``: the rows of ``pos_emb``. ``axial`` adds, at the video positions (from ``text_seq_len`` on,
        raster order t, h, w), the learned vectors of the position's time, row and column in the code grid.
        """
        pos = self.pos_emb[:, start:end]
        if self.cfg.pos_emb == "absolute":
            return pos
        t, h, w = self.cfg.latent_shape
        grid = self.pos_t[:, None, None] + self.pos_h[None, :, None] + self.pos_w[None, None, :]  # (t, h, w, d)
        grid = grid.reshape(t * h * w, -1)
        n_text = self.cfg.text_seq_len
        tail = max(0, end - n_text - grid.shape[0])
        table = torch.cat([grid.new_zeros(n_text, grid.shape[1]), grid, grid.new_zeros(tail, grid.shape[1])])
        return pos + table[start:end].unsqueeze(0)

    def features(self, tokens: Tensor | None, prefix_emb: Tensor | None = None, cache: KVCache | None = None,
                 start: int = 0) -> Tensor:
        """Final-LayerNorm hidden states ``(B, L, n_embd)`` (the head's input).

        With ``cache``, the new positions ``[start, start + L)`` are appended to it in place and attend
        to all cached positions; ``start`` must equal the number already filled.
        """
        x = self.embed(tokens, prefix_emb, start)
        if cache is not None and start + x.shape[1] > cache.capacity:
            raise InputError(f"KV cache holds {cache.capacity} positions; {start + x.shape[1]} needed")
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else (cache.k[i], cache.v[i]), start)
        return self.ln_f(x)

    def forward(self, tokens: Tensor | None, prefix_emb: Tensor | None = None, cache: KVCache | None = None,
                start: int = 0) -> Tensor:
        """Next-token logits ``(B, L, vocab_size)``; arguments as in ``features``."""
        return self.head(self.features(tokens, prefix_emb, cache, start))

    def logits(self, tokens: Tensor) -> Tensor:
        """``tokens (B, L)`` long in ``[0, vocab_size)`` -> logits ``(B, L, vocab_size)`` (no cache)."""
        return self(tokens)

    def new_cache(self, batch: int, capacity: int | None = None, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        """An empty ``KVCache`` for ``batch`` sequences of up to ``capacity`` (default block_size) positions."""
        cfg = self.cfg
        capacity = cfg.block_size if capacity is None else capacity
        if not 1 <= capacity <= cfg.block_size:
            raise InputError(f"KV cache capacity {capacity} must be in [1, block_size={cfg.block_size}]")
        ref = self.head.weight
        shape = (cfg.n_layer, batch, cfg.n_head, capacity, cfg.head_dim)
        kw = dict(device=device or ref.device, dtype=dtype or ref.dtype)
        return KVCache(torch.empty(shape, **kw), torch.empty(shape, **kw))

    # ------------------------------------------------------------------------------------- training
    def video_tokens(self, codes: Tensor) -> Tensor:
        """Codes ``(B, t, h, w)`` or ``(B, N)`` in ``[0, n_codes)`` -> ids ``(B, N)`` of the combined vocabulary."""
        return codes.reshape(codes.shape[0], -1) + self.cfg.video_offset

    def training_logits(self, prefix: Tensor, codes: Tensor, video_only: bool = False) -> tuple[Tensor, Tensor]:
        """Teacher-forced logits at the video positions and their targets.

        ``prefix``: ``(B, L_text)`` BERT ids (bert) or ``(B, L_text, clip_dim)`` features (clip);
        ``codes``: ``(B, t, h, w)`` or ``(B, N)``. Returns ``logits (B, N, V)`` and ``targets (B, N)``.
        ``video_only=False``: V = vocab_size, targets are video ids (codes + video_offset), as upstream.
        ``video_only=True``: the softmax runs over the video codes alone (V = n_codes, targets = codes),
        matching sampling with text logits masked and skipping the text rows of the head.
        The head runs on the video positions only.
        """
        targets = self.video_tokens(codes)
        n_text = prefix.shape[1]
        if self.cfg.text_mode == "clip":
            h = self.features(targets[:, :-1], prefix_emb=prefix)
        else:
            h = self.features(torch.cat([prefix.long(), targets[:, :-1]], dim=1))
        h = h[:, n_text - 1:]  # (B, N, d): the positions that predict video tokens
        if video_only:
            off = self.cfg.video_offset
            return F.linear(h, self.head.weight[off: off + self.cfg.n_codes]), targets - off
        return self.head(h), targets

    def loss(self, prefix: Tensor, codes: Tensor, video_only: bool = False) -> Tensor:
        """Scalar training loss: ``token_loss`` of ``training_logits(prefix, codes, video_only)`` (softmax over
        the full vocabulary unless ``video_only``). Shapes as in ``training_logits``."""
        return token_loss(*self.training_logits(prefix, codes, video_only))


def token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of ``logits (B, N, V)`` against ``targets (B, N)`` in ``[0, V)``: a scalar."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def token_accuracy(logits: Tensor, targets: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """Top-k accuracies (fractions in [0, 1]) of ``logits (..., V)`` against ``targets (...)``."""
    top = logits.topk(max(ks), dim=-1).indices
    hits = top == targets.unsqueeze(-1)
    return [hits[..., :k].any(-1).float().mean() for k in ks]


def _init_weights(module: nn.Module) -> None:
    """minGPT init: N(0, 0.02) Linear and Embedding weights, zero biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
