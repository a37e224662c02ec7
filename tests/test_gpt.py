"""Text -> video-token GPT: causality, KV cache, filters, sampling, config (checkpoints: test_gpt_checkpoints.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tav.errors import InputError
from tav.gpt import (
    GPTConfig,
    filter_logits,
    gpt_preset,
    sample_codes,
    token_accuracy,
)
from tav.gpt.sampling import draw, guided_logits, null_prefix
from tav.vqgan import vqgan_preset

from .helpers import rand_ids, tiny_gpt


# ------------------------------------------------------------------------------------------- config
def test_presets_and_derived_sizes():
    urmp, up, land, tiny = (gpt_preset(n) for n in ("urmp", "urmp_upstream", "landscape", "tiny"))
    assert (urmp.video_offset, urmp.vocab_size, urmp.video_seq_len, urmp.seq_len) == (30522, 46906, 576, 588)
    assert (up.video_offset, up.vocab_size, up.mask_text_logits_at_sampling) == (21128, 37512, False)
    assert land.video_seq_len == 256 and tiny.latent_shape == vqgan_preset("tiny").latent_shape
    assert tiny.n_codes == vqgan_preset("tiny").n_codes
    clip = GPTConfig(text_mode="clip")
    assert (clip.video_offset, clip.vocab_size) == (0, 16384)
    for bad in (dict(n_head=3), dict(block_size=500), dict(text_mode="clip", text_vocab_offset=5),
                dict(attn_pdrop=1.0), dict(text_vocab_offset=-1), dict(text_vocab_offset=10, n_codes=100),
                dict(pos_emb="rope")):
        with pytest.raises(InputError):
            GPTConfig(**bad)


# ------------------------------------------------------------------------------------------- model
def test_causality():
    model = tiny_gpt()
    cfg = model.cfg
    tokens = rand_ids(cfg, 2, 12)
    with torch.no_grad():
        ref = model.logits(tokens)
        assert ref.shape == (2, 16, cfg.vocab_size)
        for j in (0, 5, 15):
            changed = tokens.clone()
            changed[:, j] = (changed[:, j] + 7) % cfg.vocab_size
            out = model.logits(changed)
            assert torch.equal(out[:, :j], ref[:, :j]), j  # same shapes, same kernels: rows before j see equal inputs
            assert not torch.allclose(out[:, j], ref[:, j])


def test_axial_positions_add_the_grid_vectors_at_video_positions():
    model = tiny_gpt(pos_emb="axial")  # text_seq_len 4, latent_shape (2, 2, 3)
    with torch.no_grad():
        table = model.positions(0, model.cfg.block_size)[0]
        for p in range(4):  # text positions: the absolute vector alone
            assert torch.equal(table[p], model.pos_emb[0, p])
        # video position 4 + 9 is token 9 of the grid: t = 9 // 6 = 1, h = (9 % 6) // 3 = 1, w = 9 % 3 = 0
        want = model.pos_emb[0, 13] + model.pos_t[1] + model.pos_h[1] + model.pos_w[0]
        torch.testing.assert_close(table[13], want, atol=1e-6, rtol=0)
        assert torch.equal(table[4 + 12:], model.pos_emb[0, 4 + 12:])  # past the grid (block_size 32): absolute
        torch.testing.assert_close(model.positions(10, 14)[0], table[10:14], atol=0, rtol=0)
    absolute = tiny_gpt(pos_emb="absolute")
    assert not hasattr(absolute, "pos_t") and set(model.state_dict()) - set(absolute.state_dict()) == {
        "pos_t", "pos_h", "pos_w"}


@pytest.mark.parametrize("mode,pos", [("bert", "absolute"), ("clip", "absolute"), ("bert", "axial")])
def test_cached_decoding_matches_full_forward(mode, pos):
    model = tiny_gpt(text_mode=mode, pos_emb=pos)
    cfg = model.cfg
    n = cfg.video_seq_len
    codes = torch.randint(0, cfg.n_codes, (3, n), generator=torch.Generator().manual_seed(1))
    if mode == "clip":
        prefix = torch.randn(3, cfg.text_seq_len, cfg.clip_dim)
        full_args = dict(tokens=codes[:, :-1], prefix_emb=prefix)
        first = dict(tokens=None, prefix_emb=prefix)
    else:
        text = torch.randint(0, cfg.text_vocab_size, (3, cfg.text_seq_len))
        full_args = dict(tokens=torch.cat([text, codes[:, :-1] + cfg.video_offset], 1))
        first = dict(tokens=text)
    L = cfg.text_seq_len
    with torch.no_grad():
        full = model(**full_args)
        cache = model.new_cache(3, capacity=L + n - 1)
        steps = [model(**first, cache=cache)]
        for i in range(n - 1):
            steps.append(model(codes[:, i: i + 1] + cfg.video_offset, cache=cache, start=L + i))
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
        # chunks after cached positions (explicit mask path)
        cache = model.new_cache(3)
        head = model(**first, cache=cache)
        rest = [model(codes[:, a: b] + cfg.video_offset, cache=cache, start=L + a) for a, b in ((0, 4), (4, n - 1))]
        torch.testing.assert_close(torch.cat([head, *rest], 1), full, atol=1e-5, rtol=0)


def test_video_only_training_logits_are_the_video_columns():
    model = tiny_gpt().eval()
    cfg = model.cfg
    text = torch.randint(0, cfg.text_vocab_size, (2, cfg.text_seq_len))
    codes = torch.randint(0, cfg.n_codes, (2, *cfg.latent_shape))
    full, targets = model.training_logits(text, codes)
    video, codes_flat = model.training_logits(text, codes, video_only=True)
    off = cfg.video_offset
    torch.testing.assert_close(video, full[..., off: off + cfg.n_codes])
    assert torch.equal(codes_flat, targets - off) and torch.equal(codes_flat, codes.flatten(1))


def test_training_logits_loss_and_accuracy():
    model = tiny_gpt().train()
    cfg = model.cfg
    text = torch.randint(0, cfg.text_vocab_size, (2, cfg.text_seq_len))
    codes = torch.randint(0, cfg.n_codes, (2, *cfg.latent_shape))
    logits, targets = model.training_logits(text, codes)
    assert logits.shape == (2, cfg.video_seq_len, cfg.vocab_size)
    assert torch.equal(targets, codes.flatten(1) + cfg.video_offset)
    full = model.eval().logits(torch.cat([text, targets], 1))
    torch.testing.assert_close(model.training_logits(text, codes)[0], full[:, cfg.text_seq_len - 1: -1])
    loss = model.train().loss(text, codes)
    assert abs(loss.item() - math.log(cfg.vocab_size)) < 0.5
    loss.backward()
    assert model.tok_emb.weight.grad is not None and model.pos_emb.grad.abs().sum() > 0
    acc1, acc5 = token_accuracy(torch.eye(5)[None], torch.tensor([[0, 1, 2, 4, 0]]))
    assert (round(acc1.item(), 4), acc5.item()) == (0.6, 1.0)
    clip = tiny_gpt(text_mode="clip")
    clip_loss = clip.loss(torch.randn(2, cfg.text_seq_len, cfg.clip_dim), codes)
    clip_loss.backward()
    assert clip.text_proj.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------- filters
def test_top_k_keeps_ties():
    logits = torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    out = filter_logits(logits, top_k=2)
    inf = float("-inf")
    assert torch.equal(out, torch.tensor([[inf, 3.0, 2.0, 2.0, inf], [5.0, 4.0, inf, inf, inf]]))
    assert torch.equal(filter_logits(logits, top_k=5), logits) and torch.equal(filter_logits(logits), logits)
    with pytest.raises(InputError):
        filter_logits(logits, top_k=0)


def test_top_p_on_hand_made_distributions():
    probs = torch.tensor([[0.1, 0.5, 0.25, 0.15], [0.97, 0.01, 0.01, 0.01]])
    logits = probs.log()
    keep = lambda out: torch.isfinite(out)  # noqa: E731
    # sorted 0.5, 0.25, 0.15, 0.1; cumulative 0.5, 0.75, 0.9, 1.0
    assert keep(filter_logits(logits, top_p=0.6)).tolist() == [[False, True, True, False], [True, False, False, False]]
    assert keep(filter_logits(logits, top_p=0.8))[0].tolist() == [False, True, True, True]
    assert keep(filter_logits(logits, top_p=0.4))[0].tolist() == [False, True, False, False]  # at least one
    assert keep(filter_logits(logits, top_p=1.0)).all()
    # top-p after top-k renormalises: top-2 -> 0.667, 0.333, so p=0.6 now keeps one token instead of two
    assert keep(filter_logits(logits, top_k=2, top_p=0.6))[0].tolist() == [False, True, False, False]
    assert keep(filter_logits(logits, top_k=2, top_p=0.7))[0].tolist() == [False, True, True, False]
    assert keep(filter_logits(logits, top_k=3, top_p=0.55))[0].tolist() == [False, True, False, False]
    # kept logits are unchanged
    out = filter_logits(logits, top_p=0.8)
    assert torch.equal(out[keep(out)], logits[keep(out)])


def test_filter_matches_upstream_reference():
    """The top-k fast path and the sort path agree with upstream's top_k_top_p_filtering."""
    def reference(logits, k, p):
        logits = logits.masked_fill(logits < logits.topk(k)[0][..., -1:], float("-inf"))
        vals, idx = logits.sort(descending=True)
        remove = vals.softmax(-1).cumsum(-1) > p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        return logits.masked_fill(remove.scatter(1, idx, remove), float("-inf"))

    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(0)) * 2
    for k, p in ((20, 0.5), (100, 0.9), (299, 0.3), (1, 0.9)):
        assert torch.equal(filter_logits(logits, k, p), reference(logits, k, p))
    tied = logits.round()  # many ties at the k-th value (sort path); which tie top-p cuts is arbitrary
    assert torch.equal(filter_logits(tied, 20, 0.9).sort()[0], reference(tied, 20, 0.9).sort()[0])
    assert torch.equal(filter_logits(tied, 20), reference(tied, 20, 1.0))


