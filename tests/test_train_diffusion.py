"""Diffusion-prior training (scripts/diffusion_video_train_3d.py + tav.training.diffusion_module) and the U-Net
loader (tav.diffusion.load): seed line, EMA arithmetic, overfitting, exports, resume, bad input. Tiny, CPU."""

import copy
import dataclasses
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from tav.checkpoint import safe_load
from tav.config import from_dict
from tav.diffusion.config import UNetConfig
from tav.diffusion.load import load_diffusion, load_unet, read_unet_checkpoint, save_unet
from tav.diffusion.schedule import GaussianSchedule, ProcessConfig
from tav.diffusion.unet3d import UNet
from tav.errors import InputError
from tav.training.diffusion_module import (
    DiffusionModule,
    DiffusionTrainConfig,
    ema_tensors,
    ema_update,
    quartile_losses,
)
from tav.vqgan import VQGAN, save_vqgan
from tav_scripts import diffusion_video_train_3d as script

from .helpers import metrics, optimizer_steps, tiny_vqgan_cfg

SEED_LINE = (
    "--num_workers 8 --gpus 1 --batch_size 1 --text_stft_cond --data_path datasets/post_URMP/ --load_vid_len 30 "
    "--save_dir path/to/save --resolution 128 --sequence_length 16 --diffusion_steps 4000 --noise_schedule cosine "
    "--lr 5e-5 --num_channels 128 --num_res_blocks 3 --class_cond False  --log_interval 50 --save_interval 5000 "
    "--image_size 128 --learn_sigma True"
).split()


def tiny_unet(**kw) -> UNetConfig:
    base = dict(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                num_heads=2)
    base.update(kw)
    return UNetConfig(**base)


def tiny(data, root, *extra):
    return ["--config", "tiny", "--data_path", str(data), "--load_vid_len", "8", "--resolution", "16",
            "--sequence_length", "4", "--save_dir", str(root), "--accelerator", "cpu", "--devices", "1",
            "--num_workers", "0", "--progress_bar_refresh_rate", "0", "--log_interval", "1", *map(str, extra)]


def _seed_line(data: Path, root: Path) -> list[str]:
    swap = {"datasets/post_URMP/": str(data), "path/to/save": str(root)}
    return [swap.get(a, a) for a in SEED_LINE]


# ------------------------------------------------------------------------------------------- seed line
def test_seed_line_resolves_to_the_release_config(vat, tmp_path, capsys):
    assert script.train([*_seed_line(vat, tmp_path / "run"), "--dry_run"]) is None
    tree = yaml.safe_load(capsys.readouterr().out)
    m, p, t, d = tree["model"], tree["process"], tree["train"], tree["data"]
    assert (m["model_channels"], m["num_res_blocks"], m["image_size"], m["out_channels"]) == (128, 3, 128, 6)
    assert m["channel_mult"] == [1, 1, 2, 3, 4] and m["attention_resolutions"] == [16, 8] and m["dims"] == 3
    assert (p["steps"], p["noise_schedule"], p["learn_sigma"], p["loss"]) == (4000, "cosine", True, "mse")
    assert (t["batch_size"], t["lr"], t["log_interval"], t["save_interval"], t["ema_rate"]) == (1, 5e-5, 50, 5000,
                                                                                                 0.9999)
    assert (d["resolution"], d["sequence_length"], d["frames_per_file"], d["load_audio"]) == (128, 16, 30, False)
    assert tree["trainer"]["default_root_dir"] == str(tmp_path / "run")
    with torch.device("meta"):
        assert sum(p.numel() for p in UNet(from_dict(UNetConfig, m)).parameters()) == 318_258_694


def test_a_windowed_prior_is_a_unet_of_the_frame_size(vat, tmp_path, capsys):
    assert script.train([*_seed_line(vat, tmp_path / "run"), "--set", "train.crop_size=64", "--set",
                         "train.crop_detail=0.5", "--dry_run"]) is None
    tree = yaml.safe_load(capsys.readouterr().out)
    assert (tree["model"]["image_size"], tree["data"]["resolution"]) == (128, 128)  # the size it samples at
    assert (tree["train"]["crop_size"], tree["train"]["crop_detail"]) == (64, 0.5)


