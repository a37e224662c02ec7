"""Autoregressive sampling of video codes from a ``GPT``.

One prefix pass fills a preallocated ``KVCache`` (causal attention over the prompt), then each step feeds
one token and attends to the filled part of the cache; a whole batch of prompts runs at once.

Per step: logits / temperature -> (optionally) video ids only -> top-k -> top-p -> draw. Filters:
- top-k keeps every logit >= the k-th largest (ties kept);
- top-p is then applied to the softmax of the top-k-filtered logits: in descending order, keep the tokens up
  to and including the first at which the cumulative probability exceeds p (at least one is kept);
- removed logits become -inf. Unlike upstream, top-p also applies without top-k.

Restricting to video ids (default: ``cfg.mask_text_logits_at_sampling``) computes the head for the
``n_codes`` video rows only, which is the same distribution as masking the text logits to -inf. Without it
(upstream behaviour) a sampled text id is fed back as is and becomes code ``clamp(id - offset, 0, n_codes-1)``.

Randomness: sample ``i`` draws its Gumbel noise from its own ``torch.Generator`` (``seeds[i]`` or
``generators[i]``), so it does not depend on the other prompts in the batch or on the batch size (up to
floating-point differences in the batched matmuls, which change a draw only in near-ties).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm import tqdm

from tav.errors import InputError
from tav.gpt.config import GPTConfig
from tav.gpt.model import GPT
from tav.utils.runtime import held_weights
from tav.utils.seeding import sample_generators


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Top-k then nucleus (top-p) filtering of ``logits (..., V)``; removed entries become -inf.

    ``top_k=None`` or ``>= V`` and ``top_p=None`` or ``>= 1`` disable the respective filter.
    """
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k={top_k}: must be >= 1 (or None)")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p={top_p}: must be in (0, 1] (or None)")
    use_k = top_k is not None and top_k < logits.shape[-1]
    use_p = top_p is not None and top_p < 1.0
    if not (use_k or use_p):
        return logits
    if use_k:  # fast path: only the k largest need sorting, unless ties at the k-th value extend the set
        vals, order = logits.topk(top_k, dim=-1)
        if bool((logits >= vals[..., -1:]).sum(-1).eq(top_k).all()):
            vals = _top_p_sorted(vals, top_p) if use_p else vals
            return torch.full_like(logits, float("-inf")).scatter_(-1, order, vals)
    vals, order = logits.sort(dim=-1, descending=True)
    if use_k:
        vals = vals.masked_fill(vals < vals[..., top_k - 1: top_k], float("-inf"))
    if use_p:
        vals = _top_p_sorted(vals, top_p)
    return logits.scatter(-1, order, vals)


def _top_p_sorted(vals: Tensor, top_p: float) -> Tensor:
    """Nucleus filter of logits ``vals`` sorted in descending order (-inf entries allowed)."""
    beyond = vals.softmax(dim=-1).cumsum(dim=-1) > top_p
    remove = torch.zeros_like(beyond)
    remove[..., 1:] = beyond[..., :-1]  # drop what follows the first token past p
    return vals.masked_fill(remove, float("-inf"))


def _generators(batch: int, seeds: Sequence[int] | None, generators: Sequence[torch.Generator] | None,
                device: torch.device) -> list[torch.Generator]:
    """One generator per sample; without seeds they are drawn from the global torch RNG."""
    if seeds is not None and generators is not None:
        raise InputError("sample_codes: give seeds or generators, not both")
    if generators is not None:
        if len(generators) != batch:
            raise InputError(f"sample_codes: {len(generators)} generators for a batch of {batch}")
        return list(generators)
    if seeds is None:
        seeds = torch.randint(0, 2**62, (batch,)).tolist()
    if len(seeds) != batch:
        raise InputError(f"sample_codes: {len(seeds)} seeds for a batch of {batch}")
    return sample_generators(seeds, device)


def _gumbel(shape: int, generators: list[torch.Generator], device: torch.device) -> Tensor:
    """``(B, shape)`` standard Gumbel noise, row i from ``generators[i]`` (u = 0 gives -inf: never drawn)."""
    rows = []
    for g in generators:
        u = torch.rand(shape, generator=g, device=g.device)
        rows.append(u.to(device))
    return -torch.log(-torch.log(torch.stack(rows)))


