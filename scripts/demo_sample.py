"""The ``sample`` stage of ``scripts/demo.py``: the full TA2V two-stage sampler on the demo test set.

It gathers the demo checkpoints and the joint encoder trained on the demo clips (the ``joint`` stage) in
``<ckpt_dir>`` (``saved_ckpts/demo/``), writes ``<ckpt_dir>/sample_tav.sh`` (the README's sampling command with
every seed flag kept; paths and sizes changed for the demo, and the joint encoder as the audio and text guide
in place of AudioCLIP and CLIP, whose weights cannot be had offline; extra arguments passed through) and runs it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np

from tav.checkpoint import recorded_data, safe_load
from tav.data.video import read_video
from tav.errors import InputError
from tav.gpt import load_gpt, save_gpt
from tav.utils.contact_sheet import contact_sheet, save_png
from tav.utils.fileio import atomic_path, file_sha256, write_text_atomic
from tav_scripts.demo_quality import record_results
from tav_scripts.demo_stages import (
    DEMO_CFG,
    DEMO_TEMPERATURE,
    DEMO_TOP_K,
    DEMO_TOP_P,
    LOSSLESS,
    sampling_precision_flags,
)

REPO = Path(__file__).resolve().parent.parent
DEMO_RUN = "17"  # the README command's --run
DEMO_SKIP = 95  # respaced steps of 100 skipped by the demo's stage 2 (see sample_command)
DEMO_SIZE = 32  # --model_output_size of the demo's stage 2: stage 1's own frame size
DEMO_BLUR = 4.0  # --guidance_blur of the demo's stage 2 (pixels of its 32-px frames)


def _rel(path: Path) -> str:
    """``path`` relative to the repository root when inside it (the script cds there), else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def refresh_copy(src: str | os.PathLike, dst: Path) -> None:
    """Make ``dst`` a byte copy of ``src``, atomically, unless it already is one."""
    if dst.is_file() and file_sha256(dst) == file_sha256(src):
        return
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def export_gpt(src: str | os.PathLike, dst: Path) -> None:
    """Export the GPT of Lightning checkpoint ``src`` as a ``tav`` file ``dst`` that records ``src``'s sha256;
    an export of the same file is kept (the sampler checks its samples' checkpoints by hash)."""
    digest = file_sha256(src)
    if dst.is_file() and safe_load(dst).get("source_sha256") == digest:
        return
    save_gpt(load_gpt(src), dst, data=recorded_data(src), source_sha256=digest)


