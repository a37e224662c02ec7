"""TIA2V content / motion / SHR U-Nets: released key layouts, bare-file loading, the compat switches (frame
collapse, audio row mapping), first-frame K/V, batch independence, content -> motion transfer and the tav
checkpoint round trip."""

from __future__ import annotations

import dataclasses
import logging
import re

import pytest
import torch
from einops import rearrange, repeat

from tav.checkpoint import save_checkpoint
from tav.config import to_dict
from tav.diffusion.schedule import ProcessConfig
from tav.errors import InputError
from tav.tia2v import (
    TIA2VUNet,
    TIA2VUNetConfig,
    load_tia2v_unet,
    save_tia2v_unet,
    tia2v_config_from_state_dict,
    tia2v_preset,
    transfer_content_to_motion,
)
from tav.tia2v.attention import FirstFrameBlock
from tav.tia2v.temporal import DualTemporalTransformer, TemporalTransformer

from .helpers import read_tsv, spec_tsv

RELEASED = {"content": ("tia2v_content_unet.tsv", 366, 16_317_766),
            "motion": ("tia2v_motion_unet.tsv", 950, 33_105_478),
            "shr": ("tia2v_shr_unet3d.tsv", 618, 73_766_918)}
PROCESS = ProcessConfig(steps=4000, noise_schedule="cosine", learn_sigma=True, predict_xstart=False,
                        loss="rescaled_mse", rescale_timesteps=True)


def tiny(part: str, **kw) -> TIA2VUNetConfig:
    """The ``<part>-tiny`` preset (4 frames, 16 px, 32-wide contexts) with fields replaced by ``kw``."""
    return dataclasses.replace(tia2v_preset(f"{part}-tiny"), **kw)


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised tensors (proj_out, last temporal conv, output convs, biases) random values, so
    every path reaches the output; same seed and architecture -> same weights. Returns the module in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def built(cfg: TIA2VUNetConfig, seed: int = 0) -> TIA2VUNet:
    torch.manual_seed(seed)
    return randomise(TIA2VUNet(cfg), seed)


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def inputs(cfg: TIA2VUNetConfig, clips: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``(x, t, context[, context_temp])`` in the part's layout, per-frame timesteps for content/motion."""
    f, s, d = cfg.num_frames, cfg.image_size, cfg.context_dim
    if cfg.part == "shr":
        return (rand(clips, 3, f, s, s, seed=seed), torch.rand(clips) * 1000,
                rand(clips, cfg.text_tokens, d, seed=seed + 1))
    args = (rand(clips * f, 3, s, s, seed=seed), torch.linspace(10, 900, clips * f),
            rand(clips, cfg.text_tokens + 1, d, seed=seed + 1))
    if cfg.part == "motion":
        args += (rand(clips * f, cfg.audio_tokens + cfg.text_tokens, cfg.context_dim_temp, seed=seed + 2),)
    return args


def tsv_total(header: str) -> int:
    return int(re.search(r"total parameters \(nn.Parameter elements\): ([\d,]+)", header)[1].replace(",", ""))


# ------------------------------------------------------------------------------------ released layouts
@pytest.mark.parametrize("part", list(RELEASED))
def test_released_layout_matches_tsv(part):
    name, n_keys, n_params = RELEASED[part]
    rows, header = read_tsv(spec_tsv(name))
    with torch.device("meta"):
        net = TIA2VUNet(tia2v_preset(part))
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in net.state_dict().items()]
    assert ours == rows and len(ours) == n_keys
    assert net.num_parameters() == tsv_total(header) == n_params


