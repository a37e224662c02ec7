"""The ``metrics`` stage of ``scripts/demo.py``: the four metric tools on the sample stage's results folder.

It runs ``tools/clip_score/clip_audio.py`` (AudioCLIP), ``tools/clip_score/clip_text.py``,
``tools/tf_fvd/fvd.py`` and ``tools/tf_fvd/fid.py`` through their ``main(argv)`` (the README's metric
lines with the demo's folder and weight flags), prints a short table and the JSON files they wrote, and
keeps the tools' own printed tables in ``<out>/metrics_tools.txt``.

Every feature network is a tiny random-weight stand-in in ``<ckpt_dir>`` (``saved_ckpts/demo/``): the
CLIP, AudioCLIP and wav2clip files the sample stage saved (written here if absent), a random-weight
TF-FID Inception-v3 and a random I3D variant (``TINY_I3D``: a quarter of the channels and a final
temporal pool of 1). The Kinetics-400 I3D needs at least 9 frames and the demo's clips have 8; the variant
takes them as they are (nothing is padded or repeated), which only a random-weight stand-in may do. So
every number is meaningless: the stage shows that the tools run end to end and what they write. Each
JSON gets a ``demo`` entry saying so.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import time
from pathlib import Path

from tav.config import to_dict
from tav.encoders.registry import save_tiny_encoders
from tav.errors import InputError
from tav.metrics.folders import probe_videos
from tav.metrics.i3d import TINY_I3D, save_tiny_i3d
from tav.metrics.inception import save_tiny_inception
from tav.metrics.runs import write_record

REPO = Path(__file__).resolve().parent.parent

RUN_TAG = "17_tav_URMP"  # the sample stage's run folder (scripts/demo_sample.py: --run 17, URMP)
ENCODER_FILES = {"audioclip": "AudioCLIP-Full-Training.pt", "clip": "ViT-B-32.pt", "wav2clip": "Wav2CLIP.pt"}
I3D_FILE = "i3d_tiny_random.pt"  # not a released file name: nothing mistakes it for the real weights
INCEPTION_FILE = "inception_tiny_random.pth"
TOOLS = {  # name -> (module, README flags besides --exp_tag)
    "clip_audio": ("tav_tools.clip_score.clip_audio", ["--audio_folder", "audio", "--audio_emb_model", "audioclip"]),
    "clip_text": ("tav_tools.clip_score.clip_text", ["--txt_folder", "txt", "--batch_size", "5"]),
    "fvd": ("tav_tools.tf_fvd.fvd", ["--real_folder", "real", "--mode", "full"]),
    "fid": ("tav_tools.tf_fvd.fid", ["--real_folder", "real", "--mode", "full"]),
}
VIDEO_FOLDERS = ("real", "fake_stage1", "fake_stage2")
NOTE = ("make demo: tiny random-weight feature networks (saved_ckpts/demo/), so these numbers are meaningless; "
        "FVD uses a random I3D variant (a quarter of the channels, final temporal pool 1) that takes the demo's "
        "8-frame clips, which the Kinetics-400 I3D (>= 9 frames, 16 standard) does not")


def metric_weights(folder: Path) -> dict[str, Path]:
    """Tiny random weight files for the four tools in ``folder``: files already there are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / f for name, f in ENCODER_FILES.items()}
    if not all(p.is_file() for p in files.values()):
        files = save_tiny_encoders(folder)
    files["i3d"], files["inception"] = folder / I3D_FILE, folder / INCEPTION_FILE
    if not files["i3d"].is_file():
        save_tiny_i3d(files["i3d"], seed=0, config=TINY_I3D)
    if not files["inception"].is_file():
        save_tiny_inception(files["inception"], seed=0)
    return files


def clip_frames(run_folder: Path) -> int:
    """Fewest frames of the run's videos (the CLIP tools' ``--sequence_length``)."""
    paths = [p for f in VIDEO_FOLDERS for p in sorted((run_folder / f).glob("*.mp4"))]
    if not paths:
        raise InputError(f"{run_folder}: no videos in {', '.join(VIDEO_FOLDERS)}; run the demo's sample stage first")
    return min(probe_videos(paths).frames)