def gather_checkpoints(run, folder: Path) -> dict[str, Path]:
    """This run's demo VQGAN (byte copy: the GPT records its hash), GPT (exported as a ``tav`` file) and diffusion
    EMA in ``folder``, replacing older copies (a retrained stage never leaves the last run's model in use), and
    the joint encoder of the ``joint`` stage."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"vqgan": folder / "vqgan.ckpt", "gpt": folder / "gpt.ckpt", "diffusion": folder / "diffusion.pt"}
    refresh_copy(run.state["vqgan_ckpt"], files["vqgan"])
    refresh_copy(run.state["diffusion_ckpt"], files["diffusion"])
    export_gpt(run.state["gpt_ckpt"], files["gpt"])
    joint = Path(run.state.get("joint_ckpt") or folder / "joint_encoder.pt")
    if not joint.is_file():
        raise InputError(f"{joint}: no joint encoder; run the demo's joint stage first (--stages joint sample)")
    return {**files, "joint": joint}


def sample_command(files: dict[str, Path], data_root: Path, save: Path, n_sample: int) -> list[str]:
    """The README sampling line for the demo: same flags and values, demo paths and sizes, with the demo's own
    settings where commented."""
    return ["scripts/sample_tav.py", "--gpt_text_ckpt", _rel(files["gpt"]), "--text_stft_cond",
            "--vqgan_ckpt", _rel(files["vqgan"]), "--text_emb_model", "bert", "--data_path", _rel(data_root),
            "--top_k", str(DEMO_TOP_K), "--top_p", str(DEMO_TOP_P), "--n_sample", str(n_sample), "--run", DEMO_RUN,
            "--dataset", "URMP",
            "--load_vid_len", "90", "--audio_emb_model", "joint", "--resolution", "32", "--batch_size", "4",
            "--model_output_size", str(DEMO_SIZE), "--noise_schedule", "cosine", "--iterations_num", "1",
            "--audio_guidance_lambda", "10000", "--direction_lambda", "5000", "--text_guidance_lambda", "10000",
            "--diffusion_ckpt", _rel(files["diffusion"]),
            # demo sizes and paths the README line leaves at their defaults
            "--sequence_length", "8",
            # SDEdit over the last twentieth of the chain: the demo's unconditional prior (trained minutes, on
            # 16-px windows of 32-px clips) refines a clip but cannot redraw one (README default
            # --skip_timesteps 25 of 100); from earlier starts it rounds more of stage 1's shapes
            # (bench_quality.py --split train --tables starts; docs/sampling.md)
            "--skip_timesteps", str(DEMO_SKIP), "--save", _rel(save), "--text_guidance_model", "joint",
            "--joint_ckpt", _rel(files["joint"]),
            # the guide's pixel gradient smoothed (Gaussian, 4 px of the 32-px frames): unsmoothed, it speckles
            # the picture (docs/sampling.md)
            "--guidance_blur", str(DEMO_BLUR),
            # classifier-free guidance of the GPT's tokens: the demo's GPT follows the caption's colour and shape better
            "--gpt_cfg_scale", str(DEMO_CFG),
            # the seed command's temperature (docs/sampling.md, "The demo GPT's temperature")
            "--temperature", str(DEMO_TEMPERATURE),
            # the results bit-exact, so that the judges score the sampler's frames rather than the codec's
            *LOSSLESS]


def _pairs(command: list[str]) -> list[str]:
    """Shell-quoted arguments grouped as ``--flag value`` (one group per script line)."""
    groups: list[str] = []
    for arg in command:
        if groups and not arg.startswith("--") and groups[-1].startswith("--") and " " not in groups[-1]:
            groups[-1] += " " + shlex.quote(arg)
        else:
            groups.append(shlex.quote(arg))
    return groups


TA2V_COMMENT = ["# Written by `make demo`: the README's TA2V sampling command with every seed flag kept; only paths",
                "# and sizes are changed for the demo, the guide is the joint encoder trained on the demo clips, and",
                "# stage 2 runs the last twentieth of the chain (--skip_timesteps 95), which the demo prior can do,",
                "# with the guidance gradient smoothed (--guidance_blur 4).",
                "# Extra arguments are passed through, e.g.  bash saved_ckpts/demo/sample_tav.sh --n_sample 3"]


def write_script(path: Path, command: list[str], comment: list[str] | None = None) -> Path:
    """``path``: a bash script that runs ``command`` from the repository root with ``"$@"`` appended, under the
    ``comment`` lines (default: the TA2V one)."""
    lines = ["#!/usr/bin/env bash", *(comment or TA2V_COMMENT),
             "set -euo pipefail",
             f"cd {shlex.quote(str(REPO))}",
             'PY="${PYTHON:-python3}"',
             'if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi',
             'exec "$PY" ' + " \\\n  ".join(_pairs(command)) + ' "$@"', ""]
    write_text_atomic(path, "\n".join(lines))
    os.chmod(path, 0o755)
    return path


def stage_sample(run) -> None:
    """Gather checkpoints, write ``sample_tav.sh``, run it, and show real | stage 1 | stage 2 per sample."""
    a = run.args
    folder = Path(a.ckpt_dir)
    files = gather_checkpoints(run, folder)
    save = run.out
    script = write_script(folder / "sample_tav.sh", sample_command(files, run.state["data_root"], save, a.n_sample))
    print(f"  guide: the joint encoder {_rel(files['joint'])} (audio, direction and text terms)\n"
          "  running: bash " + _rel(script))
    done = subprocess.run(["bash", str(script), *sampling_precision_flags(run), *shlex.split(a.sample_args)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise InputError(f"{_rel(script)} failed (exit {done.returncode}): {tail}")
    root = save / f"{DEMO_RUN}_tav_URMP"
    show_results(root, run.out / "tav_samples.png")
    judged = record_results(run.out, root, {"fake_stage1": "stage1", "fake_stage2": "stage2"},
                            run.state.setdefault("judged", {}))["folders"]
    for name in ("fake_stage1", "fake_stage2"):
        values = judged.get(name, {})
        print(f"  {name}: " + ", ".join(f"{k} {values[k]:.2f}" for k in ("colour_acc", "shape_acc", "onset_f1")
                                        if values.get(k) is not None))
    print(f"  results: {root}\n  real | stage 1 | stage 2: {run.out / 'tav_samples.png'}")


def show_results(root: Path, png: Path, n_frames: int = 8,
                 stages: tuple[str, str] = ("stage 1 (GPT + VQGAN)", "stage 2")) -> None:
    """Contact sheet of every sample: real, stage 1 and stage 2, each upscaled to the largest clip's size."""
    import json

    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    clips, labels = [], []
    for r in rows:
        videos = [read_video(root / r["files"][k])[0] for k in ("real", "fake_stage1", "fake_stage2")]
        size = max(v.shape[1] for v in videos)
        videos = [np.repeat(np.repeat(v, size // v.shape[1], 1), size // v.shape[2], 2) for v in videos]
        clips += videos
        labels += [f"{r['id']} real: {r['caption']}", f"{r['id']} {stages[0]}", f"{r['id']} {stages[1]}"]
    save_png(png, contact_sheet(clips, n_frames=n_frames, labels=labels))
