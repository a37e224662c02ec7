"""TIA2V training and sampling end to end at tiny sizes: the three training scripts, the content -> motion
initialisation, the batch -> loss step, the respaced SDEdit starts and ``sample_motion_optim.py``'s results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tav.data.video import read_video
from tav.diffusion.schedule import GaussianSchedule, ProcessConfig
from tav.encoders.beats import save_tiny_beats
from tav.encoders.clip_l import save_tiny_clip_l
from tav.encoders.registry import clear_encoder_cache
from tav.errors import InputError
from tav.pipelines.tia2v import FrameDenoiser, TIA2VSamplingConfig, first_frame_init, respaced_skip
from tav.tia2v import TIA2VUNet, load_tia2v_unet, read_tia2v_checkpoint, tia2v_preset
from tav.tia2v.conditions import motion_context
from tav.training.tia2v_module import TIA2VModule, TIA2VTrainConfig, conditions_of
from tav_scripts import sample_motion_optim, tia2v_cli

from .helpers import assert_same_videos, make_tiny_vat, run_script

REPO = Path(__file__).resolve().parent.parent
QUIET = ["--num_workers", "0", "--progress_bar_refresh_rate", "0", "--accelerator", "cpu", "--devices", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny VAT data, tiny CLIP-L and BEATs (32 wide), and content / motion / SHR trained 2 steps each."""
    root = tmp_path_factory.mktemp("tia2v")
    data = make_tiny_vat(root / "vat")
    save_tiny_clip_l(root / "clip_l")
    save_tiny_beats(root / "beats.pt", encoder_embed_dim=32, encoder_attention_heads=4)
    common = ["--data_path", str(data), "--cache_dir", str(root / "cache"), "--clip_l_ckpt", str(root / "clip_l"),
              "--beats_ckpt", str(root / "beats.pt"), "--batch_size", "2", "--max_steps", "2", "--save_interval",
              "2", *QUIET]
    runs = root / "runs"
    tia2v_cli.train("content", ["--config", "content-tiny", "--save_dir", str(runs / "content"), *common])
    tia2v_cli.train("motion", ["--config", "motion-tiny", "--save_dir", str(runs / "motion"), "--model_path",
                               str(runs / "content" / "ema000002.pt"), *common])
    tia2v_cli.train("shr", ["--config", "shr-tiny", "--save_dir", str(runs / "shr"), "--resolution", "32", *common])
    yield {"root": root, "data": data, "runs": runs, "common": common}
    clear_encoder_cache()


def _sample_argv(world, save: Path, *extra: str) -> list[str]:
    r = world["root"]
    return ["--model_path", str(world["runs"] / "motion" / "ema000002.pt"), "--diffusion_ckpt",
            str(world["runs"] / "shr" / "ema000002.pt"), "--data_path", str(world["data"]), "--cache_dir",
            str(r / "cache"), "--clip_l_ckpt", str(r / "clip_l"), "--beats_ckpt", str(r / "beats.pt"), "--save",
            str(save), "--timestep_respacing", "10", "--model_output_size", "32", "--progress", "False",
            "--precision", "32", *extra]  # fp32 on both CPU kinds: batch-size comparisons at fp32 tolerance


def test_training_exports_and_motion_init(world):
    import tav

    assert tav.load_tia2v_unet is load_tia2v_unet  # the public loader
    runs = world["runs"]
    for part in ("content", "motion", "shr"):
        for kind in ("model", "ema"):
            net = load_tia2v_unet(runs / part / f"{kind}000002.pt", part)
            assert net.config.part == part and net.process.loss == "rescaled_mse"
        assert (runs / part / "checkpoints" / "last.ckpt").is_file()
    # the motion run started from the content EMA: every copied tensor was equal at step 0, so after two
    # AdamW steps at lr 2e-4 it is still within a few lr of the content value (fresh tensors are not)
    _, _, content = read_tia2v_checkpoint(runs / "content" / "ema000002.pt", "content")
    motion = load_tia2v_unet(runs / "motion" / "model000002.pt", "motion").state_dict()
    key = "input_blocks.1.0.in_layers.2.weight"
    assert (motion[key] - content[key]).abs().max() < 1e-3
    assert "input_blocks.1.0.temporal_conv.conv1.2.weight" not in content
    recorded = yaml.safe_load((runs / "motion" / "config.yaml").read_text())
    assert recorded["init_from"].endswith("ema000002.pt") and recorded["model"]["part"] == "motion"
    assert torch.load(runs / "motion" / "ema000002.pt", weights_only=True)["beats_mode"] == "fixed"
    from tav.checkpoint import recorded_data  # the training data's frame rate, generate.py's default --fps

    assert recorded_data(runs / "motion" / "ema000002.pt") == {"name": "urmp", "fps": 30.0, "sample_rate": 48000}


