"""Two-stage sampling (scripts/sample_tav.py + tav.pipelines): the seed line with tiny checkpoints and tiny random
encoders, the results layout and manifest, resume after a kill, per-sample seeds, bad input."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tav.data.video import probe_video, read_video
from tav.diffusion.config import UNetConfig
from tav.diffusion.load import save_unet
from tav.diffusion.schedule import ProcessConfig
from tav.diffusion.unet3d import UNet
from tav.encoders.registry import save_tiny_encoders
from tav.errors import InputError
from tav.gpt import GPT, gpt_preset, save_gpt
from tav.gpt.load import file_sha256
from tav.pipelines import results as results_mod
from tav.vqgan import VQGAN, save_vqgan
from tav_scripts import sample_tav as script

from .helpers import assert_same_videos, make_tiny_vat, run_script, tiny_vqgan_cfg

SEED_LINE = (
    "--gpt_text_ckpt saved_ckpts/best_checkpoint-val_text_loss=2.74.ckpt --text_stft_cond "
    "--vqgan_ckpt saved_ckpts/epoch=6-step=35999-train_recon_loss=0.15.ckpt --text_emb_model bert "
    "--data_path datasets/post_URMP/ --top_k 2048 --top_p 0.80 --n_sample 50 --run 17 --dataset URMP --load_vid_len 90 "
    "--audio_emb_model audioclip --resolution 96 --batch_size 1 --model_output_size 128 --noise_schedule cosine "
    "--iterations_num 1 --audio_guidance_lambda 10000 --direction_lambda 5000 --text_guidance_lambda 10000 "
    "--diffusion_ckpt saved_ckpts/model300000.pt"
).split()
FOLDERS = ("real", "fake_stage1", "fake_stage2", "audio", "txt")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """Tiny VAT data (3 test clips), VQGAN, GPT, diffusion U-Net and encoder files."""
    root = tmp_path_factory.mktemp("kit")
    data = make_tiny_vat(root / "data", stems=("a_1", "b_2", "c_3"))
    torch.manual_seed(0)
    vq = save_vqgan(VQGAN(tiny_vqgan_cfg()).eval(), root / "vqgan.ckpt")
    gcfg = dataclasses.replace(gpt_preset("tiny"), n_codes=32, latent_shape=(2, 4, 4), vqgan_hash=file_sha256(vq))
    gpt = save_gpt(GPT(gcfg), root / "gpt.ckpt")
    net = UNet(UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                          attention_resolutions=(8,), num_heads=2))
    for p in net.parameters():  # non-zero output head: a fresh U-Net predicts exactly 0
        torch.nn.init.normal_(p, std=0.02)
    unet = save_unet(net, root / "ema000001.pt", ProcessConfig(steps=100))
    enc = save_tiny_encoders(root / "encoders")
    return {"data": data, "vqgan": vq, "gpt": gpt, "unet": unet, "enc": enc, "root": root}


def argv(kit, save: Path, *extra) -> list[str]:
    swap = {"saved_ckpts/best_checkpoint-val_text_loss=2.74.ckpt": kit["gpt"],
            "saved_ckpts/epoch=6-step=35999-train_recon_loss=0.15.ckpt": kit["vqgan"],
            "datasets/post_URMP/": kit["data"], "saved_ckpts/model300000.pt": kit["unet"]}
    line = [str(swap.get(a, a)) for a in SEED_LINE]
    sizes = {"--n_sample": "3", "--load_vid_len": "8", "--resolution": "16", "--model_output_size": "16"}
    line = [sizes.get(line[i - 1], a) if i else a for i, a in enumerate(line)]
    return [*line, "--save", str(save), "--sequence_length", "4", "--timestep_respacing", "20",
            "--skip_timesteps", "5", "--device", "cpu", "--audioclip_ckpt", str(kit["enc"]["audioclip"]),
            "--clip_ckpt", str(kit["enc"]["clip"]), "--wav2clip_ckpt", str(kit["enc"]["wav2clip"]),
            "--precision", "32", *map(str, extra)]  # fp32 on both CPU kinds: batch-size comparisons at fp32 tolerance


def frames(path: Path) -> np.ndarray:
    return read_video(path)[0].astype(np.int16)


@pytest.fixture(scope="module")
def run(kit, tmp_path_factory):
    save = tmp_path_factory.mktemp("results")
    return script.sample(argv(kit, save, "--batch_size", 2)), save


def test_seed_line_writes_the_results_layout(run):
    root, _ = run
    assert root.name == "17_tav_URMP"
    for folder in FOLDERS:
        assert len(list((root / folder).iterdir())) == 3, folder
    assert sorted(p.name for p in (root / "fake_stage2").iterdir()) == [
        "generation_stage2_a_1_0.mp4", "generation_stage2_b_2_1.mp4", "generation_stage2_c_3_2.mp4"]
    real = root / "real" / "groundtruth_a_1_0.mp4"
    for path in (real, root / "fake_stage1" / "generation_stage1_a_1_0.mp4",
                 root / "fake_stage2" / "generation_stage2_a_1_0.mp4"):
        info = probe_video(path)
        assert info.has_audio and info.frames == 4 and (info.width, info.height) == (16, 16)
    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2] and [r["seed"] for r in rows] == [404, 405, 406]
    assert set(rows[0]["checkpoints"]) == {"gpt_text_ckpt", "vqgan_ckpt", "diffusion_ckpt"}
    settings = rows[0]["settings"]  # what made the sample, for the report's header (not where it was written)
    assert settings["timestep_respacing"] == "20" and settings["skip_timesteps"] == 5 and settings["batch_size"] == 2
    assert not {"device", "save", "progress", "shard"} & set(settings)
    assert settings["guidance_blur"] == 0.0  # the gradient is smoothed only when asked (the README command: not)
    assert rows[0]["seconds"]["stage2"] > 0 and set(rows[0]["guidance_final"]) == {"audio", "direction", "text",
                                                                                     "range"}
    assert (root / rows[0]["audio"]).is_file() and rows[0]["caption"]
    assert (root / "txt" / "groundtruth_a_1_0.txt").read_text().strip() == rows[0]["caption"]


def test_guidance_changes_stage2_and_refines_stage1(run, kit, tmp_path):
    root, _ = run
    off = script.sample(argv(kit, tmp_path, "--n_sample", 1, "--audio_guidance_lambda", 0, "--direction_lambda", 0,
                             "--text_guidance_lambda", 0, "--range_lambda", 0))
    name = "fake_stage2/generation_stage2_a_1_0.mp4"
    assert np.array_equal(frames(root / "fake_stage1/generation_stage1_a_1_0.mp4"),
                          frames(off / "fake_stage1/generation_stage1_a_1_0.mp4"))  # same seed, same stage 1
    assert not np.array_equal(frames(root / name), frames(off / name))



@pytest.mark.parametrize("quirks", [False, True])
def test_guidance_reads_the_sound_around_each_clip(kit, tmp_path, monkeypatch, quirks):
    """Per-frame audio windows (0.5 s) are longer than the 4-frame clips: the guide gets the clip's sound with a
    quarter second on each side and where the clip lies in it; upstream's equal-rows mode gets the clip alone."""
    from tav.data.config import load_data_config
    from tav.data.dataset import VATDataset
    from tav.guidance import Guidance

    seen, original = [], Guidance.prepare  # upstream's variant inherits it

    def spy(self, audio, captions, rate, n_frames, seeds=None, spans=None):
        seen.append((audio.clone(), None if spans is None else spans.clone()))
        return original(self, audio, captions, rate, n_frames, seeds=seeds, spans=spans)

    monkeypatch.setattr(Guidance, "prepare", spy)
    script.sample(argv(kit, tmp_path, "--n_sample", 1, *(["--faithful-quirks"] if quirks else [])))
    item = VATDataset(kit["data"], "test", load_data_config("urmp", frames_per_file=8, resolution=16,
                                                            sequence_length=4))[0]
    clip = item["audio"].reshape(-1)
    (audio, spans), = seen
    if quirks:
        assert spans is None and torch.equal(audio[0], clip)
        return
    a, b = spans[0].tolist()
    assert audio.shape == (1, len(clip) + 2 * 12000) and b - a == len(clip)
    assert torch.equal(audio[0, a:b], clip)


