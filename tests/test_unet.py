"""Diffusion U-Net: the released key layout, config inference from bare state dicts, attention orders and
kernels, frame handling, checkpointing, zero init, 2D use and bf16 autocast."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
import torch.nn.functional as F

from tav.diffusion.blocks import AttentionBlock, Downsample, Upsample, timestep_embedding
from tav.diffusion.config import UNetConfig, unet_config_from_dict, unet_config_from_state_dict, unet_preset
from tav.diffusion.unet3d import UNet
from tav.errors import InputError
from tav.vqgan import VQGAN

from .helpers import read_tsv, spec_tsv, tiny_vqgan_cfg

TSV = spec_tsv("ta2v_diffusion_unet3d.tsv")


def tiny(**kw) -> UNetConfig:
    """The ``unet3d-tiny`` preset with fields replaced by ``kw``."""
    return dataclasses.replace(unet_preset("unet3d-tiny"), **kw)


def randomised(cfg: UNetConfig, seed: int = 0) -> UNet:
    """A model whose zero-initialised tensors (output convs, norm biases) are random too, so every path
    reaches the output. Same ``seed`` and architecture -> same weights."""
    torch.manual_seed(seed)
    model = UNet(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def noise(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def meta_state_dict(cfg: UNetConfig) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return UNet(cfg).state_dict()


# ------------------------------------------------------------------------------------ released layout
def test_ta2v_layout_matches_released_keys():
    rows, header = read_tsv(TSV)
    with torch.device("meta"):
        model = UNet(unet_preset("unet3d-ta2v"))
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    assert ours == rows and len(ours) == 532
    total = int(re.search(r"total parameters \(nn.Parameter elements\): ([\d,]+)", header)[1].replace(",", ""))
    assert model.num_parameters() == total == 318_258_694


def test_released_state_dict_loads_strictly_and_runs():
    rows, _ = read_tsv(TSV)
    g = torch.Generator().manual_seed(0)
    state = {k: 0.02 * torch.randn(shape, generator=g) for k, shape, _ in rows}
    model = UNet(unet_preset("unet3d-ta2v")).eval()
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.middle_block[1].qkv.weight, state["middle_block.1.qkv.weight"])
    with torch.no_grad():
        out = model(noise(1, 3, 2, 16, 16), torch.tensor([10]))
    assert out.shape == (1, 6, 2, 16, 16)
    assert out.isfinite().all() and out.abs().max() > 0


# ------------------------------------------------------------------------------------------- configs
def test_config_properties_and_presets():
    cfg = unet_preset("unet3d-ta2v")
    assert cfg == UNetConfig()
    assert cfg.attention_ds == (8, 16) and cfg.learn_sigma and cfg.spatial_divisor == 16
    cfg.num_heads = 8  # presets are copies
    assert unet_preset("unet3d-ta2v").num_heads == 4
    assert UNetConfig(channel_mult=[1, 2], attention_resolutions=[64]).channel_mult == (1, 2)
    assert not tiny(out_channels=3).learn_sigma and tiny().attention_ds == (2,)
    assert unet_config_from_dict({"channel_mult": [1, 2], "attention_resolutions": [64]}).attention_ds == (2,)
    with pytest.raises(InputError, match="unknown key"):
        unet_config_from_dict({"num_channels": 128})
    with pytest.raises(InputError, match="unknown U-Net preset"):
        unet_preset("unet3d-huge")


@pytest.mark.parametrize("kw,match", [
    (dict(model_channels=48), "GroupNorm"),
    (dict(attention_resolutions=(12,)), "attention_resolutions"),
    (dict(attention_resolutions=(4,)), "attention_resolutions"),  # ds 32: deeper than the 5 levels
    (dict(num_heads=5), "num_heads"),
    (dict(num_head_channels=48), "num_head_channels"),
    (dict(dims=1), "dims"),
    (dict(attention_impl="flash"), "attention_impl"),
    (dict(channel_mult=()), "channel_mult"),
])
def test_config_validation(kw, match):
    with pytest.raises(InputError, match=match):
        UNetConfig(**kw)


def test_config_from_released_state_dict():
    rows, _ = read_tsv(TSV)
    state = {k: torch.empty(shape, device="meta") for k, shape, _ in rows}
    assert unet_config_from_state_dict(state) == unet_preset("unet3d-ta2v")
    got = unet_config_from_state_dict(state, num_heads=8, use_new_attention_order=True)
    assert got == dataclasses.replace(unet_preset("unet3d-ta2v"), num_heads=8, use_new_attention_order=True)


@pytest.mark.parametrize("kw", [
    {},
    dict(dims=2),
    dict(use_scale_shift_norm=False, num_res_blocks=2, attention_resolutions=(32, 16), channel_mult=(1, 2, 2)),
    dict(attention_resolutions=()),
])
def test_config_from_tiny_state_dicts(kw):
    cfg = tiny(**kw)
    assert unet_config_from_state_dict(meta_state_dict(cfg), image_size=32, num_heads=2) == cfg


def test_config_from_wrong_state_dict():
    with torch.device("meta"):
        vqgan_state = VQGAN(tiny_vqgan_cfg()).state_dict()
    with pytest.raises(InputError, match="missing key 'input_blocks.0.0.weight'"):
        unet_config_from_state_dict(vqgan_state)
    with pytest.raises(InputError, match="cannot override"):
        unet_config_from_state_dict(meta_state_dict(tiny()), channel_mult=(1, 2))


# ---------------------------------------------------------------------------------------- embeddings
def test_timestep_embedding_by_hand():
    t = torch.tensor([0, 3, 250])
    emb = timestep_embedding(t, 6)
    freqs = [10000 ** (-i / 3) for i in range(3)]
    want = [[math.cos(s * f) for f in freqs] + [math.sin(s * f) for f in freqs] for s in (0.0, 3.0, 250.0)]
    assert emb.shape == (3, 6) and emb.dtype == torch.float32
    assert torch.allclose(emb, torch.tensor(want), atol=1e-5)
    odd = timestep_embedding(torch.tensor([2.5]), 7, max_period=100)
    freqs = [100 ** (-i / 3) for i in range(3)]
    want = [math.cos(2.5 * f) for f in freqs] + [math.sin(2.5 * f) for f in freqs] + [0.0]
    assert torch.allclose(odd, torch.tensor([want]), atol=1e-6)


# ----------------------------------------------------------------------------------------- attention
def reference_attention(block: AttentionBlock, x: torch.Tensor, legacy: bool) -> torch.Tensor:
    """Per-head loop over all T*H*W tokens, straight from the definitions."""
    b, c = x.shape[:2]
    tokens = x.reshape(b, c, -1)  # (B, C, L)
    normed = F.group_norm(tokens, 32, block.norm.weight, block.norm.bias, block.norm.eps)
    qkv = torch.einsum("oc,bcl->bol", block.qkv.weight[:, :, 0], normed) + block.qkv.bias[:, None]
    heads, d = block.num_heads, c // block.num_heads
    outs = []
    for h in range(heads):
        if legacy:  # channels (heads, 3, d)
            q, k, v = (qkv[:, (3 * h + i) * d:(3 * h + i + 1) * d] for i in range(3))
        else:  # channels (3, heads, d)
            q, k, v = (qkv[:, i * c + h * d:i * c + (h + 1) * d] for i in range(3))
        weights = torch.softmax(torch.einsum("bdl,bdm->blm", q, k) / math.sqrt(d), dim=-1)  # (B, L, L)
        outs.append(torch.einsum("blm,bdm->bdl", weights, v))
    mixed = torch.cat(outs, dim=1)  # (B, C, L)
    proj = torch.einsum("oc,bcl->bol", block.proj_out.weight[:, :, 0], mixed) + block.proj_out.bias[:, None]
    return (tokens + proj).reshape(x.shape)


@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_attention_orders_match_reference(impl):
    x = noise(2, 64, 3, 2, 2)
    outs = {}
    for legacy in (True, False):
        torch.manual_seed(0)
        block = AttentionBlock(64, num_heads=2, legacy_order=legacy, impl=impl)
        with torch.no_grad():
            block.proj_out.weight.normal_()
            block.norm.bias.normal_()
            outs[legacy] = block(x)
            assert torch.allclose(outs[legacy], reference_attention(block, x, legacy), atol=1e-5)
    assert not torch.allclose(outs[True], outs[False], atol=1e-3)  # same weights, other order


def test_sdpa_and_math_attention_agree_on_model():
    x, t = noise(2, 3, 2, 32, 32), torch.tensor([10, 999])
    sdpa = randomised(tiny(attention_impl="sdpa"))
    math_model = UNet(tiny(attention_impl="math"))
    math_model.load_state_dict(sdpa.state_dict())
    new_order = UNet(tiny(use_new_attention_order=True))
    new_order.load_state_dict(sdpa.state_dict())
    with torch.no_grad():
        a, b, c = sdpa(x, t), math_model(x, t), new_order(x, t)
    assert torch.allclose(a, b, atol=1e-5)
    assert (a - c).abs().max() > 1e-3


# -------------------------------------------------------------------------------------------- frames
def test_frames_are_never_downsampled():
    model = randomised(tiny())
    seen = []
    model.middle_block.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        out = model(noise(1, 3, 3, 32, 32), torch.tensor([7]))
    assert out.shape == (1, 6, 3, 32, 32) and out.isfinite().all()
    assert seen == [(1, 64, 3, 16, 16)]
    x = noise(1, 32, 5, 8, 8)
    assert Downsample(32)(x).shape == (1, 32, 5, 4, 4)
    up = Upsample(32)
    with torch.no_grad():  # identity conv: the up-sampling itself is nearest x2 on H, W only
        up.conv.weight.zero_()
        up.conv.weight[:, :, 1, 1, 1] = torch.eye(32)
        up.conv.bias.zero_()
        y = up(x)
    assert y.shape == (1, 32, 5, 16, 16)
    assert torch.allclose(y, x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4), atol=1e-6)


def test_input_checks():
    model = UNet(tiny())
    with pytest.raises(InputError, match=r"\(1, 3, 2, 31, 32\).*multiples of 2"):
        model(torch.zeros(1, 3, 2, 31, 32), torch.tensor([1]))
    with pytest.raises(InputError, match="expected"):
        model(torch.zeros(1, 4, 2, 32, 32), torch.tensor([1]))
    with pytest.raises(InputError, match="t has shape"):
        model(torch.zeros(2, 3, 2, 32, 32), torch.tensor([1, 2, 3]))


# ---------------------------------------------------------------------------------- training details
def test_fresh_model_outputs_zeros():
    with torch.no_grad():
        out = UNet(tiny())(noise(2, 3, 2, 32, 32), torch.tensor([0, 3999]))
    assert out.shape == (2, 6, 2, 32, 32) and torch.equal(out, torch.zeros_like(out))


def test_gradient_checkpointing_same_output_and_grads():
    x, t = noise(1, 3, 2, 16, 16), torch.tensor([100])
    results = []
    for flag in (False, True):
        model = randomised(tiny(gradient_checkpointing=flag))
        calls = []
        model.input_blocks[1][0].in_layers.register_forward_hook(lambda *a, calls=calls: calls.append(1))
        out = model(x, t)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad for p in model.parameters()], len(calls)))
    (out0, grads0, calls0), (out1, grads1, calls1) = results
    assert (calls0, calls1) == (1, 2)  # the checkpointed block is recomputed in the backward pass
    assert torch.allclose(out0, out1, atol=1e-6)
    assert all(torch.allclose(g0, g1, atol=1e-6, rtol=1e-4) for g0, g1 in zip(grads0, grads1, strict=True))


def test_guidance_checkpointing_same_input_gradient():
    """Guidance's backward: frozen weights, gradient w.r.t. the input only. ``set_gradient_checkpointing`` turns
    recomputation on for a loaded network (``--guidance_checkpointing``) and gives the same gradient."""
    model = randomised(tiny()).requires_grad_(False)
    x, t = noise(2, 3, 2, 16, 16), torch.tensor([100, 7])
    calls = []
    model.input_blocks[1][0].in_layers.register_forward_hook(lambda *a: calls.append(1))
    grads = []
    for flag in (False, True):
        model.set_gradient_checkpointing(flag)
        x_in = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x_in, t).square().mean(), x_in)
        grads.append(grad)
    assert len(calls) == 3  # one forward without, a forward and its recomputation with checkpointing
    assert grads[0].abs().max() > 0 and torch.allclose(grads[0], grads[1], atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("scale_shift", [True, False])
def test_dims2_model(scale_shift):
    cfg = tiny(dims=2, use_scale_shift_norm=scale_shift)
    model = randomised(cfg)
    assert model.input_blocks[0][0].weight.shape == (32, 3, 3, 3)
    with torch.no_grad():
        out = model(noise(2, 3, 32, 32), torch.tensor([5.0, 50.5]))
    assert out.shape == (2, 6, 32, 32) and out.isfinite().all() and out.abs().max() > 0


def test_bf16_autocast_and_channels_last():
    model = randomised(tiny()).eval()
    x, t = noise(2, 3, 2, 32, 32), torch.tensor([10, 900])
    with torch.no_grad():
        ref = model(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t)
        last = model(x.to(memory_format=torch.channels_last_3d), t)
    assert low.dtype == torch.float32 and low.isfinite().all()
    with torch.no_grad():
        half = model.to(torch.bfloat16)(x, t)  # a bf16-cast model takes fp32 input and answers in fp32
    assert half.dtype == torch.float32 and (half - ref).abs().max() < 0.1 * ref.abs().max()
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()
    assert torch.allclose(last, ref, atol=1e-5)


def _guided_grad(model: UNet, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A guided step's U-Net work under bf16 autocast: the output and the gradient of its square to the input."""
    x_in = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x_in, t)
    return out.detach(), torch.autograd.grad(out.float().square().mean(), x_in)[0]


