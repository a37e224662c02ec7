"""Generate a video as long as your sound: ``--audio FILE --caption TEXT [--image IMG] --out OUT.mp4``.

    python scripts/generate.py --method ta2v --audio song.ogg --caption "A red circle moves to a Flute." \
      --gpt_text_ckpt G.ckpt --vqgan_ckpt V.ckpt --diffusion_ckpt D.pt --out out.mp4
    python scripts/generate.py --method tia2v --audio song.ogg --caption "..." --image first.png \
      --model_path motion.pt --diffusion_ckpt shr.pt --out out.mp4

Any file PyAV reads works as ``--audio`` (wav, mp3, ogg, flac, m4a, or a video whose sound is used), at any
rate, mono or stereo. The video has ``round(duration * fps)`` frames, made by sliding windows over the
models' clip length (docs/generate.md), and carries the sound as AAC; ``OUT.json`` records every setting, the
seed, the windows and the checkpoints' hashes. ``--batch_file CSV`` (columns ``audio,caption[,image],out``
and an optional ``seed``; relative paths are taken from the current folder) runs many, skipping the rows
whose ``out`` and ``out.json`` exist (a single ``--out`` is always written, replacing what is there). Flags
that name checkpoints and settings are the samplers' own.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

from tav.errors import InputError
from tav_scripts import cli_common as cli
from tav_scripts import generate_models
from tav_scripts.generate_models import DEFAULT_FPS

log = logging.getLogger("generate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="generate.py", description=__doc__.splitlines()[0])
    cli.add_verbose_flag(p)
    r = p.add_argument_group("request")
    r.add_argument("--method", choices=["ta2v", "tia2v"], required=True)
    r.add_argument("--audio", help="sound file (any container PyAV reads, or a video file's audio track)")
    r.add_argument("--caption", help="what the video shows, e.g. \"A red circle moves to a Flute.\"")
    r.add_argument("--image", default=None, help="TIA2V: the first frame (PNG/JPEG, any size; resized and cropped)")
    r.add_argument("--out", help="output .mp4 (its .json sidecar is written next to it)")
    r.add_argument("--batch_file", default=None, help="CSV with columns audio,caption[,image],out[,seed]")
    r.add_argument("--shard", default=None, help="i/n with --batch_file: this process runs rows i, i+n, ... "
                   "(default: torchrun's RANK/WORLD_SIZE, else 0/1)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--fps", type=float, default=None, help="default: the checkpoints' training fps")
    r.add_argument("--dataset", choices=list(DEFAULT_FPS), default="urmp",
                   help="fps for checkpoints that record none (upstream files)")
    r.add_argument("--precision", choices=["auto", "32", "bf16"], default="auto",
                   help="bf16 autocast around the networks; auto: bf16 on a GPU with bf16 or a CPU with AMX")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 | mps")
    r.add_argument("--progress", type=cli.str2bool, default=True, help="a bar over the windows, with an ETA")
    s = p.add_argument_group("sampling (both methods; default: the method's sampler default)")
    s.add_argument("--timestep_respacing", default=None, help='"100", "ddim50", ... ("" = every step)')
    s.add_argument("--steps", type=int, default=None, help="shorthand for --timestep_respacing N")
    s.add_argument("--skip_timesteps", type=int, default=None, help="SDEdit start (see the samplers)")
    s.add_argument("--ddim", "--use_ddim", dest="ddim", nargs="?", const=True, default=False, type=cli.str2bool,
                   help="DDIM steps instead of DDPM (also as the seed scripts write it: --use_ddim True)")
    s.add_argument("--model_output_size", type=int, default=None, help="stage-2 / SHR frame size")
    s.add_argument("--noise_schedule", choices=["cosine", "linear"], default=None, help="bare state dicts only")
    s.add_argument("--diffusion_ckpt", default=None,
                   help="TA2V: the stage-2 prior; TIA2V: the SHR model (default: the samplers' paths)")
    generate_models.add_ta2v_flags(p)
    generate_models.add_tia2v_flags(p)
    args = p.parse_args(argv)
    if args.fps is not None and not args.fps > 0:
        p.error(f"--fps {args.fps:g}: must be > 0 (leave it out to use the checkpoints' fps)")
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps {args.steps}: must be >= 1")
    if args.steps is not None:
        if args.timestep_respacing is not None:
            p.error("give --steps or --timestep_respacing, not both")
        args.timestep_respacing = f"ddim{args.steps}" if args.ddim else str(args.steps)
    if args.batch_file is None and not all((args.audio, args.caption is not None, args.out)):
        p.error("give --audio, --caption and --out (or --batch_file CSV)")
    return args


def read_batch_file(path: str) -> list[dict]:
    """Rows of ``--batch_file`` as dicts with ``audio``, ``caption``, ``image`` (or None), ``out``, ``seed``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--batch_file {path}: no such file")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"audio", "caption", "out"} - set(reader.fieldnames or [])
        if missing:
            raise InputError(f"--batch_file {path}: missing column(s) {sorted(missing)}; the header must be "
                             "audio,caption[,image],out[,seed]")
        rows = []
        for i, row in enumerate(reader, start=2):
            if not (row.get("audio") and row.get("out")):
                raise InputError(f"--batch_file {path}, line {i}: audio and out must not be empty")
            seed = row.get("seed")
            rows.append({"audio": row["audio"], "caption": row.get("caption") or "", "out": row["out"],
                         "image": row.get("image") or None, "seed": int(seed) if seed else None, "line": i})
    return rows