def test_initialise_from_content_and_freeze():
    content = TIA2VUNet(tia2v_preset("content-tiny"))
    with torch.no_grad():
        for p in content.parameters():
            p.normal_()
    cfg, proc = tia2v_preset("motion-tiny"), ProcessConfig(steps=100, loss="rescaled_mse")
    module = TIA2VModule(cfg, proc, TIA2VTrainConfig(freeze_spatial=True))
    report = module.initialise_from_content(content.state_dict())
    sd, ema = module.net.state_dict(), module.ema.state_dict()
    assert report["copied"] and all(torch.equal(sd[k], content.state_dict()[k]) for k in report["copied"])
    assert all(torch.equal(sd[k], ema[k]) for k in sd)  # the EMA restarts from the initialised weights
    frozen = {n for n, p in module.net.named_parameters() if not p.requires_grad}
    assert frozen == set(report["copied"]) & {n for n, _ in module.net.named_parameters()}
    opt = module.configure_optimizers()["optimizer"]
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in module.net.parameters() if p.requires_grad) > 0
    with pytest.raises(InputError, match="motion model"):
        TIA2VModule(tia2v_preset("content-tiny"), proc, TIA2VTrainConfig()).initialise_from_content({})
    with pytest.raises(InputError, match="train.crop_size=8: training windows are for the TA2V prior"):
        TIA2VTrainConfig(crop_size=8)  # its batch step does not crop: refused rather than ignored


def _motion_module_and_batch(cfg, per_frame_t: bool, b: int = 2) -> tuple[TIA2VModule, dict]:
    """A seeded motion ``TIA2VModule`` of ``cfg`` and a random batch of ``b`` 16-px clips with its conditions."""
    module = TIA2VModule(cfg, ProcessConfig(steps=100, loss="rescaled_mse"), TIA2VTrainConfig(per_frame_t=per_frame_t))
    module._gen = torch.Generator().manual_seed(0)
    f, d = cfg.num_frames, cfg.context_dim
    batch = {"video": torch.rand(b, 3, f, 16, 16) - 0.5, "text": torch.randn(b, 77, d), "image": torch.randn(b, d),
             "audio_tokens": torch.randn(b, f, 8, d)}
    return module, batch


def test_flat_inputs_and_conditions():
    cfg = tia2v_preset("motion-tiny")
    module, batch = _motion_module_and_batch(cfg, per_frame_t=False)
    b, f, d = 2, cfg.num_frames, cfg.context_dim
    x0, t = module.flat_inputs(batch)
    assert x0.shape == (b * f, 3, 16, 16) and torch.equal(x0[f + 1], batch["video"][1, :, 1])
    assert torch.equal(t.view(b, f), t.view(b, f)[:, :1].expand(b, f))  # one t per clip
    module.train_cfg.per_frame_t = True
    _, t = module.flat_inputs(batch)
    assert t.shape == (b * f,) and len(set(t.tolist())) > 2
    kw = conditions_of(batch, "motion")
    assert kw["context"].shape == (b, 78, d) and torch.equal(kw["context"][1, 77], batch["image"][1])
    ctx = kw["context_temp"]
    assert ctx.shape == (b * f, 85, d) and torch.equal(ctx, motion_context(batch["audio_tokens"], batch["text"]))
    assert torch.equal(ctx[f + 2, :8], batch["audio_tokens"][1, 2]) and torch.equal(ctx[f + 2, 8:], batch["text"][1])
    terms, t = module.diffusion_terms(batch)
    assert terms["loss"].shape == (b * f,) and torch.isfinite(terms["loss"]).all()
    refiner = TIA2VModule(cfg, ProcessConfig(steps=100, loss="rescaled_mse", max_t=7), TIA2VTrainConfig())
    refiner._gen = torch.Generator().manual_seed(0)
    t = torch.cat([refiner.flat_inputs(batch)[1] for _ in range(20)])  # only the low-noise end of the chain
    assert int(t.max()) == 6 and int(t.min()) == 0
    with pytest.raises(InputError, match="audio_tokens"):
        conditions_of({"text": batch["text"], "image": batch["image"]}, "motion")


