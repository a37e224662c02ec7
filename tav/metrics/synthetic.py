"""Judges for the synthetic demo domain (``tav.data.demo``): does a video follow its caption and its sound?

The demo's ground truth is simple enough to read off the pixels and the waveform, with no pretrained
network: one coloured shape (8 colours, 4 shapes) on a dark background, which jumps to a new place on every
note onset, its height following the pitch. Per video (uint8 RGB ``(T, H, W, 3)`` at ``fps``, optional mono
audio, optional caption):

- ``colour``: the nearest palette colour to the median foreground pixel (mode over frames) -> ``colour_acc``
  against the caption; ``colour_frame_acc`` is the same per frame (every frame must keep the colour);
- ``shape``: the demo shape (circle, square, triangle, diamond) whose drawing, at the largest foreground blob's
  area and centroid and with an edge from sharp to blurred, best matches the blob's coverage of each pixel; mode
  over frames -> ``shape_acc``;
- ``onset_f1``: motion events (frames where the blob's centroid moves more than ``JUMP`` of the side) against
  the audio's onsets, matched one-to-one within ±1 frame. The onsets are librosa's onset envelope as AV-Align
  computes it, with peaks picked at ``ONSET_DELTA`` above their neighbourhood on the raw envelope: AV-Align's
  per-clip normalisation turns the envelope's small bump ~0.07 s into any clip into an onset, which on short
  windows (4-8 frames) outweighed the real ones (real windows scored 0.375 and 0.69 with it; 0.94 and 0.92 now);
- ``pitch_height``: Spearman correlation between each note's pitch (YIN over the sound between two onsets)
  and the blob's height during that note;
- ``flicker``: mean absolute frame-to-frame change, in [0, 1], over frames that are not within a frame of an
  onset (a static shape scores ~0);
- ``features``: a small vector per clip (mean colour, size, position and motion statistics) whose Fréchet
  distance between two folders is ``fd_judge``.

A foreground pixel differs from its frame's median colour (the background) by more than half the frame's
largest difference, and by at least ``MIN_CONTRAST``; a frame with no such pixel has no shape or colour.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tav.data.demo import COLOURS, SHAPES
from tav.data.video import frame_changes

JUMP = 0.05  # a move of the shape's centre by more than this fraction of the side is a motion event
MIN_CONTRAST = 40.0  # RGB distance below which nothing stands out from the background
MIN_AREA = 6  # pixels: smaller blobs are noise
TOLERANCE = 1  # frames within which a motion event matches an onset
ONSET_DELTA = 1.0  # threshold on the raw onset envelope (mean dB rise per mel band): attacks 2-9, the bump 0.1-1
PALETTE = np.array(list(COLOURS.values()), dtype=np.float64)  # (8, 3)
COLOUR_NAMES = tuple(COLOURS)
JUDGES = ("colour_acc", "shape_acc", "onset_f1", "pitch_height", "flicker")
# area of each demo shape over its radius squared (``tav.data.demo.shape_distance``)
SHAPE_AREA = {"circle": math.pi * 0.9**2, "square": 1.6**2, "diamond": 2 * 1.1**2,
              "triangle": 3 * math.sqrt(3) / 4 * 1.1**2}
EDGE_WIDTHS = (0.25, 1.0, 2.0, 3.0)  # pixels: sharp, as drawn (anti-aliased), blurred, very blurred


def parse_caption(caption: str | None) -> tuple[str | None, str | None]:
    """The palette colour and the shape a caption names (``None`` where it names none, or several)."""
    words = set("".join(c if c.isalpha() else " " for c in (caption or "").lower()).split())
    colours = [c for c in COLOUR_NAMES if c in words]
    shapes = [s for s in SHAPES if s in words]
    return (colours[0] if len(colours) == 1 else None), (shapes[0] if len(shapes) == 1 else None)


@dataclass
class FrameObjects:
    """What the foreground of each frame shows; arrays of length T (NaN / None where nothing stands out)."""

    colour: list[str | None]
    shape: list[str | None]
    cx: np.ndarray  # centroid x, fraction of the width
    cy: np.ndarray  # centroid y, fraction of the height (0 = top)
    area: np.ndarray  # blob area, fraction of the frame
    rgb: np.ndarray  # (T, 3) median foreground colour in [0, 1]


def _largest_blob(mask: np.ndarray) -> np.ndarray | None:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    best = int(sizes.argmax()) + 1
    return labels == best if sizes[best - 1] >= MIN_AREA else None


def _shape_templates(h: int, w: int, cx: float, cy: float, mass: float) -> dict[str, list[np.ndarray]]:
    """Coverage maps ``(H, W)`` in [0, 1] of each demo shape with the given centre (pixels) and area (pixels), one per
    edge width of ``EDGE_WIDTHS``, drawn as ``tav.data.demo`` draws them."""
    from tav.data.demo import shape_distance

    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    out = {}
    for shape in SHAPES:
        r = math.sqrt(mass / SHAPE_AREA[shape])
        dist = shape_distance(shape, xs - cx, ys - cy, np.asarray(r))
        out[shape] = [np.clip(0.5 - dist / e, 0.0, 1.0) for e in EDGE_WIDTHS]
    return out


def _coverage(dist: np.ndarray, blob: np.ndarray, contrast: float) -> np.ndarray:
    """How much of each pixel the shape covers, ``(H, W)`` in [0, 1]: the distance from the background over the
    shape's own, around ``blob`` (its blended rim included) and nowhere else."""
    from scipy import ndimage

    near = ndimage.binary_dilation(blob, iterations=2)
    return np.where(near, np.clip(dist / max(contrast, 1e-6), 0.0, 1.0), 0.0)


