"""Kill every long-running command at random moments (SIGKILL), run it again, and check that it ends exactly as
the run that was never interrupted.

    python benchmarks/bench_faults.py [--kills 5] [--seed 0] [--only NAME ...] [--work DIR] [--json OUT]

The commands (``fault_kit.COMMANDS`` plus ``tools/tf_fvd/fvd.py`` on the ``sample_tav`` results) run at tiny
sizes, each in its own process with one intra-op thread. Per command: one uninterrupted run (the reference,
timed), then ``--kills`` attempts, each killed after a random share (10-95 %) of the reference's duration and
then run again with the same command line (a training script with ``--resume last`` once it has written a
checkpoint). Table columns:

- ``killed``: attempts the signal reached while the command was still running (the rest had finished);
- ``right point``: the second run continued from what the first left: a training run from its newest checkpoint
  (its ``log.txt`` names it), other commands without redoing a finished output (its file untouched);
- ``stale``: temp files (hidden ``.tmp`` names) left anywhere in the outputs at the end;
- ``truncated``: outputs that do not open (checkpoints, videos, JSON) at the end;
- ``equal``: every output equal to the reference's: the same files, checkpoint and weight files tensor by
  tensor (bitwise), JSON and JSON-lines without their timing fields and feature-cache hit counts (the run
  folder's own path written ``<out>``), every other file byte for byte.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from fault_kit import COMMANDS, REPO, Command, build_world, fvd_command

from tav.training.resume import newest_checkpoint, resume_point
from tav.utils.fileio import dumps_strict, is_temp_name

VOLATILE = re.compile(r"time|seconds|elapsed|duration|_s$|host|pid|date|started|finished|created|^hits$|^misses$")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
       "TAV_NUM_THREADS": "1"}


def run(cmd: Command, kill_after: float | None = None, extra: list[str] | None = None) -> tuple[float, bool]:
    """Run ``cmd`` (plus ``extra`` flags); with ``kill_after`` seconds, SIGKILL it then. Returns the seconds it
    ran and whether the signal found it running. A run that fails on its own raises."""
    log = cmd.out.parent / f"{cmd.out.name}.console.txt"
    with log.open("a") as console:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *cmd.argv, *(extra or [])], cwd=REPO, env=ENV, stdout=console,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the command and any workers it started
            proc.wait()
            return time.perf_counter() - t0, True
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd.argv[:1])} exited {proc.returncode}; see {log}")
    return time.perf_counter() - t0, False


def files_of(root: Path, ignore: tuple[str, ...]) -> dict[str, Path]:
    """Relative path -> file under ``root`` (temp files and ``ignore`` globs left out)."""
    out = {}
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).as_posix()
        if f.is_file() and not is_temp_name(f.name) and not any(fnmatch.fnmatch(rel, g) for g in ignore):
            out[rel] = f
    return out


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not VOLATILE.search(k)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _tensors(obj, root: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint or weight file, flattened by key path (the run folder ``root`` in keys, as in
    the best-checkpoint bookkeeping, written ``<out>``)."""
    flat: dict[str, torch.Tensor] = {}

    def walk(x, key):
        if isinstance(x, torch.Tensor):
            flat[key.replace(str(root), "<out>")] = x
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{key}/{k}")
        elif isinstance(x, list | tuple):
            for i, v in enumerate(x):
                walk(v, f"{key}/{i}")

    walk(obj, "")
    return flat


