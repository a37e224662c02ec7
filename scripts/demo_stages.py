"""The model stages of ``scripts/demo.py``: a tiny VQGAN, GPT and diffusion prior trained on the demo dataset.

Each stage trains through the same ``train()`` function its command-line script uses, reuses a finished
run found in the output folder, and writes something to look at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tav.data.audio import read_audio
from tav.data.layout import clip_files
from tav.data.text import build_tokenizer
from tav.data.video import read_video, resize_center_crop, to_model_range, to_uint8, write_video
from tav.diffusion.load import load_diffusion
from tav.diffusion.samplers import ddim_sample
from tav.errors import InputError
from tav.gpt import load_gpt, sample_codes
from tav.training.resume import newest_checkpoint
from tav.utils.contact_sheet import contact_sheet, save_png
from tav.utils.runtime import cpu_bf16_units
from tav.vqgan import load_vqgan
from tav_scripts import diffusion_video_train_3d, train_joint_encoder, train_text_transformer, train_vqgan
from tav_scripts.demo_quality import judge_clips, psnr, record_quality

LOADER_WORKERS = ["--num_workers", "2"]  # VQGAN: crops and resizes overlap the step (0.18 s a step against 0.21)
DEMO_CFG = 2.0  # --gpt_cfg_scale of the demo's stage 1 (its GPT trains with text_dropout 0.1: docs/training.md)
# The demo GPT's --top_k / --top_p / --temperature: the seed command's (temperature 0.5 until this was measured over
# seven GPT trainings, where the cooler draws lost the shape altogether on 7% of the training captions, a dark clip,
# and judged lower: docs/sampling.md, "The demo GPT's temperature")
DEMO_TOP_K, DEMO_TOP_P, DEMO_TEMPERATURE = 2048, 0.8, 1.0
# The sampling scripts write the results' mp4s bit-exact: the judges score the models' frames (H.264 at crf 17 turns
# about one 32-px stage-1 shape in six into another: docs/sampling.md, "Lossless results for the judges")
LOSSLESS = ["--lossless_video", "True"]
QUIET = ["--num_workers", "0", "--progress_bar_refresh_rate", "0", "--accelerator", "cpu", "--devices", "1",
         "--lr_scaling", "none", "--limit_val_batches", "2"]


def verbose_flag(run) -> list[str]:
    """``["--verbose"]`` when the demo runs with ``--verbose`` (Lightning's summaries come back)."""
    return ["--verbose"] if run.args.verbose else []


def train_clips(run, every: bool = False) -> int:
    """Training clips a stage sees: the first ``--base_clips`` of the split, or all of them with ``every`` (the
    GPT's; it learns the shapes only from more clips, docs/training.md, "Clips and steps")."""
    n = sum(r["split"] == "train" for r in run.state["manifest"])
    return n if every or run.args.base_clips <= 0 else min(n, run.args.base_clips)


def base_clips_flags(run) -> list[str]:
    """``--set data.max_clips=N`` for the stages that train on the first ``--base_clips`` clips only."""
    return ["--set", f"data.max_clips={run.args.base_clips}"] if run.args.base_clips > 0 else []


def precision_flags(run) -> list[str]:
    """``--precision bf16`` for a training when the demo runs in bf16 (``--precision auto`` on a CPU with bf16
    units). Used by the stages it speeds up, measured per step on the 2-core machines: VQGAN 1.46x (AMX) and
    1.58x (AMD Zen 4, AVX-512 bf16), diffusion prior 1.46x and 1.29x, TIA2V U-Nets 1.8x (AMX); the GPT's is
    :func:`gpt_precision`."""
    return ["--precision", "bf16"] if run.state.get("precision") == "bf16" else []


def gpt_precision(demo_precision: str) -> str:
    """The demo GPT's training precision when the demo runs in ``demo_precision`` (``32`` or ``bf16``): bf16 on a
    CPU whose bf16 units are AVX-512 bf16 (AMD Zen 4: forward + backward 1.83x faster than fp32, with the attention
    written out in bf16, ``tav.utils.attention``; ``benchmarks/bench_precision.py --nets demo_gpt``), fp32 on a CPU
    with AMX, where the GPT last measured slower in bf16 (204 s against 194 s, before that attention change)."""
    return "bf16" if demo_precision == "bf16" and cpu_bf16_units() != "amx" else "32"


def sampling_precision_flags(run) -> list[str]:
    """The demo's ``--precision`` for its samplers when it is not ``auto`` (their default is ``auto`` too)."""
    return [] if run.args.precision == "auto" else ["--precision", run.args.precision]


def _steps(n: int) -> list[str]:
    """Train ``n`` steps; validate and checkpoint once, at the end."""
    return ["--max_steps", str(n), "--val_check_interval", str(n), "--save_every_n_steps", str(n)]


def finished_checkpoint(root: Path) -> Path | None:
    """The best (else last) checkpoint of the finished run in ``root`` (one with ``checkpoints/last.ckpt``), or
    None."""
    last = root / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return None
    best = sorted((root / "checkpoints").glob("best-*.ckpt"))
    return best[-1] if best else last


def newest_ema(root: Path) -> Path | None:
    """The prior's newest exported EMA weights ``root/emaNNNNNN.pt``, or None."""
    emas = list(root.glob("ema*.pt"))
    return max(emas, key=lambda p: int(p.stem[3:])) if emas else None


def _trained(root: Path, argv: list[str], train_fn) -> Path:
    """Train unless ``root/checkpoints/last.ckpt`` exists (an interrupted run is resumed); return the best (else
    last) checkpoint."""
    done = finished_checkpoint(root)
    if done is not None:
        print(f"  reusing {root} (delete it to retrain)")
        return done
    if newest_checkpoint(root / "checkpoints") is not None:
        argv = [*argv, "--resume", "last"]
    ckpt = train_fn(argv)
    if ckpt is None:
        raise InputError(f"{root}: training wrote no checkpoint (are there enough training clips for one batch?)")
    return Path(ckpt)


def _test_clips(run, n: int) -> list[dict]:
    return [r for r in run.state["manifest"] if r["split"] == "test"][:n]


def _clip_video(run, row: dict, resolution: int) -> tuple[torch.Tensor, np.ndarray]:
    """One whole test clip as model input ``(1, 3, T, R, R)`` and its audio ``(N,)``."""
    files = clip_files(run.state["data_root"] / row["split"], row["stem"])
    frames, _ = read_video(files.mp4)
    video = resize_center_crop(to_model_range(frames), resolution)[None]
    return video, read_audio(files.audio, row["sample_rate"])


def stage_vqgan(run) -> None:
    """Train the demo VQGAN, then reconstruct whole test clips (it is convolutional in time)."""
    a, root = run.args, run.out / "vqgan"
    argv = ["--config", "demo", "--data_path", str(run.state["data_root"]), "--default_root_dir", str(root),
            "--batch_size", str(min(32, train_clips(run))), "--sample_every_n_steps", str(a.vqgan_steps),
            *_steps(a.vqgan_steps), *QUIET, *LOADER_WORKERS, *base_clips_flags(run), *precision_flags(run),
            *verbose_flag(run)]
    ckpt = _trained(root, argv, train_vqgan.train)
    model = load_vqgan(ckpt)
    res = model.cfg.resolution
    rows = _test_clips(run, a.n_test)
    reals, recons, waves, psnrs = [], [], [], []
    for row in rows:
        video, audio = _clip_video(run, row, res)
        with torch.inference_mode():
            recon = model.decode(model.encode(video), size=tuple(video.shape[2:])).clamp(-0.5, 0.5)
        reals.append(to_uint8(video[0]).numpy())
        recons.append(to_uint8(recon[0]).numpy())
        waves.append(audio)
        psnrs.append(psnr(recons[-1], reals[-1]))
        if len(reals) == 1:  # real | reconstruction side by side, with the clip's sound
            side = np.concatenate([reals[0], recons[0]], axis=2)
            write_video(run.out / "vqgan_recon.mp4", side, row["fps"], audio=audio, sample_rate=row["sample_rate"])
    shown = min(4, len(reals))
    sheet = contact_sheet([v for pair in zip(reals[:shown], recons[:shown], strict=True) for v in pair], n_frames=8,
                          labels=[s for i in range(shown) for s in (f"real {i}", f"recon {i}")])
    save_png(run.out / "vqgan_recon.png", sheet)
    run.state["vqgan_ckpt"] = ckpt
    judged = judge_clips(recons, rows, waves)
    record_quality(run.out, "real", judge_clips(reals, rows, waves))
    record_quality(run.out, "vqgan_recon", {"psnr": float(np.mean(psnrs)), **judged})
    print(f"  checkpoint {ckpt}\n  test reconstructions ({len(rows)} clips at {res} px): PSNR {np.mean(psnrs):.1f} dB, "
          f"colour_acc {judged['colour_acc']:.2f}, shape_acc {judged['shape_acc']:.2f}; {run.out / 'vqgan_recon.png'}, "
          f"{run.out / 'vqgan_recon.mp4'}")


def gpt_argv(vqgan_ckpt: Path, data_root: Path, root: Path, n_train: int, steps: int,
             precision: str = "32") -> list[str]:
    """``train_text_transformer.py`` arguments of the demo's GPT: preset ``demo`` on the VQGAN's cached codes,
    ``steps`` steps in ``precision``, run folder ``root`` (also what ``benchmarks/bench_demo_stage1.py --train``
    runs)."""
    return ["--config", "demo", "--vqvae", str(vqgan_ckpt), "--data_path", str(data_root), "--default_root_dir",
            str(root), "--precompute_tokens", "--token_stride", "8", "--batch_size", str(min(16, n_train)),
            *_steps(steps), *QUIET, "--precision", precision]


def stage_gpt(run) -> None:
    """Train the demo GPT on the VQGAN's codes, then sample clips from test captions."""
    a, root = run.args, run.out / "gpt"
    vq = load_vqgan(run.state["vqgan_ckpt"])
    argv = gpt_argv(run.state["vqgan_ckpt"], run.state["data_root"], root, train_clips(run, every=True),
                    a.gpt_steps, gpt_precision(run.state.get("precision", "32"))) + verbose_flag(run)
    ckpt = _trained(root, argv, train_text_transformer.train)
    gpt = load_gpt(ckpt)
    run.state["gpt_ckpt"] = ckpt
    rows = _test_clips(run, 4)
    ids = build_tokenizer("bert", gpt.cfg.text_seq_len)([r["caption"] for r in rows])
    with torch.inference_mode():
        codes = sample_codes(gpt, ids, temperature=DEMO_TEMPERATURE, top_k=DEMO_TOP_K, top_p=DEMO_TOP_P,
                             seeds=list(range(len(rows))),
                             cfg_scale=DEMO_CFG if gpt.cfg.text_dropout > 0 else 1.0)
        videos = vq.decode(codes).clamp(-0.5, 0.5)
    clips = [to_uint8(v).numpy() for v in videos]
    save_png(run.out / "gpt_samples.png", contact_sheet(clips, n_frames=8, labels=[r["caption"] for r in rows]))
    print(f"  checkpoint {ckpt}\n  {len(clips)} samples from test captions: {run.out / 'gpt_samples.png'}")


def stage_diffusion(run) -> None:
    """Train the demo diffusion prior on real clips, then draw clips from it (DDIM, 50 steps, x̂0 clamped to
    the data range)."""
    a, root = run.args, run.out / "diffusion"
    argv = ["--config", "demo", "--data_path", str(run.state["data_root"]), "--save_dir", str(root),
            "--resolution", "32", "--sequence_length", "8", "--batch_size", str(min(4, train_clips(run))),
            "--max_steps", str(a.diffusion_steps), "--save_interval", str(a.diffusion_steps), "--num_workers", "0",
            "--lr_anneal_steps", str(a.diffusion_steps),
            "--progress_bar_refresh_rate", "0", "--accelerator", "cpu", "--devices", "1", "--log_interval", "25",
            *base_clips_flags(run), *precision_flags(run), *verbose_flag(run)]
    _trained(root, argv, diffusion_video_train_3d.train)
    ema = newest_ema(root)
    net, schedule = load_diffusion(ema, respacing="ddim50")
    size, n = net.config.image_size, 4
    shape = (n, 3, 8, size, size)
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    prior = ddim_sample(net, schedule, shape, generators=gens, clip_denoised=0.5, progress=a.progress)
    clips = [to_uint8(v).numpy() for v in prior]
    labels = [f"prior sample {i} (DDIM 50)" for i in range(n)]
    save_png(run.out / "diffusion_samples.png", contact_sheet(clips, n_frames=8, labels=labels))
    run.state["diffusion_ckpt"] = ema
    print(f"  EMA weights {ema}\n  {n} prior samples: {run.out / 'diffusion_samples.png'}")


def stage_joint(run) -> None:
    """Train the demo's guide, the joint audio-video-text encoder, on the demo clips; report retrieval R@1 on
    the test clips and leave ``joint_encoder.pt`` in the checkpoint folder (guidance and the CLIP-score tools
    use it)."""
    import json
    import shutil

    a, root = run.args, run.out / "joint"
    argv = ["--config", "demo", "--data_path", str(run.state["data_root"]), "--save_dir", str(root),
            "--batch_size", str(min(16, train_clips(run))), "--max_steps", str(a.joint_steps), "--accelerator",
            "cpu", "--devices", "1", "--progress_bar_refresh_rate", "0", *base_clips_flags(run), *verbose_flag(run)]
    export = root / train_joint_encoder.EXPORT
    if export.is_file() and (root / "retrieval.json").is_file():
        print(f"  reusing {root} (delete it to retrain)")
    else:
        train_joint_encoder.train(argv)
    target = Path(a.ckpt_dir) / "joint_encoder.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(export, target)
    r1 = json.loads((root / "retrieval.json").read_text())
    run.state["joint_ckpt"] = target
    print(f"  joint encoder {target}\n  retrieval R@1 among {r1['candidates']} test clips: audio -> frame "
          f"{r1['audio_to_frame']:.2f}, caption -> frame {r1['caption_to_frame']:.2f} (chance "
          f"{1 / r1['candidates']:.2f})")