def classify_shape(coverage: np.ndarray) -> str:
    """``circle`` | ``square`` | ``triangle`` | ``diamond`` of one shape's coverage map ``(H, W)`` in [0, 1] (a
    boolean blob works too): the demo shape of the same area and centroid whose drawing, sharp to blurred, is
    nearest in squared error. Fitting the generator's own shapes keeps small (2-5 px) and soft-edged shapes
    apart, where ratios of the bounding box do not."""
    coverage = coverage.astype(np.float64)
    mass = coverage.sum()
    ys, xs = np.mgrid[0 : coverage.shape[0], 0 : coverage.shape[1]] + 0.5
    cx, cy = (coverage * xs).sum() / mass, (coverage * ys).sum() / mass
    templates = _shape_templates(*coverage.shape, cx, cy, mass)
    errors = {s: min(float(((coverage - t) ** 2).sum()) for t in ts) for s, ts in templates.items()}
    return min(errors, key=errors.get)


def frame_objects(frames: np.ndarray) -> FrameObjects:
    """The foreground of every frame of uint8 ``(T, H, W, 3)`` RGB ``frames``."""
    t, h, w, _ = frames.shape
    out = FrameObjects([None] * t, [None] * t, np.full(t, np.nan), np.full(t, np.nan), np.zeros(t),
                       np.full((t, 3), np.nan))
    for i, frame in enumerate(frames.astype(np.float64)):
        bg = np.median(frame.reshape(-1, 3), axis=0)
        dist = np.linalg.norm(frame - bg, axis=-1)
        peak = dist.max()
        if peak < MIN_CONTRAST:
            continue
        blob = _largest_blob(dist > max(0.5 * peak, MIN_CONTRAST))
        if blob is None:
            continue
        core = blob & (dist >= 0.75 * dist[blob].max())  # the blob's inside, away from blended edges
        rgb = np.median(frame[core], axis=0)
        out.rgb[i] = rgb / 255.0
        out.colour[i] = COLOUR_NAMES[int(np.linalg.norm(PALETTE - rgb, axis=1).argmin())]
        out.shape[i] = classify_shape(_coverage(dist, blob, float(np.linalg.norm(rgb - bg))))
        ys, xs = np.nonzero(blob)
        out.cx[i], out.cy[i], out.area[i] = (xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h, len(ys) / (h * w)
    return out


def motion_events(objects: FrameObjects) -> np.ndarray:
    """Frames ``t >= 1`` where the shape's centre moved more than ``JUMP`` of the side since frame ``t-1``."""
    step = np.hypot(np.diff(objects.cx), np.diff(objects.cy))
    return np.nonzero(np.nan_to_num(step, nan=0.0) > JUMP)[0] + 1


def onset_frames(wave: np.ndarray, rate: int, fps: float, n_frames: int) -> np.ndarray:
    """Audio onsets as frame indices in ``[1, n_frames)`` (an onset at the first frame cannot move anything)."""
    from tav.metrics.av_align import audio_onsets

    frames = np.unique(np.round(audio_onsets(wave, rate, delta=ONSET_DELTA) * fps).astype(int))
    return frames[(frames >= 1) & (frames < n_frames)]


def match_f1(events: Sequence[int], onsets: Sequence[int], tolerance: int = TOLERANCE) -> tuple[float, float, float]:
    """(precision, recall, F1) of ``events`` against ``onsets``, matched one-to-one within ``tolerance`` frames
    (greedy by distance). Both empty: 1, 1, 1."""
    events, onsets = sorted(int(e) for e in events), sorted(int(o) for o in onsets)
    if not events and not onsets:
        return 1.0, 1.0, 1.0
    pairs = sorted((abs(e - o), i, j) for i, e in enumerate(events) for j, o in enumerate(onsets)
                   if abs(e - o) <= tolerance)
    used_e, used_o = set(), set()
    for _, i, j in pairs:
        if i not in used_e and j not in used_o:
            used_e.add(i)
            used_o.add(j)
    hits = len(used_e)
    precision = hits / len(events) if events else 0.0
    recall = hits / len(onsets) if onsets else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return precision, recall, f1


def note_pitches(wave: np.ndarray, rate: int, bounds: Sequence[int]) -> np.ndarray:
    """Median pitch (MIDI, YIN) of the sound between consecutive sample ``bounds``; NaN for silent or short
    segments."""
    import librosa

    out = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        seg = np.asarray(wave[a:b], dtype=np.float32)
        if len(seg) < 2048 or np.abs(seg).max() < 1e-3:
            out.append(np.nan)
            continue
        f0 = librosa.yin(seg, fmin=150.0, fmax=1500.0, sr=rate, frame_length=2048)
        out.append(float(librosa.hz_to_midi(np.median(f0))))
    return np.asarray(out)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of the finite pairs; NaN with fewer than 3 pairs or no spread."""
    from scipy.stats import spearmanr

    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return math.nan
    return float(spearmanr(a[ok], b[ok]).statistic)


def _calm(n_changes: int, moments: Sequence[int]) -> np.ndarray:
    """Which changes (into frame i + 1) are not within a frame of ``moments``."""
    keep = np.ones(n_changes, bool)
    for m in moments:
        keep[max(m - 1 - TOLERANCE, 0): m + TOLERANCE] = False  # changes into frames m-1 .. m+1
    return keep


def flicker(frames: np.ndarray, moments: Sequence[int]) -> float:
    """Mean absolute change between consecutive frames, in [0, 1], leaving out the changes within a frame of
    ``moments`` (onsets, where the picture is meant to change)."""
    diffs = frame_changes(frames)
    keep = _calm(len(diffs), moments)
    return float(diffs[keep].mean()) if keep.any() else math.nan


def seam_flicker(frames: np.ndarray, seams: Sequence[int], moments: Sequence[int]) -> tuple[float, float]:
    """``(at seams, inside)``: the mean change into each seam frame (the first frame a window made after what it
    was given) and into every other frame, both leaving out changes within a frame of ``moments`` (onsets).
    NaN where no change qualifies."""
    diffs = frame_changes(frames)
    keep = _calm(len(diffs), moments)
    at = np.zeros(len(diffs), bool)
    for s in seams:
        if 1 <= s <= len(diffs):
            at[s - 1] = True
    seam, inside = diffs[at & keep], diffs[~at & keep]
    return (float(seam.mean()) if len(seam) else math.nan, float(inside.mean()) if len(inside) else math.nan)


@dataclass
class Judgement:
    """The judges' verdicts on one video. ``None``: the judge could not run (no audio, no caption, no shape)."""

    colour: str | None  # what the video shows (mode over frames)
    shape: str | None
    colour_acc: float | None  # 1.0 / 0.0 against the caption
    shape_acc: float | None
    colour_frame_acc: float | None  # share of frames that show the caption's colour
    onset_precision: float | None
    onset_recall: float | None
    onset_f1: float | None
    pitch_height: float | None
    flicker: float | None
    unjudged: bool  # the caption names no known colour or shape
    features: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    events: tuple[int, ...] = field(repr=False, default=())  # motion-event frames
    onsets: tuple[int, ...] | None = field(repr=False, default=None)  # audio-onset frames (None: no audio)
    n_frames: int = field(repr=False, default=0)

    def scores(self) -> dict[str, float | None]:
        keys = ("colour_acc", "shape_acc", "colour_frame_acc", "onset_precision", "onset_recall", "onset_f1",
                "pitch_height", "flicker")
        return {k: getattr(self, k) for k in keys}


def _mode(values: Sequence[str | None]) -> str | None:
    seen = Counter(v for v in values if v is not None)
    return seen.most_common(1)[0][0] if seen else None


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def clip_features(objects: FrameObjects, events: np.ndarray, fps: float, flick: float) -> np.ndarray:
    """12 numbers per clip for ``fd_judge``: mean colour (3), size mean/std, x mean/std, y mean/std, motion
    events per second, mean jump, flicker; zeros where no foreground was seen."""
    seen = np.isfinite(objects.cx)
    if not seen.any():
        return np.zeros(12)
    jumps = np.hypot(np.diff(objects.cx), np.diff(objects.cy))
    jumps = jumps[np.isfinite(jumps)]
    stats = [*np.nanmean(objects.rgb, axis=0), objects.area[seen].mean(), objects.area[seen].std(),
             objects.cx[seen].mean(), objects.cx[seen].std(), objects.cy[seen].mean(), objects.cy[seen].std(),
             len(events) * fps / len(objects.cx), jumps.mean() if len(jumps) else 0.0, flick]
    return np.nan_to_num(np.asarray(stats, dtype=np.float64))


def judge_video(frames: np.ndarray, fps: float, wave: np.ndarray | None = None, rate: int | None = None,
                caption: str | None = None) -> Judgement:
    """All judges on one video: uint8 RGB ``frames (T, H, W, 3)`` at ``fps``, mono ``wave (N,)`` in [-1, 1] at
    ``rate`` Hz (None: the audio judges are skipped), ``caption`` (None: colour/shape accuracy skipped)."""
    objects = frame_objects(frames)
    events = motion_events(objects)
    want_colour, want_shape = parse_caption(caption)
    colour, shape = _mode(objects.colour), _mode(objects.shape)
    onsets = onset_frames(wave, rate, fps, len(frames)) if wave is not None else None
    flick = flicker(frames, onsets if onsets is not None else events)
    p = r = f1 = pitch = None
    if onsets is not None:
        p, r, f1 = match_f1(events, onsets)
        bounds = [0, *[int(round(o / fps * rate)) for o in onsets], len(wave)]
        pitches = note_pitches(wave, rate, bounds)
        frame_bounds = [0, *onsets, len(frames)]
        heights = np.array([np.nanmedian(objects.cy[a:b]) if np.isfinite(objects.cy[a:b]).any() else np.nan
                            for a, b in zip(frame_bounds[:-1], frame_bounds[1:], strict=True)])
        pitch = _finite(spearman(pitches, -heights))  # high notes near the top: small y
    return Judgement(
        colour=colour, shape=shape,
        colour_acc=None if want_colour is None else float(colour == want_colour),
        shape_acc=None if want_shape is None else float(shape == want_shape),
        colour_frame_acc=None if want_colour is None else float(np.mean([c == want_colour for c in objects.colour])),
        onset_precision=p, onset_recall=r, onset_f1=f1, pitch_height=pitch, flicker=_finite(flick),
        unjudged=caption is not None and (want_colour is None or want_shape is None),
        features=clip_features(objects, events, fps, flick), events=tuple(int(e) for e in events),
        onsets=None if onsets is None else tuple(int(o) for o in onsets), n_frames=len(frames))


def onset_f1_chance(judgements: Sequence[Judgement]) -> tuple[float | None, int]:
    """The ``onset_f1`` a folder's motion would score by chance: the mean F1 of each video's motion events
    against every *other* video's onsets (of the same length), so motion that ignores the sound scores what it
    scores here (a still clip: the share of windows with no onset). Returns (mean, number of pairs); (None, 0)
    with fewer than two videos with audio."""
    with_audio = [j for j in judgements if j.onsets is not None]
    f1s = [match_f1(a.events, b.onsets)[2] for i, a in enumerate(with_audio) for k, b in enumerate(with_audio)
           if i != k and a.n_frames == b.n_frames]
    return (float(np.mean(f1s)) if f1s else None), len(f1s)


def summarize(judgements: Sequence[Judgement]) -> dict:
    """Folder means (over the videos each judge could score), ``n``, ``unjudged`` and per-judge counts."""
    out: dict = {"n": len(judgements), "unjudged": sum(j.unjudged for j in judgements)}
    scores = [j.scores() for j in judgements]
    for key in scores[0] if scores else ():
        values = [s[key] for s in scores if s[key] is not None]
        out[key] = float(np.mean(values)) if values else None
        out[f"{key}_std"] = float(np.std(values)) if values else None
        out[f"{key}_n"] = len(values)
    chance, pairs = onset_f1_chance(judgements)
    if chance is not None:
        out["onset_f1_chance"], out["onset_f1_chance_n"] = chance, pairs
    return out


def fd_judge(real: Sequence[Judgement], fake: Sequence[Judgement]) -> float:
    """Fréchet distance between two sets of clips over their ``clip_features``."""
    from tav.metrics.frechet import frechet_distance

    return frechet_distance(np.stack([j.features for j in real]), np.stack([j.features for j in fake]))