def check_rows(models, rows: list[dict], batch_file: str) -> None:
    """Every ``--batch_file`` row still to do, before the first video: a non-empty caption, a readable sound and,
    for TIA2V, an image file; a bad row is a one-line error naming its CSV line."""
    from tav.pipelines.generate import TIA2VModels, load_sound

    for row in rows:
        try:
            if not row["caption"].strip():
                raise InputError("the caption is empty")
            load_sound(row["audio"], models.sample_rate)
            if isinstance(models, TIA2VModels) and not (row["image"] and Path(row["image"]).is_file()):
                raise InputError(f"image {row['image'] or '(none)'}: TIA2V needs an existing first-frame file")
        except InputError as err:
            raise InputError(f"--batch_file {batch_file}, line {row['line']}: {err}") from None


def is_done(out: str | Path) -> bool:
    """A request is done when its mp4 and its sidecar exist (both are written atomically, the sidecar last)."""
    out = Path(out)
    return out.is_file() and out.with_suffix(".json").is_file()


def run(argv: list[str] | None = None) -> Path | None:
    """Parse, build the models once, generate every request; returns the last output written."""
    from tav.pipelines.generate import generate
    from tav.utils.runtime import deterministic_kernels, precision_note, resolve_precision
    from tav_scripts.sampling import resolve_shard, shard_device

    args = parse_args(argv)
    if args.batch_file is not None:
        index, count = resolve_shard(args.shard)
        requests = [r for k, r in enumerate(read_batch_file(args.batch_file)) if k % count == index]
    else:
        requests = [{"audio": args.audio, "caption": args.caption, "image": args.image, "out": args.out,
                     "seed": None}]
    todo = [r for r in requests if args.batch_file is None or not is_done(r["out"])]
    if len(todo) < len(requests):
        log.info("%d of %d outputs already exist; skipped", len(requests) - len(todo), len(requests))
    if not todo:
        return None
    device = shard_device(args.device)
    deterministic_kernels(device)
    log.info("precision: %s", precision_note(args.precision, device))
    args.precision = resolve_precision(args.precision, device)
    models = generate_models.build(args, device)
    if args.batch_file is not None:
        check_rows(models, todo, args.batch_file)
    last = None
    for k, req in enumerate(todo, 1):
        bar = _bar(args.progress, f"{Path(req['out']).name} ({k}/{len(todo)})")
        try:
            info = generate(models, req["audio"], req["caption"], req["out"], image=req["image"],
                            seed=args.seed if req["seed"] is None else req["seed"], fps=args.fps, progress=bar)
        finally:
            if bar is not None:
                bar.close()
        log.info("%s: %d frames at %g fps, %d windows, %.1f s", info["video"], info["frames"], info["fps"],
                 len(info["windows"]), info["seconds"])
        last = Path(req["out"])
    from tav_scripts.cli_common import report_command

    for folder in sorted({Path(r["out"]).parent for r in todo}):
        log.info("HTML report: %s", report_command(folder))
    return last


class _Bar:
    """A tqdm bar over windows (with an ETA) behind the library's ``progress(done, total)`` callback."""

    def __init__(self, desc: str):
        from tqdm import tqdm

        self.bar = tqdm(total=None, desc=desc, unit="window", leave=False)

    def __call__(self, done: int, total: int) -> None:
        if self.bar.total != total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def _bar(enabled: bool, desc: str) -> _Bar | None:
    return _Bar(desc) if enabled else None


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 for bad input (one line on stderr)."""
    return cli.command_main("generate", run, argv, "video")


if __name__ == "__main__":
    sys.exit(main())