def tool_argv(name: str, run_folder: Path, weights: dict[str, Path], frames: int) -> list[str]:
    """The README metric line of tool ``name`` with the demo's folder and weight flags."""
    argv = ["--exp_tag", run_folder.name, *TOOLS[name][1], "--results_root", str(run_folder.parent)]
    if name.startswith("clip"):
        argv += ["--sequence_length", str(frames), "--clip_ckpt", str(weights["clip"]),
                 "--audioclip_ckpt", str(weights["audioclip"]), "--wav2clip_ckpt", str(weights["wav2clip"])]
    return argv + {"fvd": ["--i3d_ckpt", str(weights["i3d"])],
                   "fid": ["--inception_ckpt", str(weights["inception"])]}.get(name, [])


def run_tools(run_folder: Path, weights: dict[str, Path], log: io.StringIO | None = None) -> dict[str, dict]:
    """Run the four tools on ``run_folder``; per tool ``{"json", "record", "seconds"}``, or ``{"skipped": why}``
    for FVD on a single sample (a covariance needs two clips; ``--n_sample 1`` in quick tests).

    Their stdout goes to ``log``; a tool that fails (its one-line error is on stderr) raises ``InputError``.
    """
    frames = clip_frames(run_folder)
    n_samples = len(probe_videos(sorted((run_folder / "real").glob("*.mp4"))).frames)
    out = {}
    for name, (module_name, _) in TOOLS.items():
        if name == "fvd" and n_samples < 2:
            out[name] = {"skipped": f"FVD needs at least 2 clips, this run has {n_samples}"}
            continue
        module = importlib.import_module(module_name)
        argv = tool_argv(name, run_folder, weights, frames)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(log if log is not None else io.StringIO()):
            code = module.main(argv)
        if code != 0:
            raise InputError(f"{module.TOOL} failed (exit {code}; its error is printed above): "
                             f"python tools/{module_name.split('.', 1)[1].replace('.', '/')}.py {' '.join(argv)}")
        path = run_folder / f"metrics_{name}.json"
        record = json.loads(path.read_text(encoding="utf-8"))
        record["demo"] = {"note": NOTE, "i3d_config": to_dict(TINY_I3D) if name == "fvd" else None}
        write_record(path, record)
        out[name] = {"json": path, "record": record, "seconds": time.perf_counter() - t0}
    return out


def summary_lines(results: dict[str, dict]) -> list[str]:
    """The short table: one line per tool and evaluated folder."""
    lines = [f"  {'metric':<11} {'videos':<22} {'N':>3}  {'value':<22} seconds"]
    for name, res in results.items():
        if "skipped" in res:
            lines.append(f"  {name:<11} skipped: {res['skipped']}")
            continue
        rec = res["record"]
        for i, (folder, v) in enumerate(rec["values"].items()):
            label = f"real vs {folder}" if name in ("fvd", "fid") else folder
            value = f"{v['value']:.3f}" + (f" ± {v['std']:.3f}" if "std" in v else "")
            secs = f"{res['seconds']:.1f}" if i == 0 else ""
            lines.append(f"  {name if i == 0 else '':<11} {label:<22} {v['N']:>3}  {value:<22} {secs}".rstrip())
    return lines


def stage_metrics(run) -> None:
    """Run the four metric tools on ``<out>/17_tav_URMP`` with tiny random feature networks."""
    run_folder = run.out / RUN_TAG
    if not (run_folder / "manifest.jsonl").is_file():
        raise InputError(f"{run_folder}: no results folder; run the sample stage first (--stages sample metrics)")
    folder = Path(run.args.ckpt_dir)
    weights = metric_weights(folder)
    print(f"  tiny random-weight feature networks in {folder}: every number below is meaningless "
          "(real weights: saved_ckpts/README.md)")
    print(f"  FVD: {weights['i3d'].name} is a random I3D variant (1/4 channels, final time pool 1) that takes the "
          "demo's 8-frame clips; the Kinetics-400 I3D needs >= 9 frames (16 standard)")
    log = io.StringIO()
    try:
        results = run_tools(run_folder, weights, log)
    finally:
        (run.out / "metrics_tools.txt").write_text(log.getvalue(), encoding="utf-8")
    written = {name: r["json"] for name, r in results.items() if "json" in r}
    print("\n".join(summary_lines(results)))
    print("  JSON: " + "\n        ".join(str(p) for p in written.values()))
    print(f"  the tools' own tables: {run.out / 'metrics_tools.txt'}")
    run.state["metrics"] = written