def same_file(a: Path, b: Path, roots: tuple[Path, Path]) -> bool:
    """Equal as this module's note says (checkpoints by tensors and steps, JSON without timings, else bytes)."""
    if a.suffix in (".ckpt", ".pt", ".pth"):
        try:
            x, y = torch.load(a, weights_only=False, map_location="cpu"), torch.load(b, weights_only=False,
                                                                                       map_location="cpu")
        except Exception:  # noqa: BLE001 - unreadable (truncated) files are unequal
            return False
        tx, ty = _tensors(x, roots[0]), _tensors(y, roots[1])
        steps = [z.get("global_step") if isinstance(z, dict) else None for z in (x, y)]
        return steps[0] == steps[1] and tx.keys() == ty.keys() and all(torch.equal(tx[k], ty[k]) for k in tx)
    if a.suffix in (".json", ".jsonl"):  # the run folder's own path (in commands, cache paths) written <out>
        ta, tb = (f.read_text().replace(str(root), "<out>") for f, root in ((a, roots[0]), (b, roots[1])))
        try:
            ra = [_strip(json.loads(line)) for line in ta.splitlines() if line.strip()]
            rb = [_strip(json.loads(line)) for line in tb.splitlines() if line.strip()]
        except json.JSONDecodeError:
            ra, rb = [_strip(json.loads(ta))], [_strip(json.loads(tb))]
        return ra == rb
    return a.read_bytes() == b.read_bytes()


def compare(ref: Path, got: Path, ignore: tuple[str, ...]) -> list[str]:
    """What differs between two output folders (empty: equal)."""
    fa, fb = files_of(ref, ignore), files_of(got, ignore)
    out = [f"only in one: {sorted(set(fa) ^ set(fb))[:4]}"] if fa.keys() != fb.keys() else []
    return out + [f"differs: {k}" for k in sorted(set(fa) & set(fb)) if not same_file(fa[k], fb[k], (ref, got))]