def test_same_seed_same_video_whatever_the_batch(run, kit, tmp_path):
    root, _ = run
    single = script.sample(argv(kit, tmp_path, "--batch_size", 1, "--n_sample", 2))
    for name in ("fake_stage1/generation_stage1_b_2_1.mp4", "fake_stage2/generation_stage2_b_2_1.mp4"):
        diff = np.abs(frames(root / name) - frames(single / name))
        assert diff.max() <= 2 and diff.mean() < 0.05, name  # batched convolutions: last-bit differences only


def test_precision_auto_is_recorded_as_run(kit, tmp_path, monkeypatch, caplog):
    """``--precision auto`` (the default) runs bf16 autocast where the CPU has bf16 units and fp32 elsewhere, says
    which at the start, and records what ran (not ``auto``), so a folder resumed where the other ran is refused.
    Stage 1 (the GPT's decoding) runs in fp32 on a CPU either way."""
    import logging

    from tav.gpt.sampling import sample_codes
    from tav.pipelines import ta2v
    from tav.utils import runtime

    name = "fake_stage2/generation_stage2_a_1_0.mp4"
    fp32 = script.sample(argv(kit, tmp_path / "fp32", "--n_sample", 1))
    monkeypatch.setattr(runtime, "cpu_bf16_units", lambda cpuinfo=None: None)
    plain = script.sample(argv(kit, tmp_path / "plain", "--n_sample", 1, "--precision", "auto"))
    assert np.array_equal(frames(fp32 / name), frames(plain / name))
    monkeypatch.setattr(runtime, "cpu_bf16_units", lambda cpuinfo=None: "amx")
    decoded_under = []  # whether autocast was on while the GPT decoded

    def spy(*a, **kw):
        decoded_under.append(torch.is_autocast_cpu_enabled())
        return sample_codes(*a, **kw)

    monkeypatch.setattr(ta2v, "sample_codes", spy)
    with caplog.at_level(logging.INFO, logger="sample_tav"):
        amx = script.sample(argv(kit, tmp_path / "amx", "--n_sample", 1, "--precision", "auto"))
    assert decoded_under == [False]
    assert "precision: bf16 autocast (auto: this CPU has AMX)" in caplog.text
    rows = [json.loads((f / "manifest.jsonl").read_text().splitlines()[0]) for f in (plain, amx)]
    assert [r["settings"]["precision"] for r in rows] == ["32", "bf16"]
    assert not np.array_equal(frames(fp32 / name), frames(amx / name))  # the networks ran in bf16
    first = "fake_stage1/generation_stage1_a_1_0.mp4"  # the GPT decodes in fp32 on a CPU whatever the precision
    assert np.array_equal(frames(fp32 / first), frames(amx / first))
    monkeypatch.setattr(runtime, "cpu_bf16_units", lambda cpuinfo=None: None)
    with pytest.raises(InputError, match="precision"):  # the same folder, now on a CPU without bf16 units: fp32
        script.sample(argv(kit, tmp_path / "amx", "--n_sample", 1, "--precision", "auto"))


