"""VQGAN library: shapes, the released key layout, the EMA codebook, losses, odd sizes, LPIPS loading."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tav.errors import InputError
from tav.vqgan import VQGAN, VQGANConfig, vqgan_config_from_dict, vqgan_preset
from tav.vqgan.losses import (
    build_perceptual,
    chroma_loss,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
    gradient_difference_loss,
    hinge_d_loss,
    random_frame_index,
    reconstruction_loss,
    select_frames,
    vanilla_d_loss,
)
from tav.vqgan.quantizer import EMACodebook

from .helpers import assert_nearest_codes, clip, read_tsv, spec_tsv, tiny_vqgan_cfg

TSV = spec_tsv("ta2v_vqgan.tsv")


@pytest.fixture(scope="module")
def random_lpips():
    with pytest.warns(UserWarning, match="random VGG16"):
        return build_perceptual(2.0, random_backbone=True)


# ------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("res,latent", [(96, (4, 12, 12)), (64, (4, 8, 8))])
def test_latent_shapes_urmp_landscape(res, latent):
    cfg = tiny_vqgan_cfg(downsample=(4, 8, 8), resolution=res, sequence_length=16)
    assert cfg.latent_shape == latent
    model = VQGAN(cfg).eval()
    with torch.no_grad():
        codes = model.encode(clip(1, 3, 16, res, res))
        assert codes.shape == (1, *latent) and codes.dtype == torch.long
        assert int(codes.min()) >= 0 and int(codes.max()) < cfg.n_codes
        assert model.decode(codes).shape == (1, 3, 16, res, res)


def test_presets():
    assert vqgan_preset("urmp").latent_shape == (4, 12, 12)
    assert vqgan_preset("urmp").n_latents == 576
    assert vqgan_preset("landscape").latent_shape == (4, 8, 8)
    tiny = vqgan_preset("tiny")
    assert tiny.latent_shape == (2, 4, 4) and tiny.norm == "batch"


def test_config_validation():
    with pytest.raises(InputError, match="powers of two"):
        VQGANConfig(downsample=(3, 8, 8))
    with pytest.raises(InputError, match="GroupNorm"):
        VQGANConfig(n_hiddens=8, norm="group")
    with pytest.raises(InputError, match="unknown key"):
        vqgan_config_from_dict({"n_hidden": 32})
    with pytest.raises(InputError, match="chroma_weight=-0.5: must be >= 0"):
        VQGANConfig(chroma_weight=-0.5)
    for lr in (0.0, -1.0):
        with pytest.raises(InputError, match=rf"vqgan.lr={lr}: must be > 0 \(--lr\)"):
            VQGANConfig(lr=lr)
    # not a multiple of the factors: allowed (padded), latent rounds up
    assert VQGANConfig(resolution=9, sequence_length=16).latent_shape == (4, 2, 2)


def test_urmp_state_dict_matches_released_layout():
    rows, header = read_tsv(TSV)
    model = VQGAN(vqgan_preset("urmp"))
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    released = [r for r in rows if not r[0].startswith("perceptual_model.")]
    assert [r for r in ours if r[0] != "codebook.initialised"] == released
    parts = dict(re.findall(r"(\w+)=([\d,]+)", header.split("per-part parameters:")[1].splitlines()[0]))
    for name, count in parts.items():
        if name != "perceptual_model":
            assert sum(p.numel() for p in getattr(model, name).parameters()) == int(count.replace(",", ""))
    total = int(re.search(r"total parameters \(nn.Parameter elements\): ([\d,]+)", header)[1].replace(",", ""))
    lpips_params = int(parts["perceptual_model"].replace(",", ""))
    assert sum(p.numel() for p in model.parameters()) == total - lpips_params == 37_476_613


def test_discriminator_shapes():
    cfg = tiny_vqgan_cfg(disc_layers=3)
    model = VQGAN(cfg).eval()
    logits, feats = model.image_discriminator(clip(2, 3, 96, 96))
    assert logits.shape == (2, 1, 15, 15) and len(feats) == 5 and feats[-1] is logits
    logits, _ = model.video_discriminator(clip(1, 3, 16, 32, 32))
    assert logits.shape == (1, 1, 5, 7, 7)


# ------------------------------------------------------------------------------------------- codebook
def test_codebook_assignment_and_ema_update_by_hand():
    cb = EMACodebook(n_codes=3, dim=2, decay=0.9, commitment_weight=0.25, random_restart=False)
    e = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    cb.embeddings.copy_(e)
    cb.z_avg.copy_(e)
    cb.N.fill_(1.0)
    cb.initialised.fill_(True)
    rows = torch.tensor([[0.1, 0.1], [0.9, -0.1], [1.2, 0.2], [0.2, 1.5]])  # nearest: 0, 1, 1, 2
    z = rows.t().reshape(1, 2, 1, 1, 4)  # (B, D, t, h, w) with the 4 rows along w
    assert cb.assign(z).tolist() == [[[[0, 1, 1, 2]]]]

    cb.train()
    out = cb(z)
    assert out["codes"].flatten().tolist() == [0, 1, 1, 2]
    # hand computation: N <- 0.9 N + 0.1 n ; z_avg <- 0.9 z_avg + 0.1 sum ; e = z_avg / smoothed N
    n_new = [0.9 + 0.1 * 1, 0.9 + 0.1 * 2, 0.9 + 0.1 * 1]
    sums = [[0.1, 0.1], [2.1, 0.1], [0.2, 1.5]]
    zavg = [[0.9 * e[k, j].item() + 0.1 * sums[k][j] for j in range(2)] for k in range(3)]
    total = sum(n_new)
    w = [(n + 1e-7) / (total + 3e-7) * total for n in n_new]
    expect_e = [[zavg[k][j] / w[k] for j in range(2)] for k in range(3)]
    torch.testing.assert_close(cb.N, torch.tensor(n_new))
    torch.testing.assert_close(cb.z_avg, torch.tensor(zavg))
    torch.testing.assert_close(cb.embeddings, torch.tensor(expect_e))
    # outputs use the code vectors from before the update
    q = e[[0, 1, 1, 2]]
    torch.testing.assert_close(out["embeddings"].reshape(2, 4).t(), q)
    torch.testing.assert_close(out["commitment_loss"], 0.25 * F.mse_loss(rows, q))
    p = torch.tensor([0.25, 0.5, 0.25])
    torch.testing.assert_close(out["perplexity"], torch.exp(-(p * p.log()).sum()))


def test_codebook_data_dependent_init_and_restart():
    torch.manual_seed(0)
    cb = EMACodebook(n_codes=16, dim=4, random_restart=True, restart_thres=1.0).train()
    assert not bool(cb.initialised)
    z = torch.randn(1, 4, 1, 2, 3)  # 6 rows < 16 codes: tiled with small noise
    cb(z)
    assert bool(cb.initialised)
    rows = z.movedim(1, -1).reshape(-1, 4)
    # every code is one of the batch rows up to the 0.01/sqrt(D) tiling noise (or its EMA mean)
    dist = torch.cdist(cb.embeddings, rows).min(1).values
    assert float(dist.max()) < 0.1
    # eval mode never changes the codebook
    cb.eval()
    before = cb.embeddings.clone()
    cb(torch.randn(1, 4, 1, 2, 3) * 10)
    assert torch.equal(before, cb.embeddings)


def _background_and_outliers(n_bg: int = 60, dim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A latent grid ``(1, dim, 1, 1, n_bg + 4)`` of rows at the origin (the dark background) plus 4 far rows."""
    far = torch.tensor([[10.0, 0, 0, 0], [0, 10.0, 0, 0], [0, 0, 10.0, 0], [0, 0, 0, 10.0]])[:, :dim]
    rows = torch.cat([torch.zeros(n_bg, dim), far])
    return rows.t().reshape(1, dim, 1, 1, -1), far