def unreadable(root: Path) -> list[str]:
    """Outputs that do not open (a truncated checkpoint, video or JSON file)."""
    from tav.data.video import read_video

    bad = []
    for f in root.rglob("*"):
        if not f.is_file() or is_temp_name(f.name):
            continue
        try:
            if f.suffix in (".ckpt", ".pt", ".pth"):
                torch.load(f, weights_only=False, map_location="cpu")
            elif f.suffix == ".mp4":
                read_video(f)
            elif f.suffix == ".json":
                json.loads(f.read_text())
            elif f.suffix == ".jsonl":
                [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        except Exception:  # noqa: BLE001 - any failure to open is what is counted
            bad.append(f.relative_to(root).as_posix())
    return bad


def stale_temps(root: Path) -> list[str]:
    return [f.relative_to(root).as_posix() for f in root.rglob("*") if f.is_file() and is_temp_name(f.name)]


def _mtimes(root: Path, ignore: tuple[str, ...]) -> dict[str, int]:
    return {k: f.stat().st_mtime_ns for k, f in files_of(root, ignore).items()}


def finished_work(cmd: Command, ref: Path) -> dict[str, int]:
    """Output -> mtime, for the outputs of every unit of work (``Command.unit``) whose files in the killed run's
    folder are all there and equal to the reference's: what a re-run must leave untouched."""
    ok, have = files_of(ref, cmd.ignore), _mtimes(cmd.out, cmd.ignore)
    units: dict[str, list[str]] = {}
    for rel in ok:
        units.setdefault(cmd.unit(rel), []).append(rel)
    done = {}
    for rels in units.values():
        if all(r in have and same_file(ok[r], cmd.out / r, (ref, cmd.out)) for r in rels):
            done.update({r: have[r] for r in rels})
    return done


def resume_and_check(cmd: Command, ref: Path) -> dict:
    """After a kill: run ``cmd`` again as a user would, then the checks of the module note."""
    extra, newest, step, before = [], None, None, {}
    if cmd.kind == "train":
        newest = newest_checkpoint(cmd.out / "checkpoints")
        step = resume_point(newest).step if newest is not None else None
        extra = ["--resume", "last"] if newest is not None else []
    elif cmd.out.is_dir():
        before = finished_work(cmd, ref)
    run(cmd, extra=extra)
    if cmd.kind == "train":
        text = (cmd.out / "log.txt").read_text(errors="replace") if (cmd.out / "log.txt").is_file() else ""
        right = (f"resuming from {newest} (step {step})" in text) if newest is not None else True
    else:
        after = _mtimes(cmd.out, cmd.ignore)
        redone = [k for k, t in before.items() if after.get(k) != t and not any(
            fnmatch.fnmatch(k, g) for g in cmd.rewritten)]
        right = not redone
    diffs = compare(ref, cmd.out, cmd.ignore)
    return {"right_point": right, "stale": stale_temps(cmd.out), "unreadable": unreadable(cmd.out),
            "equal": not diffs, "diffs": diffs[:5],
            **({"redone": redone[:5]} if cmd.kind != "train" else {})}


def bench_command(name: str, make, world: dict, work: Path, kills: int, seed: int) -> dict:
    """Reference run + ``kills`` killed-and-resumed attempts of one command (kill moments drawn from ``seed`` and
    the command's name); its table row."""
    rng = random.Random(f"{seed}-{name}")
    ref_cmd = make(world, work / name / "ref")
    ref_cmd.out.parent.mkdir(parents=True, exist_ok=True)
    seconds, _ = run(ref_cmd)
    row = {"command": name, "reference_s": round(seconds, 1), "attempts": kills, "killed": 0, "right_point": 0,
           "stale_files": 0, "truncated_files": 0, "equal": 0, "failures": []}
    for k in range(kills):
        cmd = make(world, work / name / f"kill{k}")
        at = seconds * rng.uniform(0.1, 0.95)
        _, killed = run(cmd, kill_after=at)
        row["killed"] += killed
        res = resume_and_check(cmd, ref_cmd.out)
        row["right_point"] += res["right_point"]
        row["stale_files"] += len(res["stale"])
        row["truncated_files"] += len(res["unreadable"])
        row["equal"] += res["equal"]
        if not (res["right_point"] and res["equal"]) or res["stale"] or res["unreadable"]:
            row["failures"].append({"kill_after_s": round(at, 2), **res})
    return row


def table(rows: list[dict]) -> str:
    lines = ["| command | reference s | attempts | killed mid-run | resumed at the right point | stale/temp files "
             "| truncated files | outputs equal |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['command']} | {r['reference_s']} | {r['attempts']} | {r['killed']} | "
                     f"{r['right_point']}/{r['attempts']} | {r['stale_files']} | {r['truncated_files']} | "
                     f"{r['equal']}/{r['attempts']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=5, help="killed attempts per command")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--only", nargs="*", default=None, help=f"commands to run (of {', '.join([*COMMANDS, 'fvd'])})")
    p.add_argument("--work", default="results/bench_faults", help="work folder (inputs kept between runs)")
    p.add_argument("--json", default=None, help="write the table rows as JSON here")
    args = p.parse_args(argv)
    work = Path(args.work).resolve()
    world = build_world(work / "world")
    names = args.only or [*COMMANDS, "fvd"]
    rows = []
    for name in names:
        if name == "fvd":
            results = work / "sample_tav" / "ref"
            if not (results / "17_tav_URMP").is_dir():
                bench_command("sample_tav", COMMANDS["sample_tav"], world, work, 0, args.seed)
            make = lambda w, out, r=results: fvd_command(w, out, r)  # noqa: E731
        elif name in COMMANDS:
            make = COMMANDS[name]
        else:
            p.error(f"--only {name}: not one of {', '.join([*COMMANDS, 'fvd'])}")
        shutil.rmtree(work / name, ignore_errors=True)  # a fresh start for every measurement
        rows.append(bench_command(name, make, world, work, args.kills, args.seed))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    for r in rows:
        for f in r["failures"]:
            print(f"{r['command']}: {json.dumps(f)[:400]}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(dumps_strict(rows, indent=2) + "\n")
    return 0 if all(r["equal"] == r["right_point"] == r["attempts"] and not r["stale_files"] + r["truncated_files"]
                    for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
