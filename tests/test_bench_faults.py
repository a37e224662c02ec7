"""The small version of ``benchmarks/bench_faults.py``: every long-running command killed (SIGKILL) once at a
random moment and run again ends exactly as its uninterrupted run, from the right point, with no temp file left."""

from __future__ import annotations

import sys

import pytest

from .helpers import REPO, load_script


def _bench():
    sys.path.insert(0, str(REPO / "benchmarks"))  # the benchmark imports its sibling fault_kit
    return load_script("benchmarks/bench_faults.py")


bench = _bench()
NAMES = [*bench.COMMANDS, "fvd"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    return work, bench.build_world(work / "world")


@pytest.mark.parametrize("name", NAMES)
def test_one_kill_then_the_same_command_ends_as_the_uninterrupted_run(world, name):
    work, w = world
    if name == "fvd":
        results = work / "sample_tav" / "ref"
        if not (results / "17_tav_URMP").is_dir():
            bench.bench_command("sample_tav", bench.COMMANDS["sample_tav"], w, work, 0, seed=0)
        make = lambda w_, out: bench.fvd_command(w_, out, results)  # noqa: E731
    else:
        make = bench.COMMANDS[name]
    row = bench.bench_command(name, make, w, work, kills=1, seed=0)
    assert row["failures"] == [], row
    assert (row["attempts"], row["right_point"], row["equal"], row["stale_files"], row["truncated_files"]) == (
        1, 1, 1, 0, 0)


def test_comparison_sees_a_changed_tensor_and_ignores_timings(tmp_path):
    import json

    import torch

    a, b = tmp_path / "a", tmp_path / "b"
    for root, value in ((a, 1.0), (b, 1.0 + 1e-7)):
        root.mkdir()
        torch.save({"global_step": 3, "state_dict": {"w": torch.tensor([value])}}, root / "x.ckpt")
        (root / "m.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5, "time": value}) + "\n")
    assert bench.compare(a, b, ()) == ["differs: x.ckpt"]  # bitwise: 1e-7 is a difference; the time is not
    (b / "extra.mp4").write_bytes(b"\0")
    assert bench.compare(a, b, ())[0].startswith("only in one")
    assert bench.stale_temps(b) == [] and bench.compare(a, a, ()) == []
    (b / "cut.ckpt").write_bytes((a / "x.ckpt").read_bytes()[:40])
    (b / ".x.tmp-h-1-abcdefgh.ckpt").write_bytes(b"")
    assert sorted(bench.unreadable(b)) == ["cut.ckpt", "extra.mp4"]
    assert bench.stale_temps(b) == [".x.tmp-h-1-abcdefgh.ckpt"]