@pytest.mark.parametrize("sampling", ["uniform", "error"])
def test_codebook_error_restart_sends_dead_codes_to_the_rows_it_fits_worst(sampling):
    torch.manual_seed(0)
    cb = EMACodebook(n_codes=8, dim=4, restart_thres=1.0, restart_sampling=sampling).train()
    z, far = _background_and_outliers()
    cb.embeddings.zero_()  # every code at the background: the far rows are fitted badly
    cb.z_avg.zero_()
    cb.N.fill_(0.5)  # and every code is dead, so all 8 restart this step
    cb.initialised.fill_(True)
    cb(z)
    near_far = torch.cdist(cb.embeddings[1:], far).min(1).values < 0.1  # codes 1-7 (0 took every row: alive)
    if sampling == "error":
        assert bool(near_far.all())  # D^2 weights: the background rows (distance 0) are never drawn
    else:
        assert int(near_far.sum()) <= 4  # 4 far rows of 64: a uniform draw of 7 picks mostly background


def test_codebook_restart_reset_ema_lets_a_restarted_code_survive():
    z, far = _background_and_outliers()
    alive = {}
    for reset in (False, True):
        torch.manual_seed(0)
        cb = EMACodebook(n_codes=8, dim=4, restart_thres=0.5, restart_sampling="error", restart_reset_ema=reset)
        cb.train().initialised.fill_(True)
        cb.embeddings.zero_()
        cb.z_avg.zero_()
        cb.N.fill_(0.25)  # every code dead: all 8 restart onto the far rows
        cb(z)
        restarted = cb.embeddings.clone()
        if reset:  # count = restart_thres, sum = vector x count
            torch.testing.assert_close(cb.N[1:], torch.full((7,), 0.5))
            torch.testing.assert_close(cb.z_avg[1:], restarted[1:] * 0.5)
        out = cb(far.t().reshape(1, 4, 1, 1, 4))  # each far row now uses one restarted code
        used = out["codes"].flatten()
        used = used[used > 0]  # restarted codes (a far row that no restart drew stays with code 0)
        assert used.numel() >= 2
        alive[reset] = bool((cb.N[used] >= 0.5).all())
        if reset:  # kept where the restart put them (the EMA adds 1% of the row's own value)
            torch.testing.assert_close(cb.embeddings[used], restarted[used], atol=0.05, rtol=0)
    # upstream's restart moves only the vector: the count stays below the threshold, so the code restarts again
    assert alive == {False: False, True: True}