@pytest.mark.parametrize("flags, needle", [
    (["--class_cond", "True"], "unconditional"),
    (["--image_size", "64"], "--image_size 64 and --resolution 128 disagree"),
    (["--dims", "2"], "--dims 2"),
    (["--timestep_respacing", "100"], "--timestep_respacing"),
    (["--ema_rate", "0.9999,0.99"], "one EMA decay"),
    (["--set", "process.noise_schedule=quadratic"], "noise_schedule"),
    (["--set", "train.crop_size=200"], "use a multiple of the U-Net's downsampling (16) no larger"),
    (["--set", "train.crop_size=72"], "train.crop_size=72: use a multiple"),
])
def test_bad_flags_are_one_line_errors(vat, tmp_path, capsys, flags, needle):
    assert script.main([*_seed_line(vat, tmp_path / "run"), *flags, "--dry_run"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and err.startswith("diffusion_video_train_3d: error:")


# ------------------------------------------------------------------------------------------- module
def test_ema_update_arithmetic():
    torch.manual_seed(0)
    net, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in ema.parameters()]
    ema_update(ema, net, 0.9)
    for e, old, p in zip(ema.parameters(), before, net.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * old + 0.1 * p.detach())
    ema_update(ema, net, 0.0)  # rate 0 copies
    for e, p in zip(ema.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(e, p.detach())


def test_ema_update_with_collected_tensors_matches_and_copies_buffers():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema, fresh = copy.deepcopy(net), copy.deepcopy(net)
    tensors = ema_tensors(ema, net)
    for step in range(3):  # the same lists, reused across steps, as the module does
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * (step + 1))
            net[1].running_mean.add_(1.0)
        ema_update(ema, net, 0.9, tensors)
        ema_update(fresh, net, 0.9)
    for a, b in zip(ema.state_dict().values(), fresh.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(ema[1].running_mean, torch.full((4,), 3.0))  # buffers are copied, not averaged
    with pytest.raises(InputError, match="EMA copy has 2 parameters"):
        ema_tensors(torch.nn.Linear(3, 4), net)


class _BufferedUNet(torch.nn.Module):
    """A network with a buffer, for the EMA pairing after ``.to()``."""

    def __init__(self, cfg):
        super().__init__()
        self.inner = UNet(cfg)
        self.register_buffer("count", torch.zeros(2))


class _BufferedModule(DiffusionModule):
    def build_net(self, cfg):
        return _BufferedUNet(cfg)


def test_ema_pairs_follow_buffers_replaced_by_to():
    """``.double()`` (as ``.to(device)``) puts new buffer tensors in place; the EMA copy must follow the network's
    current buffers, not the ones collected at the first step."""
    module = _BufferedModule(tiny_unet(), ProcessConfig(steps=100), DiffusionTrainConfig())
    module.on_train_batch_end(None, None, 0)  # collects the pairs
    module.double()
    module._ema_step = -1  # as at the next optimiser step
    module.net.count.fill_(7.0)
    module.on_train_batch_end(None, None, 0)
    assert module.ema.count.dtype == torch.float64
    torch.testing.assert_close(module.ema.count, torch.full((2,), 7.0, dtype=torch.float64))


def test_quartile_losses_group_by_timestep():
    loss, t = torch.tensor([1.0, 2.0, 3.0, 5.0]), torch.tensor([0, 10, 999, 500])
    assert {k: float(v) for k, v in quartile_losses(loss, t, 1000).items()} == {
        "train_loss_q0": 1.5, "train_loss_q2": 5.0, "train_loss_q3": 3.0}


def test_overfitting_one_batch_halves_the_loss():
    torch.manual_seed(0)
    module = DiffusionModule(tiny_unet(), ProcessConfig(steps=100), DiffusionTrainConfig(lr=2e-3))
    x0 = torch.rand(2, 3, 2, 16, 16) - 0.5
    t, noise = torch.tensor([30, 70]), torch.randn_like(x0)
    opt = torch.optim.Adam(module.net.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        loss = module.schedule.training_losses(module.net, x0, t, noise=noise)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def _training_x0(module: DiffusionModule, video: torch.Tensor, seed: int) -> torch.Tensor:
    """The clean clips ``module.diffusion_terms`` hands to the loss for ``video`` under generator ``seed``."""
    seen = []
    losses = module.schedule.training_losses

    def spy(net, x0, t, noise=None):
        seen.append(x0.clone())
        return losses(net, x0, t, noise=noise)

    module.schedule.training_losses = spy
    module._gen = torch.Generator().manual_seed(seed)
    module.diffusion_terms({"video": video})
    return seen[0]


def test_training_windows_are_windows_of_the_clips_drawn_by_the_batch_generator():
    torch.manual_seed(0)
    video = 1e-3 * torch.rand(3, 3, 2, 16, 16) - 0.4  # a faintly textured background (windows are told apart)
    video[:, :, :, 10:13, 2:5] += 0.8  # and the clips' only detail, in one corner
    module = DiffusionModule(tiny_unet(), ProcessConfig(steps=100),
                             DiffusionTrainConfig(crop_size=8, crop_detail=1.0))
    x0 = _training_x0(module, video, seed=5)
    assert x0.shape == (3, 3, 2, 8, 8)
    for clip, window in zip(video, x0, strict=True):
        corners = [(y, x) for y in range(9) for x in range(9) if torch.equal(clip[..., y:y + 8, x:x + 8], window)]
        assert len(corners) == 1
        y, x = corners[0]
        assert y <= 10 and y + 8 >= 13 and x <= 2 and x + 8 >= 5  # the window holds the detail
    torch.testing.assert_close(_training_x0(module, video, seed=5), x0, rtol=0, atol=0)  # same generator, same windows
    whole = DiffusionModule(tiny_unet(), ProcessConfig(steps=100), DiffusionTrainConfig())
    assert torch.equal(_training_x0(whole, video, seed=5), video)  # crop_size 0: whole frames


@pytest.mark.parametrize("train, needle", [
    (dict(crop_size=7), "multiple of the U-Net's downsampling (2)"),
    (dict(crop_size=-2), "train.crop_size=-2"),
    (dict(crop_size=8, crop_detail=1.5), "train.crop_detail=1.5"),
])
def test_bad_training_windows_are_refused(train, needle):
    with pytest.raises(InputError, match=re.escape(needle)):
        DiffusionModule(tiny_unet(), ProcessConfig(steps=100), DiffusionTrainConfig(**train))


def test_learn_sigma_must_match_the_output_channels():
    with pytest.raises(InputError, match="learned sigma"):
        DiffusionModule(tiny_unet(out_channels=3), ProcessConfig(learn_sigma=True), DiffusionTrainConfig())


# ------------------------------------------------------------------------------------------- runs
class Probe(pl.Callback):
    def __init__(self):
        self.start_step, self.start_opt, self.ema = None, None, None

    def on_train_start(self, trainer, pl_module):
        self.start_step = trainer.global_step
        self.start_opt = copy.deepcopy(trainer.optimizers[0].state_dict())

    def on_train_end(self, trainer, pl_module):
        self.ema = {k: v.clone() for k, v in pl_module.ema.state_dict().items()}


@pytest.fixture(scope="module")
def run2(vat, tmp_path_factory):
    """Two optimiser steps of the tiny preset, exporting at step 2."""
    root = tmp_path_factory.mktemp("diffusion") / "run"
    probe = Probe()
    last = script.train(tiny(vat, root, "--max_steps", 2, "--save_interval", 2), callbacks=[probe])
    return root, Path(last), probe


def test_run_writes_exports_that_load(run2):
    root, last, probe = run2
    assert last == root / "checkpoints" / "last.ckpt" and last.is_file()
    assert sorted(p.name for p in root.glob("*.pt")) == ["ema000002.pt", "model000002.pt"]
    model, ema = load_unet(root / "model000002.pt"), load_unet(root / "ema000002.pt")
    assert model.config.image_size == 16 and model.process.steps == 1000 and model.process.rescale_timesteps
    for k, v in ema.state_dict().items():  # the export holds the EMA the run ended with
        torch.testing.assert_close(v, probe.ema[k])
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in ema.state_dict().items())
    from_last = load_unet(last, ema=True)  # the Lightning file: EMA by default, net on request
    torch.testing.assert_close(from_last.state_dict(), ema.state_dict())
    torch.testing.assert_close(load_unet(last, ema=False).state_dict(), model.state_dict())
    assert [s for s, _ in metrics(root, "train_loss")] == [1, 2]
    assert yaml.safe_load((root / "config.yaml").read_text())["model"]["image_size"] == 16


def test_resume_continues_at_the_same_step(run2, vat):
    root, last, _ = run2
    probe = Probe()
    script.train(tiny(vat, root, "--max_steps", 3, "--save_interval", 2, "--resume", "last"), callbacks=[probe])
    assert probe.start_step == 2 and optimizer_steps(probe.start_opt) == {2}
    assert safe_load(root / "checkpoints" / "last.ckpt")["global_step"] == 3
    assert (root / "model000003.pt").is_file()
    assert [s for s, _ in metrics(root, "train_loss")] == [1, 2, 3]


def test_resume_with_another_architecture_is_refused(run2, vat, capsys):
    root, _, _ = run2
    assert script.main(tiny(vat, root, "--max_steps", 4, "--num_channels", 64, "--resume", "last")) == 2
    assert "model_channels" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- loader
def test_bare_state_dict_loads_with_inferred_config(tmp_path):
    torch.manual_seed(0)
    net = UNet(tiny_unet())
    torch.save(net.state_dict(), tmp_path / "model300000.pt")
    loaded = load_unet(tmp_path / "model300000.pt", num_heads=2)
    # image_size cannot be inferred (upstream's 128); attention at downsample factor 2 -> resolution 64
    assert loaded.config == dataclasses.replace(tiny_unet(), image_size=128, attention_resolutions=(64,))
    assert loaded.process == ProcessConfig(steps=4000, rescale_timesteps=True)
    x, t = torch.rand(1, 3, 2, 16, 16) - 0.5, torch.tensor([7.0])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), net(x, t))
    net2, schedule = load_diffusion(tmp_path / "model300000.pt", respacing="100", rescale_timesteps=False)
    assert isinstance(schedule, GaussianSchedule) and schedule.num_timesteps == 100
    assert float(schedule.net_timesteps(torch.tensor([1]))[0]) == 40.0  # integer original step, not rescaled


def test_loader_errors_name_the_file(tmp_path):
    vq = save_vqgan(VQGAN(tiny_vqgan_cfg()), tmp_path / "vqgan.ckpt")
    with pytest.raises(InputError, match=r"vqgan\.ckpt: holds a tav 'vqgan' checkpoint, but a diffusion U-Net"):
        load_unet(vq)
    net = UNet(tiny_unet())
    path = save_unet(net, tmp_path / "ema000001.pt", ProcessConfig())
    with pytest.raises(InputError, match="unknown U-Net/process setting"):
        load_unet(path, heads=3)
    sd = net.state_dict()
    sd.pop("out.2.bias")
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(InputError, match=r"broken\.pt"):
        load_unet(tmp_path / "broken.pt", num_heads=2)
    cfg, process, _ = read_unet_checkpoint(path, rescale_timesteps=False, gradient_checkpointing=True)
    assert cfg.gradient_checkpointing and not process.rescale_timesteps
