"""Atomic file writes: a temp file in the target folder, renamed into place on success.

A job killed half-way never leaves a half-written output under the final name, so a resumed job can
treat "the file exists" as "the file is complete". Temp files are hidden and name their writer,
``.<stem>.tmp-<host>-<pid>-<random><suffix>``, so that :func:`remove_stale_temps` can remove those of dead
processes when a job restarts without touching the files a live process (another shard) is writing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)
_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
# .<stem>.tmp-<host>-<pid>-<8 random chars><suffix>; and the older .<stem>.<random>.tmp<suffix>
_TEMP = re.compile(r"^\..*\.tmp-(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)-[A-Za-z0-9_]{8}(\.[^.]*)?$")
_OLD_TEMP = re.compile(r"^\..+\.tmp(\.[^.]*)?$")
OLD_TEMP_AGE_S = 3600  # a temp file of the older naming, or of another host, is stale after this long


def temp_prefix(stem: str) -> str:
    """``.<stem>.tmp-<host>-<pid>-``: the start of this process's temp-file names."""
    return f".{stem}.tmp-{_HOST}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def is_stale_temp(path: Path, now: float | None = None) -> bool:
    """True for a temp file left by a writer that is gone: one of this host whose process no longer runs, or
    one of another host (or of the older naming) untouched for ``OLD_TEMP_AGE_S``."""
    import time

    m = _TEMP.match(path.name)
    if m is None and _OLD_TEMP.match(path.name) is None:
        return False
    if m is not None and m.group("host") == _HOST:
        return int(m.group("pid")) != os.getpid() and not _alive(int(m.group("pid")))
    try:
        age = (now or time.time()) - path.stat().st_mtime
    except OSError:
        return False
    return age > OLD_TEMP_AGE_S


def is_temp_name(name: str) -> bool:
    """True for a name of an atomic writer's temp file (hidden, ``.tmp`` naming): never an output."""
    return bool(_TEMP.match(name) or _OLD_TEMP.match(name))


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Delete the stale temp files (:func:`is_stale_temp`) under ``folder``; returns them. A missing folder has
    none."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.rglob(".*") if recursive else folder.glob(".*"):
        if path.is_file() and is_stale_temp(path):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the final extension (``suffix`` overrides it) so that writers which pick a
    format from the extension (FFmpeg, numpy) still work. On error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.stem), suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:  # on disk before it takes the final name
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_path`. The bytes depend on ``obj`` only: given a file
    name, torch names the zip's root folder after it (here the random temp name), so it is given an open file,
    whose root folder is always ``archive``."""
    import torch

    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def strict_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by ``None``, so that ``json.dumps(..., allow_nan=False)``
    writes strict JSON (``NaN`` is not JSON; strict readers refuse it)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def dumps_strict(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`strict_json` ``(obj)`` with ``allow_nan=False``."""
    return json.dumps(strict_json(obj), allow_nan=False, **kwargs)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as strict, indented JSON (one trailing newline; values JSON lacks, e.g. paths, as ``str``) to
    ``path`` atomically."""
    write_text_atomic(path, dumps_strict(obj, indent=indent, default=str) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write ``rows`` as strict JSON lines to ``path`` atomically."""
    write_text_atomic(path, "".join(dumps_strict(r, sort_keys=True) + "\n" for r in rows))


def check_writable(folder: str | os.PathLike, what: str) -> Path:
    """Check, before any work is done and without leaving anything behind, that ``folder`` can be created (if
    missing) and written; else a one-line ``InputError`` naming ``what`` (the flag) and the folder. The test
    writes and removes a probe file in ``folder`` or in its nearest existing parent. Returns the folder."""
    from tav.errors import InputError

    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise InputError(f"{what} {folder}: cannot write there ({reason} at {existing}); pick a writable folder") \
            from None
    return folder