def test_respaced_skip_and_frame_denoiser():
    sched = GaussianSchedule.from_config(ProcessConfig(steps=4000), respacing="200")
    skip = respaced_skip(sched, 100)  # upstream: start at original step 3899
    first = sched.num_timesteps - 1 - skip
    assert sched.timestep_map[first] <= 3899 < sched.timestep_map[first + 1]
    assert respaced_skip(GaussianSchedule.from_config(ProcessConfig(steps=4000)), 100) == 100
    assert respaced_skip(sched, 3999) == sched.num_timesteps - 1  # from step 0: one step left
    with pytest.raises(InputError, match=r"--skip_timesteps 4000: leaves nothing of the 4000-step chain; give a "
                                         r"value in \[0, 4000\)"):
        respaced_skip(sched, 4000)
    with pytest.raises(InputError, match=r"^--shr_skip_timesteps 5000: leaves nothing"):
        respaced_skip(sched, 5000, "--shr_skip_timesteps")
    assert TIA2VSamplingConfig().shr_skip(4000) == 2500
    assert TIA2VSamplingConfig(shr_skip_timesteps=100).shr_skip(4000) == 100
    net = TIA2VUNet(tia2v_preset("content-tiny")).eval()
    f = net.config.num_frames
    x, ctx = torch.randn(2, 3, f, 16, 16), torch.randn(2, 78, 32)
    t = torch.tensor([5.0, 700.0])
    with torch.no_grad():
        out = FrameDenoiser(net)(x, t, context=ctx)
        ref = net(x.transpose(1, 2).reshape(2 * f, 3, 16, 16), t.repeat_interleave(f), ctx)
    assert torch.allclose(out, ref.view(2, f, 6, 16, 16).transpose(1, 2), atol=1e-6)
    init = first_frame_init(x)
    assert torch.equal(init[:, :, 0], x[:, :, 0]) and not init[:, :, 1:].any()
    repeated = first_frame_init(x, "first")  # every frame starts as frame 0
    assert all(torch.equal(repeated[:, :, k], x[:, :, 0]) for k in range(f))
    with pytest.raises(InputError, match="--motion_init"):
        TIA2VSamplingConfig(motion_init="noise")


