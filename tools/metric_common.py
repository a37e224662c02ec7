"""Plumbing shared by the four metric tools (``tools/clip_score/*.py``, ``tools/tf_fvd/*.py``): the common
flags (listed in ``docs/metrics.md``), run-folder lookup and folds, the printed table, the JSON record and
``main()`` exit codes. The computations live in ``tav.metrics``; tools import nothing from ``scripts/``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tav.encoders.registry import get_encoder, resolve_encoder_path
from tav.errors import InputError
from tav.metrics.cache import FeatureCache
from tav.metrics.folders import (
    PROTOCOLS,
    RunFolder,
    Source,
    drop_remainder,
    find_run,
    load_videos,
    open_run,
    pair_sources,
    probe_videos,
    protocol_colour,
)
from tav.metrics.i3d import random_weights_note
from tav.metrics.runs import MODES, chunk_groups, fold_summary, frechet_summary, metric_record, write_record
from tav.utils.console import configure_output, wants_verbose
from tav.utils.fileio import check_writable, file_sha256
from tav.utils.runtime import pick_device

log = logging.getLogger("tav.metrics")

WEIGHT_FLAGS = {
    "--clip_ckpt": "CLIP ViT-B/32 weights (clip_text; clip_audio with wav2clip) [saved_ckpts/ViT-B-32.pt]",
    "--audioclip_ckpt": "AudioCLIP weights (clip_audio) [saved_ckpts/AudioCLIP-Full-Training.pt]",
    "--wav2clip_ckpt": "wav2clip weights (clip_audio) [saved_ckpts/Wav2CLIP.pt]",
    "--joint_ckpt": "joint encoder (clip_audio / clip_text with joint) [saved_ckpts/joint_encoder.pt]",
    "--i3d_ckpt": "I3D Kinetics-400 weights (fvd) [the loader's default under saved_ckpts/]",
    "--inception_ckpt": "Inception weights (fid) [the loader's default under saved_ckpts/]",
}


def base_parser(description: str) -> argparse.ArgumentParser:
    """Flags every metric tool takes: run lookup, protocol, device, cache, output, mode, weights, and the
    upstream flags kept for command-line compatibility."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--verbose", action="store_true", help="debug logging and third-party warnings")
    p.add_argument("--exp_tag", required=True, help="run folder under --results_root (exact name or unique suffix)")
    p.add_argument("--results_root", default="results", help="folder holding the run folders")
    p.add_argument("--protocol", choices=PROTOCOLS, default="tav",
                   help="tav: corrected pipeline; ta2v: the published one (BGR, upstream resize, dropped remainder)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 ...")
    p.add_argument("--feature_cache", default=None,
                   help="feature cache folder (default <run folder>/.feature_cache; 'none' disables it)")
    p.add_argument("--out", default=None, help="JSON output (default <run folder>/metrics_<name>.json)")
    p.add_argument("--mode", choices=MODES, default="full", help="full: one value; size: chunks of --size pairs")
    p.add_argument("--size", type=int, default=256, help="pairs per chunk with --mode size")
    p.add_argument("--num_folds", type=int, default=None,
                   help="evaluate <i>_<exp_tag> for i < k and report the mean/std over folds")
    p.add_argument("--resize", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="pre-resize frames to H x W (area interpolation, as upstream's cv2.INTER_AREA)")
    p.add_argument("--num_workers", type=int, default=8, help="accepted for compatibility (unused)")
    w = p.add_argument_group("weights (local files; nothing is downloaded)")
    for flag, text in WEIGHT_FLAGS.items():
        w.add_argument(flag, default=None, help=text)
    return p


def add_batch_size(p: argparse.ArgumentParser, default: int, what: str) -> None:
    p.add_argument("--batch_size", type=int, default=default,
                   help=f"{what}; --protocol ta2v drops the remainder of N // batch_size batches as upstream")


def command_line(tool: str, argv: list[str] | None) -> list[str]:
    """The command line recorded in the JSON: ``sys.argv``, or ``[tool, *argv]`` when called as ``main(argv)``."""
    return list(sys.argv) if argv is None else [tool, *argv]