def test_codebook_flag_absent_in_released_state_dict_means_initialised():
    cb = EMACodebook(4, 2)
    sd = {k: v for k, v in EMACodebook(4, 2).state_dict().items() if k != "initialised"}
    cb.load_state_dict(sd, strict=True)
    assert bool(cb.initialised)
    fresh = EMACodebook(4, 2)
    cb.load_state_dict(fresh.state_dict(), strict=True)
    assert not bool(cb.initialised)


def test_codebook_runs_in_float32_under_autocast():
    torch.manual_seed(0)
    cb = EMACodebook(n_codes=64, dim=8).train()
    cb.initialised.fill_(True)
    z = torch.randn(2, 8, 1, 3, 3).to(torch.bfloat16)
    emb = cb.embeddings.clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = cb.assign(z)
        out = cb(z)
    flat = z.float().movedim(1, -1).reshape(-1, 8)
    assert_nearest_codes(codes, flat, emb)  # the fused distance rounds unlike cdist: ties may go either way
    assert torch.equal(out["codes"], codes)  # the same call on the same tensor
    assert out["embeddings"].dtype == torch.float32 and out["commitment_loss"].dtype == torch.float32


def test_encode_does_not_touch_codebook_in_training_mode():
    model = VQGAN(tiny_vqgan_cfg()).train()
    before = {k: v.clone() for k, v in model.codebook.state_dict().items()}
    model.encode(clip(2, 3, 4, 16, 16))
    assert all(torch.equal(before[k], v) for k, v in model.codebook.state_dict().items())