def test_sample_motion_optim_results_resume_and_seeds(world, tmp_path):
    save = tmp_path / "res"
    assert sample_motion_optim.main(_sample_argv(world, save, "--num_samples", "2", "--batch_size", "2")) == 0
    root = save / "0_tacm_urmp"
    for folder, name in (("real", "groundtruth"), ("fake_stage1", "video"), ("fake_stage2", "video")):
        files = sorted((root / folder).glob("*.mp4"))
        assert [p.name for p in files] == [f"{name}_0.mp4", f"{name}_1.mp4"]
    assert sorted(p.name for p in (root / "audio").iterdir()) == ["groundtruth_0.wav", "groundtruth_1.wav"]
    frames1, _ = read_video(root / "fake_stage1" / "video_0.mp4")
    frames2, _ = read_video(root / "fake_stage2" / "video_0.mp4")
    assert frames1.shape == (4, 16, 16, 3) and frames2.shape == (4, 32, 32, 3)
    import av

    with av.open(str(root / "fake_stage2" / "video_1.mp4")) as c:
        assert len(c.streams.audio) == 1
    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1] and [r["seed"] for r in rows] == [404, 405]
    assert set(rows[0]["checkpoints"]) == {"model_path", "diffusion_ckpt"}

    # a killed run: drop sample 1's manifest row and a file; the re-run redoes only sample 1
    (root / "manifest.jsonl").write_text(json.dumps(rows[0]) + "\n")
    before = (root / "fake_stage1" / "video_0.mp4").stat().st_mtime_ns
    assert sample_motion_optim.main(_sample_argv(world, save, "--num_samples", "2", "--batch_size", "2")) == 0
    assert (root / "fake_stage1" / "video_0.mp4").stat().st_mtime_ns == before
    assert len((root / "manifest.jsonl").read_text().splitlines()) == 2

    # the same seeds at batch 1 give the same videos (one generator per clip)
    save1 = tmp_path / "res_b1"
    assert sample_motion_optim.main(_sample_argv(world, save1, "--num_samples", "2", "--batch_size", "1")) == 0
    for folder in ("fake_stage1", "fake_stage2"):
        a, _ = read_video(root / folder / "video_1.mp4")
        b, _ = read_video(save1 / "0_tacm_urmp" / folder / "video_1.mp4")
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    shutil.rmtree(save1)


@pytest.mark.parametrize("batch", [1, 2])
def test_same_command_in_two_processes_same_videos(world, tmp_path, batch):
    """The same command run twice, each in a fresh process, writes videos with identical decoded frames."""
    for name in ("first", "second"):
        run_script("scripts/sample_motion_optim.py", _sample_argv(world, tmp_path / name, "--num_samples", "2",
                                                                  "--batch_size", str(batch)))
    assert assert_same_videos(tmp_path / "first", tmp_path / "second") == 6  # real, motion, SHR x 2


def test_sample_stage1_only_and_errors(world, tmp_path):
    argv = _sample_argv(world, tmp_path, "--num_samples", "1", "--skip_shr", "--legacy_folders")
    assert sample_motion_optim.main(argv) == 0
    root = tmp_path / "0_tacm_urmp"
    assert (root / "fake_stage1" / "video_0.mp4").is_file() and not (root / "fake_stage2").exists()
    assert (root / "fake1_6fps" / "video_0.mp4").is_file() and (root / "fake1_30fps" / "video_0.mp4").is_file()
    with pytest.raises(InputError, match="--num_channels 64"):
        sample_motion_optim.sample(_sample_argv(world, tmp_path, "--num_channels", "64"))
    with pytest.raises(InputError, match="--diffusion_ckpt"):
        sample_motion_optim.sample(_sample_argv(world, tmp_path, "--diffusion_ckpt", str(tmp_path / "none.pt")))


def test_refiner_trained_on_low_t_records_it_and_samples_only_from_there(world, tmp_path):
    """``--max_t``: the SHR learns t < 50 only, its file records it, and sampling refuses a start above."""
    runs = tmp_path / "runs"
    tia2v_cli.train("shr", ["--config", "shr-tiny", "--save_dir", str(runs / "shr"), "--resolution", "32",
                            "--max_t", "50", *world["common"]])
    shr = runs / "shr" / "ema000002.pt"
    assert load_tia2v_unet(shr, "shr").process.max_t == 50
    base = _sample_argv(world, tmp_path / "out", "--num_samples", "1", "--diffusion_ckpt", str(shr))
    with pytest.raises(InputError, match=r"learned t < 50 only.*starts at t = 333: start below t = 50"):  # 0.375
        sample_motion_optim.sample(base)
    assert sample_motion_optim.main([*base, "--shr_strength", "0.05"]) == 0  # from t = 49
    assert (tmp_path / "out" / "0_tacm_urmp" / "fake_stage2" / "video_0.mp4").is_file()


