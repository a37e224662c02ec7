"""Before a resumed run continues: set aside what the interrupted attempt wrote after its checkpoint.

A run killed at step 37 whose newest checkpoint is step 30 has written ``metrics.jsonl`` rows and maybe
checkpoint files (a best one after a validation, an ``epoch=E-step=S.ckpt``) past step 30. The resumed run
writes those again, identically (``tav.training.determinism``), so the leftovers are removed first: otherwise
Lightning would write ``-v1`` copies beside them and the best-k bookkeeping would lose track of one.

- ``metrics.jsonl`` is cut to the length it had when the checkpoint was written (the checkpoint records it);
- checkpoint files of the run folder from later steps are deleted when resuming from the newest checkpoint
  (``--resume last``: they belong to the killed attempt), and moved with a newer ``last.ckpt`` to
  ``checkpoints/superseded-step<N>/`` when resuming from an older checkpoint on purpose (they belong to the
  abandoned branch and are kept).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tav.checkpoint import safe_load
from tav.errors import InputError
from tav.utils.fileio import atomic_path, is_temp_name

LAST_NAME = "last.ckpt"
_STEP = re.compile(r"(?:^|[-_])step=(\d+)")


@dataclass(frozen=True)
class ResumePoint:
    """Where a Lightning checkpoint stands: its global step and, when recorded, the ``metrics.jsonl`` length."""

    step: int
    metrics_bytes: int | None
    pending_grads: bool = False  # written inside a gradient-accumulation window: not an exact resume point


def resume_point(path: str | Path) -> ResumePoint:
    """Read the resume point of a Lightning checkpoint (one-line ``InputError`` for a bad file)."""
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or "global_step" not in ckpt:
        raise InputError(f"--resume {path}: no global_step in the file; not a Lightning checkpoint")
    extra = ckpt.get("tav_resume") or {}
    return ResumePoint(int(ckpt["global_step"]), extra.get("metrics_bytes"), bool(extra.get("pending_grads")))


def step_of(path: Path) -> int | None:
    """The ``step=N`` of a checkpoint file name, else None (``last.ckpt``, other files)."""
    found = _STEP.search(path.stem)
    return int(found.group(1)) if found else None


def later_checkpoints(folder: Path, step: int) -> list[Path]:
    """Checkpoint files in ``folder`` named with a step after ``step`` (``last.ckpt`` and temp files excluded)."""
    return [f for f in checkpoint_files(folder) if (step_of(f) or -1) > step]


def checkpoint_files(folder: Path) -> list[Path]:
    """The checkpoint files of a run's ``checkpoints/`` folder (temp files excluded)."""
    if not folder.is_dir():
        return []
    return sorted(f for f in folder.glob("*.ckpt") if f.is_file() and not is_temp_name(f.name))


def newest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint of ``folder`` with the highest global step (``last.ckpt`` on a tie: it is written last)
    that is an exact resume point; None when there is none. A killed run can have written a best checkpoint
    after its ``last.ckpt``; one written inside a gradient-accumulation window is passed over."""
    last = folder / LAST_NAME
    points = {f: resume_point(f) for f in checkpoint_files(folder) if f == last or step_of(f) is not None}
    ranked = sorted(((p.step, f == last, f) for f, p in points.items() if not p.pending_grads), reverse=True)
    return ranked[0][2] if ranked else None


def truncate_metrics(path: Path, length: int | None) -> int:
    """Cut the JSON-lines file ``path`` to ``length`` bytes (atomically); returns the rows dropped."""
    if length is None or not path.is_file():
        return 0
    data = path.read_bytes()
    if len(data) <= length:
        return 0
    with atomic_path(path) as tmp:
        tmp.write_bytes(data[:length])
    return data[length:].count(b"\n")


def prepare_resume(root: str | Path, ckpt_path: str | Path) -> list[str]:
    """Set aside the interrupted attempt's output past the checkpoint ``ckpt_path`` in the run folder ``root``
    (rank 0, before ``Trainer.fit``); returns one line per thing done, for the log."""
    root, ckpt_path = Path(root), Path(ckpt_path)
    point = resume_point(ckpt_path)
    done = [f"resuming from {ckpt_path} (step {point.step})"]
    dropped = truncate_metrics(root / "metrics.jsonl", point.metrics_bytes)
    if dropped:
        done.append(f"metrics.jsonl: dropped {dropped} rows written after step {point.step}")
    folder = root / "checkpoints"
    last, newest_file = folder / LAST_NAME, newest_checkpoint(folder)
    newest = newest_file is not None and ckpt_path.samefile(newest_file)
    later = later_checkpoints(folder, point.step)
    if newest:
        for f in later:
            f.unlink()
        if later:
            done.append(f"removed {len(later)} checkpoints written after step {point.step}: "
                        + ", ".join(f.name for f in later))
        return done
    if last.is_file() and resume_point(last).step > point.step:
        later.append(last)
    if later:
        aside = folder / f"superseded-step{point.step}"
        aside.mkdir(exist_ok=True)
        for f in later:
            shutil.move(str(f), aside / f.name)
        done.append(f"moved {len(later)} checkpoints of later steps to {aside} (resuming from an older one)")
    return done


def check_no_earlier_run(root: str | Path) -> None:
    """A run that does not resume into a folder holding an earlier run's checkpoints: one-line ``InputError``."""
    newest = newest_checkpoint(Path(root) / "checkpoints")
    if newest is not None:
        raise InputError(f"{root} holds the checkpoints of an earlier run (newest: {newest}); pass --resume last to "
                         "continue it, or another --default_root_dir (or delete the folder) to start over")


def start_fresh(root: str | Path) -> list[str]:
    """Before a run that does not resume (rank 0): :func:`check_no_earlier_run`, then remove the
    ``metrics.jsonl`` of an attempt that stopped before its first checkpoint. Returns what was done."""
    check_no_earlier_run(root)
    done, metrics = [], Path(root) / "metrics.jsonl"
    if metrics.is_file():
        metrics.unlink()
        done.append("metrics.jsonl of an attempt that saved no checkpoint to resume from removed; starting over")
    partial = checkpoint_files(Path(root) / "checkpoints")  # none is a resume point (accumulation windows)
    for f in partial:
        f.unlink()
    if partial:
        done.append(f"removed {len(partial)} checkpoints of that attempt written inside accumulation windows")
    return done
