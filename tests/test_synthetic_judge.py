"""The synthetic-domain judges (tav.metrics.synthetic, tools/synthetic_judge.py): known values, and what they say
of the demo's own clips with the right, rotated captions and rotated audio."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tav.data.demo import COLOURS, SHAPES, ClipSpec, Note, build_demo_dataset, make_clip, render_notes
from tav.data.video import write_video
from tav.metrics.synthetic import (
    classify_shape,
    flicker,
    frame_objects,
    judge_video,
    match_f1,
    parse_caption,
    spearman,
    summarize,
)
from tav.metrics.synthetic_folders import Item, judge_folders, split_items
from tav_tools import synthetic_judge as tool

N_CLIPS = 8


@pytest.fixture(scope="module")
def clips():
    """Eight demo clips (64 px, 90 frames at 30 fps, 3 s of audio at 48 kHz) in memory."""
    return [make_clip(100 + i, "urmp", 64) for i in range(N_CLIPS)]


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    build_demo_dataset(root, n_train=0, n_test=N_CLIPS, size=64)
    return root / "test"


def _judge(clips, rot_caption=0, rot_audio=0):
    n = len(clips)
    return summarize([judge_video(clips[i][0], 30.0, clips[(i + rot_audio) % n][1], 48000,
                                  clips[(i + rot_caption) % n][2]) for i in range(n)])


def test_parse_caption():
    assert parse_caption("An orange diamond moves to a Flute.") == ("orange", "diamond")
    assert parse_caption("A red, red circle.") == ("red", "circle")
    assert parse_caption("A teal blob moves to an Oboe.") == (None, None)
    assert parse_caption("A red and blue square.") == (None, "square")  # two colours: not one to judge
    assert parse_caption(None) == (None, None)


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("shape", SHAPES)
def test_shape_and_colour_of_rendered_frames(shape, size):
    """Every shape and colour of the generator, small and large, near and far from the edges."""
    for k, colour in enumerate(COLOURS):
        notes = tuple(Note(start=0, steps=2, midi=60, velocity=v, x=x, y=y)
                      for v, x, y in [(0.5, 0.2, 0.8), (1.0, 0.5, 0.5), (0.75, 0.8, 0.2)])
        frames = render_notes(ClipSpec(k, "Flute", shape, colour, notes), size)
        objects = frame_objects(frames)
        assert objects.shape == [shape] * 3, (colour, size)
        assert objects.colour == [colour] * 3, (shape, size)
        np.testing.assert_allclose(objects.cx, [0.2, 0.5, 0.8], atol=1.5 / size)
        np.testing.assert_allclose(objects.cy, [0.8, 0.5, 0.2], atol=0.08)  # the triangle's centroid is low


def test_classify_shape_by_hand():
    square = np.zeros((10, 10), bool)
    square[2:8, 2:8] = True
    assert classify_shape(square) == "square"
    rows, cols = np.mgrid[0:9, 0:9]
    triangle = np.abs(cols - 4) <= rows / 2  # apex up: fill ~0.6, mass low in the box
    diamond = np.abs(cols - 4) + np.abs(rows - 4) <= 4  # fill ~0.5, mass in the middle
    assert classify_shape(triangle) == "triangle" and classify_shape(diamond) == "diamond"


def test_shape_of_downscaled_and_blurred_frames():
    """The demo's own path to the VQGAN's input (64 px clip, bilinear halving), then a Gaussian blur as a decoder's:
    every shape of every size still reads as drawn. At 16 px (the 4x reduction aliases some shapes away; the
    smallest circle is 3 px wide) seven in ten of those seen do."""
    import torch
    from scipy import ndimage

    from tav.data.video import resize_center_crop, to_model_range, to_uint8

    notes = tuple(Note(start=0, steps=2, midi=60, velocity=v, x=x, y=y)
                  for v in (0.5, 0.75, 1.0) for x, y in [(0.2, 0.8), (0.5, 0.5), (0.8, 0.2), (0.35, 0.4)])
    for k, shape in enumerate(SHAPES):
        frames = render_notes(ClipSpec(k, "Flute", shape, "orange", notes), 64)
        half = to_uint8(resize_center_crop(to_model_range(torch.as_tensor(frames)), 32)).numpy()
        blurred = ndimage.gaussian_filter(half.astype(np.float64), sigma=(0, 0.6, 0.6, 0)).round().astype(np.uint8)
        assert frame_objects(half).shape == [shape] * len(notes)
        assert frame_objects(blurred).shape == [shape] * len(notes)
        quarter = to_uint8(resize_center_crop(to_model_range(torch.as_tensor(frames)), 16)).numpy()
        seen = [s for s in frame_objects(quarter).shape if s is not None]
        assert len(seen) >= 6 and np.mean([s == shape for s in seen]) >= 0.7, shape


def test_match_f1_known_values():
    assert match_f1([5, 10, 20], [5, 11, 30]) == (2 / 3, 2 / 3, pytest.approx(2 / 3))
    assert match_f1([5], [5, 6]) == (1.0, 0.5, pytest.approx(2 / 3))  # one event matches one onset only
    assert match_f1([], [3]) == (0.0, 0.0, 0.0) and match_f1([], []) == (1.0, 1.0, 1.0)
    assert match_f1([4], [6]) == (0.0, 0.0, 0.0)  # two frames apart: outside ±1


def test_spearman_and_flicker():
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 30, 45])) == pytest.approx(1.0)
    assert np.isnan(spearman(np.array([1.0, 2]), np.array([1.0, 2])))
    frames = np.zeros((6, 4, 4, 3), np.uint8)
    frames[3:] = 255  # one change, into frame 3
    assert flicker(frames, [3]) == 0.0 and flicker(frames, []) == pytest.approx(1 / 5)


def test_real_clips_score_high(clips):
    s = _judge(clips)
    assert s["colour_acc"] >= 0.95 and s["shape_acc"] >= 0.95 and s["colour_frame_acc"] >= 0.95
    assert s["onset_f1"] >= 0.9 and s["pitch_height"] >= 0.8 and s["flicker"] < 0.005 and s["unjudged"] == 0


def test_rotated_captions_fall_to_chance(clips):
    s = _judge(clips, rot_caption=1)
    assert s["colour_acc"] <= 0.4 and s["shape_acc"] <= 0.5  # chance: 1/8 and 1/4
    assert s["onset_f1"] >= 0.9  # the sound still matches


def test_rotated_audio_falls_to_chance(clips):
    s = _judge(clips, rot_audio=1)
    assert s["onset_f1"] <= 0.5 and s["pitch_height"] <= 0.5
    assert s["colour_acc"] >= 0.95  # the caption still matches


def test_short_windows_of_real_clips_score_high(clips):
    """The samplers judge 4- and 8-frame windows (0.13 and 0.27 s). Their onsets must be the notes' attacks, not
    the envelope's start-up bump that AV-Align's per-clip normalisation promotes to an onset (that detector scores
    these windows 0.33 and 0.70), and a window whose sound holds one note has none."""
    from tav.metrics.synthetic import motion_events, onset_frames

    spf = 48000 // 30
    for n in (4, 8):
        scores, quiet = [], 0
        for frames, audio, _, _ in clips:
            for s in (10, 25, 40, 55, 70):
                onsets = onset_frames(audio[s * spf:(s + n) * spf], 48000, 30.0, n)
                events = motion_events(frame_objects(frames[s:s + n]))
                scores.append(match_f1(events, onsets)[2])
                quiet += len(events) == 0 and len(onsets) == 0
        assert np.mean(scores) >= 0.9, (n, np.mean(scores))
        assert quiet >= len(clips)  # many windows hold no note change: no onset is detected there


def test_onset_chance_level(clips):
    """``onset_f1_chance`` scores each video's motion against the other videos' sound: real clips fall to it from
    their own F1, and still windows score there exactly the share of the other windows in which no note starts."""
    from tav.metrics.synthetic import onset_f1_chance, onset_frames

    s = _judge(clips)
    pairs = [match_f1(_judge_one(clips, i).events, _judge_one(clips, k).onsets)[2]
             for i in range(N_CLIPS) for k in range(N_CLIPS) if i != k]
    assert s["onset_f1_chance"] == pytest.approx(np.mean(pairs)) and s["onset_f1_chance_n"] == len(pairs)
    assert s["onset_f1"] >= 0.9 and s["onset_f1_chance"] <= 0.5
    spf, n = 48000 // 30, 4
    windows = [(frames[s0:s0 + n], audio[s0 * spf:(s0 + n) * spf], caption)
               for frames, audio, caption, _ in clips for s0 in (10, 25, 40, 55, 70)]
    still = [judge_video(np.repeat(f[:1], n, axis=0), 30.0, a, 48000, c) for f, a, c in windows]
    quiet = np.array([len(onset_frames(a, 48000, 30.0, n)) == 0 for _, a, _ in windows], dtype=float)
    expected = np.mean([(quiet.sum() - quiet[i]) / (len(quiet) - 1) for i in range(len(quiet))])
    chance, count = onset_f1_chance(still)
    assert 0.0 < quiet.mean() < 1.0 and chance == pytest.approx(expected) and count == len(still) * (len(still) - 1)
    assert onset_f1_chance(still[:1]) == (None, 0)


def _judge_one(clips, i):
    frames, audio, caption, _ = clips[i]
    return judge_video(frames, 30.0, audio, 48000, caption)


def test_static_and_flickering_videos(clips):
    frames, audio, caption, _ = clips[0]
    still = np.repeat(frames[:1], len(frames), axis=0)
    j = judge_video(still, 30.0, audio, 48000, caption)
    assert j.onset_recall == 0.0 and j.flicker == 0.0 and j.colour_acc == 1.0
    noisy = np.random.default_rng(0).integers(0, 256, frames.shape, dtype=np.uint8)
    assert judge_video(noisy, 30.0, audio, 48000, caption).flicker > 0.2


def test_unjudged_captions_and_missing_audio(clips):
    frames, audio, _, _ = clips[0]
    j = judge_video(frames, 30.0, None, None, "Something else entirely.")
    assert j.unjudged and j.colour_acc is None and j.onset_f1 is None and j.pitch_height is None
    assert j.flicker is not None
    s = summarize([j])
    assert s["unjudged"] == 1 and s["colour_acc"] is None and s["colour_acc_n"] == 0


def test_fd_judge_is_zero_for_the_same_clips_and_grows(split):
    items, _ = split_items(split)
    record = judge_folders({"real": items, "same": items})
    assert record["folders"]["same"]["fd_judge"] == pytest.approx(0.0, abs=1e-6)
    shuffled = [Item(i.video, None, None) for i in items]  # no audio, no captions: fd still defined
    record = judge_folders({"real": items, "still": [Item(items[0].video, None, None)] * len(items)})
    assert record["folders"]["still"]["fd_judge"] > 1e-3
    assert judge_folders({"x": shuffled})["folders"]["x"]["onset_f1"] is None


def test_tool_on_a_split_and_a_results_folder(split, tmp_path, capsys):
    out = tmp_path / "split.json"
    assert tool.main(["--split", str(split), "--json", str(out)]) == 0
    rec = json.loads(out.read_text())["folders"]["test"]
    assert rec["n"] == N_CLIPS and rec["colour_acc"] >= 0.95 and rec["shape_acc"] >= 0.95 and rec["onset_f1"] >= 0.9
    assert {"pitch_height", "flicker", "unjudged"} <= set(rec)
    # a results folder in TIA2V's naming, with one caption that names nothing known
    run = tmp_path / "0_tacm_urmp"
    stems = sorted(p.stem for p in (split / "mp4").glob("*.mp4"))[:3]
    for i, stem in enumerate(stems):
        for folder, name in (("real", f"groundtruth_{i}.mp4"), ("fake_stage1", f"video_{i}.mp4")):
            (run / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(split / "mp4" / f"{stem}.mp4", run / folder / name)
        (run / "audio").mkdir(exist_ok=True)
        shutil.copy(split / "audio" / f"{stem}.wav", run / "audio" / f"groundtruth_{i}.wav")
        (run / "txt").mkdir(exist_ok=True)
        text = "A mystery object." if i == 2 else (split / "txt" / f"{stem}.txt").read_text()
        (run / "txt" / f"groundtruth_{i}.txt").write_text(text)
    assert tool.main(["--results", str(run)]) == 0
    record = json.loads((run / "metrics_synthetic.json").read_text())["folders"]
    assert set(record) == {"real", "fake_stage1"} and record["fake_stage1"]["fd_judge"] == pytest.approx(0, abs=1e-6)
    assert record["real"]["unjudged"] == 1 and record["real"]["colour_acc_n"] == 2
    assert "1 clip(s) whose caption names no known colour or shape" in capsys.readouterr().out


def test_tool_bad_input(tmp_path, capsys, split):
    assert tool.main(["--split", str(tmp_path)]) == 2
    assert "no mp4/<stem>.mp4 files" in capsys.readouterr().err
    assert tool.main(["--results", str(tmp_path / "nothing")]) == 2
    assert "no such results folder" in capsys.readouterr().err
    bare = tmp_path / "bare"
    (bare / "mp4").mkdir(parents=True)
    frames, *_ = make_clip(5, "urmp", 32)
    write_video(bare / "mp4" / "x.mp4", frames, 30)  # no audio, no caption
    assert tool.main(["--split", str(bare), "--json", str(tmp_path / "b.json")]) == 0
    printed = capsys.readouterr().out
    assert "no audio files" in printed and "no captions" in printed
    assert json.loads((tmp_path / "b.json").read_text())["folders"]["bare"]["onset_f1"] is None
    write_video(bare / "mp4" / "y.mp4", frames, 30)  # a second clip, with a caption: the first one is noted
    (bare / "txt").mkdir()
    (bare / "txt" / "y.txt").write_text("A red circle moves to a Flute.")
    (bare / "txt" / "x.txt").write_text("\n")  # empty
    assert tool.main(["--split", str(bare), "--json", str(tmp_path / "c.json")]) == 0
    assert "1 of 2 videos have no caption (a missing or empty txt; first: x.mp4)" in capsys.readouterr().out
    assert json.loads((tmp_path / "c.json").read_text())["folders"]["bare"]["colour_acc_n"] == 1