def test_straight_through_gradient_reaches_encoder():
    torch.manual_seed(0)
    model = VQGAN(tiny_vqgan_cfg()).train()
    video = clip(2, 3, 4, 16, 16)
    recon, vq = model(video)
    assert recon.shape == video.shape and vq["codes"].shape == (2, 2, 4, 4)
    (F.l1_loss(recon, video) + vq["commitment_loss"]).backward()
    for mod in (model.encoder.conv_first, model.pre_vq_conv, model.post_vq_conv, model.decoder.conv_last):
        assert mod.conv.weight.grad is not None and float(mod.conv.weight.grad.abs().sum()) > 0
    assert model.image_discriminator.model0[0].weight.grad is None


# ------------------------------------------------------------------------------------------- odd sizes
@pytest.mark.parametrize("size", [(4, 9, 9), (5, 9, 11)])
def test_odd_resolution_round_trips_to_same_shape(size):
    cfg = tiny_vqgan_cfg(resolution=9, sequence_length=4)
    model = VQGAN(cfg).eval()
    video = clip(1, 3, *size)
    with torch.no_grad():
        recon, vq = model(video)
        codes = model.encode(video)
    assert recon.shape == video.shape
    assert codes.shape == (1, math.ceil(size[0] / 2), math.ceil(size[1] / 4), math.ceil(size[2] / 4))
    assert torch.equal(codes, vq["codes"])
    if size == cfg.input_shape:
        assert model.decode(codes).shape == video.shape  # configured grid -> cropped to the config size
    assert model.decode(codes, size=size).shape == video.shape


def test_odd_resolution_training_losses_run(random_lpips):
    cfg = tiny_vqgan_cfg(resolution=9, sequence_length=4, discriminator_iter_start=0)
    model = VQGAN(cfg).train()
    video = clip(2, 3, 4, 9, 9)
    recon, vq = model(video)
    loss, parts = generator_loss(model, random_lpips, video, recon, vq, step=0, frame_idx=torch.tensor([1, 2]))
    assert torch.isfinite(loss) and parts["perceptual_loss"] > 0 and "g_adv" in parts
    d_loss, _ = discriminator_loss(model, video, recon, step=0, frame_idx=torch.tensor([1, 2]))
    assert torch.isfinite(d_loss)


def test_channels_last_gives_same_outputs():
    model = VQGAN(tiny_vqgan_cfg()).eval()
    video = clip(2, 3, 4, 16, 16)
    with torch.no_grad():
        codes = model.encode(video)
        ref = model.decode(codes)
        z = model.encode_latents(video)
        model.to_channels_last()
        assert model.encoder.conv_first.conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
        z_cl = model.encode_latents(video)
        torch.testing.assert_close(z_cl, z, rtol=1e-4, atol=1e-5)  # another kernel layout: last-bit differences
        assert_nearest_codes(model.encode(video), z.movedim(1, -1).reshape(-1, z.shape[1]),
                             model.codebook.embeddings)
        torch.testing.assert_close(model.decode(codes), ref, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------- losses
def test_hinge_and_vanilla_known_values():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, .5, 2] -> 2.5/3 ; relu(1 + fake) = [0, 1, 2] -> 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 1.0))
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expect = 0.5 * (sum(sp(-r) for r in real.tolist()) / 3 + sum(sp(f) for f in fake.tolist()) / 3)
    assert vanilla_d_loss(real, fake).item() == pytest.approx(expect, rel=1e-6)


def test_feature_matching_known_values():
    fake = [torch.ones(2, 3), torch.zeros(4), torch.full((1,), 100.0)]  # last = logits, ignored
    real = [torch.zeros(2, 3, requires_grad=True), torch.full((4,), 2.0), torch.zeros(1)]
    loss = feature_matching_loss(fake, real, layer_weight=0.5)
    assert loss.item() == pytest.approx(0.5 * (1.0 + 2.0))


