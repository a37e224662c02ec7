"""``benchmarks/bench_precision.py``'s demo GPT step (the step ``make demo`` trains, in either precision) and
``benchmarks/bench_attention.py``."""

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_precision  # noqa: E402


def test_demo_gpt_step_is_a_training_step_of_the_demo_gpt_in_both_precisions():
    torch.manual_seed(0)
    step = bench_precision.build("demo_gpt", 8)
    fp32 = step()
    assert abs(float(fp32) - math.log(512)) < 0.5  # near-uniform over the demo VQGAN's 512 codes at the start
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = step()
    assert abs(float(bf16) - float(fp32)) < 0.05  # the same loss, to bf16's rounding
    assert float(step()) == float(fp32)  # no optimiser inside: every call times the same work


def test_attention_bench_times_both_forms_and_reports_autos_pick():
    import bench_attention

    row = bench_attention.measure(("tiny, causal", 2, 6, 6, 8), torch.bfloat16, rounds=1)
    assert row["auto_picks"] == "written_out"  # bf16 on a CPU, short, with a gradient
    assert row["faster"] in ("sdpa", "written_out")
    assert all(row[f][k] > 0 for f in ("sdpa", "written_out") for k in ("forward_ms", "train_ms"))
    assert bench_attention.measure(("tiny", 2, 6, 6, 8), torch.float32, rounds=1)["auto_picks"] == "sdpa"
    text = bench_attention.markdown({"machine": "m", "rounds": 1, "rows": [{"shape": "s", "dtype": "bfloat16", **row}]})
    assert "| s | bfloat16 |" in text and "| written_out |" in text