def test_seed_lines_dry_run(world, capsys):
    data = str(world["data"])
    content = ("--num_workers 8 --gpus 1 --batch_size 1 --data_path DATA --save_dir runs/c --resolution 64 "
               "--sequence_length 16 --text_stft_cond --diffusion_steps 4000 --noise_schedule cosine --lr 5e-5 "
               "--num_channels 64 --num_res_blocks 2 --class_cond False --log_interval 50 --save_interval 10000 "
               "--image_size 64 --learn_sigma True --in_channels 3 --dry_run").replace("DATA", data).split()
    tia2v_cli.train("content", content)
    tree = yaml.safe_load(capsys.readouterr().out)
    assert tree["model"] == {**tree["model"], "part": "content", "model_channels": 64, "image_size": 64,
                             "num_frames": 16, "out_channels": 6}
    assert tree["process"]["loss"] == "rescaled_mse" and tree["train"]["lr"] == 5e-5
    temp = ("--num_workers 8 --batch_size 1 --data_path DATA --model_path MODEL --save_dir runs/m --resolution 64 "
            "--sequence_length 16 --text_stft_cond --audio_emb_model beats --diffusion_steps 4000 --noise_schedule "
            "cosine --num_channels 64 --num_res_blocks 2 --class_cond False --image_size 64 --learn_sigma True "
            "--in_channels 3 --lr 5e-5 --log_interval 50 --save_interval 5000 --gpus 1 --dry_run")
    temp = temp.replace("DATA", data).replace("MODEL", str(world["runs"] / "content" / "ema000002.pt")).split()
    tia2v_cli.train("motion", temp)
    tree = yaml.safe_load(capsys.readouterr().out)
    assert tree["model"]["part"] == "motion" and tree["train"]["save_interval"] == 5000
    with pytest.raises(InputError, match="--config content"):
        tia2v_cli.train("content", ["--config", "motion-tiny", "--data_path", data, "--dry_run"])
    with pytest.raises(InputError, match="--model_path"):
        tia2v_cli.train("motion", ["--data_path", data, "--model_path", "/no/such.pt", "--dry_run"])


def test_two_process_cpu_ddp_motion_training(world, tmp_path):
    """Two gloo processes train the motion model from the content EMA: the conditions are cached once before
    the ranks start, and both ranks end with identical weights after 2 synchronised steps."""
    out = tmp_path / "dump"
    out.mkdir()
    common = [a for a in world["common"] if a not in ("--devices", "1")] + ["--devices", "2", "--strategy", "ddp"]
    common[common.index("--batch_size") + 1] = "1"
    argv = ["--config", "motion-tiny", "--save_dir", str(tmp_path / "run"), "--model_path",
            str(world["runs"] / "content" / "ema000002.pt"), *common]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, str(REPO / "tests" / "ddp_tia2v_probe.py"), str(out), "motion", *argv],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["global_step"] for r in ranks] == [2, 2] and ranks[0]["world_size"] == 2
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0] if k not in ("global_step", "world_size"))
    assert (tmp_path / "run" / "ema000002.pt").is_file()


def test_motion_stage_holds_the_given_first_frame(world):
    """``hold_first_frame`` (default): frame 0 of the motion clip is the given frame exactly; without it (upstream)
    the frame only seeds the start and comes back changed."""
    from tav.pipelines.tia2v import load_tia2v_sampler

    runs = world["runs"]
    first = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) - 0.5
    text, image = torch.randn(2, 77, 32), torch.randn(2, 32)
    tokens = torch.randn(2, 4, 8, 32)
    held, free = (load_tia2v_sampler(runs / "motion" / "ema000002.pt", None,
                                     TIA2VSamplingConfig(respacing="10", hold_first_frame=hold))
                  .stage1(first, text, image, tokens, 4, seeds=[1, 2]) for hold in (True, False))
    assert held.shape == (2, 3, 4, 16, 16) and torch.equal(held[:, :, 0], first)
    assert (free[:, :, 0] - first).abs().max() > 0.05


