"""A deterministic synthetic VAT dataset in which the sound drives the picture.

Each clip is a short melody played by one synthetic instrument (a fixed harmonic recipe, so the timbre is
audible) and a coloured shape on a dark background that *jumps on every note onset*:

- onset   -> the shape moves to a new place (the picture is constant between onsets);
- pitch   -> vertical position (high notes near the top);
- loudness (note velocity) -> size.

The caption names the colour, the shape and the instrument, e.g. ``"A red circle moves to a
Flute."`` (it ends with the URMP-style instrument class, as the URMP-VAT captions do). Onsets lie on a
0.1-s grid, so they fall exactly on video-frame and audio-chunk boundaries in both presets; the melody
depends on the seed only, not on the preset or the image size.

``make_clip`` returns arrays; ``build_demo_dataset`` writes ``<out>/{train,test}/...`` through
``tav.data.layout.write_clip`` plus ``<out>/manifest.jsonl``, and resumes by skipping complete clips.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tav.config import list_presets
from tav.data.audio import spectrogram
from tav.data.config import load_data_config
from tav.data.layout import clip_complete, write_clip
from tav.errors import InputError
from tav.utils.fileio import write_jsonl_atomic, write_text_atomic


@dataclass(frozen=True)
class DemoPreset:
    """Clip geometry of a demo preset, read from the dataset preset of the same name."""

    name: str
    num_frames: int  # video frames per clip
    fps: float  # video frame rate; times 0.1 s must be a whole number of frames
    sample_rate: int = 48000  # audio rate, Hz

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps

    @property
    def num_samples(self) -> int:
        return round(self.seconds * self.sample_rate)


GRID_S = 0.1  # onset grid, seconds: a whole number of frames in both presets
NOTE_STEPS = (2, 3, 4, 5)  # note lengths, in grid steps (0.2 .. 0.5 s)
SCALE = (0, 2, 4, 7, 9)  # major pentatonic, semitones above the tonic
TONIC_MIDI = 60  # C4; the melody spans two octaves above it
N_COLUMNS = 5  # horizontal positions a shape may jump to
BACKGROUND = (20, 20, 28)

# name -> (code used in stems, harmonic amplitudes for k = 1, 2, ...)
INSTRUMENTS: dict[str, tuple[str, tuple[float, ...]]] = {
    "Flute": ("fl", (1.0, 0.12, 0.04)),  # nearly a sine
    "Oboe": ("ob", tuple(((-1) ** (k // 2)) / k**2 if k % 2 else 0.0 for k in range(1, 16))),  # triangle
    "Clarinet": ("cl", tuple(1.0 / k if k % 2 else 0.0 for k in range(1, 16))),  # square: odd harmonics
    "Violin": ("vn", tuple(1.0 / k for k in range(1, 16))),  # sawtooth: all harmonics
}
SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40), "green": (40, 200, 60), "blue": (60, 100, 250), "yellow": (240, 220, 40),
    "magenta": (220, 50, 220), "cyan": (40, 210, 220), "orange": (250, 140, 20), "white": (240, 240, 240),
}


@dataclass(frozen=True)
class Note:
    """One note of the melody; times in grid steps, positions as fractions of the image side."""

    start: int  # onset, grid steps from the clip start
    steps: int  # length, grid steps
    midi: int  # pitch, MIDI note number
    velocity: float  # loudness in [0.5, 1]; also sets the shape size
    x: float  # shape centre, fraction of the width
    y: float  # shape centre, fraction of the height (pitch-driven)


@dataclass(frozen=True)
class ClipSpec:
    """Everything random about a clip, drawn from its seed; rendering is deterministic given this."""

    seed: int
    instrument: str
    shape: str
    colour: str
    notes: tuple[Note, ...]

    @property
    def caption(self) -> str:
        first = "An" if self.colour[0] in "aeiou" else "A"
        article = "an" if self.instrument[0] in "AEIOU" else "a"
        return f"{first} {self.colour} {self.shape} moves to {article} {self.instrument}."


def get_preset(name: str) -> DemoPreset:
    """The demo geometry of dataset preset ``name`` (``configs/data/<name>.yaml``: urmp, landscape).

    Raises ``InputError`` listing the choices for an unknown name.
    """
    if name not in list_presets("data"):
        raise InputError(f"unknown demo preset {name!r}; choose one of {list_presets('data')}")
    cfg = load_data_config(name)
    return DemoPreset(cfg.name, num_frames=cfg.frames_per_file, fps=cfg.fps,
                      sample_rate=cfg.sample_rate)


def design_clip(seed: int, seconds: float = 3.0) -> ClipSpec:
    """Draw instrument, shape, colour and a legato melody filling ``seconds`` from ``seed``.

    Consecutive notes always differ in pitch and column, so every onset visibly moves the shape.
    """
    rng = np.random.default_rng(seed)
    instrument = list(INSTRUMENTS)[rng.integers(len(INSTRUMENTS))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    n_degrees = 2 * len(SCALE) + 1
    total = round(seconds / GRID_S)
    notes, start, degree, column = [], 0, int(rng.integers(n_degrees)), int(rng.integers(N_COLUMNS))
    while start < total:
        steps = min(int(rng.choice(NOTE_STEPS)), total - start)
        octave, step = divmod(degree, len(SCALE))
        notes.append(Note(
            start=start, steps=steps, midi=TONIC_MIDI + 12 * octave + SCALE[step],
            velocity=float(rng.uniform(0.5, 1.0)),
            x=0.2 + 0.6 * column / (N_COLUMNS - 1),
            y=0.8 - 0.6 * degree / (n_degrees - 1),
        ))
        start += steps
        degree = (degree + int(rng.integers(1, n_degrees))) % n_degrees  # never the same pitch twice
        column = (column + int(rng.integers(1, N_COLUMNS))) % N_COLUMNS
    return ClipSpec(int(seed), instrument, shape, colour, tuple(notes))


def _frames_per_step(preset: DemoPreset) -> int:
    fps_step = preset.fps * GRID_S
    if abs(fps_step - round(fps_step)) > 1e-9 or round(fps_step) < 1:
        raise InputError(f"demo preset {preset.name!r}: fps {preset.fps} does not put the {GRID_S}-s onset "
                         "grid on whole frames; use an fps that is a multiple of 10")
    return round(fps_step)


def onset_frames(spec: ClipSpec, preset: DemoPreset) -> list[int]:
    """Frame index of every note onset (the first is always 0)."""
    return [n.start * _frames_per_step(preset) for n in spec.notes]


def shape_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, < 0 inside) to a shape of radius ``r`` centred at the origin; y points down."""
    if shape == "circle":
        return np.hypot(dx, dy) - 0.9 * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - 0.8 * r
    if shape == "diamond":
        return (np.abs(dx) + np.abs(dy) - 1.1 * r) / np.sqrt(2.0)
    if shape == "triangle":  # upward, circumradius 1.1 r: max over the three edge half-planes
        rc = 1.1 * r
        return np.maximum(dy - rc / 2, np.sqrt(3.0) / 2 * np.abs(dx) - dy / 2 - rc / 2)
    raise ValueError(f"unknown shape {shape!r}")