def run_folders(args: argparse.Namespace) -> list[RunFolder]:
    """The run folder of ``--exp_tag``, or ``<i>_<exp_tag>`` for ``i < --num_folds``; where the records go (the
    run folders, or ``--out``'s folder) is checked writable here, before any work."""
    if args.num_folds is None:
        runs = [open_run(find_run(args.results_root, args.exp_tag))]
    elif args.num_folds < 1:
        raise InputError(f"--num_folds {args.num_folds}: must be at least 1")
    else:
        runs = [open_run(find_run(args.results_root, f"{i}_{args.exp_tag}")) for i in range(args.num_folds)]
    for run in runs:
        if run.manifest is None:
            log.warning("%s: no manifest.jsonl: samples are paired by file name", run.path)
    if getattr(args, "out", None) is not None:
        check_writable(Path(args.out).parent, "--out")
    else:
        for run in runs:
            check_writable(run.path, "the results folder")
    return runs


def device_of(args: argparse.Namespace):
    return pick_device(args.device)


def cache_folder(args: argparse.Namespace, run: RunFolder) -> Path | None:
    if args.feature_cache is None:
        return run.path / ".feature_cache"
    return None if args.feature_cache.lower() == "none" else Path(args.feature_cache)


def weights_info(name: str, path: str | Path, flag: str) -> dict:
    """``{"name", "path", "sha256", "random_weights"}`` of a weight file; ``random_weights``: a note of seeded
    random values lies beside it (``tav.metrics.i3d.mark_random_weights``). A missing file is a one-line error
    naming it and ``flag``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such weight file ({name}); put it under saved_ckpts/ (or $TAV_CKPT_DIR) "
                         f"or pass {flag} PATH")
    return {"name": name, "path": str(path), "sha256": file_sha256(path),
            "random_weights": random_weights_note(path).is_file()}


def video_summary(paths: Sequence[Path]) -> dict:
    """fps, frame counts and sizes read from the files."""
    return probe_videos(paths).summary()


def check_same_frames(a: dict, b: dict, what_a: str, what_b: str) -> None:
    """Never compare clips of different lengths."""
    if a["frames"] != b["frames"]:
        raise InputError(f"{what_a} has {a['frames']} frames per video but {what_b} has {b['frames']}; "
                         "compare clips of the same length")


def protocol_pairs(args: argparse.Namespace, sources: dict[str, Source], where: Path) -> list:
    """The pairs of ``sources``; ``--protocol ta2v`` drops the remainder of ``N // --batch_size``
    batches as upstream. None left is a one-line ``InputError`` naming ``where`` (the evaluated folder)."""
    pairs = pair_sources(sources, args.protocol)
    if args.protocol == "ta2v":
        pairs = drop_remainder(pairs, args.batch_size)
    if not pairs:
        raise InputError(f"{where}: fewer videos than --batch_size {args.batch_size}")
    return pairs


def groups_of(args: argparse.Namespace, n: int, folder: str) -> list:
    """Index groups of ``n`` items for ``--mode``/``--size`` (``chunk_groups``), logging its warning."""
    groups, warning = chunk_groups(n, args.mode, args.size)
    if warning:
        log.warning("%s: %s", folder, warning)
    return groups


IMAGE_TEXT_ENCODERS = {"clip": "CLIP ViT-B/32", "joint": "joint encoder (frame and caption towers)"}


def clip_encoder(args: argparse.Namespace, device, name: str = "clip") -> tuple[object, dict]:
    """``(image-text encoder, weights record)``: CLIP ViT-B/32 from ``--clip_ckpt``, or (``name="joint"``) the
    joint encoder from ``--joint_ckpt`` (or their defaults); the record is made first, so a missing file fails
    before anything loads."""
    path = resolve_encoder_path(name, getattr(args, f"{name}_ckpt"))
    weights = weights_info(IMAGE_TEXT_ENCODERS[name], path, f"--{name}_ckpt")
    return get_encoder(name, path, device), weights


def frame_cache(args: argparse.Namespace, run: RunFolder, sha256: str, image_size: int) -> FeatureCache:
    """The feature cache of per-frame CLIP image embeddings (first ``--sequence_length`` frames, ``--resize``,
    encoder input ``image_size``), keyed by the image tower's ``sha256``; shared by the CLIP-score and
    consistency tools."""
    settings = {"kind": "clip_frames", "frames": args.sequence_length, "resize": args.resize, "size": image_size}
    return FeatureCache(cache_folder(args, run), sha256, args.protocol, settings)


def clip_frame_preprocessing(args: argparse.Namespace, image_size: int) -> dict:
    """The frame preprocessing of the CLIP image tower under ``--protocol`` (JSON ``preprocessing`` head)."""
    if args.protocol == "ta2v":
        geometry, norm, colour = f"bilinear resize to {image_size}x{image_size}", "none", "BGR"
    else:
        geometry, norm, colour = f"bicubic short side to {image_size} + centre crop", "CLIP mean/std", "RGB"
    return {"colour": colour, "range": "[0,1]", "resize": geometry, "normalisation": norm,
            "pre_resize": args.resize and f"area {args.resize[0]}x{args.resize[1]}"}


def out_path(args: argparse.Namespace, run: RunFolder, name: str, n_runs: int) -> Path:
    if args.out is None:
        return run.path / f"metrics_{name}.json"
    out = Path(args.out)
    return out if n_runs == 1 else out.with_name(f"{out.stem}_{run.path.name}{out.suffix}")


def print_record(tool: str, record: dict, path: Path) -> None:
    """The short table on stdout: one line per evaluated folder, then backbone and preprocessing."""
    b = record["backbone"]
    print(f"{tool}  protocol={record['protocol']}  run={record['run_folder']}")
    for label, v in record["values"].items():
        if "values" in v:  # --mode size
            spread = f"{v['mean']:.4f} ± {v['std']:.4f} over {len(v['values'])} chunks {v['chunk_sizes']}"
        elif "std" in v:
            spread = f"{v['value']:.4f} ± {v['std']:.4f} (std over videos)"
        else:
            spread = f"{v['value']:.4f}"
        print(f"  {label:<28} N={v['N']:<5} {spread}")
    sha = (b.get("sha256") or "")[:12]
    print(f"  backbone: {b.get('name')} ({b.get('path')}, sha256 {sha})")
    print(f"  preprocessing: {', '.join(f'{k}={v}' for k, v in record['preprocessing'].items())}")
    print(f"  videos: {record['videos']}")
    print(f"  -> {path}")


def finish(tool: str, name: str, args: argparse.Namespace, records: list[tuple[RunFolder, dict]]) -> None:
    """Print and write each run's record; with several folds, also the mean/std over folds per folder."""
    for run, record in records:
        path = out_path(args, run, name, len(records))
        write_record(path, record)
        print_record(tool, record, path)
    if len(records) > 1:
        labels = records[0][1]["values"].keys()
        folds = {label: fold_summary([r["values"][label]["value"] for _, r in records]) for label in labels}
        for label, f in folds.items():
            print(f"folds {label}: {f['mean']:.4f} ± {f['std']:.4f} over {len(f['values'])} folds")
        if args.out is not None:
            write_record(args.out, {"metric": name, "folds": folds, "records": [r for _, r in records]})