@pytest.mark.parametrize("part", list(RELEASED))
def test_bare_upstream_file_loads_strictly(part, tmp_path, caplog):
    rows, _ = read_tsv(spec_tsv(RELEASED[part][0]))
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shape, generator=g) for k, shape, _ in rows}
    path = tmp_path / "ema_0.9999_110000.pt"
    torch.save(sd, path)
    with caplog.at_level(logging.INFO, logger="tav.tia2v.load"):
        net = load_tia2v_unet(path, part)
    got = net.state_dict()
    assert list(got) == list(sd) and all(torch.equal(got[k], v) for k, v in sd.items())
    compat = {"double_residual": part != "shr", "dual_block_frame_collapse": part == "motion",
              "audio_row_mapping": part == "motion"}
    assert {k: getattr(net.config, k) for k in compat} == compat
    assert dataclasses.replace(net.config, **{k: getattr(tia2v_preset(part), k) for k in compat}) == tia2v_preset(part)
    assert net.process == PROCESS and not net.training
    assert "compat='tia2v'" in caplog.text
    if part == "motion":
        fixed = load_tia2v_unet(path, part, compat="fixed")
        assert not fixed.config.dual_block_frame_collapse and not fixed.config.audio_row_mapping


def test_config_inferred_from_tiny_state_dicts():
    for part in ("content", "motion", "shr"):
        cfg = tiny(part, model_channels=64, channel_mult=(1, 3), num_res_blocks=2, transformer_depth=2,
                   context_dim=48, **({"context_dim_temp": 40} if part == "motion" else {}))
        with torch.device("meta"):
            sd = TIA2VUNet(cfg).state_dict()
        same = dict(image_size=16, num_heads=2, num_frames=4)
        assert tia2v_config_from_state_dict(sd, part, **same) == cfg
        with pytest.raises(InputError, match="cannot override.*model_channels"):
            tia2v_config_from_state_dict(sd, part, model_channels=32)


# --------------------------------------------------------------------------------------- forward shapes
@pytest.mark.parametrize("part", ["content", "motion", "shr"])
def test_forward_shapes_and_input_errors(part):
    cfg = tiny(part)
    net = built(cfg)
    args = inputs(cfg, clips=2)
    with torch.no_grad():
        out = net(*args)
    assert out.shape == (args[0].shape[0], 6, *args[0].shape[2:]) and torch.isfinite(out).all()
    with torch.no_grad():  # one timestep per clip equals the same value repeated per frame (it is expanded to
        # one per frame before the embedding, so both calls run the same kernels on equal tensors)
        per_clip = torch.tensor([100.0, 700.0])
        t_frames = per_clip if part == "shr" else per_clip.repeat_interleave(cfg.num_frames)
        assert torch.equal(net(args[0], per_clip, *args[2:]), net(args[0], t_frames, *args[2:]))
    with pytest.raises(InputError, match="context"):
        net(args[0], args[1], args[2][:1], *args[3:])
    if part != "shr":
        with pytest.raises(InputError, match="whole 4-frame clips"):
            net(args[0][:6], args[1][:6], *args[2:])
    if part == "motion":
        with pytest.raises(InputError, match="context_temp"):
            net(*args[:3])


def test_math_attention_and_checkpointing_match_sdpa():
    cfg = tiny("motion")
    net = built(cfg)
    args = inputs(cfg)
    ref = net(*args)
    ref.square().mean().backward()
    grads = {k: p.grad.clone() for k, p in net.named_parameters()}
    other = TIA2VUNet(dataclasses.replace(cfg, attention_impl="math", gradient_checkpointing=True)).eval()
    other.load_state_dict(net.state_dict())
    out = other(*args)
    out.square().mean().backward()
    assert torch.allclose(out, ref, atol=1e-5)
    assert all(torch.allclose(p.grad, grads[k], atol=1e-5) for k, p in other.named_parameters())


# ----------------------------------------------------------------------------------- compat switches
def test_dual_block_frames_corrected_vs_collapsed():
    frames, b = 4, 2
    block = randomise(DualTemporalTransformer(64, 2, 32, frames, audio_tokens=8, text_tokens=77))
    collapsed = DualTemporalTransformer(64, 2, 32, frames, audio_tokens=8, text_tokens=77, frame_collapse=True).eval()
    collapsed.load_state_dict(block.state_dict())
    x, ctx = rand(b * frames, 64, 8, 8), rand(b * frames, 85, 32, seed=1)
    with torch.no_grad():
        y, z = block(x, ctx), collapsed(x, ctx)
    spread = (y - y[:1]).abs().flatten(1).amax(1)  # every frame against frame 0 of clip 0
    assert spread[1:].min() > 1e-2  # corrected: every frame has its own features
    assert (z - z[:1]).abs().max() < 1e-6  # collapsed: all frames of all clips identical
    t0, t1 = block.transformers[0](x, ctx[:, :8]), block.transformers[1](x, ctx[:, 8:])
    assert torch.allclose(y, x + 0.7 * (t0 - x) + 0.3 * (t1 - x), atol=1e-6)
    assert torch.allclose(z, (0.7 * t0[0] + 0.3 * t1[0]).expand_as(z), atol=1e-5)