def draw(logits: Tensor, generators: list[torch.Generator], temperature: float = 1.0, top_k: int | None = None,
         top_p: float | None = None) -> Tensor:
    """One id per row of ``logits (B, V)`` after temperature and filtering; ``temperature=0`` is greedy."""
    if temperature < 0:
        raise InputError(f"temperature={temperature}: must be >= 0")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32; fp64 stays fp64
    logits = filter_logits(logits / temperature, top_k, top_p)
    return (logits + _gumbel(logits.shape[-1], generators, logits.device)).argmax(dim=-1)


def low_precision_linears(gpt: GPT, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Within, the weights and biases of ``gpt``'s ``nn.Linear`` layers are held in ``dtype`` (restored after).

    Under autocast each linear casts its fp32 weight on every call, and autocast's cache keeps only leaf
    tensors that require grad: a frozen model (or the head's video rows, a view) was re-cast at every decode
    step (the GPT's 77 M weights per token). Casting once gives the same bf16 operands, so the same result.
    ``dtype=None`` or fp32 leaves the model as it is.
    """
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return held_weights([gpt], dtype, (nn.Linear,))


def decode_attention(device: torch.device) -> contextlib.AbstractContextManager:
    """SDPA backends for the decode loop: on CUDA without cuDNN attention, which builds a new graph for every
    key length (one per decode step: ~4 ms of CPU per call, 20x the step, measured on an H200 with torch
    2.11 in bf16); flash, memory-efficient and math remain. Elsewhere the default choice."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _check_prefix(gpt: GPT, prefix: Tensor) -> None:
    cfg = gpt.cfg
    if cfg.text_mode == "clip":
        if prefix.dim() != 3 or prefix.shape[-1] != cfg.clip_dim or not prefix.is_floating_point():
            raise InputError(f"sample_codes: clip mode takes (B, L, {cfg.clip_dim}) float text features, "
                             f"got {tuple(prefix.shape)} {prefix.dtype}")
        return
    if prefix.dim() != 2 or prefix.is_floating_point():
        raise InputError(f"sample_codes: bert mode takes (B, L) integer word-piece ids, got {tuple(prefix.shape)} "
                         f"{prefix.dtype}")
    if prefix.numel() and (int(prefix.min()) < 0 or int(prefix.max()) >= cfg.text_vocab_size):
        raise InputError(f"sample_codes: text ids must be in [0, {cfg.text_vocab_size}), got "
                         f"[{int(prefix.min())}, {int(prefix.max())}]")


def _valid_codes(codes: Tensor, batch: int, n_codes: int) -> bool:
    """``codes`` is ``(batch, N)`` integer codes in ``[0, n_codes)``."""
    if codes.dim() != 2 or codes.shape[0] != batch or codes.is_floating_point():
        return False
    return not codes.numel() or 0 <= int(codes.min()) <= int(codes.max()) < n_codes


def null_prefix(prefix: Tensor) -> Tensor:
    """The unconditional prefix of the same shape as ``prefix``: all [PAD] ids (0) in bert mode, zero features in
    clip mode. A GPT trained with ``text_dropout > 0`` has seen it in place of captions."""
    return torch.zeros_like(prefix)


def check_cfg_scale(cfg: GPTConfig, scale: float) -> None:
    """One-line error unless ``scale`` (``--gpt_cfg_scale``) is 1 or the GPT was trained with caption dropout."""
    if scale != 1.0 and cfg.text_dropout <= 0:
        raise InputError(f"--gpt_cfg_scale {scale}: this GPT was trained without text_dropout, so it has no "
                         "unconditional model to guide against; use 1, or train it with --set text_dropout=0.1")


def guided_logits(logits: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance of ``logits (2B, V)`` = conditional rows then unconditional rows -> ``(B, V)``:
    ``u + scale * (c - u)`` (Ho & Salimans 2022, applied to next-token logits as in Parti / Make-A-Scene)."""
    cond, uncond = logits.chunk(2)
    return uncond + scale * (cond - uncond)


@torch.inference_mode()
def sample_codes(gpt: GPT, prefix: Tensor, steps: int | None = None, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seeds: Sequence[int] | None = None,
                 generators: Sequence[torch.Generator] | None = None, restrict_to_video: bool | None = None,
                 progress: bool = False, context: Tensor | None = None, cfg_scale: float = 1.0) -> Tensor:
    """Sample video codes for a batch of prompts with a preallocated KV cache.

    ``prefix``: ``(B, L_text)`` BERT ids (bert mode) or ``(B, L_text, clip_dim)`` CLIP features (clip).
    ``steps``: codes to draw, default ``video_seq_len`` (minus the context). ``seeds`` / ``generators``: one
    per sample (default: seeds from the global RNG). ``restrict_to_video``: default
    ``cfg.mask_text_logits_at_sampling``. ``context``: ``(B, N_ctx)`` codes in ``[0, n_codes)`` that follow the
    prefix as given video tokens (a continuation: the trailing latent frames of the previous window); they
    fill the cache with the prefix, and the draw continues after them. ``cfg_scale``: classifier-free guidance
    weight (1 = none; > 1 runs the batch twice, with ``prefix`` and with ``null_prefix``, in one cache; needs a GPT
    trained with ``text_dropout > 0``).

    Returns the drawn codes long in ``[0, n_codes)`` (the context is not repeated): ``(B, t, h, w)`` when there
    is no context and ``steps == video_seq_len``, else ``(B, steps)``. The model runs in eval mode (its mode is
    restored afterwards).
    """
    cfg = gpt.cfg
    _check_prefix(gpt, prefix)
    n_ctx = 0 if context is None else context.shape[1]
    if context is not None and not _valid_codes(context, prefix.shape[0], cfg.n_codes):
        raise InputError(f"sample_codes: context must be (B, N) integer codes in [0, {cfg.n_codes}) for a batch of "
                         f"{prefix.shape[0]}, got {tuple(context.shape)} {context.dtype}")
    steps = cfg.video_seq_len - n_ctx if steps is None else steps
    n_text = prefix.shape[1] + n_ctx
    if steps < 1 or n_text + steps - 1 > cfg.block_size:
        raise InputError(f"sample_codes: steps={steps} must be in [1, {cfg.block_size - n_text + 1}]")
    check_cfg_scale(cfg, cfg_scale)
    restrict = cfg.mask_text_logits_at_sampling if restrict_to_video is None else restrict_to_video
    device = gpt.head.weight.device
    gens = _generators(prefix.shape[0], seeds, generators, device)
    was_training = gpt.training
    gpt.eval()
    autocast_on = torch.is_autocast_enabled(device.type)
    dtype = torch.get_autocast_dtype(device.type) if autocast_on else None  # bf16 keys and values under bf16
    try:
        with low_precision_linears(gpt, dtype), decode_attention(device):
            return _decode(gpt, prefix, steps, n_text, context, restrict, gens, dtype,
                           dict(temperature=temperature, top_k=top_k, top_p=top_p), progress, float(cfg_scale))
    finally:
        gpt.train(was_training)


def _decode(gpt: GPT, prefix: Tensor, steps: int, n_text: int, context: Tensor | None, restrict: bool,
            gens: list[torch.Generator], dtype: torch.dtype | None, filters: dict, progress: bool,
            cfg_scale: float = 1.0) -> Tensor:
    """``sample_codes``' prefix pass and decode loop (arguments checked there); the codes as it returns them.
    With guidance the cache holds the conditional rows then the unconditional ones; both get the drawn code."""
    cfg, off, device = gpt.cfg, gpt.cfg.video_offset, gpt.head.weight.device
    n_ctx, batch, guided = 0 if context is None else context.shape[1], prefix.shape[0], cfg_scale != 1.0
    if guided:
        prefix = torch.cat([prefix, null_prefix(prefix)])
        context = None if context is None else torch.cat([context, context])
    head = gpt.head.weight[off: off + cfg.n_codes] if restrict else gpt.head.weight
    cache = gpt.new_cache(prefix.shape[0], capacity=n_text + steps - 1, dtype=dtype)
    given = None if context is None else context.to(device).long() + off
    if cfg.text_mode == "clip":
        h = gpt.features(given, prefix_emb=prefix.to(device), cache=cache)
    else:
        ids = prefix.to(device).long()
        h = gpt.features(ids if given is None else torch.cat([ids, given], dim=1), cache=cache)
    ids = torch.empty(prefix.shape[0], steps, dtype=torch.long, device=device)
    for i in tqdm(range(steps), desc="gpt", unit="tok", disable=not progress, leave=False):
        logits = F.linear(h[:, -1], head)
        new = draw(guided_logits(logits.float(), cfg_scale) if guided else logits, gens, **filters)
        ids[:, i] = (new.repeat(2) if guided else new) + (off if restrict else 0)
        if i + 1 < steps:
            h = gpt.features(ids[:, i: i + 1], cache=cache, start=n_text + i)
    codes = (ids[:batch] - off).clamp_(0, cfg.n_codes - 1)
    return codes.view(-1, *cfg.latent_shape) if steps == cfg.video_seq_len and n_ctx == 0 else codes
