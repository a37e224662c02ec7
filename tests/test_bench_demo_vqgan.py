"""benchmarks/bench_demo_vqgan.py on a tiny demo split: every (variant, seed) trains once in its own folder, the
summary is the mean of the runs, and a second call reuses the finished runs."""

import json
import math
import subprocess
import sys

import pytest

from .helpers import REPO

pytestmark = pytest.mark.usefixtures("one_blas_thread")
BENCH = REPO / "benchmarks" / "bench_demo_vqgan.py"


def test_variants_and_seeds_are_trained_judged_and_reused(tmp_path):
    out, js = tmp_path / "bv", tmp_path / "bv.json"
    argv = [sys.executable, str(BENCH), "--out", str(out), "--steps", "2", "--seeds", "0", "1", "--jobs", "1",
            "--demo_args", "--n_train 2 --n_test 2 --size 32", "--variant", "preset=",
            "--variant", "edges=--set grad_weight=1", "--json", str(js)]
    subprocess.run(argv, check=True, capture_output=True, cwd=REPO)
    result = json.loads(js.read_text())
    assert result["flags"] == {"preset": "", "edges": "--set grad_weight=1"} and result["seeds"] == [0, 1]
    for name in ("preset", "edges"):
        for seed in (0, 1):
            row = json.loads((out / f"{name}_s{seed}" / "quality.json").read_text())["vqgan_recon"]
            assert row["psnr"] == result["variants"][name]["psnr"]["runs"][seed]
        figs = result["variants"][name]
        psnrs = figs["psnr"]["runs"]
        assert len(psnrs) == 2 and math.isclose(figs["psnr"]["mean"], sum(psnrs) / 2)
        assert all(0.0 <= v <= 1.0 for v in figs["colour_acc"]["runs"])
    trained = sorted(out.glob("*/vqgan/checkpoints/last.ckpt"))
    assert len(trained) == 4
    stamps = [p.stat().st_mtime_ns for p in trained]
    again = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=REPO)
    assert json.loads(js.read_text())["variants"] == result["variants"]
    assert [p.stat().st_mtime_ns for p in trained] == stamps and "| edges |" in again.stdout


def test_a_variant_without_name_and_flags_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH), "--out", str(tmp_path / "bv"), "--variant", "edges"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode != 0 and "--variant 'edges': write NAME=FLAGS" in done.stderr
    assert not (tmp_path / "bv").exists()


def test_default_steps_are_the_demos_own(monkeypatch):
    import importlib

    from tav_scripts import demo

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    bench = importlib.import_module("bench_demo_vqgan")
    assert bench.parse_args(["--out", "x"]).steps is None
    assert bench.resolve_steps(None) == demo.parse_args([]).vqgan_steps == 1600
    assert bench.resolve_steps(7) == 7