def test_select_frames():
    video = torch.arange(2 * 1 * 3 * 1 * 1, dtype=torch.float32).view(2, 1, 3, 1, 1)
    frames = select_frames(video, torch.tensor([2, 0]))
    assert frames.flatten().tolist() == [2.0, 3.0]
    idx = random_frame_index(video, torch.Generator().manual_seed(0))
    assert idx.shape == (2,) and int(idx.max()) < 3


def test_generator_and_discriminator_losses(random_lpips):
    torch.manual_seed(0)
    cfg = tiny_vqgan_cfg(discriminator_iter_start=5)
    model = VQGAN(cfg).train()
    lp = random_lpips
    video = clip(2, 3, 4, 16, 16)
    recon, vq = model(video)
    idx = torch.tensor([0, 3])
    loss, parts = generator_loss(model, lp, video, recon, vq, step=0, frame_idx=idx)
    assert set(parts) == {"recon_loss", "commitment_loss", "perceptual_loss", "perplexity"}
    total = parts["recon_loss"] + parts["commitment_loss"] + parts["perceptual_loss"]
    torch.testing.assert_close(loss.detach(), total)
    torch.testing.assert_close(parts["recon_loss"], 4.0 * F.l1_loss(recon, video).detach())
    d_loss, _ = discriminator_loss(model, video, recon, step=0, frame_idx=idx)
    assert d_loss.item() == 0.0

    loss, parts = generator_loss(model, lp, video, recon, vq, step=5, frame_idx=idx)
    assert {"g_adv", "feat_match"} <= set(parts) and torch.isfinite(loss)
    loss.backward()
    assert float(model.encoder.conv_first.conv.weight.grad.abs().sum()) > 0
    model.zero_grad()
    d_loss, d_parts = discriminator_loss(model, video, recon, step=5, frame_idx=idx)
    assert d_loss.item() > 0
    assert d_loss.item() == pytest.approx((d_parts["d_image_loss"] + d_parts["d_video_loss"]).item())
    d_loss.backward()
    assert model.encoder.conv_first.conv.weight.grad is None  # inputs were detached
    assert float(model.video_discriminator.model0[0].weight.grad.abs().sum()) > 0


# ------------------------------------------------------------------------------------------- LPIPS
def test_lpips_backbone_from_torchvision_file(tmp_path, monkeypatch, random_lpips):
    monkeypatch.setenv("TAV_CKPT_DIR", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(InputError, match="vgg16-397923af.pth"):
        build_perceptual()
    ref = random_lpips
    # a torchvision-layout file: features.{i}.weight / bias
    vgg = {f"features.{k.split('.')[2]}.{k.split('.')[3]}": v.clone()
           for k, v in ref.lpips.state_dict().items() if k.startswith("net.slice")}
    torch.save(vgg, tmp_path / "vgg16-397923af.pth")
    lp = build_perceptual(input_scale=1.0)
    assert not lp.random_backbone
    key = "net.slice5.28.weight"
    torch.testing.assert_close(lp.lpips.state_dict()[key], ref.lpips.state_dict()[key])
    x = clip(2, 3, 16, 16)
    d = lp(x, x)
    assert d.shape == (2,) and float(d.abs().max()) < 1e-6
    lp.train()
    assert not lp.lpips.training


# ------------------------------------------------------------------------------------------- DDP
def _ddp_codebook_worker(rank: int, init_file: str, out_dir: str, error_restarts: bool) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(100 + rank)  # different data and different local randomness per rank
        mode = dict(restart_sampling="error", restart_reset_ema=True) if error_restarts else {}
        cb = EMACodebook(n_codes=16, dim=4, random_restart=True, restart_thres=1.0, **mode).train()
        for _ in range(3):
            cb(torch.randn(1, 4, 1, 2, 3) + rank)
        torch.save(cb.state_dict(), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("error_restarts", [False, True])
def test_codebook_stays_identical_across_two_ddp_ranks(tmp_path, error_restarts):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_codebook_worker, args=(str(tmp_path / "init"), str(tmp_path), error_restarts), nprocs=2)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert bool(a["initialised"]) and set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    single = EMACodebook(n_codes=16, dim=4).train()
    single(torch.randn(1, 4, 1, 2, 3))  # without a process group the same code runs unsynchronised
    assert bool(single.initialised)


def test_reconstruction_loss_weights_l1_and_mse():
    video = torch.zeros(1, 3, 2, 4, 4)
    recon = video + 0.1
    assert float(reconstruction_loss(VQGANConfig(l1_weight=4.0), recon, video)) == pytest.approx(0.4)
    cfg = VQGANConfig(l1_weight=1.0, l2_weight=10.0)
    assert float(reconstruction_loss(cfg, recon, video)) == pytest.approx(0.1 + 10 * 0.01)


def test_gradient_difference_loss_sees_edges_not_offsets():
    video = torch.zeros(1, 1, 1, 2, 2)
    recon = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 1, 1, 2, 2)
    # dx of recon: [[-1], [0]] -> mean |.| 0.5; dy: [[-1, 0]] -> 0.5
    assert float(gradient_difference_loss(recon, video)) == pytest.approx(1.0)
    assert float(gradient_difference_loss(video + 0.3, video)) == pytest.approx(0.0)
    cfg = VQGANConfig(l1_weight=0.0, grad_weight=2.0)
    assert float(reconstruction_loss(cfg, recon, video)) == pytest.approx(2.0)
    assert float(reconstruction_loss(VQGANConfig(l1_weight=0.0), recon, video)) == 0.0


