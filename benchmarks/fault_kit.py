"""The tiny inputs and command lines of ``bench_faults.py``: every long-running command at a size that runs in
seconds on a CPU, with the same flags a user passes.

:func:`build_world` writes the inputs (a tiny VAT dataset, a small demo dataset, raw videos for the builder, a
song, tiny random encoders and tiny TA2V / TIA2V checkpoints); :data:`COMMANDS` maps a name to a function
``(world, out) -> Command`` giving the command line whose outputs go to ``out``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--num_workers", "0", "--progress_bar_refresh_rate", "0", "--accelerator", "cpu", "--devices", "1"]
DATA = {"name": "urmp", "fps": 30.0, "sample_rate": 48000}


@dataclass(frozen=True)
class Command:
    """One command: ``argv`` (script path first, relative to the repository), what it writes (``out``), its kind
    (``train``: resumed with ``--resume last`` when a checkpoint exists; ``files``: run again as it is) and the
    output paths (relative to ``out``, globs) left out of the comparison: logs and timings; ``rewritten``: outputs
    that a re-run writes again by design (summaries), which do not count as finished work redone; ``unit``: the
    piece of work an output belongs to (a clip, a sample): one whose files were all written before the kill
    must not be made again."""

    argv: list[str]
    out: Path
    kind: str = "files"
    ignore: tuple[str, ...] = ()
    rewritten: tuple[str, ...] = ()  # outputs a re-run rewrites by design (summaries), not finished work redone
    unit: Callable[[str], str] = staticmethod(lambda rel: rel)  # output path -> the piece of work it belongs to


def _noisy(net: torch.nn.Module) -> torch.nn.Module:
    for p in net.parameters():  # non-zero output heads: a fresh U-Net predicts exactly 0
        torch.nn.init.normal_(p, std=0.02)
    return net


def _raw_videos(folder: Path) -> None:
    """Three source videos with sound (moving grey ramps), captions in a CSV: the dataset builder's input."""
    from tav.data.video import write_video

    folder.mkdir(parents=True, exist_ok=True)
    rows = ["file,caption"]
    for i, (fps, n, w) in enumerate([(24, 60, 48), (30, 90, 40), (15, 45, 32)]):
        frames = np.broadcast_to(((np.arange(n) * (8 + i)) % 256).astype(np.uint8)[:, None, None, None],
                                 (n, 32, w, 3))
        t = np.arange(round(n / fps * 48000)) / 48000
        wave = (0.5 * np.sin(2 * np.pi * (330 + 110 * i) * t)).astype(np.float32)
        write_video(folder / f"src{i}.mp4", frames, fps, audio=wave, sample_rate=48000)
        rows.append(f"src{i}.mp4,Source number {i}.")
    (folder / "captions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def _tiny_vat(root: Path, stems: tuple[str, ...], n_frames: int = 8, fps: float = 30.0, rate: int = 48000) -> None:
    """A VAT dataset of 16 px clips (one per stem and split) whose grey levels and samples follow the frame."""
    from tav.data.layout import write_clip

    idx = np.arange(n_frames)
    frames = np.empty((n_frames, 16, 16, 3), np.uint8)
    frames[:, :8] = (20 + 20 * (idx // 10))[:, None, None, None]
    frames[:, 8:] = (20 + 20 * (idx % 10))[:, None, None, None]
    audio = np.repeat((idx + 1) / 200.0, int(rate / fps)).astype(np.float32)
    for split in ("train", "test"):
        for k, stem in enumerate(stems):
            write_clip(root / split, stem, frames, fps, audio, rate, f"clip number {k} of {split}.", None)


def build_world(root: Path) -> dict[str, Path]:
    """Write the inputs under ``root`` (once; deterministic) and return their paths."""
    from tav.data.audio import write_wav
    from tav.data.demo import build_demo_dataset
    from tav.diffusion.config import UNetConfig
    from tav.diffusion.load import save_unet
    from tav.diffusion.schedule import ProcessConfig
    from tav.diffusion.unet3d import UNet
    from tav.encoders.beats import save_tiny_beats
    from tav.encoders.clip_l import save_tiny_clip_l
    from tav.encoders.registry import save_tiny_encoders
    from tav.gpt import GPT, gpt_preset, save_gpt
    from tav.gpt.load import file_sha256
    from tav.metrics.i3d import TINY_I3D, save_tiny_i3d
    from tav.tia2v.config import tia2v_preset
    from tav.tia2v.load import save_tia2v_unet
    from tav.tia2v.unet import TIA2VUNet
    from tav.vqgan import VQGAN, VQGANConfig, save_vqgan

    done = root / ".world-complete"
    w = {"root": root, "vat": root / "vat", "demo": root / "demo", "raw": root / "raw", "enc": root / "enc",
         "clip_l": root / "clip_l", "beats": root / "beats.pt", "i3d": root / "i3d.pt", "song": root / "song.wav",
         "vqgan": root / "vqgan.ckpt", "gpt": root / "gpt.ckpt", "unet": root / "unet.pt",
         "motion": root / "motion.pt", "shr": root / "shr.pt"}
    if done.is_file():
        return w
    root.mkdir(parents=True, exist_ok=True)
    _tiny_vat(w["vat"], stems=("a_1", "b_2", "c_3"))
    build_demo_dataset(w["demo"], n_train=6, n_test=4, size=32)
    _raw_videos(w["raw"])
    save_tiny_encoders(w["enc"])
    save_tiny_clip_l(w["clip_l"])
    save_tiny_beats(w["beats"], encoder_embed_dim=32, encoder_attention_heads=4)
    save_tiny_i3d(w["i3d"], seed=0, config=TINY_I3D)
    t = np.arange(3 * 48000) / 48000
    write_wav(w["song"], (0.5 * np.sin(2 * np.pi * (440 + 220 * (t > 1.5)) * t)).astype(np.float32), 48000)
    torch.manual_seed(0)
    tiny_vqgan = VQGANConfig(embedding_dim=8, n_codes=32, n_hiddens=8, norm="batch", disc_channels=8,
                             disc_layers=2, resolution=16, sequence_length=4, downsample=(2, 4, 4))
    save_vqgan(VQGAN(tiny_vqgan).eval(), w["vqgan"])
    gcfg = dataclasses.replace(gpt_preset("tiny"), n_codes=32, latent_shape=(2, 4, 4),
                               vqgan_hash=file_sha256(w["vqgan"]))
    save_gpt(GPT(gcfg), w["gpt"], data=DATA)
    save_unet(_noisy(UNet(UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                     attention_resolutions=(8,), num_heads=2))), w["unet"], ProcessConfig(steps=100))
    process = ProcessConfig(steps=1000, loss="rescaled_mse")
    save_tia2v_unet(_noisy(TIA2VUNet(tia2v_preset("motion-tiny"))), w["motion"], process, beats_mode="fixed",
                    data=DATA)
    save_tia2v_unet(_noisy(TIA2VUNet(tia2v_preset("shr-tiny"))), w["shr"], process)
    done.write_text("ok\n")
    return w


TRAIN_IGNORE = ("config.yaml", "log.txt", "tb/**", "samples/**")


def source_unit(rel: str) -> str:
    """``train/mp4/src1_0.mp4`` -> ``train/src1``: the dataset builder's unit of work is a source video (its
    clips are cut in one decoding pass)."""
    parts = rel.split("/")
    source = re.sub(r"_\d+$", "", Path(parts[-1]).stem)
    return f"{parts[0]}/{source}" if len(parts) >= 3 else rel


def sample_unit(rel: str) -> str:
    """``17_tav_URMP/fake_stage2/generation_stage2_a_1_0.mp4`` -> ``17_tav_URMP#0``: the files of one sample."""
    found = re.search(r"_(\d+)\.\w+$", rel)
    return f"{rel.split('/')[0]}#{found.group(1)}" if found and "/cache/" not in f"/{rel}" else rel


def _tia2v(world: dict, out: Path, script: str, preset: str, *extra: str) -> Command:
    argv = [f"scripts/{script}", "--config", preset, "--save_dir", str(out), "--data_path", str(world["vat"]),
            "--cache_dir", str(out / "cache"), "--clip_l_ckpt", str(world["clip_l"]), "--beats_ckpt",
            str(world["beats"]), "--batch_size", "2", "--max_steps", "8", "--save_interval", "3", *QUIET, *extra]
    return Command(argv, out, "train", TRAIN_IGNORE)


COMMANDS: dict[str, Callable[[dict, Path], Command]] = {
    "prepare_dataset": lambda w, out: Command(
        ["tools/prepare_dataset.py", "--videos", str(w["raw"]), "--captions", str(w["raw"] / "captions.csv"),
         "--out", str(out), "--load_vid_len", "10", "--fps", "10", "--size", "32", "--test_fraction", "0.34",
         "--no_progress"], out, "files", ("build_log*",), rewritten=("manifest.jsonl", "*.json"), unit=source_unit),
    "train_vqgan": lambda w, out: Command(
        ["scripts/train_vqgan.py", "--config", "tiny", "--data_path", str(w["vat"]), "--load_vid_len", "8",
         "--default_root_dir", str(out), "--batch_size", "2", "--max_steps", "10", "--save_every_n_steps", "3",
         "--val_check_interval", "4", "--log_every_n_steps", "1", "--sample_every_n_steps", "0",
         "--perceptual_weight", "0", "--discriminator_iter_start", "4", *QUIET], out, "train", TRAIN_IGNORE),
    "train_text_transformer": lambda w, out: Command(
        ["scripts/train_text_transformer.py", "--config", "tiny", "--vqvae", str(w["vqgan"]), "--data_path",
         str(w["vat"]), "--load_vid_len", "8", "--default_root_dir", str(out), "--batch_size", "2", "--max_steps",
         "10", "--save_every_n_steps", "3", "--val_check_interval", "4", "--log_every_n_steps", "1", *QUIET],
        out, "train", (*TRAIN_IGNORE, "token_cache/**")),
    "diffusion_video_train_3d": lambda w, out: Command(
        ["scripts/diffusion_video_train_3d.py", "--config", "tiny", "--data_path", str(w["vat"]), "--load_vid_len",
         "8", "--resolution", "16", "--sequence_length", "4", "--save_dir", str(out), "--batch_size", "2",
         "--max_steps", "10", "--save_interval", "3", "--log_interval", "1", *QUIET], out, "train", TRAIN_IGNORE),
    "train_content": lambda w, out: _tia2v(w, out, "train_content.py", "content-tiny"),
    "train_temp": lambda w, out: _tia2v(w, out, "train_temp.py", "motion-tiny"),
    "train_diffusion_3d_withtext": lambda w, out: _tia2v(w, out, "train_diffusion_3d_withtext.py", "shr-tiny",
                                                         "--resolution", "32"),
    "train_joint_encoder": lambda w, out: Command(
        ["scripts/train_joint_encoder.py", "--data_path", str(w["demo"]), "--save_dir", str(out), "--batch_size",
         "3", "--max_steps", "10", "--frames_per_item", "3", "--set", "train.log_interval=1", "--set",
         "train.save_interval=3", *[a for k, v in dict(dim=16, width=8, audio_width=16, text_width=16,
                                                       text_buckets=256, n_mels=32, image_size=32).items()
                                     for a in ("--set", f"model.{k}={v}")], *QUIET],
        out, "train", TRAIN_IGNORE),
    "sample_tav": lambda w, out: Command(
        ["scripts/sample_tav.py", "--gpt_text_ckpt", str(w["gpt"]), "--vqgan_ckpt", str(w["vqgan"]),
         "--diffusion_ckpt", str(w["unet"]), "--data_path", str(w["vat"]), "--save", str(out), "--run", "17",
         "--dataset", "URMP", "--text_emb_model", "bert", "--audio_emb_model", "audioclip", "--n_sample", "3",
         "--load_vid_len", "8", "--resolution", "16", "--model_output_size", "16", "--sequence_length", "4",
         "--batch_size", "1", "--timestep_respacing", "20", "--skip_timesteps", "5", "--iterations_num", "1",
         "--noise_schedule", "cosine", "--audio_guidance_lambda", "10000", "--direction_lambda", "5000",
         "--text_guidance_lambda", "10000", "--device", "cpu",
         "--audioclip_ckpt", str(w["enc"] / "AudioCLIP-Full-Training.pt"),
         "--clip_ckpt", str(w["enc"] / "ViT-B-32.pt"), "--wav2clip_ckpt", str(w["enc"] / "Wav2CLIP.pt")],
        out, "files", ("**/manifest*.jsonl",), unit=sample_unit),
    "sample_motion_optim": lambda w, out: Command(
        ["scripts/sample_motion_optim.py", "--model_path", str(w["motion"]), "--diffusion_ckpt", str(w["shr"]),
         "--data_path", str(w["vat"]), "--cache_dir", str(out / "cache"), "--clip_l_ckpt", str(w["clip_l"]),
         "--beats_ckpt", str(w["beats"]), "--save", str(out / "results"), "--timestep_respacing", "10",
         "--model_output_size", "32", "--progress", "False"], out, "files", ("**/manifest*.jsonl",),
        rewritten=("cache/*/manifest.json",), unit=lambda rel: sample_unit(rel.removeprefix("results/"))),
    "generate": lambda w, out: Command(
        ["scripts/generate.py", "--method", "ta2v", "--audio", str(w["song"]), "--caption",
         "A red circle moves to a Flute.", "--out", str(out / "song.mp4"), "--gpt_text_ckpt", str(w["gpt"]),
         "--vqgan_ckpt", str(w["vqgan"]), "--diffusion_ckpt", str(w["unet"]), "--model_output_size", "16",
         "--timestep_respacing", "10", "--skip_timesteps", "5", "--device", "cpu", "--audioclip_ckpt",
         str(w["enc"] / "AudioCLIP-Full-Training.pt"), "--clip_ckpt", str(w["enc"] / "ViT-B-32.pt"),
         "--progress", "False"],
        out, "files", ("*.json",)),
}


def fvd_command(world: dict, out: Path, results: Path) -> Command:
    """``tools/tf_fvd/fvd.py`` on a ``sample_tav.py`` results root, its feature cache in ``out``."""
    return Command(["tools/tf_fvd/fvd.py", "--exp_tag", "17_tav_URMP", "--results_root", str(results),
                    "--i3d_ckpt", str(world["i3d"]), "--feature_cache", str(out / "cache"), "--out",
                    str(out / "fvd.json"), "--device", "cpu", "--batch_size", "2"], out, "files", (),
                   rewritten=("fvd.json",))