def test_clean_first_frame_motion_training_and_sampling():
    """``first_frame: clean``: in training frame 0 enters at t = 0 and is left out of the loss; in sampling the
    network sees the given image at t = 0 in frame 0 whatever the chain holds there, and returns it exactly."""
    from tav.config import to_dict
    from tav.pipelines.tia2v import TIA2VSampler
    from tav.tia2v.config import TIA2VUNetConfig

    cfg = tia2v_preset("motion-tiny")
    with pytest.raises(InputError, match="first_frame=clean is a motion-model setting"):
        TIA2VUNetConfig(**{**to_dict(tia2v_preset("content-tiny")), "first_frame": "clean"})
    cfg.first_frame = "clean"
    module, batch = _motion_module_and_batch(cfg, per_frame_t=True)
    b, f, d = 2, cfg.num_frames, cfg.context_dim
    _, t = module.flat_inputs(batch)
    assert t.view(b, f)[:, 0].eq(0).all() and t.view(b, f)[:, 1:].gt(0).any()
    terms, t_kept = module.diffusion_terms(batch)
    assert terms["loss"].shape == (b * (f - 1),) and t_kept.shape == (b * (f - 1),)

    net = TIA2VUNet(cfg).eval()
    first = torch.rand(b, 3, 16, 16) - 0.5
    x, steps = torch.randn(b, 3, f, 16, 16), torch.tensor([30.0, 60.0])
    ctx, ctx_t = torch.randn(b, 78, d), torch.randn(b * f, 85, d)
    with torch.no_grad():
        out = FrameDenoiser(net)(x, steps, context=ctx, context_temp=ctx_t, first_frame=first)
        given = x.clone()
        given[:, :, 0] = first
        flat_t = torch.tensor([0.0, 30, 30, 30, 0, 60, 60, 60])
        ref = net(given.transpose(1, 2).reshape(b * f, 3, 16, 16), flat_t, ctx, ctx_t)
    torch.testing.assert_close(out, ref.view(b, f, 6, 16, 16).transpose(1, 2))
    schedule = GaussianSchedule.from_config(ProcessConfig(steps=100), respacing="5")
    sampler = TIA2VSampler(net, schedule, None, None, TIA2VSamplingConfig(respacing="5", skip_timesteps=0,
                                                                          hold_first_frame=False))
    clip = sampler.stage1(first, torch.randn(b, 77, d), torch.randn(b, d), torch.randn(b, f, 8, d), f, seeds=[0, 1])
    assert torch.equal(clip[:, :, 0], first) and clip[:, :, 1:].abs().gt(0).any()


def test_audio_dropout_trains_clips_on_the_null_sound():
    """``audio_dropout``: a dropped clip's temporal context holds zero audio tokens and its own text; at 1.0 every
    clip's loss is the loss of the same batch with silent tokens (the draw comes after t and the noise)."""
    cfg = tia2v_preset("motion-tiny")
    module, batch = _motion_module_and_batch(cfg, per_frame_t=True)
    f = cfg.num_frames
    ctx = conditions_of(batch, "motion", torch.tensor([True, False]))["context_temp"]
    assert torch.equal(ctx[:f], conditions_of(batch, "motion")["context_temp"][:f])  # clip 0 kept
    assert not ctx[f:, :8].any() and torch.equal(ctx[f:, 8:], batch["text"][1:].expand(f, -1, -1))
    losses = []
    for p, tokens in ((1.0, batch["audio_tokens"]), (0.0, torch.zeros_like(batch["audio_tokens"]))):
        torch.manual_seed(3)
        m = TIA2VModule(cfg, ProcessConfig(steps=100, loss="rescaled_mse"), TIA2VTrainConfig(audio_dropout=p))
        m._gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            losses.append(m.diffusion_terms({**batch, "audio_tokens": tokens})[0]["loss"])
    torch.testing.assert_close(losses[0], losses[1])
    with pytest.raises(InputError, match=r"--audio_dropout\): must be in \[0, 1\]"):
        TIA2VTrainConfig(audio_dropout=1.5)