def render_notes(spec: ClipSpec, size: int) -> np.ndarray:
    """One anti-aliased image per note: uint8 ``(K, size, size, 3)``, K = number of notes."""
    x = np.array([n.x for n in spec.notes])[:, None, None] * size  # (K, 1, 1) centres, pixels
    y = np.array([n.y for n in spec.notes])[:, None, None] * size
    r = np.array([0.08 + 0.06 * n.velocity for n in spec.notes])[:, None, None] * size
    grid = np.arange(size) + 0.5  # pixel centres
    dist = shape_distance(spec.shape, grid[None, None, :] - x, grid[None, :, None] - y, r)  # (K, H, W)
    alpha = np.clip(0.5 - dist, 0.0, 1.0)[..., None]  # one-pixel soft edge
    bg = np.array(BACKGROUND, dtype=np.float64)
    fg = np.array(COLOURS[spec.colour], dtype=np.float64)
    return np.round(bg * (1.0 - alpha) + fg * alpha).astype(np.uint8)


def render_frames(spec: ClipSpec, preset: DemoPreset, size: int) -> np.ndarray:
    """The clip's video: uint8 ``(T, size, size, 3)``, constant between onsets, a jump at each onset."""
    images = render_notes(spec, size)
    onsets = np.array(onset_frames(spec, preset))
    note_of_frame = np.searchsorted(onsets, np.arange(preset.num_frames), side="right") - 1  # (T,)
    return images[note_of_frame]