def test_draw_follows_the_filtered_distribution():
    logits = torch.tensor([[0.0, math.log(3.0), -1e9, float("-inf")]]).repeat(4000, 1)
    gens = [torch.Generator().manual_seed(i) for i in range(4000)]
    ids = draw(logits, gens)
    assert set(ids.tolist()) == {0, 1}
    assert abs((ids == 1).float().mean().item() - 0.75) < 0.03
    assert torch.equal(draw(logits[:3], gens[:3], temperature=0), torch.ones(3, dtype=torch.long))


# ------------------------------------------------------------------------------------------- sampling
def test_sampled_ids_in_video_range_and_compat_mode():
    model = tiny_gpt()
    cfg = model.cfg
    with torch.no_grad():  # make every text id far likelier than any video id
        model.ln_f.bias.fill_(1.0)
        model.head.weight[: cfg.video_offset] = 1.0
    text = torch.randint(0, cfg.text_vocab_size, (3, cfg.text_seq_len))
    codes = sample_codes(model, text, seeds=[0, 1, 2], top_k=10, top_p=0.9)
    assert codes.shape == (3, *cfg.latent_shape) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < cfg.n_codes and codes.unique().numel() > 3
    upstream = sample_codes(model, text, seeds=[0, 1, 2], restrict_to_video=False)  # text ids -> code 0
    assert (upstream == 0).all()
    assert not model.training and sample_codes(model.train(), text, steps=3, seeds=[0, 1, 2]).shape == (3, 3)
    assert model.training