def test_bf16_chain_holds_the_frozen_conv_weights(kit, tmp_path, monkeypatch):
    """Under bf16 the stage-2 chain runs the U-Net and the guides' image towers with their convolution weights
    held in bf16 and, on a CPU with AMX, channels-last (``sampling_weights``); the networks are as loaded
    afterwards."""
    import contextlib

    from tav.pipelines import ta2v
    from tav.utils import runtime
    from tav.utils.runtime import CONVS

    monkeypatch.setattr(runtime, "cpu_bf16_units", lambda cpuinfo=None: "amx")

    seen, models, real = [], [], ta2v.sampling_weights

    @contextlib.contextmanager
    def spy(modules, precision, device):
        with real(modules, precision, device):
            models.extend(modules)
            seen.append({type(m).__name__: {(w.dtype, w.is_contiguous(memory_format=torch.channels_last_3d
                                                                      if w.dim() == 5 else torch.channels_last))
                                            for w in (c.weight for c in m.modules() if isinstance(c, CONVS))
                                            if w.dim() in (4, 5)}
                         for m in modules})
            yield

    monkeypatch.setattr(ta2v, "sampling_weights", spy)
    script.sample(argv(kit, tmp_path / "bf16", "--n_sample", 1, "--precision", "bf16"))
    assert len(seen) == 1 and {"UNet", "AudioCLIP", "CLIPEncoder"} <= set(seen[0])
    assert all(v == {(torch.bfloat16, True)} for v in seen[0].values())
    assert all(p.dtype == torch.float32 for m in models for p in m.parameters())


