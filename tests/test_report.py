"""tools/report.py and tav.report without a browser: what the page holds (videos, metrics with the JSON's
numbers, settings, per-sample scores), paging, comparison pages, web copies, plots, and bad input."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from tav.data.video import write_video
from tav.report import build_report
from tav.report.media import check_video, for_page
from tav.report.plots import bench_bars, curve_series, training_curves
from tav.report.sources import common_settings, read_results
from tav_scripts.cli_common import report_command
from tav_scripts.sampling import run_settings
from tav_tools import report as tool

from .report_fixtures import FPS, FRAMES, demo_sample, make_results, stale_record


class Page(HTMLParser):
    """The parts of a report page the tests read: videos, tables (cell texts), links, images."""

    def __init__(self, text: str):
        super().__init__()
        self.videos, self.tables, self.links, self.images, self.sections = [], {}, [], [], []
        self._table = self._row = self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "video":
            self.videos.append(a)
        elif tag == "table":
            self._table = self.tables.setdefault(a.get("class", ""), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "a":
            self.links.append(a.get("href"))
        elif tag == "img":
            self.images.append(a.get("src"))
        elif tag == "section":
            self.sections.append(a)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def read_page(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = make_results(tmp_path_factory.mktemp("results") / "17_tav_URMP", n=3)
    stale_record(root)
    return root


def test_report_of_a_ta2v_folder(run, tmp_path, capsys):
    out = tmp_path / "report"
    assert tool.main([str(run), "--out", str(out)]) == 0
    assert f"report: {(out / 'index.html').resolve()}" in capsys.readouterr().out
    page = read_page(out / "index.html")
    # one <video> per clip: real, stage 1, stage 2 for each of the 3 samples, each file beside the page
    assert len(page.videos) == 9
    assert all((out / v["data-src"]).is_file() for v in page.videos)
    assert [v["data-src"].split("/")[2] for v in page.videos[:3]] == ["real", "fake_stage1", "fake_stage2"]
    assert sum("muted" not in v for v in page.videos) == 3  # one video per row carries the sound
    for v in page.videos:
        assert float(v["data-duration"]) == pytest.approx(FRAMES / FPS, abs=1 / FPS)
    # the metrics table holds the JSON's numbers (4 significant digits)
    metrics = page.tables["metrics"]
    fvd = {r[1]: float(r[2]) for r in metrics if r[0] == "fvd"}
    assert fvd == {"fake_stage1": pytest.approx(123.5), "fake_stage2": pytest.approx(7.891)}
    judged = json.loads((run / "metrics_synthetic.json").read_text())["folders"]
    for row in (r for r in metrics if r[0] == "colour_acc"):
        assert float(row[2]) == pytest.approx(judged[row[1]]["colour_acc"], rel=1e-3)
        assert int(row[4]) == judged[row[1]]["n"]
    notes = [r[0] for r in metrics if len(r) == 1]
    assert notes == ["fvd: the i3d (tiny) weights are seeded random values; these numbers do not measure quality"]
    # the record of another run is shown apart, with a warning, and not in the main table
    assert not any(r[0] == "clip_text" for r in metrics)
    assert page.tables["metrics-apart apart"][1][:3] == ["clip_text", "fake_stage2", "31.5"]
    # settings from the manifest; per-sample scores of the judges (stage 1 is darkened: its colour may differ)
    settings = dict(r for r in page.tables["settings"][1:])
    assert settings["settings.timestep_respacing"] == "ddim50" and settings["checkpoints.diffusion_ckpt"] == "ab" * 32
    scores = page.tables["scores"]
    per_video = {e["key"]: e for e in judged["fake_stage1"]["per_video"]}
    head = scores[0]
    stage1 = scores[2]
    assert stage1[0] == "stage 1"
    assert float(stage1[head.index("colour_acc")]) == per_video[0]["colour_acc"]
    assert [s["data-key"] for s in page.sections] == ["0", "1", "2"]


def test_paging_and_missing_or_corrupt_videos(run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    rows = [json.loads(line) for line in (broken / "manifest.jsonl").read_text().splitlines()]
    (broken / rows[1]["files"]["fake_stage2"]).unlink()
    bad = broken / rows[2]["files"]["fake_stage1"]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 3])
    rep = build_report([broken], tmp_path / "out", page_size=2)
    assert [p.name for p in rep.pages] == ["index.html", "page-2.html"]
    assert (rep.videos, rep.unshown) == (7, 2)
    first, second = read_page(rep.pages[0]), read_page(rep.pages[1])
    assert len(first.videos) == 5 and len(second.videos) == 2  # rows 0, 1 (one missing); row 2 (one corrupt)
    assert "page-2.html" in first.links and "index.html" in second.links
    text = rep.pages[0].read_text()
    assert f"{Path(rows[1]['files']['fake_stage2']).name}: missing" in text
    assert any(str(bad) in w for w in rep.warnings)
    assert "metrics" not in second.tables  # the summary is on the first page only


def test_comparison_page_and_web_copies(run, tmp_path):
    odd = make_results(tmp_path / "odd_run", n=2, seed0=200, size=33)  # H.264 4:4:4: browsers cannot play it
    rep = build_report([run, odd], tmp_path / "out")
    page = read_page(rep.index)
    # rows by sample number: the real clip once, then each folder's stage 1 and stage 2
    assert len(page.videos) == 3 * 5 - 2  # sample 2 exists in the first folder only
    webm = [v["data-src"] for v in page.videos if v["data-src"].endswith(".webm")]
    assert len(webm) == 4 and rep.web_copies == 4 and all("odd_run" in w for w in webm)
    copy = check_video(rep.index.parent / webm[0])
    assert copy.reason is None and copy.web and copy.audio and copy.frames == FRAMES
    head = page.tables["metrics"][0]
    assert head[2:8] == ["value 17_tav_URMP", "± std 17_tav_URMP", "N 17_tav_URMP", "value odd_run", "± std odd_run",
                         "N odd_run"]
    assert not list((odd / "fake_stage1").glob("*.webm"))  # originals untouched, nothing written beside them


def test_web_modes_and_placing(tmp_path):
    frames, wave, _ = demo_sample(5)
    src = write_video(tmp_path / "a.mp4", frames, FPS, audio=wave, sample_rate=16000)
    checked, placed = for_page(src, tmp_path / "m", "a", "never")
    assert checked.web and placed.read_bytes() == src.read_bytes()
    checked, placed = for_page(src, tmp_path / "m", "a", "always")
    assert placed.suffix == ".webm" and check_video(placed).frames == FRAMES
    with pytest.raises(ValueError, match="web must be one of"):
        for_page(src, tmp_path / "m", "a", "sometimes")
    assert check_video(tmp_path / "none.mp4").reason == "missing"
    (tmp_path / "junk.mp4").write_bytes(b"\0" * 100)
    assert "corrupt or truncated" in check_video(tmp_path / "junk.mp4").reason


def test_generated_folder(tmp_path):
    frames, wave, caption = demo_sample(9)
    write_video(tmp_path / "gen" / "song.mp4", frames, FPS, audio=wave, sample_rate=16000)
    (tmp_path / "gen" / "song.json").write_text(json.dumps({"method": "ta2v", "caption": caption, "seed": 3,
                                                             "fps": FPS, "settings": {"steps": 25}}))
    source = read_results(tmp_path / "gen")
    assert source.kind == "generated" and source.samples[0].caption == caption and source.samples[0].seed == 3
    rep = build_report([tmp_path / "gen"], tmp_path / "out")
    page = read_page(rep.index)
    assert len(page.videos) == 1 and caption in rep.index.read_text()


def test_bad_input(tmp_path, capsys, run):
    (tmp_path / "empty").mkdir()
    assert tool.main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a results folder: no real/, fake_stage1/ or fake_stage2/" in err
    assert tool.main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert tool.main([str(run), "--out", str(tmp_path / "o"), "--runs", str(tmp_path / "empty")]) == 2
    assert "no metrics.jsonl there" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert tool.main([str(run), "--out", str(tmp_path / "file" / "o")]) == 2
    assert "cannot write there" in capsys.readouterr().err


def test_curves_and_bench_charts(tmp_path):
    rows = [{"step": s, "time": 1.0, "train/loss": 1.0 / s, "train/perplexity": 10.0 + s, "lr": 1e-3, "x": float("nan")}
            for s in range(1, 6)]
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "train/lo')  # a killed write
    series = curve_series([json.loads(json.dumps(r)) for r in rows])
    assert list(series) == ["losses", "codebook perplexity", "learning rate"]
    assert series["losses"]["train/loss"] == ([1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 0.5, 1 / 3, 0.25, 0.2])
    svg, notes = training_curves(jsonl, tmp_path / "a.svg", "run")
    assert notes == [f"{jsonl}: 1 line(s) are not JSON objects and were skipped"]
    again, _ = training_curves(jsonl, tmp_path / "b.svg", "run")
    assert svg.read_bytes() == again.read_bytes() and b"<svg" in svg.read_bytes()  # same data, same bytes
    table = {"real": {"colour_acc": [1.0, 0.0], "shape_acc": [0.9, 0.1], "s_per_video": None},
             "stage 2": {"colour_acc": [0.5, 0.2], "shape_acc": [None, None], "s_per_video": 0.3}}
    assert bench_bars("ablation", table, tmp_path / "c.svg").is_file()
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"n": 2, "judges": ["colour_acc"], "tables": {"ablation": table}}))
    rep = build_report([make_results(tmp_path / "r", n=1)], tmp_path / "out", runs=[tmp_path], bench=[bench])
    assert [p.name for p in rep.plots] == [f"run-0-{tmp_path.name}.svg", "bench-0-ablation-bars.svg"]
    assert read_page(rep.index).images == [f"plots/{p.name}" for p in rep.plots]


def test_settings_header_and_sampler_hint():
    rows = [{"checkpoints": {"a": "x"}, "settings": {"steps": 25, "seed": 0}},
            {"checkpoints": {"a": "x"}, "settings": {"steps": 25, "seed": 1}}]
    assert common_settings(rows) == {"checkpoints.a": "x", "settings.steps": 25, "varies": ["settings.seed"]}
    import argparse

    args = argparse.Namespace(steps=25, device="cpu", progress=True, resize=[1, 2], ckpt="m.pt", lam=1e4)
    assert run_settings(args) == {"ckpt": "m.pt", "lam": 1e4, "steps": 25}  # no device, progress or lists
    assert report_command(Path("res/my run")) == "python tools/report.py 'res/my run' --out 'res/my run/report'"


def test_judge_record_lists_per_video_scores(run):
    judged = json.loads((run / "metrics_synthetic.json").read_text())["folders"]
    for folder in ("real", "fake_stage1", "fake_stage2"):
        entries = judged[folder]["per_video"]
        assert [e["key"] for e in entries] == [0, 1, 2]
        assert np.mean([e["colour_acc"] for e in entries]) == pytest.approx(judged[folder]["colour_acc"])
