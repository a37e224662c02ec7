"""benchmarks/bench_norm_layout.py times the same batch norm in two memory layouts: its cases hold equal values in
both layouts and give equal results, and the JSON carries one row per channel count and dtype."""

import json

import pytest
import torch

from .helpers import load_script

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def _bench():
    return load_script("benchmarks/bench_norm_layout.py")


def test_layouts_hold_the_same_values_and_give_the_same_gradients():
    bench = _bench()
    contiguous = bench.case(12, torch.float32, torch.contiguous_format)
    last = bench.case(12, torch.float32, torch.channels_last_3d)
    assert last[0].is_contiguous(memory_format=torch.channels_last_3d) and not last[0].is_contiguous()
    for a, b in zip(contiguous, last, strict=True):
        assert torch.equal(a.detach(), b.detach())
    for args in (contiguous, last):
        bench.step(*args)
    for i in (0, 2, 3):  # the input, weight and bias get gradients; index 1 is the upstream gradient
        assert contiguous[i].grad.abs().sum() > 0
        torch.testing.assert_close(contiguous[i].grad, last[i].grad, rtol=1e-4, atol=1e-4)


def test_json_has_a_row_per_channel_count_and_dtype(tmp_path):
    out = tmp_path / "norm.json"
    _bench().main(["--channels", "4", "6", "--rounds", "1", "--threads", "1", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["channels"], r["dtype"]) for r in rows] == [(4, "float32"), (4, "bfloat16"), (6, "float32"),
                                                          (6, "bfloat16")]
    for r in rows:
        assert r["contiguous"] > 0 and r["channels_last_3d"] > 0
        assert r["ratio"] == pytest.approx(r["channels_last_3d"] / r["contiguous"])


@pytest.mark.parametrize("flags", [["--channels", "0"], ["--rounds", "0"], ["--threads", "0"]])
def test_bad_counts_are_refused(flags, capsys):
    with pytest.raises(SystemExit):
        _bench().main(flags)
    assert "must be >= 1" in capsys.readouterr().err