def test_guidance_checkpointing_same_videos(kit, tmp_path):
    """``--guidance_checkpointing`` trades time for memory and nothing else: the same videos, and a folder made
    without it is continued with it."""
    plain = script.sample(argv(kit, tmp_path / "plain", "--n_sample", 1))
    saved = script.sample(argv(kit, tmp_path / "ckpt", "--n_sample", 1, "--guidance_checkpointing"))
    name = "fake_stage2/generation_stage2_a_1_0.mp4"
    assert np.array_equal(frames(plain / name), frames(saved / name))
    script.sample(argv(kit, tmp_path / "plain", "--n_sample", 2, "--guidance_checkpointing"))
    assert len((plain / "manifest.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("batch", [1, 2])
def test_same_command_in_two_processes_same_videos(kit, tmp_path, batch):
    """The same command run twice, each in a fresh process, writes videos with identical decoded frames."""
    for name in ("first", "second"):
        run_script("scripts/sample_tav.py", argv(kit, tmp_path / name, "--batch_size", batch, "--n_sample", 2))
    assert assert_same_videos(tmp_path / "first", tmp_path / "second") == 6  # real, stage 1, stage 2 x 2


def _rows(root: Path) -> list[dict]:
    """Manifest rows without what depends on the run (timings, batch size)."""
    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "batch")} for r in rows]


def test_two_shards_make_the_one_process_folder(kit, tmp_path):
    """--shard 0/2 and 1/2 run as two processes at once into one --save folder: the same files and, once both have
    finished, a manifest with the same rows as one process (shard manifests merged, then removed)."""
    import subprocess
    import sys

    from .helpers import REPO

    shards = [subprocess.Popen([sys.executable, "scripts/sample_tav.py",
                                *argv(kit, tmp_path / "sharded", "--batch_size", 1, "--shard", f"{i}/2")],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(2)]
    for proc in shards:
        assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-2000:]
    run_script("scripts/sample_tav.py", argv(kit, tmp_path / "single", "--batch_size", 1))
    sharded, single = tmp_path / "sharded" / "17_tav_URMP", tmp_path / "single" / "17_tav_URMP"
    assert assert_same_videos(sharded, single) == 9  # 3 samples x real, stage 1, stage 2
    assert _rows(sharded) == _rows(single) and [r["id"] for r in _rows(single)] == [0, 1, 2]
    assert not list(sharded.glob("manifest.shard-*"))
    with pytest.raises(Exception, match="--shard"):
        script.sample(argv(kit, tmp_path / "bad", "--shard", "2/2"))


def test_kill_9_and_resume_ends_as_the_uninterrupted_run(kit, tmp_path):
    """``kill -9`` once the first sample is in the manifest, then the same command again: the folder ends with
    the files of a run that was never interrupted (the finished sample is kept, the others are redone)."""
    import signal
    import subprocess
    import sys
    import time

    from .helpers import REPO

    cmd = [sys.executable, str(REPO / "scripts/sample_tav.py"),
           *argv(kit, tmp_path / "killed", "--batch_size", 1, "--n_sample", 3)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = tmp_path / "killed" / "17_tav_URMP" / "manifest.jsonl"
    while proc.poll() is None and not (manifest.is_file() and manifest.read_text().strip()):
        time.sleep(0.05)
    killed_mid_run = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed_mid_run, "the run finished before it could be killed"
    for save in ("killed", "whole"):
        run_script("scripts/sample_tav.py", argv(kit, tmp_path / save, "--batch_size", 1, "--n_sample", 3))
    assert assert_same_videos(tmp_path / "killed", tmp_path / "whole") == 9
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2]


def test_killed_run_resumes_without_duplicates(kit, tmp_path, monkeypatch):
    real_write = results_mod.ResultsFolder.write
    written = []

    def dying_write(self, rec):
        if written:
            raise KeyboardInterrupt  # killed while the second sample is being written
        written.append(rec.index)
        return real_write(self, rec)

    monkeypatch.setattr(results_mod.ResultsFolder, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        script.sample(argv(kit, tmp_path))
    monkeypatch.setattr(results_mod.ResultsFolder, "write", real_write)
    root = tmp_path / "17_tav_URMP"
    first = root / "fake_stage2" / "generation_stage2_a_1_0.mp4"
    stamp = first.stat().st_mtime_ns
    script.sample(argv(kit, tmp_path))
    assert first.stat().st_mtime_ns == stamp  # finished sample skipped
    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2]
    for folder in FOLDERS:
        assert len([p for p in (root / folder).iterdir() if not p.name.startswith(".")]) == 3, folder


def test_wav2clip_quirks_and_iterations(kit, tmp_path):
    root = script.sample(argv(kit, tmp_path, "--n_sample", 1, "--audio_emb_model", "wav2clip", "--aug_num", 3,
                              "--iterations_num", 2, "--faithful-quirks"))
    names = sorted(p.name for p in (root / "fake_stage2").iterdir())
    assert names == ["generation_stage2_a_1_0.mp4", "generation_stage2_a_1_0_it0.mp4"]
    assert not np.array_equal(frames(root / "fake_stage2" / names[0]), frames(root / "fake_stage2" / names[1]))