def test_copy_init_trains_clips_from_copies_of_the_first_frame():
    """``copy_init``: a picked clip's frames 1.. are noised from copies of frame 0 at the top trained step (where
    ``--motion_init first`` starts), the loss still targeting its own frames; at 0 nothing is drawn or changed."""
    cfg = tia2v_preset("motion-tiny")
    cfg.first_frame = "clean"
    module, batch = _motion_module_and_batch(cfg, per_frame_t=True)
    module.schedule = GaussianSchedule.from_config(ProcessConfig(steps=100, loss="rescaled_mse", max_t=30))
    f = cfg.num_frames
    x0, t = module.flat_inputs(batch)
    assert module.copy_start(x0, t, f) == (None, t)
    module.train_cfg.copy_init = 1.0
    x_src, t_src = module.copy_start(x0, t, f)
    assert torch.equal(x_src.view(2, f, 3, 16, 16), x0.view(2, f, 3, 16, 16)[:, :1].expand(-1, f, -1, -1, -1))
    assert t_src.view(2, f)[:, 1:].eq(29).all() and t_src.view(2, f)[:, 0].eq(0).all()
    module.train_cfg.copy_init = 0.5
    module._gen = torch.Generator().manual_seed(1)  # one clip picked, one not, with this seed
    x_src, t_src = module.copy_start(x0, t, f)
    picked = [bool(torch.equal(x_src.view(2, f, -1)[i, 1], x0.view(2, f, -1)[i, 0])) for i in range(2)]
    assert sorted(picked) == [False, True]
    kept = picked.index(False)
    assert torch.equal(x_src.view(2, f, -1)[kept], x0.view(2, f, -1)[kept])
    assert torch.equal(t_src.view(2, f)[kept], t.view(2, f)[kept])
    with pytest.raises(InputError, match=r"train.copy_init=1.5 \(--copy_init\): must be in"):
        TIA2VTrainConfig(copy_init=1.5)
    cfg.first_frame = "noised"
    with pytest.raises(InputError, match=r"--copy_init\) is for a motion model given the first frame clean"):
        TIA2VModule(cfg, ProcessConfig(steps=100), TIA2VTrainConfig(copy_init=0.5))


def test_copy_path_trains_the_states_ddim_passes_through_from_the_copies():
    """``copy_path``: a picked clip's frames 1.. keep their own t and are noised from x0 + w_t·(copy − x0); those are
    exactly the states deterministic DDIM visits from the copies noised to the top step when every step predicts
    the clip's own frames (so ε is one and the same along the path), w = 1 at the top and 0 at t = 0."""
    from tav.diffusion.samplers import ddim_sample

    cfg = tia2v_preset("motion-tiny")
    cfg.first_frame = "clean"
    module, batch = _motion_module_and_batch(cfg, per_frame_t=True)
    module.schedule = GaussianSchedule.from_config(ProcessConfig(steps=100, loss="rescaled_mse", max_t=30))
    module.train_cfg.copy_init, module.train_cfg.copy_path = 1.0, True
    f = cfg.num_frames
    x0, t = module.flat_inputs(batch)
    x_src, t_src = module.copy_start(x0, t, f)
    assert torch.equal(t_src, t)
    copy = x0.view(2, f, -1)[:, :1].expand(-1, f, -1).reshape(x0.shape)
    w = module.copy_weight(t, torch.full_like(t, 29)).view(-1, 1, 1, 1)
    torch.testing.assert_close(x_src.view(2, f, -1)[:, 1:], (x0 + w * (copy - x0)).view(2, f, -1)[:, 1:])
    assert torch.equal(x_src.view(2, f, -1)[:, 0], x0.view(2, f, -1)[:, 0])
    ws = module.copy_weight(torch.arange(29, -1, -1), torch.full((30,), 29))
    assert ws[0] == pytest.approx(1.0) and ws[-1] < 0.05 and (ws.diff() < 0).all()

    sched = GaussianSchedule.from_config(ProcessConfig(steps=100, learn_sigma=False))
    target, start = x0[1:2], copy[1:2]  # one frame that the copy does not match
    assert not torch.equal(target, start)
    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(0))
    seen, steps = [], iter(range(29, -1, -1))

    def oracle(x, _t):  # predicts the clip's own frame at every step, and records the state it is given
        i = next(steps)
        seen.append((i, x.clone()))
        a = sched.alphas_cumprod[i]
        return ((x.double() - a.sqrt() * target) / (1 - a).sqrt()).float()

    ddim_sample(oracle, sched, target.shape, x_init=start, skip_timesteps=70, noise=noise)
    assert [i for i, _ in seen] == list(range(29, -1, -1))
    for i, x in seen[::7]:
        wi = module.copy_weight(torch.tensor([i]), torch.tensor([29])).view(1, 1, 1, 1)
        torch.testing.assert_close(x, sched.q_sample(target + wi * (start - target), i, noise), atol=1e-4, rtol=0)
    with pytest.raises(InputError, match=r"train.copy_path \(--copy_path\) moves the clips that train.copy_init"):
        TIA2VTrainConfig(copy_path=True)


