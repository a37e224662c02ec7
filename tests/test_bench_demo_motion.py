"""benchmarks/bench_demo_motion.py on a tiny demo: the demo's motion model and one variant, two sampling starts,
judged with the chance level; a second call reuses every run."""

import importlib
import json

import pytest

from .helpers import REPO

pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("bench_demo_motion")


def test_variants_and_starts_are_trained_sampled_judged_and_reused(bench, tmp_path, capsys):
    from tav.metrics.synthetic_folders import judge_folders, results_items

    out, js = tmp_path / "bm", tmp_path / "bm.json"
    tiny = "--n_train 2 --size 32 --tia2v_steps 2 --tia2v_motion_steps 2 --tia2v_shr_steps 2"
    argv = ["--out", str(out), "--n_test", "3", "--skips", "700", "0", "--variant", "demo=",
            "--variant", "whole:3=--max_t 0", "--demo_args", tiny, "--json", str(js)]
    record = bench.main(argv)
    assert json.loads(js.read_text()) == json.loads(json.dumps(record))
    rows = record["rows"]
    # the demo's model learned t < 300 only: it is not sampled from t = 999
    assert [(r["variant"], r["steps"], r["skip"]) for r in rows] == [("demo", 2, 700), ("whole", 3, 700),
                                                                   ("whole", 3, 0)]
    assert sorted(p.name for p in (out / "whole_3").glob("ema*.pt")) == ["ema000003.pt"]
    config = (out / "whole_3" / "config.yaml").read_text()
    assert "max_t: 0" in config and "first_frame: clean" in config  # the demo's recipe, the variant's flag last
    for r in rows:
        assert r["n"] == 3 and all(r[k] is None or 0.0 <= r[k] <= 1.0 for k in bench.FIGURES if k != "audio_gain")
        assert r["audio_gain"] is None or r["audio_gain"] <= 1.0  # (other - own) / other
    # the reliance: 4 windows of each of the 3 test clips, scored from copies at the row's start
    batch = bench.reliance_batch(out / "whole_3" / "ema000003.pt", out / "base" / "data", out / "base" / "tia2v_cache")
    assert batch["video"].shape[:3] == (12, 3, 4) and batch["audio_tokens"].shape[:2] == (12, 4)
    assert rows[2]["audio_gain"] == bench.audio_gain(out / "whole_3" / "ema000003.pt", batch, 999)
    folder = out / "whole_3" / "skip0" / "0_tacm_urmp"  # the row is the judge tool's verdict on that folder
    judged = judge_folders(results_items(folder)[0])["folders"]["fake_stage1"]
    assert rows[2]["onset_f1"] == pytest.approx(judged["onset_f1"])
    assert rows[2]["onset_f1_chance"] == pytest.approx(judged["onset_f1_chance"])
    stamp = (out / "whole_3" / "ema000003.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert bench.main(argv)["rows"] == rows and (out / "whole_3" / "ema000003.pt").stat().st_mtime_ns == stamp
    assert "| whole | 3 |" in capsys.readouterr().out
    # the base run is reused; the sampling flags go to every row; --with_shr judges the SHR clips too
    guided = bench.main(["--out", str(out), "--n_test", "3", "--skips", "0", "--variant",
                         "cfg:3=--max_t 0 --audio_dropout 0.2 --copy_init 0.5 --copy_path True", "--sample_args",
                         "--audio_cfg_scale 3", "--with_shr", "--demo_args", tiny])["rows"]
    assert [(r["variant"], r["skip"], r["sample_args"]) for r in guided] == [("cfg", 0, "--audio_cfg_scale 3")]
    config = (out / "cfg_3" / "config.yaml").read_text()
    assert "audio_dropout: 0.2" in config and "copy_init: 0.5" in config and "copy_path: true" in config
    folder = out / "cfg_3" / "skip0_audio_cfg_scale_3_shr" / "0_tacm_urmp"
    judged = judge_folders(results_items(folder)[0])["folders"]
    assert guided[0]["shr_colour_frame_acc"] == pytest.approx(judged["fake_stage2"]["colour_frame_acc"])
    assert guided[0]["shr_onset_f1"] == pytest.approx(judged["fake_stage2"]["onset_f1"])
    assert guided[0]["colour_frame_acc"] == pytest.approx(judged["fake_stage1"]["colour_frame_acc"])
    assert "shr_onset_f1" not in rows[0]  # rows without --with_shr carry no SHR figures


def test_a_malformed_variant_is_one_line(bench):
    with pytest.raises(SystemExit, match="write NAME=FLAGS or NAME:STEPS=FLAGS"):
        bench.parse_variant("whole:x=--max_t 0")
    assert bench.parse_variant("whole:1500=--max_t 0") == ("whole", 1500, "--max_t 0")
    assert bench.parse_variant("demo=") == ("demo", None, "")