def test_restricted_head_equals_masked_full_vocabulary():
    model = tiny_gpt()
    cfg = model.cfg
    h = torch.randn(4, cfg.n_embd)
    full = F.linear(h, model.head.weight)
    full[:, : cfg.video_offset] = float("-inf")
    video = F.linear(h, model.head.weight[cfg.video_offset:])
    for k, p in ((None, None), (5, 0.8), (None, 0.5)):
        a = filter_logits(full.detach(), top_k=k, top_p=p).softmax(-1)
        b = filter_logits(video.detach(), top_k=k, top_p=p).softmax(-1)
        assert (a[:, : cfg.video_offset] == 0).all()
        torch.testing.assert_close(a[:, cfg.video_offset:], b)


def test_greedy_sampling_matches_uncached_argmax():
    # float64: the cached step (one row) and the full forward (all rows) round differently in the last bits;
    # at 1e-16 relative no argmax of these random logits is that close to a tie, so the ids must agree.
    model = tiny_gpt().double()
    cfg = model.cfg
    text = torch.randint(0, cfg.text_vocab_size, (2, cfg.text_seq_len))
    codes = sample_codes(model, text, temperature=0).flatten(1)
    seq = text
    with torch.no_grad():
        for _ in range(cfg.video_seq_len):
            nxt = model.logits(seq)[:, -1, cfg.video_offset:].argmax(-1) + cfg.video_offset
            seq = torch.cat([seq, nxt[:, None]], 1)
    assert torch.equal(codes, seq[:, cfg.text_seq_len:] - cfg.video_offset)


