"""VQGAN training (scripts/train_vqgan.py + tav.training.vqgan_module): seed line, resume, DDP, overfit,
non-finite loss, checkpoints that load through tav.vqgan.load_vqgan. Tiny configs on CPU."""

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from tav.checkpoint import safe_load
from tav.data.video import probe_video
from tav.training import vqgan_module
from tav.training.vqgan_module import effective_lr
from tav.vqgan import load_vqgan
from tav_scripts import train_vqgan

from .helpers import make_tiny_vat, metrics, optimizer_steps

REPO = Path(__file__).resolve().parent.parent
SEED_LINE = (
    "--embedding_dim 256 --n_codes 16384 --n_hiddens 32 --downsample 4 8 8 --no_random_restart "
    "--gpus 1 --batch_size 8 --num_workers 16 --accumulate_grad_batches 6 --progress_bar_refresh_rate 100 "
    "--max_steps 100000 --gradient_clip_val 1.0 --lr 6.0e-5 --data_path datasets/post_URMP/ "
    "--default_root_dir path/to/save --resolution 9 --sequence_length 16 --discriminator_iter_start 10000 "
    "--norm_type batch --perceptual_weight 4 --image_gan_weight 1 --video_gan_weight 1 --gan_feat_weight 4"
).split()


@pytest.fixture(scope="module")
def vgg_dir(tmp_path_factory):
    """A random-weight VGG16 in torchvision's file layout, under the name LPIPS looks for."""
    import torchvision

    folder = tmp_path_factory.mktemp("ckpts")
    with torch.random.fork_rng():  # the same weights whatever ran before (the overfit test depends on them)
        torch.manual_seed(0)
        features = torchvision.models.vgg16(weights=None).features.state_dict()
    torch.save({f"features.{k}": v for k, v in features.items()}, folder / "vgg16-397923af.pth")
    return folder


@pytest.fixture(autouse=True)
def local_weights(monkeypatch, vgg_dir, tmp_path):
    monkeypatch.setenv("TAV_CKPT_DIR", str(vgg_dir))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "no_hub"))


def tiny(data, root, *extra):
    return ["--config", "tiny", "--data_path", str(data), "--load_vid_len", "8", "--default_root_dir", str(root),
            "--accelerator", "cpu", "--devices", "1", "--num_workers", "0", "--progress_bar_refresh_rate", "0",
            "--log_every_n_steps", "1", "--sample_every_n_steps", "0", *map(str, extra)]


