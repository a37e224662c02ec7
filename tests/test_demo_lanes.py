"""The demo's training lanes (``scripts/demo.py``) and the lock on ``quality.json`` they share."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tav.errors import InputError
from tav_scripts import demo as demo_script


def _plan(*argv: str) -> list[tuple[str, ...]]:
    return demo_script.lane_plan(demo_script.parse_args(list(argv)))


def test_lane_plan_splits_the_requested_trainings():
    assert _plan() == [("vqgan", "gpt", "joint"), ("diffusion", "tia2v")]
    assert _plan("--stages", "data", "tia2v", "gpt", "sample") == [("gpt",), ("tia2v",)]
    assert _plan("--stages", "joint", "vqgan") == [("vqgan", "joint")]  # the lane's order, not the command's
    assert _plan("--stages", "data", "sample", "metrics") == []
    assert _plan("--lanes", "1") == [] and _plan("--lane", "1") == []  # one process, or already a lane


def test_lane_needs_count_the_stages_before_in_the_lane(tmp_path):
    run = demo_script.DemoRun(args=demo_script.parse_args(["--out", str(tmp_path)]), out=tmp_path)
    run.state["data_root"] = tmp_path
    demo_script.check_needs(run, "gpt", ("vqgan",))  # the lane trains the VQGAN first
    with pytest.raises(InputError, match=r"no finished vqgan stage; run it first \(--stages vqgan gpt\)"):
        demo_script.check_needs(run, "gpt", ("joint",))


class _Done:
    def __init__(self, code: int):
        self.returncode = code


def test_failed_lane_is_one_line_naming_it(tmp_path, capsys):
    log = tmp_path / "vqgan_gpt.log"
    log.write_text("[vqgan] 1.0 s\n")
    log.with_suffix(".err").write_text("some warning\ndemo.py: error: results/x: no space left\n")
    with pytest.raises(InputError) as err:
        demo_script._lane_done(("vqgan", "gpt"), log, _Done(2), time.perf_counter())
    assert str(err.value) == f"the lane vqgan gpt failed (exit 2): results/x: no space left (its output: {log})"
    assert capsys.readouterr().out == "[vqgan] 1.0 s\n"  # what the lane printed comes first
    log.with_suffix(".err").write_text("")
    demo_script._lane_done(("joint",), log, _Done(0), time.perf_counter())
    assert capsys.readouterr().out.splitlines()[-1].startswith("[lane joint] ")


WRITER = """
import sys, time
from pathlib import Path
from tav_scripts.demo_quality import record_quality
folder, tag = Path(sys.argv[1]), sys.argv[2]
(folder / f"ready_{tag}").touch()
while not (folder / "go").exists():  # both processes start writing at once
    time.sleep(0.001)
for i in range(100):
    record_quality(folder, f"{tag}{i:02d}", {"n": i})
"""


def test_quality_record_keeps_every_entry_of_two_writing_processes(tmp_path):
    """Two processes merge 100 entries each into one quality.json at once: none is lost (without the lock about
    half are)."""
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), tag]) for tag in ("a", "b")]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready_{t}").exists() for t in "ab") and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    data = json.loads((tmp_path / "quality.json").read_text())
    assert sorted(data) == sorted(f"{t}{i:02d}" for t in "ab" for i in range(100))
    assert data["b99"] == {"n": 99}
