"""Source discovery for the dataset builder (``tav.data.prepare``): finding the videos, reading captions,
naming clip stems and assigning each source to a split.

Everything here is pure bookkeeping on paths and text; no video or audio is decoded.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from tav.errors import InputError

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".avi")
# Why a source can be skipped; the summary counts sources per reason.
REASONS = ("corrupt", "no_audio", "silent_audio", "too_short", "missing_caption", "empty_caption",
           "caption_not_utf8", "caption_too_long", "too_elongated", "error")


class SourceSkipped(Exception):
    """A source cannot be used; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def find_videos(root: str | Path, exclude: str | Path | None = None) -> list[Path]:
    """Video files under ``root`` (recursive, sorted), skipping hidden names and anything under ``exclude``."""
    root = Path(root)
    skip = Path(exclude).resolve() if exclude is not None else None
    found = []
    for p in root.rglob("*"):
        rel_parts = p.relative_to(root).parts
        if p.suffix.lower() not in VIDEO_EXTENSIONS or any(part.startswith(".") for part in rel_parts):
            continue
        if skip is not None and (skip == p.resolve() or skip in p.resolve().parents):
            continue
        if p.is_file():
            found.append(p)
    return sorted(found)


def clean_caption(text: str) -> str:
    """Collapse all whitespace (newlines included) to single spaces: one caption, one line."""
    return " ".join(text.split())


def load_captions(path: str | Path) -> dict[str, str]:
    """Read a captions file into ``{key: caption}``; keys are file names, stems or relative paths.

    JSONL (``.jsonl``/``.json``/``.ndjson``, or content starting with ``{``): ``{"file": ..., "caption": ...}``
    per line. Otherwise CSV with columns ``file,caption`` and an optional header row. Raises ``InputError``
    naming ``--captions`` when the file cannot be read or parsed.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--captions {path}: cannot read ({e}); give a UTF-8 CSV or JSONL file") from e
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson") or text.lstrip().startswith("{"):
        pairs = _parse_jsonl(text, path)
    else:
        pairs = _parse_csv(text, path)
    if not pairs:
        raise InputError(f"--captions {path}: holds no captions; give one `file,caption` row (or JSON line) per video")
    for key, caption in pairs:
        check_caption_size(caption, f"--captions {path}: the caption of {key}")
    return {k.strip().replace("\\", "/").removeprefix("./"): clean_caption(v) for k, v in pairs}


MAX_CAPTION_BYTES = 131072  # Python's csv field limit: the same bound for CSV, JSONL and sidecar captions


def check_caption_size(caption: str, what: str) -> None:
    """Refuse a caption over ``MAX_CAPTION_BYTES`` (UTF-8), whatever file it comes from."""
    size = len(caption.encode("utf-8"))
    if size > MAX_CAPTION_BYTES:
        raise InputError(f"{what} is {size} bytes, over the {MAX_CAPTION_BYTES}-byte limit for a caption; "
                         "a caption is a sentence or a few, not a document")


def _parse_jsonl(text: str, path: Path) -> list[tuple[str, str]]:
    pairs = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise InputError(f"--captions {path}:{lineno}: not JSON ({e})") from e
        if not isinstance(obj, dict) or not isinstance(obj.get("file"), str):
            raise InputError(f"--captions {path}:{lineno}: expected an object with 'file' and 'caption'")
        caption = obj.get("caption")
        pairs.append((obj["file"], caption if isinstance(caption, str) else ""))
    return pairs


def _parse_csv(text: str, path: Path) -> list[tuple[str, str]]:
    try:
        rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    except csv.Error as e:
        raise InputError(f"--captions {path}: not a valid CSV ({e})") from e
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["file", "caption"]:
        rows = rows[1:]
    # an unquoted caption with commas spills into extra columns: join them back
    return [(r[0], ",".join(r[1:])) for r in rows]


def resolve_caption(rel: str, path: Path, captions: dict[str, str] | None) -> str:
    """The caption of source ``rel``: from ``captions`` (by relative path, then file name, then stem) or,
    when ``captions`` is None, from ``<video>.txt`` (or ``<video>.<ext>.txt``) next to the video.

    Raises ``SourceSkipped`` with reason ``missing_caption``, ``empty_caption``, ``caption_not_utf8`` or
    ``caption_too_long``.
    """
    if captions is not None:
        p = PurePosixPath(rel)
        keys = (rel, str(p.with_suffix("")), p.name, p.stem)
        caption = next((captions[k] for k in keys if k in captions), None)
        if caption is None:
            raise SourceSkipped("missing_caption", "no entry in --captions (by path, file name or stem)")
    else:
        sidecar = next((s for s in (path.with_suffix(".txt"), path.with_name(path.name + ".txt"))
                        if s.is_file()), None)
        if sidecar is None:
            raise SourceSkipped("missing_caption", f"no caption file {path.with_suffix('.txt').name}")
        try:
            caption = clean_caption(sidecar.read_bytes().decode("utf-8-sig"))
        except UnicodeDecodeError as e:
            raise SourceSkipped("caption_not_utf8", f"{sidecar}: not UTF-8 ({e})") from e
        if len(caption.encode("utf-8")) > MAX_CAPTION_BYTES:
            raise SourceSkipped("caption_too_long", f"{sidecar}: over the {MAX_CAPTION_BYTES}-byte caption limit")
    if not caption:
        raise SourceSkipped("empty_caption", "the caption is empty")
    return caption


def sanitize_stem(name: str) -> str:
    """Keep ``[A-Za-z0-9_-]``; runs of other characters become one ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "video"


def source_stems(rels: Iterable[str]) -> dict[str, str]:
    """Sanitised stem per source; sources whose stems clash (case-insensitively) get ``-<hash8>`` appended."""
    rels = list(rels)
    base = {r: sanitize_stem(PurePosixPath(r).stem) for r in rels}
    counts = Counter(b.lower() for b in base.values())
    stems = {r: b if counts[b.lower()] == 1 else f"{b}-{digest(r)[:8]}" for r, b in base.items()}
    final = Counter(s.lower() for s in stems.values())
    clashes = [r for r in rels if final[stems[r].lower()] > 1]
    if clashes:
        raise InputError(f"--videos: sources {clashes} map to the same clip name; rename one of them")
    return stems


def assign_splits(rels: Iterable[str], seed: int, test_fraction: float) -> dict[str, str]:
    """``{rel: "train"|"test"}`` from a hash of ``(seed, rel)``: stable per source, ~``test_fraction`` in test.

    With two or more sources and ``0 < test_fraction < 1`` both splits get at least one source (the source
    nearest the threshold moves).
    """
    u = {r: int(digest(f"{seed}\0{r}")[:16], 16) / 16**16 for r in rels}  # uniform in [0, 1)
    split = {r: "test" if x < test_fraction else "train" for r, x in u.items()}
    if len(u) >= 2 and 0 < test_fraction < 1:
        if "test" not in split.values():
            split[min(u, key=lambda r: (u[r], r))] = "test"
        elif "train" not in split.values():
            split[max(u, key=lambda r: (u[r], r))] = "train"
    return split


def digest(text: str) -> str:
    """SHA-1 hex digest of ``text`` (UTF-8): the stable hash behind stems, splits and record names."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()
