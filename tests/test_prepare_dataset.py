"""The dataset builder: clip counts, clip contents, splits, resume, the CLI and its option errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tav.data import prepare
from tav.data.audio import read_audio
from tav.data.layout import clip_files
from tav.data.prepare import (
    PrepareConfig,
    audio_clip_starts,
    nearest_frames,
    output_size,
    prepare_dataset,
    record_path,
)
from tav.data.sources import assign_splits, load_captions, sanitize_stem, source_stems
from tav.data.video import read_video, write_video
from tav.errors import InputError

from .helpers import load_script, run_script

REPO = Path(__file__).resolve().parents[1]
L, FPS, SIZE, SR = 10, 10, 32, 48000


def _load_cli():
    return load_script("tools/prepare_dataset.py", "prepare_dataset_cli")


def _make(path: Path, fps: int, w: int, h: int, n: int, sr: int, audio_s: float | None = None,
          sound: str = "sine") -> None:
    """A raw source: frame i is uniform grey (8 i mod 256), with a 440 Hz sine (or silence / no track)."""
    frames = np.broadcast_to(((np.arange(n) * 8) % 256).astype(np.uint8)[:, None, None, None], (n, h, w, 3))
    t = np.arange(round((n / fps if audio_s is None else audio_s) * sr)) / sr
    wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    if sound == "silent":
        wave[:] = 0
    write_video(path, frames, fps, audio=None if sound == "none" else wave, sample_rate=sr)


# source -> expected clips at L=10 frames, 10 fps (frames at 10 fps = ceil(duration * 10))
EXPECTED = {
    "a.mp4": 2,  # 24 fps, 60 frames = 2.5 s -> 25 frames
    "sub/b.mp4": 3,  # 30 fps, 100 frames = 3.33 s -> 34 frames
    "c.mp4": 1,  # 15 fps, 20 frames = 1.33 s -> 14 frames
    "d.mkv": 2,  # 10 fps, exactly 2 s: the last clip ends where the (AAC) sound ends
    "e.mp4": 1,  # 3 s of video but 1.5 s of sound: the sound limits it
}
WIDTH = {"a.mp4": 42, "sub/b.mp4": 32, "c.mp4": 44, "d.mkv": 48, "e.mp4": 32}  # height is 32 for all


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    (root / "sub").mkdir()
    _make(root / "a.mp4", 24, 80, 60, 60, 44100)
    _make(root / "sub" / "b.mp4", 30, 64, 64, 100, 48000)
    _make(root / "c.mp4", 15, 100, 72, 20, 22050)
    _make(root / "d.mkv", 10, 48, 32, 20, 48000)
    _make(root / "e.mp4", 30, 32, 32, 90, 48000, audio_s=1.5)
    _make(root / "noaudio.mp4", 15, 32, 32, 20, 22050, sound="none")
    _make(root / "silent.mp4", 15, 32, 32, 20, 22050, sound="silent")
    _make(root / "short.mp4", 15, 32, 32, 12, 22050)  # 0.8 s: shorter than one clip
    (root / "bad.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    shutil.copy(root / "c.mp4", root / "nocap.mp4")
    shutil.copy(root / "c.mp4", root / "empty.mp4")
    (root / "captions.csv").write_text(
        "file,caption\na.mp4,A grey ramp.\nsub/b.mp4,\"B, with a comma.\"\nc,C by stem.\nd.mkv,D.\n"
        "e.mp4,E.\nnoaudio.mp4,x\nsilent.mp4,x\nshort.mp4,x\nbad.mp4,x\nempty.mp4,\n", encoding="utf-8")
    return root


def _cfg(raw: Path, out: Path, **kw) -> PrepareConfig:
    return PrepareConfig(videos=raw, out=out, load_vid_len=L, fps=FPS, captions=raw / "captions.csv",
                         size=SIZE, **kw)


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return out, prepare_dataset(_cfg(raw, out))


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_summary_counts(built):
    _, s = built
    assert s.found == 11
    assert s.processed == 5 and s.skipped_done == 0
    assert s.failed == {"corrupt": 1, "no_audio": 1, "silent_audio": 1, "too_short": 1,
                        "missing_caption": 1, "empty_caption": 1}
    assert {src: reason for src, reason, _ in s.failures} == {
        "bad.mp4": "corrupt", "noaudio.mp4": "no_audio", "silent.mp4": "silent_audio",
        "short.mp4": "too_short", "nocap.mp4": "missing_caption", "empty.mp4": "empty_caption"}
    assert sum(s.clips.values()) == sum(EXPECTED.values()) == 9
    assert s.clips == s.clips_written
    assert s.duration_s == pytest.approx(9 * L / FPS)


def test_manifest_and_splits(built):
    out, s = built
    rows = _manifest(out)
    assert len(rows) == 9
    per_source: dict[str, list[dict]] = {}
    for r in rows:
        per_source.setdefault(r["source"], []).append(r)
    assert {k: len(v) for k, v in per_source.items()} == EXPECTED
    for src, rs in per_source.items():
        assert len({r["split"] for r in rs}) == 1, f"{src} has clips in both splits"
        assert [r["clip_index"] for r in rs] == list(range(len(rs)))
        assert [r["start_frame"] for r in rs] == [L * i for i in range(len(rs))]
        assert all(r["width"] == WIDTH[src] and r["height"] == SIZE for r in rs)
    assert {r["split"] for r in rows} == {"train", "test"}
    assert {sp: sum(r["split"] == sp for r in rows) for sp in ("train", "test")} == s.clips
    a1 = per_source["a.mp4"][1]
    assert (a1["stem"], a1["start_time_s"], a1["frames"], a1["fps"], a1["sample_rate"], a1["caption"]) == (
        "a_1", 1.0, L, FPS, SR, "A grey ramp.")
    assert per_source["sub/b.mp4"][0]["caption"] == "B, with a comma."


def test_clip_files(built):
    out, _ = built
    for r in _manifest(out):
        f = clip_files(out / r["split"], r["stem"])
        frames, fps = read_video(f.mp4)
        assert frames.shape == (L, SIZE, WIDTH[r["source"]], 3) and fps == FPS
        assert len(read_audio(f.audio, SR)) == L * SR // FPS
        assert np.load(f.stft).shape == (L, 96, 16)
        assert f.txt.read_text(encoding="utf-8") == r["caption"] + "\n"


def test_frames_are_picked_by_nearest_timestamp(built):
    out, _ = built
    for r in _manifest(out):
        if r["source"] != "a.mp4":
            continue
        frames, _ = read_video(clip_files(out / r["split"], r["stem"]).mp4)
        src = np.floor((r["start_frame"] + np.arange(L)) * 24 / FPS + 0.5)  # source frame of each output frame
        diff = (frames.reshape(L, -1).mean(1) - (src * 8) % 256 + 128) % 256 - 128  # circular grey error
        assert np.abs(diff).max() < 4  # two lossy encodes; the neighbouring source frames are 8 apart


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns
            for split in ("train", "test") for p in (out / split).rglob("*") if p.is_file()}


def test_resume_skips_done_and_rebuilds_a_dropped_source(raw, tmp_path):
    out = tmp_path / "ds"
    first = prepare_dataset(_cfg(raw, out))
    manifest, before = (out / "manifest.jsonl").read_text(), _mtimes(out)

    again = prepare_dataset(_cfg(raw, out))
    assert (again.processed, again.skipped_done, again.failed) == (0, 5, first.failed)
    assert again.clips == first.clips and again.clips_written == {"train": 0, "test": 0}
    assert _mtimes(out) == before and (out / "manifest.jsonl").read_text() == manifest

    record_path(out, "sub/b.mp4").unlink()
    third = prepare_dataset(_cfg(raw, out))
    assert (third.processed, third.skipped_done) == (1, 4)
    assert sum(third.clips_written.values()) == 3 and third.clips == first.clips
    after = _mtimes(out)
    changed = {k for k in before if after[k] != before[k]}
    assert changed and all(Path(k).stem.startswith("b_") for k in changed)
    assert len(changed) == 3 * 4  # mp4, wav, npy, txt of b_0..b_2
    assert (out / "manifest.jsonl").read_text() == manifest


def test_changed_options_replace_old_clips(raw, tmp_path):
    out = tmp_path / "ds"
    prepare_dataset(_cfg(raw, out))
    s = prepare_dataset(_cfg(raw, out, stride=5))  # every record is outdated: all sources redone
    assert (s.processed, s.skipped_done) == (5, 0)
    rows = _manifest(out)
    # a: 25 frames -> starts 0, 5, 10, 15; the others follow the same rule
    assert [r["start_frame"] for r in rows if r["source"] == "a.mp4"] == [0, 5, 10, 15]
    on_disk = {p.stem for split in ("train", "test") for p in (out / split / "txt").glob("*.txt")}
    assert on_disk == {r["stem"] for r in rows}


def test_a_failing_source_leaves_nothing_behind(raw, tmp_path, monkeypatch):
    src = tmp_path / "videos"
    src.mkdir()
    shutil.copy(raw / "a.mp4", src / "a.mp4")
    (src / "a.txt").write_text("A.", encoding="utf-8")
    real_write_clip, calls = prepare.write_clip, []

    def write_clip_then_fail(split_dir, stem, *args, **kw):
        calls.append(stem)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write_clip(split_dir, stem, *args, **kw)

    monkeypatch.setattr(prepare, "write_clip", write_clip_then_fail)
    s = prepare_dataset(PrepareConfig(videos=src, out=tmp_path / "out", load_vid_len=L, fps=FPS, size=SIZE))
    assert calls == ["a_0", "a_1"] and s.processed == 0 and s.failed == {"error": 1}
    assert s.failures == [("a.mp4", "error", "OSError: disk full")]
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == [tmp_path / "out" / "manifest.jsonl"]
    assert (tmp_path / "out" / "manifest.jsonl").read_text() == ""


def test_cli_end_to_end_with_sidecar_captions_and_workers(raw, tmp_path, capsys):
    src = tmp_path / "videos"
    src.mkdir()
    shutil.copy(raw / "a.mp4", src / "first clip!.mp4")
    shutil.copy(raw / "c.mp4", src / "second.mp4")
    shutil.copy(raw / "c.mp4", src / "latin1.mp4")
    (src / "first clip!.txt").write_text("First\nclip.\n", encoding="utf-8")
    (src / "second.mp4.txt").write_text("Second.", encoding="utf-8")
    (src / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    out = src / "dataset"  # inside --videos: must not be picked up as sources on a re-run
    argv = ["--videos", str(src), "--out", str(out), "--load_vid_len", str(L), "--fps", str(FPS),
            "--size", str(SIZE), "--workers", "2", "--no_progress", "--test_fraction", "0.5"]
    cli = _load_cli()
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "sources found: 3" in text and "caption_not_utf8: 1" in text
    rows = _manifest(out)
    assert [(r["stem"], r["caption"]) for r in rows] == [
        ("first_clip_0", "First clip."), ("first_clip_1", "First clip."), ("second_0", "Second.")]
    assert {r["split"] for r in rows} == {"train", "test"}
    assert cli.main(argv) == 0
    assert "processed: 0, already done: 2" in capsys.readouterr().out


def test_two_builds_in_two_processes_write_identical_clips(tmp_path):
    """Sources with moving coloured shapes (demo clips), cut at 64 px by two builds in two fresh processes (with
    worker processes): every clip file is byte-identical."""
    from tav.data.demo import make_clip

    src = tmp_path / "videos"
    src.mkdir()
    for seed in (3, 4, 5):
        frames, audio, caption, _ = make_clip(seed, "urmp", 96)
        write_video(src / f"clip{seed}.mp4", frames, 30, audio=audio, sample_rate=48000)
        (src / f"clip{seed}.txt").write_text(caption, encoding="utf-8")
    for name in ("one", "two"):
        run_script("tools/prepare_dataset.py", ["--videos", src, "--out", tmp_path / name, "--load_vid_len", 30,
                                                "--fps", 30, "--size", 64, "--workers", 2, "--no_progress"])
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*")
                   if p.is_file() and p.suffix in (".mp4", ".wav", ".npy", ".txt"))
    assert len([f for f in files if f.suffix == ".mp4"]) == 9  # 3 s sources, 1 s clips
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f


@pytest.mark.parametrize("change, option", [
    ({"--videos": "missing_dir"}, "--videos"),
    ({"--captions": "missing.csv"}, "--captions"),
    ({"--captions": "latin1.csv"}, "--captions"),
    ({"--load_vid_len": "0"}, "--load_vid_len"),
    ({"--fps": "0"}, "--fps"),
    ({"--fps": "7"}, "--sample_rate 48000 / --fps 7.0 = 6857.143 audio samples per video frame"),
    ({"--size": "33"}, "--size"),
])
def test_bad_options_give_one_line_errors(tmp_path, capsys, change, option):
    (tmp_path / "videos").mkdir()
    (tmp_path / "latin1.csv").write_bytes("a.mp4,caf\xe9\n".encode("latin-1"))
    paths = ("--videos", "--out", "--captions")
    args = {"--videos": "videos", "--out": "out", "--load_vid_len": "10", "--fps": "10", **change}
    argv = [x for k, v in args.items() for x in (k, str(tmp_path / v) if k in paths else v)]
    assert _load_cli().main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and option in err
    assert not (tmp_path / "out").exists()


def test_nearest_frames_matches_rounding():
    for src_fps, n, fps in [(24, 60, 10), (30, 100, 10), (15, 20, 10), (10, 20, 25)]:
        timed = [(i / src_fps, 1 / src_fps, i) for i in range(n)]
        got = list(nearest_frames(timed, fps))
        expect_len = int(np.ceil(n / src_fps * fps - 1e-9))
        assert [k for k, _ in got] == list(range(expect_len))
        assert [i for _, i in got] == [min(int(np.floor(k * src_fps / fps + 0.5)), n - 1)  # ties: later frame
                                       for k in range(expect_len)]
    assert list(nearest_frames([], 10)) == []


def test_helpers():
    assert output_size(80, 60, 32) == (42, 32) and output_size(60, 100, 32) == (32, 54)
    assert output_size(64, 64, 32) == (32, 32)
    assert sanitize_stem("my clip (1).final") == "my_clip_1_final" and sanitize_stem("???") == "video"
    stems = source_stems(["x/a b.mp4", "y/a b.mov", "c.mp4"])
    assert stems["c.mp4"] == "c" and stems["x/a b.mp4"].startswith("a_b-") and len(set(stems.values())) == 3
    rels = [f"v{i}.mp4" for i in range(200)]
    split = assign_splits(rels, seed=0, test_fraction=0.2)
    assert split == assign_splits(reversed(rels), seed=0, test_fraction=0.2)
    assert 20 < sum(v == "test" for v in split.values()) < 60
    assert split != assign_splits(rels, seed=1, test_fraction=0.2)
    assert set(assign_splits(["a", "b"], 0, 0.01).values()) == {"train", "test"}
    assert set(assign_splits(["a", "b"], 0, 0.99).values()) == {"train", "test"}
    assert set(assign_splits(["a", "b"], 0, 0.0).values()) == {"train"}
    cfg = PrepareConfig(videos=Path("."), out=Path("o"), load_vid_len=10, fps=10, stride=5)
    assert audio_clip_starts(120000, cfg) == [0, 24000, 48000, 72000]
    assert audio_clip_starts(47000, cfg) == [0]  # 1000 samples short: within the slack
    assert audio_clip_starts(40000, cfg) == []


def test_load_captions_formats(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"file": "./x/a.mp4", "caption": " A \\n cap "}\n\n'
                                      '{"file": "b", "caption": null}\n', encoding="utf-8")
    assert load_captions(tmp_path / "c.jsonl") == {"x/a.mp4": "A cap", "b": ""}
    (tmp_path / "c.csv").write_text("a.mp4,one, two\nb,\"x\ny\"\n", encoding="utf-8")
    assert load_captions(tmp_path / "c.csv") == {"a.mp4": "one, two", "b": "x y"}
    (tmp_path / "bad.jsonl").write_text('{"file": 1}\n', encoding="utf-8")
    with pytest.raises(InputError, match="--captions .*bad.jsonl:1"):
        load_captions(tmp_path / "bad.jsonl")


def test_bad_inputs_are_one_line_or_a_counted_skip(raw, tmp_path, capsys):
    """An empty captions file, an unwritable --out: one line, exit 2, nothing built. A sidecar caption over the
    CSV field limit and a video too elongated to encode: skipped with their reasons."""
    cli = _load_cli()
    base = ["--videos", str(raw), "--load_vid_len", str(L), "--fps", str(FPS), "--size", str(SIZE), "--no_progress"]
    (tmp_path / "empty.csv").write_text("file,caption\n")
    assert cli.main([*base, "--out", str(tmp_path / "o1"), "--captions", str(tmp_path / "empty.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "holds no captions" in err and not (tmp_path / "o1" / "manifest.jsonl").exists()
    (tmp_path / "blocker").write_text("")
    assert cli.main([*base, "--out", str(tmp_path / "blocker" / "o")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "cannot write there" in err
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(raw / "c.mp4", src / "long.mp4")
    (src / "long.txt").write_text("word " * 30000)  # 150 KB
    _make(src / "wide.mp4", 15, 1600, 2, 20, 22050)  # 800:1 -> 25600 px wide at --size 32
    (src / "wide.txt").write_text("A very wide video.")
    out = tmp_path / "o2"
    assert cli.main(["--videos", str(src), "--out", str(out), *base[2:]]) == 2  # both skipped: no dataset
    printed = capsys.readouterr()
    assert "caption_too_long: 1" in printed.out and "too_elongated: 1" in printed.out
    assert "no clip in" in printed.err and "all 2 source videos failed" in printed.err
    assert not (out / "manifest.jsonl").exists()
    (tmp_path / "big.csv").write_text("file,caption\na.mp4,\"" + "x" * 140000 + "\"\n")
    with pytest.raises(InputError, match="131072"):  # the same bound as the sidecar's
        load_captions(tmp_path / "big.csv")
    (tmp_path / "big.jsonl").write_text(json.dumps({"file": "a.mp4", "caption": "y" * 140000}) + "\n")
    with pytest.raises(InputError, match="the caption of a.mp4 is 140000 bytes, over the 131072-byte limit"):
        load_captions(tmp_path / "big.jsonl")