# ------------------------------------------------------------------------------------------- CLI
def test_seed_line_parses_and_resolution_9_is_a_one_line_error(vat, tmp_path, capsys):
    assert train_vqgan.main(SEED_LINE) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--resolution 9" in err and "typo for 96" in err
    assert not Path("path/to/save").exists()

    argv = [a for a in SEED_LINE]
    argv[argv.index("--resolution") + 1] = "96"
    argv[argv.index("--data_path") + 1] = str(vat)
    argv[argv.index("--default_root_dir") + 1] = str(tmp_path / "run")
    assert train_vqgan.main([*argv, "--dry_run"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
    m, t = cfg["model"], cfg["train"]
    assert (m["embedding_dim"], m["n_codes"], m["n_hiddens"], m["downsample"]) == (256, 16384, 32, [4, 8, 8])
    assert (m["norm"], m["random_restart"], m["resolution"], m["sequence_length"]) == ("batch", False, 96, 16)
    assert (m["lr"], m["discriminator_iter_start"], m["perceptual_weight"], m["gan_feat_weight"]) == (6e-5, 10000, 4, 4)
    assert (t["batch_size"], t["num_workers"], t["accumulate_grad_batches"], t["gradient_clip_val"]) == (8, 16, 6, 1.0)
    assert (t["save_every_n_steps"], t["seed"], t["input_key"]) == (3000, 1234, "video")
    assert cfg["trainer"]["max_steps"] == 100000 and cfg["trainer"]["progress_bar_refresh_rate"] == 100
    assert cfg["data"]["resolution"] == 96 and cfg["data"]["tokenizer"] == "none"
    # the README's effective LR: 6 * (1/8) * (8/4) * 6e-5
    assert effective_lr(6e-5, "upstream", 6, 1, 8) == pytest.approx(9e-5)
    assert effective_lr(6e-5, "none", 6, 1, 8) == 6e-5


@pytest.mark.parametrize("extra,match", [
    (["--precision", "16"], "use --precision bf16 or 32"),
    (["--resume", "last"], "--resume last: no checkpoint in"),
    (["--set", "model.n_hidens=4"], "unknown key"),
    (["--set", "train.lr_scaling=linear"], "lr_scaling"),
    (["--data_path", "/nonexistent/vat"], "no such folder"),
])
def test_bad_input_is_one_line_exit_2(vat, tmp_path, capsys, extra, match):
    assert train_vqgan.main([*tiny(vat, tmp_path / "run"), *extra, "--dry_run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and match in err


def test_edge_term_flags_reach_the_model_config(vat, tmp_path, capsys):
    argv = tiny(vat, tmp_path / "run", "--grad_weight", 3, "--grad_exponent", 2, "--chroma_weight", 12, "--dry_run")
    assert train_vqgan.main(argv) == 0
    m = yaml.safe_load(capsys.readouterr().out)["model"]
    assert (m["grad_weight"], m["grad_exponent"], m["chroma_weight"]) == (3.0, 2, 12.0)
    for bad, name in (("model.grad_exponent=3", "grad_exponent"), ("model.chroma_weight=-1", "chroma_weight")):
        assert train_vqgan.main([*tiny(vat, tmp_path / "run"), "--set", bad, "--dry_run"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and name in err


def test_a_second_fresh_run_into_a_trained_folder_is_one_line(vat, tmp_path, capsys):
    root = tmp_path / "run"
    train_vqgan.train(tiny(vat, root, "--batch_size", 2, "--max_steps", 1, "--perceptual_weight", 0))
    assert train_vqgan.main(tiny(vat, root, "--batch_size", 2, "--max_steps", 2, "--perceptual_weight", 0)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "holds the checkpoints of an earlier run" in err and "--resume last" in err


def test_missing_vgg_file_fails_before_training(vat, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TAV_CKPT_DIR", str(tmp_path / "empty"))
    assert train_vqgan.main(tiny(vat, tmp_path / "run", "--max_steps", 1)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "vgg16-397923af.pth" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------------------------------- resume
class Probe(pl.Callback):
    """Records the state fit starts from, the micro-batch count, and the module at the end."""

    def __init__(self):
        self.start_step, self.start_opt, self.batches, self.module = None, None, 0, None

    def on_train_start(self, trainer, pl_module):
        self.start_step = trainer.global_step
        self.start_opt = copy.deepcopy([o.state_dict() for o in trainer.optimizers])

    def on_train_batch_end(self, *args):
        self.batches += 1

    def on_train_end(self, trainer, pl_module):
        self.module = pl_module


def test_accumulate_resume_and_checkpoint_loads_through_load_vqgan(vat, tmp_path):
    root = tmp_path / "run"
    # batch 1, 2 clips: 2 micro-batches per epoch = one optimiser step (accumulate 2)
    argv = tiny(vat, root, "--batch_size", 1, "--accumulate_grad_batches", 2, "--gradient_clip_val", 1.0,
                "--save_every_n_steps", 2, "--sample_every_n_steps", 2)
    first = Probe()
    train_vqgan.train([*argv, "--max_steps", "3"], callbacks=[first])
    assert first.start_step == 0 and first.batches == 6
    last = safe_load(root / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 3
    assert [optimizer_steps(s) for s in last["optimizer_states"]] == [{3}, {3}]  # tiny: discriminators from step 0
    lr = last["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr == pytest.approx(effective_lr(3e-4, "upstream", 2, 1, 1))
    assert (root / "checkpoints" / "epoch=1-step=2.ckpt").is_file()
    run_cfg = yaml.safe_load((root / "config.yaml").read_text())
    assert "--accumulate_grad_batches 2" in run_cfg["command"] and run_cfg["train"]["accumulate_grad_batches"] == 2
    sample = probe_video(root / "samples" / "step_0000002.mp4")  # 1 clip: real | recon side by side
    assert (sample.frames, sample.height, sample.width) == (4, 16, 32)
    assert not any(k.startswith("perceptual.") for k in last["state_dict"])  # frozen LPIPS is not saved

    second = Probe()
    best = train_vqgan.train([*argv, "--max_steps", "4", "--resume", "last"], callbacks=[second])
    assert second.start_step == 3 and second.batches == 2
    assert [optimizer_steps(s) for s in second.start_opt] == [{3}, {3}]
    torch.testing.assert_close(second.start_opt[0]["state"][0]["exp_avg"],
                               last["optimizer_states"][0]["state"][0]["exp_avg"], rtol=0, atol=0)
    resumed = safe_load(root / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 4 and [optimizer_steps(s) for s in resumed["optimizer_states"]] == [{4}, {4}]
    assert [s for s, _ in metrics(root, "train_ae_loss")] == [0, 1, 1, 2, 2, 3, 3, 4]  # after the step, if any
    assert [s for s, _ in metrics(root, "val_recon_loss")] == [1, 2, 3, 4]

    hp = resumed["hyper_parameters"]
    assert hp["stage"] == "vqgan" and hp["config"]["n_codes"] == 64 and hp["train"]["accumulate_grad_batches"] == 2
    video = torch.rand(2, 3, 4, 16, 16) - 0.5
    trained = second.module.vqgan.eval()
    for path in (root / "checkpoints" / "last.ckpt", best):
        loaded = load_vqgan(path)
        assert torch.equal(loaded.encode(video), trained.encode(video))
    # the same weights in the same layout (the trained module's are channels_last_3d): the same latents, bit for bit
    loaded = load_vqgan(best).to_channels_last()
    torch.testing.assert_close(loaded.encode_latents(video), trained.encode_latents(video), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- DDP
def test_two_process_cpu_ddp_keeps_codebooks_identical(vat, tmp_path):
    out = tmp_path / "dump"
    out.mkdir()
    probe = Path(__file__).with_name("ddp_vqgan_probe.py")
    argv = tiny(vat, tmp_path / "run", "--devices", 2, "--strategy", "ddp", "--batch_size", 1, "--max_steps", 2,
                "--perceptual_weight", 0, "--gradient_clip_val", 1.0)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, str(probe), str(out), *argv], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt") for r in (0, 1)]
    assert [r["global_step"] for r in ranks] == [2, 2] and ranks[0]["world_size"] == 2
    for key in ("embeddings", "N", "z_avg", "initialised", "encoder_weight"):
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    assert bool(ranks[0]["initialised"]) and float(ranks[0]["N"].sum()) > 0


# ------------------------------------------------------------------------------------------- learning
def test_overfits_one_clip(tmp_path):
    """One fixed 4-frame clip, GAN off, LPIPS on (random VGG16 from the local file): recon loss halves."""
    one = make_tiny_vat(tmp_path / "one", n_frames=4, stems=("c_3",))
    root = tmp_path / "run"
    argv = tiny(one, root, "--load_vid_len", 4, "--batch_size", 1, "--max_steps", 100, "--lr", 2e-3,
                "--lr_scaling", "none", "--discriminator_iter_start", 1000, "--no_random_restart",
                "--limit_val_batches", 0, "--save_every_n_steps", 0)
    path = train_vqgan.train(argv)
    losses = [v for _, v in metrics(root, "train_recon_loss")]
    assert len(losses) == 100 and all(v == v for v in losses)
    assert sum(losses[-10:]) / 10 <= 0.5 * losses[0], (losses[0], losses[-10:])
    assert [v for _, v in metrics(root, "train_perceptual_loss")][-1] > 0
    assert path == root / "checkpoints" / "last.ckpt"


def test_cosine_schedule_and_mse_term(vat, tmp_path):
    """lr_schedule cosine with warm-up: the logged rate rises linearly, then decays towards 0 over max_steps;
    l2_weight adds the MSE term to the logged reconstruction loss."""
    root = tmp_path / "run"
    train_vqgan.train(tiny(vat, root, "--batch_size", 2, "--max_steps", 6, "--lr", 1e-3, "--lr_scaling", "none",
                           "--lr_schedule", "cosine", "--warmup_steps", 2, "--perceptual_weight", 0,
                           "--discriminator_iter_start", 100, "--l1_weight", 0, "--l2_weight", 4.0,
                           "--limit_val_batches", 0, "--save_every_n_steps", 0))
    lrs = [v for _, v in metrics(root, "lr")]  # logged after the step that used it
    expected = [1e-3 * (s + 1) / 2 if s < 2 else 1e-3 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 4)) for s in range(6)]
    assert lrs == pytest.approx(expected, rel=1e-6)
    assert all(v > 0 for _, v in metrics(root, "train_recon_loss"))


def test_channels_last_training_matches_contiguous(vat, tmp_path):
    """train.channels_last (the default) stores the conv weights channels_last_3d; the first loss equals the
    contiguous run's, and two Adam steps later no weight differs by more than the two runs' steps can add up to
    (Adam moves a weight by about lr per step whatever its gradient's size: 4 lr, where BatchNorm leaves a
    conv bias a gradient of rounding noise)."""
    runs = {}
    for name, extra in (("cl", []), ("contiguous", ["--set", "train.channels_last=false"])):
        probe, root = Probe(), tmp_path / name
        train_vqgan.train(tiny(vat, root, "--batch_size", 2, "--max_steps", 2, "--lr", 1e-3, "--lr_scaling", "none",
                               "--perceptual_weight", 0, "--discriminator_iter_start", 100, "--limit_val_batches", 0,
                               "--save_every_n_steps", 0, *extra), callbacks=[probe])
        runs[name] = (probe.module, metrics(root, "train_ae_loss"))
    conv = runs["cl"][0].vqgan.encoder.conv_first.conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
    assert runs["contiguous"][0].vqgan.encoder.conv_first.conv.weight.is_contiguous()
    assert runs["cl"][1][0][1] == pytest.approx(runs["contiguous"][1][0][1], rel=1e-5)
    cl = dict(runs["cl"][0].vqgan.named_parameters())
    for key, value in runs["contiguous"][0].vqgan.named_parameters():
        if "discriminator" not in key:  # (off: never stepped)
            torch.testing.assert_close(cl[key], value, rtol=0, atol=4.5e-3, msg=key)


def test_bf16_autocast_runs(vat, tmp_path):
    # Discriminators off: on CPU, torch 2.14's oneDNN bf16 Conv3d(k4, s2, p2) weight gradients are garbage
    # (inf/NaN) for some small shapes, e.g. input (2, 8, 3, 9, 9); the NaN guard then stops the run.
    root = tmp_path / "run"
    train_vqgan.train(tiny(vat, root, "--batch_size", 2, "--max_steps", 2, "--precision", "bf16",
                           "--perceptual_weight", 0, "--discriminator_iter_start", 100))
    assert all(torch.isfinite(torch.tensor(v)) for _, v in metrics(root, "train_ae_loss"))
    assert safe_load(root / "checkpoints" / "last.ckpt")["global_step"] == 2


# ------------------------------------------------------------------------------------------- divergence
def test_non_finite_loss_stops_with_step_and_last_good_checkpoint(vat, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TAV_CKPT_DIR", str(tmp_path / "empty"))  # perceptual_weight 0: no LPIPS is built
    real = vqgan_module.generator_loss

    def nan_from_step_2(model, perceptual, video, recon, vq, step, frame_idx):
        loss, parts = real(model, perceptual, video, recon, vq, step, frame_idx)
        return (loss * float("nan"), parts) if step >= 2 else (loss, parts)

    monkeypatch.setattr(vqgan_module, "generator_loss", nan_from_step_2)
    root = tmp_path / "run"
    argv = tiny(vat, root, "--batch_size", 2, "--max_steps", 5, "--save_every_n_steps", 1, "--perceptual_weight", 0)
    assert train_vqgan.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "non-finite autoencoder loss at global step 2" in err
    last = root / "checkpoints" / "last.ckpt"
    assert f"last good checkpoint: {last}" in err
    assert safe_load(last)["global_step"] == 2  # the bad state was not saved
    logged = (root / "log.txt").read_text().strip().splitlines()[-1]  # what stopped the run is in its log too
    assert "ERROR tav_scripts: run stopped: NonFiniteLossError: non-finite autoencoder loss at global step 2" in logged


def test_training_windows_reach_the_autoencoder_and_resume_exactly(vat, tmp_path, monkeypatch):
    """train.crop_size / crop_detail: the autoencoder trains on one window per clip and validates on whole clips;
    the windows are drawn per batch from the step seeds, so two runs agree and a resumed run ends as the
    uninterrupted one, bit for bit."""
    seen = []
    forward = vqgan_module.VQGAN.forward

    def spy(self, video):
        seen.append((self.training, tuple(video.shape[-2:])))
        return forward(self, video)

    monkeypatch.setattr(vqgan_module.VQGAN, "forward", spy)
    crops = ["--set", "train.crop_size=8", "--set", "train.crop_detail=0.5"]

    def run(root, steps, *extra):
        probe = Probe()
        train_vqgan.train(tiny(vat, root, "--batch_size", 2, "--max_steps", steps, "--perceptual_weight", 0,
                               "--save_every_n_steps", 2, *crops, *extra), callbacks=[probe])
        return {k: v.clone() for k, v in probe.module.vqgan.state_dict().items()}

    whole = run(tmp_path / "a", 4)
    assert {s for t, s in seen if t} == {(8, 8)} and {s for t, s in seen if not t} == {(16, 16)}
    assert all(torch.equal(v, whole[k]) for k, v in run(tmp_path / "b", 4).items())
    middle = next((tmp_path / "a" / "checkpoints").glob("epoch=*-step=2.ckpt"))
    resumed = run(tmp_path / "a", 4, "--resume", middle)
    assert all(torch.equal(v, whole[k]) for k, v in resumed.items())
    crops = []
    plain = run(tmp_path / "d", 4)
    assert not torch.equal(plain["encoder.conv_first.conv.weight"], whole["encoder.conv_first.conv.weight"])


@pytest.mark.parametrize("flag,match", [("train.crop_size=6", "multiple of the spatial downsampling (4)"),
                                        ("train.crop_size=20", "no larger than the resolution (16)"),
                                        ("train.crop_detail=2", "crop_detail=2.0: must be in [0, 1]")])
def test_bad_training_windows_are_one_line_errors(vat, tmp_path, capsys, flag, match):
    assert train_vqgan.main([*tiny(vat, tmp_path / "run"), "--set", flag, "--max_steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and match in err