@pytest.mark.parametrize("row_mapping", [False, True])
def test_temporal_cross_attention_hears_the_mapped_frame(row_mapping):
    frames, hh = 4, 8  # 64 positions: with row mapping, 16 per frame = rows (2k, 2k+1) hear frame k
    tt = randomise(TemporalTransformer(64, 2, 32, frames, row_mapping=row_mapping))
    x, ctx = rand(2 * frames, 64, hh, hh), rand(2 * frames, 8, 32, seed=1)
    k = 2
    ctx2 = ctx.clone()
    ctx2[frames + k] += 1.0  # clip 1, frame k
    with torch.no_grad():
        diff = (tt(x, ctx2) - tt(x, ctx)).abs().amax(1).reshape(2, frames, hh, hh)  # (clip, frame, H, W)
    assert diff[0].max() == 0  # clip 0 is untouched
    changed = diff[1] > 1e-6
    if row_mapping:
        expect = torch.zeros(frames, hh, hh, dtype=torch.bool)
        expect[:, 2 * k:2 * k + 2] = True  # every frame, only the rows mapped to frame k
    else:
        expect = torch.zeros(frames, hh, hh, dtype=torch.bool)
        expect[k] = True  # frame k only, every position
    assert torch.equal(changed, expect)


def reference_temporal(tt: TemporalTransformer, x: torch.Tensor, ctx: torch.Tensor, row_mapping: bool) -> torch.Tensor:
    """Depth-1 temporal transformer written out with einops: per-pixel frame sequences, and a context per
    query sequence (row mapping: upstream's ``b m d -> (b r) m d`` repeat) or per query token (own frame)."""
    f, (hh, ww) = tt.frames, x.shape[-2:]
    blk = tt.transformer_blocks[0]
    tok = rearrange(tt.proj_in(rearrange(tt.norm(x), "(b f) c h w -> (b h w) c f", f=f)), "s c f -> s f c")
    tok = tok + blk.attn1(blk.norm1(tok))
    q = blk.norm2(tok)
    if row_mapping:
        tok = tok + blk.attn2(q, repeat(ctx, "b m d -> (b r) m d", r=hh * ww // f))
    else:
        per_frame = [blk.attn2(q[:, i:i + 1], repeat(ctx[i::f], "b m d -> (b p) m d", p=hh * ww)) for i in range(f)]
        tok = tok + torch.cat(per_frame, dim=1)
    tok = tok + blk.ff(blk.norm3(tok))
    out = rearrange(tt.proj_out(rearrange(tok, "s f c -> s c f")), "(b h w) c f -> (b f) c h w", h=hh, w=ww)
    return x + out


@pytest.mark.parametrize("row_mapping", [False, True])
def test_temporal_transformer_matches_reference(row_mapping):
    tt = randomise(TemporalTransformer(64, 2, 32, 4, row_mapping=row_mapping))
    x, ctx = rand(8, 64, 8, 8), rand(8, 8, 32, seed=1)
    with torch.no_grad():
        assert torch.allclose(tt(x, ctx), reference_temporal(tt, x, ctx, row_mapping), atol=1e-5)


def test_text_image_block_double_residual():
    """attention_ti block with the feed-forward silenced: x' = (x + A_t) + (x + A_i) (released) versus
    x + A_t + A_i; one image key makes A_i the same projected image vector at every position."""
    torch.manual_seed(0)
    double = randomise(FirstFrameBlock(32, 2, 16, text_tokens=5, double_residual=True))
    with torch.no_grad():
        double.ff.net[2].weight.zero_()
        double.ff.net[2].bias.zero_()
    single = FirstFrameBlock(32, 2, 16, text_tokens=5, double_residual=False).eval()
    single.load_state_dict(double.state_dict())
    x, ctx = rand(2, 3 * 4, 32), rand(2, 6, 16, seed=1)  # 3 frames of 4 tokens, 5 text + 1 image token
    with torch.no_grad():
        y_double, y_single = double(x, ctx, 4), single(x, ctx, 4)
        h = x + double.attn1(double.norm1(x), double.norm1(x)[:, :4])
        image_vec = double.attn2.to_out(double.attn2.to_v(ctx[:, 5:]))  # (2, 1, 32)
    assert torch.allclose(y_double - y_single, h, atol=1e-5)
    a_image = y_single - h - double.attn2(double.norm2(h), ctx[:, :5])
    assert torch.allclose(a_image, image_vec.expand_as(a_image), atol=1e-5)


def test_content_frame0_attention_and_frame_independence():
    cfg = tiny("content")
    net = built(cfg)
    x, t, ctx = inputs(cfg)
    t = torch.full_like(t, 500.0)
    later = x.clone()
    later[1:] = rand(cfg.num_frames - 1, 3, 16, 16, seed=7)
    first = x.clone()
    first[0] = rand(3, 16, 16, seed=8)
    with torch.no_grad():
        ref, y_later, y_first = net(x, t, ctx), net(later, t, ctx), net(first, t, ctx)
    assert torch.equal(ref[0], y_later[0])  # frame 0 never looks at frames 1..F-1
    assert (y_first[1:] - ref[1:]).abs().amax() > 1e-3  # but every frame's K/V come from frame 0


@pytest.mark.parametrize("part,switches", [("content", {}), ("motion", {}), ("motion", {"audio_row_mapping": True}),
                                           ("shr", {})])
def test_two_clips_equal_two_single_clip_calls(part, switches):
    cfg = tiny(part, **switches)
    net = built(cfg)
    args = inputs(cfg, clips=2)
    f = 1 if part == "shr" else cfg.num_frames
    with torch.no_grad():
        both = net(*args)
        for c in range(2):
            one = [args[0][c * f:(c + 1) * f], args[1][c * f:(c + 1) * f], args[2][c:c + 1]]
            if part == "motion":
                one.append(args[3][c * f:(c + 1) * f])
            assert torch.allclose(both[c * f:(c + 1) * f], net(*one), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------- content -> motion
def test_transfer_at_released_configs():
    _, header = read_tsv(spec_tsv("tia2v_motion_unet.tsv"))
    absent = re.search(r"content keys absent here: (.*)", header)[1].split(", ")
    with torch.device("meta"):
        content_sd = TIA2VUNet(tia2v_preset("content")).state_dict()
        motion = TIA2VUNet(tia2v_preset("motion"))
    report = transfer_content_to_motion(content_sd, motion)
    assert len(report["copied"]) == 354 and report["skipped"] == [] and report["remapped"] == {}
    assert report["unused"] == absent and len(absent) == 12
    assert len(report["fresh"]) == 950 - 354
    remapped = transfer_content_to_motion(content_sd, motion, remap_shifted=True)
    assert len(remapped["copied"]) == 366 and remapped["unused"] == [] and len(remapped["fresh"]) == 950 - 366
    assert remapped["remapped"] == {k: k.replace("middle_block.2.", "middle_block.3.").replace(
        "output_blocks.2.2.conv", "output_blocks.2.3.conv") for k in absent}


def test_remapped_transfer_makes_motion_equal_content():
    """Fresh temporal layers are identities (zero last conv / proj_out), so a motion net initialised from a
    content net computes the content net, exactly when the shifted modules are remapped too."""
    content = built(tiny("content"))
    cfg = tiny("motion")
    x, t, ctx, ctx_temp = inputs(cfg)
    outs = {}
    for remap in (False, True):
        torch.manual_seed(1)
        motion = TIA2VUNet(cfg).eval()
        report = transfer_content_to_motion(content.state_dict(), motion, remap_shifted=remap)
        assert torch.equal(motion.state_dict()["input_blocks.1.0.in_layers.2.weight"],
                           content.state_dict()["input_blocks.1.0.in_layers.2.weight"])
        with torch.no_grad():
            outs[remap] = motion(x, t, ctx, ctx_temp)
        assert len(report["unused"]) == (0 if remap else 12)
    with torch.no_grad():
        ref = content(x, t, ctx)
    assert torch.allclose(outs[True], ref, atol=1e-5)
    assert (outs[False] - ref).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------ checkpoints
def test_save_load_round_trip_and_errors(tmp_path):
    cfg = tiny("motion", audio_row_mapping=True, temporal_pos_emb="learned")
    net = built(cfg)
    path = save_tia2v_unet(net, tmp_path / "model000100.pt", PROCESS, step=100)
    loaded = load_tia2v_unet(path, "motion")
    assert loaded.config == cfg and loaded.process == PROCESS
    args = inputs(cfg)
    with torch.no_grad():
        assert torch.equal(loaded(*args), net(*args))
    assert load_tia2v_unet(path, "motion", compat="tia2v").config.dual_block_frame_collapse
    assert load_tia2v_unet(path, "motion", rescale_timesteps=False).process.rescale_timesteps is False
    with pytest.raises(InputError, match=r"model000100\.pt: holds the TIA2V motion U-Net, not the content U-Net "
                                         r"wanted here; pass the content model's checkpoint"):
        load_tia2v_unet(path, "content")
    with pytest.raises(InputError, match="do not fit"):
        load_tia2v_unet(path, "motion", model_channels=64)
    with pytest.raises(InputError, match="unknown TIA2V"):
        load_tia2v_unet(path, "motion", heads=3)
    bare = tmp_path / "model.pt"
    torch.save(built(tiny("content")).state_dict(), bare)
    with pytest.raises(InputError, match=r"model\.pt: holds an upstream TIA2V content U-Net state dict, not the shr "
                                         r"U-Net wanted here; pass the shr model's checkpoint"):
        load_tia2v_unet(bare, "shr")


def test_lightning_checkpoint_prefers_ema(tmp_path):
    cfg = tiny("shr")
    raw, ema = built(cfg, seed=0), built(cfg, seed=1)
    tensors = {**{f"net.{k}": v for k, v in raw.state_dict().items()},
               **{f"ema.{k}": v for k, v in ema.state_dict().items()}}
    path = tmp_path / "last.ckpt"
    config = {"unet": to_dict(cfg), "process": to_dict(PROCESS)}
    torch.save({"hyper_parameters": {"stage": "tia2v_shr", "config": config}, "state_dict": tensors,
                "global_step": 3}, path)
    key = "out.2.weight"
    assert torch.equal(load_tia2v_unet(path, "shr").state_dict()[key], ema.state_dict()[key])
    assert torch.equal(load_tia2v_unet(path, "shr", ema=False).state_dict()[key], raw.state_dict()[key])
    ta2v = tmp_path / "ta2v.pt"
    save_checkpoint(ta2v, "unet", {"unet": {}, "process": {}}, {"input_blocks.0.0.weight": torch.zeros(1)})
    with pytest.raises(InputError, match="ta2v.pt: holds a 'unet' checkpoint"):
        load_tia2v_unet(ta2v, "shr")


def test_config_validation_and_presets():
    assert tia2v_preset("motion").double_residual and not tia2v_preset("shr").double_residual
    assert TIA2VUNetConfig(part="shr", image_size=128, channel_mult=(1, 1, 2, 3, 4)).double_residual is False
    assert TIA2VUNetConfig(part="content").double_residual is True
    with pytest.raises(InputError, match="dual_block_frame_collapse=True is a motion-model switch"):
        TIA2VUNetConfig(part="content", dual_block_frame_collapse=True)
    with pytest.raises(InputError, match="double_residual"):
        TIA2VUNetConfig(part="shr", double_residual=True)
    with pytest.raises(InputError, match="GroupNorm"):
        TIA2VUNetConfig(model_channels=48)
    with pytest.raises(InputError, match="unknown TIA2V U-Net preset"):
        tia2v_preset("nope")
    with pytest.raises(InputError, match="audio_row_mapping needs H"):
        net = TIA2VUNet(tiny("motion", audio_row_mapping=True, num_frames=3))
        net(*inputs(tiny("motion", num_frames=3)))
