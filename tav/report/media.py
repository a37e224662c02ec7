"""The report's videos: checked by decoding them, copied beside the page, and given a web copy (VP9 + Opus
WebM) when browsers cannot play the original.

Browsers play H.264 in 4:2:0 with AAC (what ``tav`` writes for even sizes) and VP8/VP9/AV1 with Opus or
Vorbis. MPEG-4 Part 2 (upstream's OpenCV ``mp4v`` writer) is the trap: Chromium plays such a file's sound over
a black frame and raises no error. H.264 4:4:4 (``tav``'s choice for odd sizes) and lossless RGB H.264 play in
Debian's Chromium but not in every browser. ``web="auto"`` writes a copy for all of these; ``"always"`` for
every video; ``"never"`` keeps the originals.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import av

from tav.utils.fileio import atomic_path

WEB_MODES = ("auto", "always", "never")
_WEB_VIDEO = {"h264": {"yuv420p", "yuvj420p"}, "vp8": None, "vp9": None, "av1": None}  # None: any format
_WEB_AUDIO = {"aac", "opus", "vorbis", "mp3"}


@dataclass(frozen=True)
class Checked:
    """A video as decoded: ``reason`` says why it cannot be shown (``None``: fine)."""

    path: Path
    reason: str | None = None
    frames: int = 0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    audio: bool = False
    web: bool = False  # browsers play it as it is

    @property
    def duration(self) -> float:
        """Seconds: decoded frames over the frame rate."""
        return self.frames / self.fps if self.fps else 0.0


def check_video(path: Path) -> Checked:
    """Decode every frame of ``path``; a missing, unreadable or truncated file gets a ``reason``."""
    if not path.is_file():
        return Checked(path, "missing")
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                return Checked(path, "no video stream")
            vs = c.streams.video[0]
            announced, fps = int(vs.frames or 0), float(vs.average_rate or vs.guessed_rate or 0)
            codec, pix = vs.codec_context.name, vs.codec_context.pix_fmt
            audio = c.streams.audio[0].codec_context.name if c.streams.audio else None
            width, height = vs.codec_context.width, vs.codec_context.height
            frames = sum(1 for _ in c.decode(vs))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        return Checked(path, f"cannot be decoded ({err}); corrupt or truncated")
    if frames == 0:
        return Checked(path, "no frame decodes; corrupt or truncated")
    if announced and frames < announced:
        return Checked(path, f"truncated: {frames} of the {announced} frames its header announces decode")
    formats = _WEB_VIDEO.get(codec, set())
    web = (formats is None or pix in formats) and (audio is None or audio in _WEB_AUDIO)
    return Checked(path, None, frames, fps, width, height, audio is not None, web)


def web_copy(src: Path, dst: Path) -> Path:
    """Re-encode ``src`` as VP9 + Opus WebM at ``dst`` (atomic); the audio is resampled to 48 kHz."""
    from tav.data.audio import read_audio
    from tav.data.video import read_video, write_video

    frames, fps = read_video(src)
    try:
        wave = read_audio(src, 48000)
    except Exception:  # noqa: BLE001 - no audio track (or none PyAV can read): a silent copy
        wave = None
    return write_video(dst, frames, fps, audio=wave, sample_rate=48000)


def place(src: Path, dst: Path) -> Path:
    """Put ``src`` at ``dst`` for the page: a hard link when the filesystem allows it, else an atomic copy; an
    existing ``dst`` of the same size and time is kept."""
    if dst.is_file():
        a, b = src.stat(), dst.stat()
        if a.st_size == b.st_size and int(a.st_mtime) == int(b.st_mtime):
            return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
    return dst


def for_page(src: Path, dst_dir: Path, name: str, web: str = "auto") -> tuple[Checked, Path | None]:
    """Check ``src`` and put what the page plays in ``dst_dir/name`` (``.webm`` for a web copy). Returns the
    check and the placed file (``None`` when the video cannot be shown)."""
    if web not in WEB_MODES:
        raise ValueError(f"web must be one of {WEB_MODES}, got {web!r}")
    checked = check_video(src)
    if checked.reason is not None:
        return checked, None
    if web == "always" or (web == "auto" and not checked.web):
        dst = dst_dir / f"{name}.webm"
        if not (dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime):
            web_copy(src, dst)
        return checked, dst
    return checked, place(src, dst_dir / f"{name}{src.suffix.lower()}")