def test_guided_logits_by_hand():
    logits = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])  # conditional row, then unconditional
    torch.testing.assert_close(guided_logits(logits, 2.0), torch.tensor([[3.0, -1.0, 1.0]]))
    torch.testing.assert_close(guided_logits(logits, 1.0), logits[:1])  # scale 1: the conditional model
    torch.testing.assert_close(guided_logits(logits, 0.0), logits[1:])  # scale 0: the unconditional model


@pytest.mark.parametrize("context", [False, True])
def test_classifier_free_guidance_matches_uncached_reference(context):
    # greedy decoding in float64 (see above): each code is the argmax of u + s (c - u), c and u recomputed from
    # the whole sequence without a cache, with the caption and with the null prefix
    model = tiny_gpt(text_dropout=0.1).double()
    cfg, scale = model.cfg, 8.0
    with torch.no_grad():  # make the caption matter (the init's 0.02 embeddings barely move the draw)
        model.tok_emb.weight[: cfg.text_vocab_size].normal_(0, 3.0)
    text = torch.randint(1, cfg.text_vocab_size, (2, cfg.text_seq_len), generator=torch.Generator().manual_seed(1))
    given = torch.randint(0, cfg.n_codes, (2, 3), generator=torch.Generator().manual_seed(2)) if context else None
    steps = cfg.video_seq_len - (3 if context else 0)
    codes = sample_codes(model, text, steps=steps, temperature=0, cfg_scale=scale, context=given).reshape(2, -1)
    video = given + cfg.video_offset if context else torch.empty(2, 0, dtype=torch.long)
    with torch.no_grad():
        for _ in range(steps):
            c = model.logits(torch.cat([text, video], 1))[:, -1, cfg.video_offset:]
            u = model.logits(torch.cat([null_prefix(text), video], 1))[:, -1, cfg.video_offset:]
            video = torch.cat([video, (u + scale * (c - u)).argmax(-1, keepdim=True) + cfg.video_offset], 1)
    drawn = video[:, 3 if context else 0:] - cfg.video_offset
    assert torch.equal(codes, drawn)
    plain = sample_codes(model, text, steps=steps, temperature=0, context=given).reshape(2, -1)
    assert not torch.equal(plain, codes)  # the guidance changed the draw
    with pytest.raises(InputError, match="gpt_cfg_scale 2.0: .*text_dropout"):
        sample_codes(tiny_gpt(), text, cfg_scale=2.0)


