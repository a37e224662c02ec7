"""The ``generate`` stage of ``scripts/demo.py``: ``saved_ckpts/demo/generate.sh`` (``scripts/generate.py`` with the
demo's models, for both methods), run once on a 8-second melody the demo synthesises.

    bash saved_ckpts/demo/generate.sh --method ta2v --audio song.ogg --caption "A red circle moves to a Flute." \
      --out out.mp4
    bash saved_ckpts/demo/generate.sh --method tia2v --audio song.ogg --caption "..." --image first.png --out out.mp4

The script picks the checkpoint flags of the method named by ``--method`` (the two methods use some flag names
for different models, e.g. ``--diffusion_ckpt``); every argument is passed through.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import numpy as np

from tav.data.audio import write_wav
from tav.data.demo import DemoPreset, make_clip
from tav.data.video import read_video
from tav.errors import InputError
from tav.utils.fileio import write_text_atomic
from tav_scripts.demo_quality import judge_clips, record_quality
from tav_scripts.demo_sample import DEMO_BLUR, DEMO_SIZE, DEMO_SKIP, REPO, _rel, gather_checkpoints
from tav_scripts.demo_stages import DEMO_CFG, DEMO_TEMPERATURE, DEMO_TOP_K, DEMO_TOP_P, sampling_precision_flags
from tav_scripts.demo_tia2v import MOTION_START, SHR_SIZE, tiny_encoders, train_models

MELODY_S, MELODY_SEED = 10.0, 1010  # the demo's own song: longer than any window
GENERATE_COMMENT = [
    "# Written by `make demo`: scripts/generate.py with the demo's checkpoints; the flags of the method named",
    "# by --method are used (ta2v: GPT + VQGAN + prior guided by the joint encoder; tia2v: the tiny motion and",
    "# SHR models with tiny random CLIP-L and BEATs). Every argument is passed through, e.g.",
    "#   bash saved_ckpts/demo/generate.sh --method ta2v --audio song.ogg --caption \"A red circle moves to a Flute.\" "
    "--out out.mp4"]


def generate_commands(files: dict[str, Path], enc: dict[str, Path], models: dict[str, Path]) -> dict[str, list[str]]:
    """The demo's ``generate.py`` flags per method (the same settings as sample_tav.sh / sample_motion_optim.sh,
    with stage 2 as DDIM over about the same end of the chain, 3 of 50 steps: as good as DDPM there and half the
    cost).

    TA2V's GPT draws every window from the caption alone (``--context_frames 0``; stage 2's windows still overlap
    and blend): over three 8-s melodies the caption's colour holds on 0.79 of the frames and onset_f1 is 0.22,
    against 0.59 and 0.12 when each window continues the last one's codes, whose colour errors compound; the seams
    stay as smooth as the inside (1.16 against 1.10; ``bench_generate.py``). TIA2V windows each restart from the
    given picture (``--hand_over False``) for the same reason: with the demo's motion model the caption's colour
    holds on 0.80 of the frames of a 30-s video, against 0.05 when each window starts from the previous one's last
    frame, which compounds the small tint every window adds."""
    ta2v = ["--gpt_text_ckpt", _rel(files["gpt"]), "--vqgan_ckpt", _rel(files["vqgan"]), "--diffusion_ckpt",
            _rel(files["diffusion"]), "--audio_emb_model", "joint", "--text_guidance_model", "joint", "--joint_ckpt",
            _rel(files["joint"]), "--model_output_size", str(DEMO_SIZE), "--timestep_respacing", "ddim50", "--ddim",
            "--skip_timesteps", str(DEMO_SKIP // 2), "--guidance_blur", str(DEMO_BLUR),
            "--gpt_cfg_scale", str(DEMO_CFG), "--top_k", str(DEMO_TOP_K), "--top_p", str(DEMO_TOP_P),
            "--temperature", str(DEMO_TEMPERATURE),
            "--context_frames", "0"]  # independent GPT windows: see above
    tia2v = ["--model_path", _rel(models["motion"]), "--diffusion_ckpt", _rel(models["shr"]), "--clip_l_ckpt",
             _rel(enc["clip_l"]), "--beats_ckpt", _rel(enc["beats"]), "--model_output_size", str(SHR_SIZE),
             *MOTION_START, "--hand_over", "False"]  # windows restart from the picture: see below
    return {"ta2v": ta2v, "tia2v": tia2v}


def write_generate_script(path: Path, commands: dict[str, list[str]]) -> Path:
    """A bash script that runs ``scripts/generate.py`` with the flags of the ``--method`` given in ``"$@"``."""
    def line(flags: list[str]) -> str:
        return 'exec "$PY" scripts/generate.py ' + " ".join(shlex.quote(f) for f in flags) + ' "$@"'

    lines = ["#!/usr/bin/env bash", *GENERATE_COMMENT, "set -euo pipefail", f"cd {shlex.quote(str(REPO))}",
             'PY="${PYTHON:-python3}"', "if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi",
             'method=ta2v; prev=""',
             'for a in "$@"; do',
             '  if [ "$prev" = "--method" ]; then method="$a"; fi',
             '  case "$a" in --method=*) method="${a#--method=}";; esac',
             '  prev="$a"',
             "done",
             'if [ "$method" = "tia2v" ]; then',
             "  " + line(commands["tia2v"]),
             "fi",
             line(commands["ta2v"]), ""]
    write_text_atomic(path, "\n".join(lines))
    path.chmod(0o755)
    return path


def demo_song(folder: Path, seconds: float = MELODY_S, seed: int = MELODY_SEED, fps: float = 30.0,
              size: int = 64) -> tuple[Path, str, np.ndarray, np.ndarray]:
    """A demo melody of ``seconds`` as ``<folder>/melody_<seconds>s.wav``; returns (wav, caption, the clip's
    frames (T, size, size, 3) as the domain would draw them, the wave)."""
    frames, wave, caption, _ = make_clip(seed, DemoPreset("urmp", num_frames=round(seconds * fps), fps=fps), size)
    folder.mkdir(parents=True, exist_ok=True)
    path = write_wav(folder / f"melody_{seconds:g}s.wav", wave, 48000)
    return path, caption, frames, wave


def stage_generate(run) -> None:
    """Write ``generate.sh``, run it on the 8-second melody (TA2V), judge the video over its whole length."""
    folder = Path(run.args.ckpt_dir)
    files = gather_checkpoints(run, folder)
    enc = tiny_encoders(folder)
    models = run.state.get("tia2v_models") or train_models(run, enc)
    script = write_generate_script(folder / "generate.sh", generate_commands(files, enc, models))
    out_dir = run.out / "generate"
    seconds = run.args.generate_seconds
    wav, caption, _, wave = demo_song(out_dir, seconds)
    out = out_dir / f"ta2v_{seconds:g}s.mp4"
    argv = ["--method", "ta2v", "--audio", _rel(wav), "--caption", caption, "--out", _rel(out), "--progress", "False",
            *sampling_precision_flags(run), *shlex.split(run.args.generate_args)]
    if out.is_file() and out.with_suffix(".json").is_file():
        print(f"  reusing {_rel(out)} (delete it to generate again)")
    else:
        print(f"  running: bash {_rel(script)} {shlex.join(argv)}")
        done = subprocess.run(["bash", str(script), *argv], capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise InputError(f"{_rel(script)} failed (exit {done.returncode}): {tail}")
    frames, fps = read_video(out)
    judged = judge_clips([frames], [{"fps": fps, "sample_rate": 48000, "caption": caption}], [wave])
    record_quality(run.out, "generate_ta2v", judged)
    print(f"  {_rel(out)}: {len(frames)} frames at {fps:g} fps for {seconds:g} s of sound ({caption!r}); colour "
          f"on every frame {judged['colour_frame_acc']:.2f}, onset_f1 {judged['onset_f1']:.2f}; settings and windows "
          f"in {_rel(out.with_suffix('.json'))}")