def run_tool(tool: str, body: Callable[[list[str] | None], None], argv: list[str] | None) -> int:
    """A tool's ``main()``: 0 on success, 2 for bad input (one line ``<tool>: error: ...`` on stderr) or bad
    flags (argparse's usage message)."""
    configure_output(wants_verbose(argv))
    try:
        body(argv)
    except SystemExit as e:  # argparse: --help (0) or a bad flag (2)
        return e.code if isinstance(e.code, int) else 2
    except InputError as err:
        print(f"{tool}: error: {err}", file=sys.stderr)
        return 2
    return 0


# ---- FVD / FID: one evaluation, two feature networks ----------------------------------------------------


@dataclass(frozen=True)
class FrechetTool:
    """What differs between ``fvd.py`` and ``fid.py``.

    ``features(model, videos, resize)``: uint8 ``(n, T, H, W, 3)`` (already in the protocol's colour order)
    -> per-video features ``(n, ...)``; ``per_item`` turns a group's features into sample rows;
    ``distance(protocol, notes)`` returns the Fréchet function for the protocol (it may append notes).
    """

    tool: str
    name: str
    backbone: str
    weights_flag: str
    load: Callable[[Path, object], object]
    weights_path: Callable[[str | None], Path]
    features: Callable[[object, np.ndarray, str], np.ndarray]
    distance: Callable[[str, list], Callable[[np.ndarray, np.ndarray], float]]
    preprocessing: Callable[[argparse.Namespace], dict]
    per_item: Callable[[np.ndarray], np.ndarray] = lambda f: f
    min_items: int = 2


def frechet_parser(description: str) -> argparse.ArgumentParser:
    p = base_parser(description)
    p.add_argument("--real_folder", default="real", help="ground-truth video folder")
    p.add_argument("--fake_folder", default=None,
                   help="generated video folder to evaluate (default: --fake1_folder and --fake2_folder)")
    p.add_argument("--fake1_folder", default="fake_stage1", help="legacy pair flag (upstream default 'fake')")
    p.add_argument("--fake2_folder", default="fake_stage2", help="legacy pair flag (upstream default 'fake')")
    add_batch_size(p, 2, "upstream's clips per batch (features use the network's own batches)")
    return p