def test_held_weights_cast_once_same_operands_and_restore(monkeypatch):
    """Conv weights held in bf16 give a frozen U-Net under bf16 autocast the operands autocast would cast at
    every call (bitwise the same output and input gradient); channels-last changes only the rounding; the
    original tensors come back afterwards, also after an error."""
    from tav.utils.runtime import CONVS, held_weights, sampling_weights

    model = randomised(tiny()).eval().requires_grad_(False)
    x, t = noise(2, 3, 2, 32, 32), torch.tensor([10, 900])
    before = {k: (v.data_ptr(), v.dtype, v.clone()) for k, v in model.state_dict().items()}
    ref_out, ref_grad = _guided_grad(model, x, t)
    with held_weights([model], torch.bfloat16, CONVS):
        convs = [m.weight for m in model.modules() if isinstance(m, CONVS)]
        assert convs and all(w.dtype == torch.bfloat16 for w in convs)
        assert model.time_embed[0].weight.dtype == torch.float32  # linears are not in CONVS
        out, grad = _guided_grad(model, x, t)
    assert torch.equal(out, ref_out) and torch.equal(grad, ref_grad)
    from tav.utils import runtime

    monkeypatch.setattr(runtime, "cpu_bf16_units", lambda cpuinfo=None: "avx512_bf16")
    with sampling_weights([model], "bf16", torch.device("cpu")):  # AVX-512 bf16 (AMD Zen 4): bf16, contiguous
        w = model.input_blocks[0][0].weight
        assert w.dtype == torch.bfloat16 and w.is_contiguous() and _guided_grad(model, x, t)[1].equal(ref_grad)
    monkeypatch.setattr(runtime, "cpu_bf16_units", lambda cpuinfo=None: "amx")
    with sampling_weights([model], "bf16", torch.device("cpu")):  # a CPU with AMX: bf16 and channels-last
        w = model.input_blocks[0][0].weight
        assert w.dtype == torch.bfloat16 and w.is_contiguous(memory_format=torch.channels_last_3d)
        out, grad = _guided_grad(model, x, t)
    scale = ref_grad.abs().max()
    assert (grad - ref_grad).abs().max() < 0.05 * scale
    assert (out - ref_out).abs().max() < 0.05 * ref_out.abs().max()
    with sampling_weights([model], "32", torch.device("cpu")):
        assert model.input_blocks[0][0].weight.data_ptr() == before["input_blocks.0.0.weight"][0]
    with pytest.raises(RuntimeError, match="inside"), held_weights([model], torch.bfloat16, channels_last=True):
        raise RuntimeError("inside")
    after = model.state_dict()
    assert all(after[k].data_ptr() == p and after[k].dtype == d and torch.equal(after[k], v)
               for k, (p, d, v) in before.items())
