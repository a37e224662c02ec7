"""Softmax attention for every network in tav: PyTorch's SDPA, or the same maths written out where that is faster.

``attention(q, k, v, impl)``; ``impl``:

- ``"sdpa"``: ``F.scaled_dot_product_attention`` (PyTorch picks its fused kernel);
- ``"math"``: :func:`written_out` (two matrix products around a float32 softmax);
- ``"auto"`` (the configs' default): ``"math"`` where it was measured faster, else ``"sdpa"``
  (:func:`prefer_written_out`).

Why ``auto``: on a CPU in bf16 the fused kernel's backward is slow for short sequences. Forward + backward in bf16,
fused against written out, on the AMD Zen 4 kind (2 threads, ``benchmarks/bench_attention.py``; shapes as (batch·heads,
L, S, head width)): the TIA2V tiny models' (8, 64, 64, 16) 0.89 against 0.34 ms and (64, 4, 85, 16) 2.95 against
0.54, the demo GPT's causal (64, 139, 139, 32) 19.2 against 6.0; from L = 512 the fused kernel is faster ((8, 512,
512, 16) 6.3 against 9.4, (4, 1024, 1024, 64) 21.0 against 30.7). In fp32 ``auto`` keeps SDPA (the written-out
form is ahead only on the tiny shapes, by at most 0.2 ms). So the
demo GPT's training step is 1.83x faster in bf16 than in fp32 (``benchmarks/bench_precision.py --nets demo_gpt``)
where it was 1.23x with the fused kernel, and the demo's TIA2V motion model trains about 1.2x faster.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tav.errors import InputError

IMPLS = ("auto", "sdpa", "math")
WRITTEN_OUT_MAX_SCORES = 256 * 256  # L·S at or below which "auto" writes attention out (see the module docstring)


def prefer_written_out(q: Tensor, k: Tensor) -> bool:
    """Whether ``"auto"`` writes attention out for queries ``q (..., L, d)`` and keys ``k (..., S, d)``: on a CPU,
    in bf16 or fp16, with a gradient to compute, and L·S at most ``WRITTEN_OUT_MAX_SCORES``."""
    return (q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and torch.is_grad_enabled()
            and (q.requires_grad or k.requires_grad) and q.shape[-2] * k.shape[-2] <= WRITTEN_OUT_MAX_SCORES)


def written_out(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False,
                dropout_p: float = 0.0) -> Tensor:
    """``softmax(q kᵀ / √d) v`` with the softmax in float32: ``q (..., L, d)``, ``k, v (..., S, d)`` ->
    ``(..., L, d)`` in v's dtype. The scale is split between q and k (``d^-1/4`` each, as the released U-Nets'
    code does, which keeps fp16 logits small). ``mask``: boolean ``(L, S)`` keep-mask; ``causal``: query i sees
    keys 0..i (L == S); ``dropout_p``: dropout on the attention weights."""
    scale = q.shape[-1] ** -0.25
    scores = ((q * scale) @ (k * scale).transpose(-2, -1)).float()  # (..., L, S)
    if causal:
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(-1).to(v.dtype)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v


def attention(q: Tensor, k: Tensor, v: Tensor, impl: str = "auto", mask: Tensor | None = None,
              causal: bool = False, dropout_p: float = 0.0) -> Tensor:
    """Softmax attention of ``q (..., L, d)`` over ``k, v (..., S, d)`` -> ``(..., L, d)`` by ``impl`` (module
    docstring); ``mask``, ``causal`` and ``dropout_p`` as in :func:`written_out`."""
    if impl not in IMPLS:
        raise InputError(f"attention impl {impl!r}: must be one of {', '.join(IMPLS)}")
    if impl == "math" or (impl == "auto" and prefer_written_out(q, k)):
        return written_out(q, k, v, mask, causal, dropout_p)
    return F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), attn_mask=mask,
                                          dropout_p=dropout_p, is_causal=causal)