def _frechet_pair(spec: FrechetTool, args, model, weights: dict, run: RunFolder, fake: str, notes: list):
    pairs = pair_sources({"real": Source(run, args.real_folder), "fake": Source(run, fake)}, args.protocol)
    if args.protocol == "ta2v":
        pairs = drop_remainder(pairs, args.batch_size)
    real_paths, fake_paths = [p.files["real"] for p in pairs], [p.files["fake"] for p in pairs]
    if len(pairs) < spec.min_items:
        raise InputError(f"{run.path / fake}: {len(pairs)} pairs to compare; {spec.name.upper()} needs at least "
                         f"{spec.min_items}")
    real_meta, fake_meta = video_summary(real_paths), video_summary(fake_paths)
    check_same_frames(real_meta, fake_meta, str(run.path / args.real_folder), str(run.path / fake))
    resize = "tf1" if args.protocol == "ta2v" else getattr(args, "resize_mode", "torch")
    settings = {"kind": spec.name, "resize": resize, "pre_resize": args.resize}
    cache = FeatureCache(cache_folder(args, run), weights["sha256"], args.protocol, settings)

    def compute(paths: list[Path]) -> np.ndarray:
        videos = protocol_colour(load_videos(paths, None, tuple(args.resize) if args.resize else None), args.protocol)
        return spec.features(model, videos, resize)

    real, fake_feats = cache.features(real_paths, compute), cache.features(fake_paths, compute)
    groups = groups_of(args, len(pairs), fake)
    try:
        summary = frechet_summary(real, fake_feats, groups, spec.distance(args.protocol, notes), spec.per_item,
                                  spec.min_items, chunked=args.mode == "size")
    except ValueError as err:
        raise InputError(f"{run.path / fake}: {err}") from None
    summary["samples_per_side"] = len(spec.per_item(real))
    if len(pairs) < 2048:
        notes.append(f"N={len(pairs)} clips: the Fréchet distance is biased upward at small N; compare at equal N, "
                     "ideally N >= 2048 or mean ± std over resamplings")
    summary["keys"] = [p.key for p in pairs]
    summary["cache"] = {"hits": cache.hits, "misses": cache.misses}
    return summary, {args.real_folder: real_meta, fake: fake_meta}


def frechet_evaluate(spec: FrechetTool, args: argparse.Namespace, argv: list[str] | None) -> None:
    """Look up the run folders, load the network once, and evaluate real against each fake folder."""
    runs = run_folders(args)
    path = spec.weights_path(getattr(args, spec.weights_flag))
    weights = weights_info(spec.backbone, path, "--" + spec.weights_flag)
    model = spec.load(path, device_of(args))
    fakes = [args.fake_folder] if args.fake_folder else [args.fake1_folder, args.fake2_folder]
    records = []
    for run in runs:
        values, videos, notes = {}, {}, []
        for fake in fakes:
            values[fake], meta = _frechet_pair(spec, args, model, weights, run, fake, notes)
            videos.update(meta)
        compared = {"real": str(run.path / args.real_folder), "fake": [str(run.path / f) for f in fakes]}
        records.append((run, metric_record(
            spec.name, args.protocol, values, weights, spec.preprocessing(args), videos, compared, run.path,
            run.manifest_sha256, notes=sorted(set(notes)), mode=args.mode, size=args.size,
            command=command_line(spec.tool, argv))))
    finish(spec.tool, spec.name, args, records)


def add_video_folder_flags(p: argparse.ArgumentParser) -> None:
    """The CLIP-score tools' folder flags: one ``--video_folder`` or the real / stage-1 / stage-2 triple,
    ``--idx`` (accepted) and ``--print_256`` (= ``--mode size --size 256``)."""
    p.add_argument("--video_folder", default=None, help="evaluate only this folder (default: the three below)")
    p.add_argument("--real_video_folder", default="real")
    p.add_argument("--fake1_video_folder", default="fake_stage1")
    p.add_argument("--fake2_video_folder", default="fake_stage2")
    p.add_argument("--idx", type=int, default=None, help="accepted for compatibility (unused)")
    p.add_argument("--print_256", action="store_true", help="same as --mode size --size 256")


def score_runs(args: argparse.Namespace) -> tuple[list, list[str]]:
    """``(run folders, video folders)`` of a CLIP-score tool; applies ``--print_256``. A wrong ``--exp_tag``
    fails here, before any weights load."""
    if args.print_256:
        args.mode, args.size = "size", 256
    folders = ([args.video_folder] if args.video_folder else
               [args.real_video_folder, args.fake1_video_folder, args.fake2_video_folder])
    return run_folders(args), folders