def test_per_sample_seeds_invariant_to_batch_size():
    # float64 for the same reason as above: batches of 1, 2 and 4 use other GEMM blockings, and the draws are
    # discrete; in float32 a near-tie could flip one id on some CPU kind (same batch -> bitwise the same ids).
    model = tiny_gpt().double()
    cfg = model.cfg
    text = torch.randint(0, cfg.text_vocab_size, (4, cfg.text_seq_len), generator=torch.Generator().manual_seed(3))
    seeds = [11, 12, 13, 14]
    kw = dict(top_k=12, top_p=0.95, temperature=1.3)
    batch = sample_codes(model, text, seeds=seeds, **kw)
    for i in range(4):
        assert torch.equal(sample_codes(model, text[i: i + 1], seeds=[seeds[i]], **kw)[0], batch[i])
    swapped = sample_codes(model, text[[2, 0]], seeds=[13, 11], **kw)
    assert torch.equal(swapped, batch[[2, 0]])
    assert not torch.equal(batch[0], batch[1])  # different prompts and seeds give different clips
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    assert torch.equal(sample_codes(model, text, generators=gens, **kw), batch)
    torch.manual_seed(5)
    a = sample_codes(model, text)
    torch.manual_seed(5)
    assert torch.equal(sample_codes(model, text), a)


def test_sampling_input_checks_and_clip_mode():
    model = tiny_gpt()
    cfg = model.cfg
    text = torch.randint(0, cfg.text_vocab_size, (2, cfg.text_seq_len))
    for kw in (dict(seeds=[1]), dict(steps=cfg.block_size), dict(temperature=-1.0)):
        with pytest.raises(InputError):
            sample_codes(model, text, **kw)
    with pytest.raises(InputError, match="text ids"):
        sample_codes(model, text + cfg.text_vocab_size)
    with pytest.raises(InputError, match="integer"):
        sample_codes(model, text.float())
    clip = tiny_gpt(text_mode="clip")
    codes = sample_codes(clip, torch.randn(2, cfg.text_seq_len, cfg.clip_dim), seeds=[0, 1], top_k=5)
    assert codes.shape == (2, *cfg.latent_shape) and codes.max() < cfg.n_codes


def test_bf16_decode_casts_the_linears_once_with_autocast_results(monkeypatch):
    # Under autocast a frozen model's linears were re-cast at every decode step; sample_codes now holds them in
    # bf16 for the call. The operands are the same bf16 values, so the codes equal plain autocast's.
    from tav.gpt import sampling

    model = tiny_gpt().requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    text = torch.randint(0, model.cfg.text_vocab_size, (2, model.cfg.text_seq_len),
                         generator=torch.Generator().manual_seed(4))
    seen = []
    hook = model.blocks[0].attn.query.register_forward_hook(lambda m, i, o: seen.append(m.weight.dtype))
    kw = dict(seeds=[1, 2], top_k=10, top_p=0.9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = sample_codes(model, text, **kw)
        monkeypatch.setattr(sampling, "low_precision_linears", lambda gpt, dtype: sampling.contextlib.nullcontext())
        plain = sample_codes(model, text, **kw)
    hook.remove()
    assert torch.equal(fast, plain)
    n = len(seen) // 2
    assert set(seen[:n]) == {torch.bfloat16} and set(seen[n:]) == {torch.float32}
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    assert not model.training


def test_decode_attention_leaves_out_cudnn_on_cuda_only():
    from tav.gpt.sampling import decode_attention

    flags = (torch.backends.cuda.cudnn_sdp_enabled, torch.backends.cuda.flash_sdp_enabled,
             torch.backends.cuda.mem_efficient_sdp_enabled, torch.backends.cuda.math_sdp_enabled)
    start = [f() for f in flags]
    with decode_attention(torch.device("cuda")):
        assert [f() for f in flags] == [False, True, True, True]
    assert [f() for f in flags] == start
    with decode_attention(torch.device("cpu")):
        assert [f() for f in flags] == start