def _envelope(n: int, sample_rate: int) -> np.ndarray:
    """Attack / decay-to-sustain / release envelope of ``n`` samples, in [0, 1]; no clicks at the ends."""
    t = np.arange(n) / sample_rate
    attack = np.clip(t / 0.01, 0.0, 1.0)
    decay = 0.7 + 0.3 * np.exp(-t / 0.08)
    release_n = min(int(0.03 * sample_rate), n // 3)
    release = np.ones(n)
    if release_n > 0:
        release[n - release_n :] = np.linspace(1.0, 0.0, release_n)
    return attack * decay * release


def synthesize_audio(spec: ClipSpec, preset: DemoPreset) -> np.ndarray:
    """The clip's sound: mono float32 ``(N,)`` in [-1, 1], N = seconds * sample_rate (144000 for 3 s)."""
    sr = preset.sample_rate
    step_n = round(GRID_S * sr)
    wave = np.zeros(preset.num_samples, dtype=np.float64)
    _, amps = INSTRUMENTS[spec.instrument]
    for note in spec.notes:
        f0 = 440.0 * 2.0 ** ((note.midi - 69) / 12)
        k = np.arange(1, len(amps) + 1)
        a = np.array(amps) * (k * f0 < 0.45 * sr)  # keep every partial below Nyquist
        period = np.sin(2 * np.pi * np.linspace(0, 1, 1024, endpoint=False)[:, None] * k[None, :]) @ a
        a /= np.abs(period).max()  # every timbre peaks at 1 before the envelope: equal loudness
        n = note.steps * step_n
        t = np.arange(n)[:, None] / sr  # (n, 1)
        tone = np.sin(2 * np.pi * f0 * k[None, :] * t) @ a  # (n,)
        begin = note.start * step_n
        wave[begin : begin + n] = 0.6 * note.velocity * tone * _envelope(n, sr)
    return wave.astype(np.float32)


def make_clip(seed: int, preset: str | DemoPreset = "urmp", size: int = 64
              ) -> tuple[np.ndarray, np.ndarray, str, dict]:
    """Generate one clip from ``seed``.

    Returns ``(frames, audio, caption, meta)``: frames uint8 ``(T, size, size, 3)``; audio float32 ``(N,)``
    in [-1, 1] at ``preset.sample_rate``; a one-sentence caption naming colour, shape and instrument; and a
    JSON-ready meta dict (seed, preset, frames, fps, sample_rate, onsets as frame indices, onset_samples,
    pitches as MIDI numbers, velocities, instrument, shape, colour). Same arguments -> identical arrays.
    """
    p = get_preset(preset) if isinstance(preset, str) else preset
    spec = design_clip(seed, p.seconds)
    return render_frames(spec, p, size), synthesize_audio(spec, p), spec.caption, clip_meta(spec, p)


def clip_meta(spec: ClipSpec, preset: DemoPreset) -> dict:
    """JSON-ready description of a clip (see ``make_clip``)."""
    step_n = round(GRID_S * preset.sample_rate)
    return {
        "seed": spec.seed, "preset": preset.name, "frames": preset.num_frames, "fps": preset.fps,
        "sample_rate": preset.sample_rate, "onsets": onset_frames(spec, preset),
        "onset_samples": [n.start * step_n for n in spec.notes],
        "pitches": [n.midi for n in spec.notes], "velocities": [round(n.velocity, 4) for n in spec.notes],
        "instrument": spec.instrument, "shape": spec.shape, "colour": spec.colour,
    }


def clip_seed(seed: int, split: str, index: int) -> int:
    """Per-clip seed from the dataset seed: independent of how many clips the other split has."""
    split_id = {"train": 0, "test": 1}[split]
    return int(np.random.SeedSequence([seed, split_id, index]).generate_state(1)[0])


def clip_stem(split: str, index: int, spec: ClipSpec) -> str:
    """File stem, e.g. ``train_0003_fl_red_circle``: unique across splits, readable at a glance."""
    return f"{split}_{index:04d}_{INSTRUMENTS[spec.instrument][0]}_{spec.colour}_{spec.shape}"


@dataclass(frozen=True)
class DemoSummary:
    """What ``build_demo_dataset`` produced."""

    root: str
    manifest: str
    preset: str
    clips: dict  # split -> number of clips
    written: int  # clips written by this call
    skipped: int  # clips already complete on disk
    size: int  # frame height = width, pixels
    num_frames: int
    fps: float
    sample_rate: int
    seconds: float  # total duration of all clips
    wall_s: float


def _check_config(out: Path, config: dict) -> None:
    """Refuse to resume into a folder built with different settings (stale clips would be kept)."""
    path = out / "demo_config.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != config:
            raise InputError(f"{path}: the demo dataset there was built with {old}, not {config}; "
                             "use another --out or delete the folder")
    else:
        write_text_atomic(path, json.dumps(config, sort_keys=True) + "\n")


def _write_job(job: tuple[str, str, int, int, str, int]) -> tuple[dict, bool]:
    """Build one clip (``(out, split, index, seed, preset, size)``) unless it is complete: its manifest row and
    whether it was written. A top-level function, so worker processes can run it."""
    out, split, i, seed, preset, size = job
    p = get_preset(preset)
    spec = design_clip(clip_seed(seed, split, i), p.seconds)
    stem = clip_stem(split, i, spec)
    row = {"stem": stem, "split": split, "caption": spec.caption, **clip_meta(spec, p)}
    if clip_complete(Path(out) / split, stem):
        return row, False
    audio = synthesize_audio(spec, p)
    write_clip(Path(out) / split, stem, render_frames(spec, p, size), p.fps, audio, p.sample_rate,
               spec.caption, spectrogram(audio, p.num_frames))
    return row, True


def build_demo_dataset(out_dir: str | os.PathLike, preset: str = "urmp", n_train: int = 64, n_test: int = 16,
                       size: int = 64, seed: int = 0, progress: bool = False, workers: int = 1) -> DemoSummary:
    """Write the demo dataset to ``out_dir/{train,test}/{mp4,audio,txt,stft_pickle}/`` + ``manifest.jsonl``.

    Clips already complete on disk (``layout.clip_complete``) are skipped, so an interrupted build resumes.
    Deterministic: the same arguments give the same files' content, whatever ``workers`` (processes writing
    clips; each clip depends on its own seed only). Raises ``InputError`` on bad arguments or when ``out_dir``
    holds a demo dataset built with other settings.
    """
    p = get_preset(preset)
    if n_train < 0 or n_test < 0 or size < 8 or workers < 1:
        raise InputError(f"build_demo_dataset: need n_train, n_test >= 0, size >= 8 and workers >= 1, got "
                         f"n_train={n_train} n_test={n_test} size={size} workers={workers}")
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, {"preset": p.name, "size": size, "seed": seed})
    jobs = [(str(out), split, i, seed, p.name, size) for split, n in (("train", n_train), ("test", n_test))
            for i in range(n)]
    bar = functools.partial(tqdm, total=len(jobs), desc="demo dataset", disable=not progress)
    if workers == 1 or len(jobs) < 2:
        done = list(bar(map(_write_job, jobs)))
    else:
        ctx = multiprocessing.get_context("spawn")  # no fork of a parent that may hold thread pools
        with ctx.Pool(min(workers, len(jobs))) as pool:
            done = list(bar(pool.imap(_write_job, jobs, chunksize=8)))
    rows = [row for row, _ in done]
    written = sum(w for _, w in done)
    write_jsonl_atomic(out / "manifest.jsonl", rows)
    return DemoSummary(
        root=str(out), manifest=str(out / "manifest.jsonl"), preset=p.name,
        clips={"train": n_train, "test": n_test}, written=written, skipped=len(jobs) - written, size=size,
        num_frames=p.num_frames, fps=p.fps, sample_rate=p.sample_rate, seconds=len(jobs) * p.seconds,
        wall_s=time.perf_counter() - t0,
    )


def format_summary(s: DemoSummary) -> str:
    """A few human-readable lines describing a build (the scripts print them)."""
    clips = ", ".join(f"{n} {split}" for split, n in s.clips.items())
    return (f"demo dataset ({s.preset}) at {s.root}: {clips} clips, {s.seconds:.0f} s in total; "
            f"{s.size}x{s.size} px, {s.num_frames} frames @ {s.fps:g} fps, audio {s.sample_rate} Hz\n"
            f"  {s.written} written, {s.skipped} already complete; manifest {s.manifest}")
