"""``benchmarks/bench_precision.py``'s demo GPT step: the step ``make demo`` trains, in either precision."""

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