@pytest.mark.parametrize("extra, needle", [
    (["--sequence_length", "16"], "--sequence_length 16"),
    (["--audio_emb_model", "STFT"], "STFT"),
    (["--noise_schedule", "linear"], "noise_schedule='cosine'"),
    (["--text_emb_model", "clip"], "--text_emb_model clip"),
    (["--resolution", "32"], "make 16-px clips"),  # real clips at 32 px beside 16 px stage-1 clips
    (["--gpt_cfg_scale", "2"], "trained without text_dropout"),  # the kit's GPT has no unconditional model
])
def test_bad_input_is_one_line(kit, tmp_path, capsys, extra, needle):
    assert script.main([*argv(kit, tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and err.startswith("sample_tav: error:")


def test_missing_encoder_and_wrong_stage_files(kit, tmp_path, capsys):
    assert script.main([*argv(kit, tmp_path), "--audioclip_ckpt", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert "nope.pt" in err and "--audioclip_ckpt" in err
    assert script.main([*argv(kit, tmp_path), "--diffusion_ckpt", str(kit["vqgan"])]) == 2
    assert "diffusion U-Net" in capsys.readouterr().err


def test_non_finite_diffusion_checkpoint_is_one_line_and_writes_nothing(kit, tmp_path, capsys):
    """Upstream-style damage: a diffusion file of NaN weights used to give all-black stage-2 videos, exit 0."""
    import torch

    from tav.checkpoint import safe_load

    obj = safe_load(kit["unet"])
    sd = obj["state_dict"] if "state_dict" in obj else obj
    key = next(k for k, v in sd.items() if v.is_floating_point())
    sd[key] = torch.full_like(sd[key], float("nan"))
    bad = tmp_path / "nan_unet.pt"
    torch.save(obj, bad)
    assert script.main([*argv(kit, tmp_path / "out"), "--diffusion_ckpt", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"tensor {key} holds" in err and "nan_unet.pt" in err
    assert not any(p.suffix == ".mp4" for p in (tmp_path / "out").rglob("*"))


def test_rerun_with_another_recipe_stops_unless_overwrite(kit, tmp_path, capsys):
    """A folder remembers what made it: another batch size is the same recipe (skipped as done), another
    --skip_timesteps or checkpoint is a one-line stop, --overwrite replaces the samples."""
    root = script.sample(argv(kit, tmp_path, "--n_sample", 1))
    first = _rows(root)
    script.sample(argv(kit, tmp_path, "--n_sample", 1, "--batch_size", 3))  # nothing to do
    assert _rows(root) == first
    capsys.readouterr()
    assert script.main(argv(kit, tmp_path, "--n_sample", 1, "--skip_timesteps", 6)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--skip_timesteps (5 then, 6 now)" in err and "--overwrite" in err
    import torch

    from tav.checkpoint import safe_load

    copy = tmp_path / "unet_copy.pt"  # the same weights in another file: another sha256
    torch.save({**safe_load(kit["unet"]), "note": "a copy"}, copy)
    assert script.main(argv(kit, tmp_path, "--n_sample", 1, "--diffusion_ckpt", str(copy))) == 2
    assert "another checkpoint diffusion_ckpt" in capsys.readouterr().err
    script.sample(argv(kit, tmp_path, "--n_sample", 1, "--skip_timesteps", 6, "--overwrite"))
    rows = _rows(root)
    assert [r["settings"]["skip_timesteps"] for r in rows] == [6] and rows[0]["seed"] == first[0]["seed"]
    # a flag added since the folder was made (absent from its rows) is no change at its default, a change otherwise
    manifest = root / "manifest.jsonl"
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    for row in lines:
        del row["settings"]["guidance_blur"]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in lines))
    script.sample(argv(kit, tmp_path, "--n_sample", 1, "--skip_timesteps", 6))  # nothing to do
    assert [r["id"] for r in _rows(root)] == [0]
    capsys.readouterr()
    assert script.main(argv(kit, tmp_path, "--n_sample", 1, "--skip_timesteps", 6, "--guidance_blur", 1)) == 2
    assert "--guidance_blur (None then, 1.0 now)" in capsys.readouterr().err
    assert script.main(argv(kit, tmp_path, "--n_sample", 1, "--guidance_blur", 9, "--run", "blur")) == 2
    err = capsys.readouterr().err  # stopped before sampling: the kernel cannot fit the 16-px frames
    assert "--guidance_blur 9.0" in err and "does not fit 16-px frames" in err and not list(tmp_path.rglob("blur_*"))
