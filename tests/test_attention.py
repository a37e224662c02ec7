"""``tav.utils.attention``: SDPA and the written-out form are the same maths; ``auto`` picks the written-out form
only on a CPU in reduced precision, for short sequences, when a gradient is wanted."""

import pytest
import torch
import torch.nn.functional as F

from tav.errors import InputError
from tav.gpt.model import CausalSelfAttention
from tav.utils import attention as A

from .helpers import tiny_gpt


def _qkv(L=10, S=10, d=8, dtype=torch.float32, grad=False, seed=3):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 2, L, d, generator=g)
    k, v = (torch.randn(2, 2, S, d, generator=g) for _ in range(2))
    return [t.to(dtype).requires_grad_(grad) for t in (q, k, v)]


def _by_hand(q, k, v, keep):
    w = (q.double() @ k.double().transpose(-2, -1)) / q.shape[-1] ** 0.5
    return (w.masked_fill(~keep, float("-inf")).softmax(-1) @ v.double()).float()


@pytest.mark.parametrize("causal", [False, True])
def test_written_out_and_sdpa_match_attention_by_hand(causal):
    q, k, v = _qkv(L=6, S=6)
    keep = torch.ones(6, 6, dtype=torch.bool).tril() if causal else torch.ones(6, 6, dtype=torch.bool)
    want = _by_hand(q, k, v, keep)
    for impl in ("math", "sdpa", "auto"):
        got = A.attention(q, k, v, impl, causal=causal)
        assert torch.allclose(got, want, atol=1e-5), impl
    mask = torch.rand(6, 6, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[:, 0] = True  # every query keeps a key
    assert torch.allclose(A.written_out(q, k, v, mask), _by_hand(q, k, v, mask), atol=1e-5)


def test_auto_writes_out_only_for_short_reduced_precision_cpu_attention_with_gradients():
    q, k, v = _qkv(dtype=torch.bfloat16, grad=True)
    assert A.prefer_written_out(q, k)
    out = A.attention(q, k, v, "auto", causal=True)
    assert torch.equal(out, A.written_out(q, k, v, causal=True))
    assert not torch.equal(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))  # another kernel
    out.float().sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    with torch.no_grad():
        assert not A.prefer_written_out(q, k)  # forward alone: the fused kernel is faster
    assert not A.prefer_written_out(*_qkv(grad=True)[:2])  # fp32
    assert not A.prefer_written_out(*_qkv(dtype=torch.bfloat16)[:2])  # nothing needs a gradient
    long_q, long_k, _ = _qkv(L=257, S=256, dtype=torch.bfloat16, grad=True)
    assert not A.prefer_written_out(long_q, long_k)  # L·S above 256²: the fused kernel
    with pytest.raises(InputError, match="attention impl 'flash'"):
        A.attention(q, k, v, "flash")


def test_gpt_attention_in_bf16_on_a_cpu_is_the_written_out_form_near_fp32():
    attn: CausalSelfAttention = tiny_gpt().blocks[0].attn
    q, k, v = _qkv(grad=True)
    reference = attn.attend(q, k, v, True, None)
    assert torch.equal(reference, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    qb, kb, vb = (t.detach().bfloat16().requires_grad_() for t in (q, k, v))
    out = attn.attend(qb, kb, vb, True, None)
    assert out.dtype == torch.bfloat16 and torch.equal(out, A.written_out(qb, kb, vb, causal=True))
    assert (out.float() - reference).abs().max() < 0.05