def test_squared_gradient_difference_weights_high_frequencies():
    video = torch.zeros(1, 1, 1, 2, 2)
    recon = torch.tensor([[2.0, 0.0], [0.0, 0.0]]).view(1, 1, 1, 2, 2)
    # dx of recon: [[-2], [0]] -> mean square 2; dy: [[-2, 0]] -> 2 (L1: 1 + 1)
    assert float(gradient_difference_loss(recon, video, exponent=2)) == pytest.approx(4.0)
    assert float(gradient_difference_loss(recon, video, exponent=1)) == pytest.approx(2.0)
    cfg = VQGANConfig(l1_weight=0.0, grad_weight=0.5, grad_exponent=2)
    assert float(reconstruction_loss(cfg, recon, video)) == pytest.approx(2.0)
    # an error alternating pixel by pixel (the highest frequency) costs 8x its MSE; a constant offset nothing
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).view(1, 1, 1, 2, 2)
    assert float(gradient_difference_loss(checker, video, exponent=2)) == pytest.approx(8.0)
    assert float(gradient_difference_loss(video + 0.3, video, exponent=2)) == pytest.approx(0.0)
    with pytest.raises(InputError, match="grad_exponent"):
        VQGANConfig(grad_exponent=3)


def test_chroma_loss_sees_hue_not_grey():
    video = torch.zeros(1, 3, 1, 2, 2)
    assert float(chroma_loss(video + 0.4, video)) == pytest.approx(0.0)  # a grey offset: same on every channel
    green = torch.zeros(1, 3, 1, 2, 2)
    green[:, 1] = 0.3  # an error on one channel: chroma errors (-0.1, 0.2, -0.1) on every pixel
    assert float(chroma_loss(green, video)) == pytest.approx((0.01 + 0.04 + 0.01) / 3)
    assert float(chroma_loss(green, video)) == pytest.approx(2 / 3 * float(torch.nn.functional.mse_loss(green, video)))
    cfg = VQGANConfig(l1_weight=0.0, l2_weight=1.0, chroma_weight=3.0)
    assert float(reconstruction_loss(cfg, green, video)) == pytest.approx(0.03 + 3 * 0.02)
    assert float(reconstruction_loss(cfg, video + 0.4, video)) == pytest.approx(0.16)
