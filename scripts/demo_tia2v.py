"""The ``tia2v`` stage of ``scripts/demo.py``: tiny TIA2V content, motion and SHR models on the demo dataset,
then ``sample_motion_optim.py`` on the first test clips.

Tiny random CLIP ViT-L/14 and BEATs stand-ins are saved in ``<ckpt_dir>`` (``saved_ckpts/demo/``): the
conditions are computed exactly as with the real encoders, but carry no meaning, so the demo's TIA2V clips
show the pipeline working, not text/audio control. The three trainings go through the same ``train()``
functions as ``train_content.py``, ``train_temp.py`` (initialised from the content model) and
``train_diffusion_3d_withtext.py``; a run folder with a finished checkpoint is reused. The exact sampling
command is left in ``<ckpt_dir>/sample_motion_optim.sh`` (extra arguments are passed through).
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from tav.encoders.beats import save_tiny_beats
from tav.encoders.clip_l import save_tiny_clip_l
from tav.errors import InputError
from tav_scripts import tia2v_cli
from tav_scripts.demo_quality import first_frame_psnr, record_quality, record_results
from tav_scripts.demo_sample import _rel, show_results, write_script
from tav_scripts.demo_stages import (
    LOSSLESS,
    base_clips_flags,
    precision_flags,
    sampling_precision_flags,
    train_clips,
    verbose_flag,
)

FRAMES, SIZE, SHR_SIZE = 4, 16, 32  # the tiny presets: 4 frames of 16 px, SHR at 32 px
# The motion model is given the first frame clean (first_frame=clean: at t = 0 in training and sampling) and samples
# from copies of the first frame noised to t = 299 of 1000 (--motion_init first --skip_timesteps 700), so it learns
# only t < 300 (--max_t 300), at 3e-3 with a linear decay. It trains as it samples: every clip starts from copies of
# its first frame, noised along the path deterministic DDIM takes from them (copy_init 1, copy_path), its windows
# drawn where the picture changes for 0.6 of the clips (moving_windows), without the temporal convs' dropout (its
# random draws are ~6% of a step), 1000 steps of 4 clips. Measured on 64 test clips (the first 16 are the demo's;
# benchmarks/bench_demo_motion.py, docs/training.md "Along the sampler's path"): colour on every frame 0.92 and
# onset_f1 0.89 against a chance level of 0.65 (0.96 and 0.95 against 0.65 after SHR); at 700 steps the colour is
# lost (0.79). The recipe before (no copies, 350 steps) kept the colour (0.84) but never moved the shape: onset_f1
# at its chance level.
MOTION_RECIPE = ("--copy_init", "1.0", "--copy_path", "True", "--set", "data.moving_windows=0.6", "--set",
                 "temporal_dropout=0.0")
# The SHR model refines lightly, from t0/T = 0.1 (--shr_strength; default 0.375), so it learns only t < 100, 200
# steps. Measured on the 16 test clips after the demo's motion model (DDIM, below): colour on every frame 1.00 and
# flicker 0.027; at 100 steps 0.97 and 0.046 (DDPM: 0.91 and 0.062), its own noise left on the clip as speckle; the
# demo before (the whole chain, 100 steps, DDPM) 0.63 and 0.071.
STEPS, MOTION_SKIP, SHR_STRENGTH = 1000, 700, 0.1  # the tiny presets' process; the samplers' starts
MOTION_LR = 3e-3
MOTION_MAX_T = STEPS - MOTION_SKIP  # sampled from t = 299
SHR_MAX_T = round(SHR_STRENGTH * STEPS)  # sampled from t = 99
# Both stages sample DDIM (ddim50: 15 motion steps from t = 299, 5 SHR steps from t = 99). On the demo's motion and
# SHR models, colour on every frame 0.92 and 0.97 against 0.89 and 0.91 with respaced DDPM "50"; over two more
# motion models (training seeds 0, 1) 0.94 and 0.95 against 0.92 and 0.91: DDPM's fresh noise at every step came
# back as a colour tint over whole frames.
MOTION_START = ("--timestep_respacing", "ddim50", "--use_ddim", "True", "--motion_init", "first", "--skip_timesteps",
                str(MOTION_SKIP), "--shr_strength", str(SHR_STRENGTH))
DEMO_RUN = "0"


def tiny_encoders(folder: Path) -> dict[str, Path]:
    """Tiny CLIP-L (32 wide, the tiny presets' context_dim) and BEATs (32 wide) in ``folder``, kept if there."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"clip_l": folder / "clip-vit-large-patch14", "beats": folder / "BEATs_iter3_plus_AS20K.pt"}
    if not (files["clip_l"] / "config.json").is_file():
        save_tiny_clip_l(files["clip_l"])
    if not files["beats"].is_file():
        save_tiny_beats(files["beats"], encoder_embed_dim=32, encoder_attention_heads=4)
    return files


def _train(part: str, root: Path, argv: list[str]) -> Path:
    """Train unless ``root`` holds an EMA export; return the newest ``emaNNNNNN.pt``."""
    emas = sorted(root.glob("ema*.pt"))
    if emas:
        print(f"  reusing {root} (delete it to retrain)")
        return emas[-1]
    tia2v_cli.train(part, argv)
    emas = sorted(root.glob("ema*.pt"))
    if not emas:
        raise InputError(f"{root}: the {part} training wrote no weights")
    return emas[-1]


def _common(run, enc: dict[str, Path], steps: int) -> list[str]:
    return ["--data_path", str(run.state["data_root"]), "--cache_dir", str(run.out / "tia2v_cache"),
            "--clip_l_ckpt", str(enc["clip_l"]), "--beats_ckpt", str(enc["beats"]), "--sequence_length",
            str(FRAMES), "--batch_size", str(min(4, train_clips(run))), "--max_steps", str(steps), "--save_interval",
            str(steps), "--log_interval", "25", "--num_workers", "0", "--progress_bar_refresh_rate", "0",
            "--set", "data.cache_clips=256",  # the 80 clips it trains on stay decoded: motion step 0.25 s against 0.29
            "--accelerator", "cpu", "--devices", "1", *base_clips_flags(run), *precision_flags(run),
            *verbose_flag(run)]


def motion_argv(run, enc: dict[str, Path], content: Path, save_dir: Path) -> list[str]:
    """``train_temp.py`` flags of the demo's motion model, initialised from ``content``, saved in ``save_dir``."""
    steps = run.args.tia2v_motion_steps
    return ["--config", "motion-tiny", "--save_dir", str(save_dir), "--model_path", str(content), "--audio_emb_model",
            "beats", "--resolution", str(SIZE), "--set", "context_dim_temp=32", "--set", "first_frame=clean", "--lr",
            str(MOTION_LR), "--max_t", str(MOTION_MAX_T), *MOTION_RECIPE, "--lr_anneal_steps", str(steps),
            *_common(run, enc, steps)]


def train_models(run, enc: dict[str, Path]) -> dict[str, Path]:
    """Content, then motion (from the content EMA), then SHR; returns their EMA files."""
    a, out = run.args, run.out
    content = _train("content", out / "tia2v_content", ["--config", "content-tiny", "--save_dir",
                     str(out / "tia2v_content"), "--resolution", str(SIZE), *_common(run, enc, a.tia2v_steps)])
    motion = _train("motion", out / "tia2v_motion", motion_argv(run, enc, content, out / "tia2v_motion"))
    shr = _train("shr", out / "tia2v_shr", ["--config", "shr-tiny", "--save_dir", str(out / "tia2v_shr"),
                 "--resolution", str(SHR_SIZE), "--max_t", str(SHR_MAX_T), *_common(run, enc, a.tia2v_shr_steps)])
    return {"content": content, "motion": motion, "shr": shr}


def sample_command(run, enc: dict[str, Path], models: dict[str, Path]) -> list[str]:
    """The README's TIA2V sampling line with demo paths and sizes (every seed flag kept)."""
    return ["scripts/sample_motion_optim.py", "--resolution", str(SIZE), "--batch_size", "2", "--diffusion_steps",
            "1000", "--noise_schedule", "cosine", "--num_channels", "32", "--num_res_blocks", "1", "--class_cond",
            "False", "--model_path", _rel(models["motion"]), "--num_samples", str(run.args.n_sample),
            "--image_size", str(SIZE), "--learn_sigma", "True", "--text_stft_cond", "--audio_emb_model", "beats",
            "--data_path", _rel(run.state["data_root"]), "--in_channels", "3", "--clip_denoised", "True", "--run",
            DEMO_RUN, "--dataset", "urmp", "--diffusion_ckpt", _rel(models["shr"]), "--model_output_size",
            str(SHR_SIZE), "--clip_l_ckpt", _rel(enc["clip_l"]), "--beats_ckpt", _rel(enc["beats"]),
            "--cache_dir", _rel(run.out / "tia2v_cache"), "--save", _rel(run.out), *MOTION_START, "--progress",
            "False", *LOSSLESS]


COMMENT = ["# Written by `make demo`: the README's TIA2V sampling command (sample_motion_optim.py) with every seed",
           "# flag kept; paths and sizes are changed for the tiny demo models and random encoders, and it samples",
           "# DDIM from the given frame at t = 299 (SHR from t = 99), the noise levels its models learned.",
           "# Extra arguments are passed through, e.g.",
           "#   bash saved_ckpts/demo/sample_motion_optim.sh --num_samples 2 --skip_shr"]


def stage_tia2v(run) -> None:
    """Train the tiny TIA2V models, sample the first test clips, write a contact sheet."""
    a, folder = run.args, Path(run.args.ckpt_dir)
    enc = tiny_encoders(folder)
    print(f"  tiny random CLIP ViT-L/14 and BEATs in {folder} (conditions are computed, but meaningless)")
    models = train_models(run, enc)
    run.state["tia2v_models"] = models
    script = write_script(folder / "sample_motion_optim.sh", sample_command(run, enc, models), COMMENT)
    print("  running: bash " + _rel(script))
    done = subprocess.run(["bash", str(script), *sampling_precision_flags(run), *shlex.split(a.tia2v_sample_args)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise InputError(f"{_rel(script)} failed (exit {done.returncode}): {tail}")
    root = run.out / f"{DEMO_RUN}_tacm_urmp"
    show_results(root, run.out / "tia2v_samples.png", n_frames=FRAMES, stages=("motion model", "SHR"))
    judged = record_results(run.out, root, {"fake_stage1": "tia2v_motion", "fake_stage2": "tia2v_shr"},
                            run.state.setdefault("judged", {}))["folders"]
    if "fake_stage1" in judged:
        frame0 = first_frame_psnr(root)
        record_quality(run.out, "tia2v_motion", {**judged["fake_stage1"], "frame0_psnr": frame0})
        print(f"  motion model: frame 0 PSNR {frame0:.1f} dB against the given image, colour on every frame "
              f"{judged['fake_stage1']['colour_frame_acc']:.2f}")
    print(f"  results: {root}\n  real | motion | SHR: {run.out / 'tia2v_samples.png'}")
