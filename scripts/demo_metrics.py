"""The ``metrics`` stage of ``scripts/demo.py``: the metric tools and the synthetic-domain judges on the results.

It runs ``tools/clip_score/clip_audio.py``, ``clip_text.py``, ``tools/tf_fvd/fvd.py`` and ``fid.py`` through their
``main(argv)`` (the README's metric lines with the demo's folder and weight flags) on the TA2V results folder,
then ``tools/synthetic_judge.py``'s judges on the TA2V and the TIA2V results folders; it prints short tables and
the JSON files written, and keeps the tools' own printed tables in ``<out>/metrics_tools.txt``.

The CLIP scores use the joint encoder trained on the demo clips (the ``joint`` stage; CLIP and AudioCLIP weights
cannot be had offline). FVD and FID use tiny random-weight stand-ins in ``<ckpt_dir>`` (``saved_ckpts/demo/``):
a TF-FID Inception-v3 variant (``TINY_INCEPTION``: a quarter of the channels, 1/16 of the work; the whole graph
took 33 of the stage's 37 s) and an I3D variant (``TINY_I3D``: a quarter of the channels and a final temporal
pool of 1, which takes the demo's 8-frame clips; the Kinetics-400 I3D needs at least 9), so those two numbers
are meaningless and their JSON says so. The judges need no network at all.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import time
from pathlib import Path

from tav.config import to_dict
from tav.errors import InputError
from tav.metrics.folders import probe_videos
from tav.metrics.i3d import TINY_I3D, save_tiny_i3d
from tav.metrics.inception import TINY_INCEPTION, save_tiny_inception
from tav.metrics.runs import write_record

REPO = Path(__file__).resolve().parent.parent

RUN_TAG = "17_tav_URMP"  # the sample stage's run folder (scripts/demo_sample.py: --run 17, URMP)
TIA2V_TAG = "0_tacm_urmp"  # the tia2v stage's run folder
I3D_FILE = "i3d_tiny_random.pt"  # not a released file name: nothing mistakes it for the real weights
INCEPTION_FILE = "inception_tiny_random.pth"
TOOLS = {  # name -> (module, README flags besides --exp_tag)
    "clip_audio": ("tav_tools.clip_score.clip_audio", ["--audio_folder", "audio", "--audio_emb_model", "joint"]),
    "clip_text": ("tav_tools.clip_score.clip_text", ["--txt_folder", "txt", "--batch_size", "5",
                                                     "--text_emb_model", "joint"]),
    "fvd": ("tav_tools.tf_fvd.fvd", ["--real_folder", "real", "--mode", "full"]),
    "fid": ("tav_tools.tf_fvd.fid", ["--real_folder", "real", "--mode", "full"]),
}
VIDEO_FOLDERS = ("real", "fake_stage1", "fake_stage2")
NOTES = {
    "fvd": "make demo: a tiny random-weight I3D variant (a quarter of the channels, final temporal pool 1) that "
           "takes the demo's 8-frame clips (the Kinetics-400 I3D needs >= 9), so this number is meaningless",
    "fid": "make demo: a tiny random-weight Inception variant (a quarter of the channels), so this number is "
           "meaningless",
    "clip_audio": "make demo: the joint encoder trained on the demo clips stands in for AudioCLIP (not comparable "
                  "with published CLIP scores)",
    "clip_text": "make demo: the joint encoder trained on the demo clips stands in for CLIP (not comparable with "
                 "published CLIP scores)",
}


def metric_weights(folder: Path, joint: Path) -> dict[str, Path]:
    """The joint encoder and tiny random I3D and Inception files in ``folder`` (files already there are kept)."""
    if not joint.is_file():
        raise InputError(f"{joint}: no joint encoder; run the demo's joint stage first (--stages joint metrics)")
    folder.mkdir(parents=True, exist_ok=True)
    files = {"joint": joint, "i3d": folder / I3D_FILE, "inception": folder / INCEPTION_FILE}
    if not files["i3d"].is_file():
        save_tiny_i3d(files["i3d"], seed=0, config=TINY_I3D)
    if not files["inception"].is_file():
        save_tiny_inception(files["inception"], seed=0, config=TINY_INCEPTION)
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
        argv += ["--sequence_length", str(frames), "--joint_ckpt", str(weights["joint"])]
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
        record["demo"] = {"note": NOTES[name], "i3d_config": to_dict(TINY_I3D) if name == "fvd" else None}
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


def judge_lines(results: dict[str, dict]) -> list[str]:
    """The judges' table: one line per results folder and video folder."""
    keys = ("colour_acc", "shape_acc", "onset_f1", "pitch_height", "flicker", "fd_judge")
    lines = [f"  {'results':<14}{'videos':<13}{'N':>3}  " + "  ".join(f"{k:>12}" for k in keys)]
    for run_name, record in results.items():
        for folder, s in record["folders"].items():
            cells = "  ".join(f"{'-':>12}" if s.get(k) is None else f"{s[k]:>12.3f}" for k in keys)
            lines.append(f"  {run_name:<14}{folder:<13}{s['n']:>3}  {cells}")
    return lines


def run_judges(folders: list[Path], known: dict[str, dict] | None = None) -> dict[str, dict]:
    """``tools/synthetic_judge.py``'s judges on each results folder; writes its ``metrics_synthetic.json``.
    ``known`` (folder path -> record) holds folders this run already judged (the sample and tia2v stages)."""
    from tav.metrics.synthetic_folders import judge_folders, results_items

    out = {}
    for folder in folders:
        record = (known or {}).get(str(folder))
        if record is None:
            record = judge_folders(results_items(folder)[0])
        out[folder.name] = record
        write_record(folder / "metrics_synthetic.json", {**record, "tool": "synthetic_judge.py"})
    return out


def stage_metrics(run) -> None:
    """Run the four metric tools on ``<out>/17_tav_URMP`` and the judges on it and on ``<out>/0_tacm_urmp``."""
    run_folder = run.out / RUN_TAG
    if not (run_folder / "manifest.jsonl").is_file():
        raise InputError(f"{run_folder}: no results folder; run the sample stage first (--stages sample metrics)")
    folder = Path(run.args.ckpt_dir)
    weights = metric_weights(folder, Path(run.state.get("joint_ckpt") or folder / "joint_encoder.pt"))
    print(f"  CLIP scores with the demo's joint encoder {weights['joint']}; FVD and FID with tiny random-weight "
          "networks: those two numbers are meaningless (real weights: saved_ckpts/README.md)")
    print(f"  FVD: {weights['i3d'].name} is a random I3D variant (1/4 channels, final time pool 1) that takes the "
          "demo's 8-frame clips; the Kinetics-400 I3D needs >= 9 frames (16 standard)")
    log = io.StringIO()
    try:
        results = run_tools(run_folder, weights, log)
    finally:
        (run.out / "metrics_tools.txt").write_text(log.getvalue(), encoding="utf-8")
    written = {name: r["json"] for name, r in results.items() if "json" in r}
    print("\n".join(summary_lines(results)))
    judged = run_judges([f for f in (run_folder, run.out / TIA2V_TAG) if (f / "manifest.jsonl").is_file()],
                        run.state.get("judged"))
    print("  judges of the synthetic domain (tools/synthetic_judge.py):")
    print("\n".join(judge_lines(judged)))
    written.update({f"synthetic {name}": run.out / name / "metrics_synthetic.json" for name in judged})
    print("  JSON: " + "\n        ".join(str(p) for p in written.values()))
    print(f"  the tools' own tables: {run.out / 'metrics_tools.txt'}")
    run.state["metrics"] = written
    run.state["judges"] = judged