def test_audio_guidance_mixes_the_sound_and_null_predictions():
    from tav.pipelines.tia2v import AudioGuided

    cfg = tia2v_preset("motion-tiny")
    torch.manual_seed(0)
    net = TIA2VUNet(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():  # zero-initialised output layers would make the sound change nothing
            p.normal_(0.0, 0.1)
    b, f, d = 2, cfg.num_frames, cfg.context_dim
    x, t = torch.randn(b, 3, f, 16, 16), torch.tensor([30.0, 60.0])
    ctx, text, tokens = torch.randn(b, 78, d), torch.randn(b, 77, d), torch.randn(b, f, 8, d)
    sound, null = motion_context(tokens, text), motion_context(torch.zeros_like(tokens), text)
    den = FrameDenoiser(net)
    with torch.no_grad():
        with_sound, silent = (den(x, t, context=ctx, context_temp=c) for c in (sound, null))
        guided = {s: AudioGuided(den, s)(x, t, context=ctx, context_temp=sound, context_temp_null=null)
                  for s in (0.0, 1.0, 3.0)}
    assert (with_sound - silent).abs().max() > 1e-3
    torch.testing.assert_close(guided[1.0], with_sound, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(guided[0.0][:, :3], silent[:, :3], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(guided[3.0][:, :3], silent[:, :3] + 3 * (with_sound[:, :3] - silent[:, :3]),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(guided[3.0][:, 3:], with_sound[:, 3:], atol=1e-5, rtol=1e-4)  # its learned variance
    with pytest.raises(InputError, match="--audio_cfg_scale"):
        TIA2VSamplingConfig(audio_cfg_scale=-1.0)


def test_audio_guidance_needs_a_model_that_saw_the_null_sound(world, tmp_path, capsys):
    """Exports record ``audio_dropout``; the sampler refuses ``--audio_cfg_scale`` for a model trained without it
    and samples a guided motion clip (frame 0 held) for one trained with it."""
    from tav.pipelines.tia2v import load_tia2v_sampler
    from tav.tia2v.load import audio_dropout_of

    plain = world["runs"] / "motion" / "ema000002.pt"
    assert audio_dropout_of(plain) == 0.0
    with pytest.raises(InputError, match="trained without --audio_dropout"):
        load_tia2v_sampler(plain, None, TIA2VSamplingConfig(respacing="10", audio_cfg_scale=3.0))
    cfg, process, _ = read_tia2v_checkpoint(plain, "motion")
    module = TIA2VModule(cfg, process, TIA2VTrainConfig(audio_dropout=0.2))
    guided_file = module.export_net(module.net, tmp_path / "motion_cfg.pt")
    assert audio_dropout_of(guided_file) == 0.2
    sampler = load_tia2v_sampler(guided_file, None, TIA2VSamplingConfig(respacing="10", audio_cfg_scale=3.0))
    first = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) - 0.5
    f = cfg.num_frames
    clip = sampler.stage1(first, torch.randn(2, 77, 32), torch.randn(2, 32), torch.randn(2, f, 8, 32), f, seeds=[1, 2])
    assert clip.shape == (2, 3, f, 16, 16) and torch.equal(clip[:, :, 0], first) and clip.abs().max() <= 0.5
    assert sample_motion_optim.main(_sample_argv(world, tmp_path / "res", "--num_samples", "1", "--batch_size", "1",
                                                 "--audio_cfg_scale", "2")) == 2  # the plain model: one-line error
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--audio_cfg_scale 2: " in err[0] and "retrain it with --audio_dropout" in err[0]
