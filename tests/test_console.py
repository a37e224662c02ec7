"""What commands print (tav.utils.console): our lines, not third-party chatter; real warnings still show."""

from __future__ import annotations

import logging
import warnings

import pytest

from tav.utils.console import configure_output, wants_verbose

from .helpers import REPO, make_tiny_vat


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    filters = {h: list(h.filters) for h in handlers}
    yield
    for h in root.handlers:
        h.filters[:] = filters.get(h, [])
    root.handlers[:] = handlers
    root.setLevel(level)


def _passes(name: str, level: int) -> bool:
    record = logging.LogRecord(name, level, __file__, 1, "message", None, None)
    return all(h.filter(record) for h in logging.getLogger().handlers)


def test_lightning_info_dropped_warnings_and_ours_kept(restore_logging):
    logging.getLogger().addHandler(logging.NullHandler())
    configure_output(verbose=False)
    assert not _passes("pytorch_lightning.utilities.rank_zero", logging.INFO)  # "GPU available: ..."
    assert not _passes("lightning_fabric.utilities.rank_zero", logging.INFO)
    assert _passes("pytorch_lightning.utilities.rank_zero", logging.WARNING)
    assert _passes("tav.pipelines", logging.INFO) and _passes("sample_tav", logging.INFO)
    configure_output(verbose=True)
    assert _passes("pytorch_lightning.utilities.rank_zero", logging.INFO)


def _shown(message: str, module: str, verbose: bool) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        configure_output(verbose=verbose)
        warnings.warn_explicit(message, UserWarning, "x.py", 1, module=module)
    return bool(caught)


def test_known_harmless_warning_filtered_only_from_its_source(restore_logging):
    msg = "The number of training batches (8) is smaller than the logging interval Trainer(log_every_n_steps=50)."
    assert not _shown(msg, "pytorch_lightning.loops.fit_loop", verbose=False)
    assert _shown(msg, "some.other.module", verbose=False)  # the same words from elsewhere still show
    assert _shown("a real problem", "pytorch_lightning.loops.fit_loop", verbose=False)
    assert _shown(msg, "pytorch_lightning.loops.fit_loop", verbose=True)


def test_wants_verbose():
    assert wants_verbose(["--x", "--verbose"]) and not wants_verbose(["--x"]) and not wants_verbose([])


def test_a_training_run_prints_no_lightning_chatter(tmp_path):
    """A tiny diffusion training in a fresh process: stderr holds our log lines, none of Lightning's."""
    import subprocess
    import sys

    data = make_tiny_vat(tmp_path / "vat")
    argv = ["--config", "tiny", "--data_path", str(data), "--load_vid_len", "8", "--resolution", "16",
            "--sequence_length", "4", "--save_dir", str(tmp_path / "run"), "--accelerator", "cpu", "--devices",
            "1", "--num_workers", "0", "--progress_bar_refresh_rate", "0", "--log_interval", "1", "--max_steps",
            "2", "--save_interval", "2", "--batch_size", "1"]
    done = subprocess.run([sys.executable, "scripts/diffusion_video_train_3d.py", *argv], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout + done.stderr
    for chatter in ("GPU available", "TPU available", "litlogger", "Total params", "LeafSpec",
                    "smaller than the logging interval", "val_dataloader", "`Trainer.fit` stopped"):
        assert chatter not in out, chatter
    assert "checkpoint:" in done.stderr  # our own closing line


def test_auto_precision_is_bf16_where_bf16_pays(monkeypatch):
    """bf16 autocast pays on a CPU with AMX tiles, or with AVX-512 bf16 on AMD (measured on both kinds); Intel's
    AVX-512 bf16 without AMX, no bf16 units, or oneDNN capped below them (as `make test-isa` does): fp32."""
    import torch

    from tav.utils import runtime

    amx = "flags : fpu avx512f avx512_bf16 amx_bf16 amx_tile\n"
    zen4 = "flags : fpu avx512f avx512_bf16\n"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert runtime.cpu_bf16_units(amx) == "amx" and runtime.cpu_has_amx(amx)
    assert runtime.cpu_bf16_units(zen4) == "avx512_bf16" and not runtime.cpu_has_amx(zen4)
    assert runtime.cpu_bf16_units("flags : fpu avx2 avx512f\n") is None
    assert runtime.cpu_name("model name : Xeon X\n" + amx) == "Xeon X, avx512f avx512_bf16 amx_tile"
    assert runtime.cpu_name("model name : EPYC Y\n" + zen4) == "EPYC Y, avx512f avx512_bf16"
    assert runtime.cpu_name("model name : Old Z\nflags : fpu avx2\n") == "Old Z"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert runtime.cpu_bf16_units(amx) == "avx512_bf16" and runtime.cpu_bf16_units(zen4) == "avx512_bf16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    assert runtime.cpu_bf16_units(amx) is None and runtime.cpu_bf16_units(zen4) is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert runtime.cpu_has_amx(amx)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    intel_amx = "vendor_id : GenuineIntel\n" + amx
    amd_zen4 = "vendor_id : AuthenticAMD\n" + zen4
    intel_no_amx = "vendor_id : GenuineIntel\n" + zen4  # AVX-512 bf16, AMX absent or hidden: bf16 runs slower
    for text, want in ((intel_amx, "bf16"), (amd_zen4, "bf16"), (intel_no_amx, "32"),
                       ("vendor_id : AuthenticAMD\nflags : fpu avx2\n", "32")):
        monkeypatch.setattr(runtime, "read_cpuinfo", lambda text=text: text)
        assert runtime.cpu_bf16_pays(text) == (want == "bf16")
        assert runtime.auto_precision(torch.device("cpu")) == want


def test_precision_auto_resolves_and_explains(monkeypatch):
    """The samplers' ``--precision auto``: made concrete once, and one line says what runs and why."""
    import torch

    from tav.utils import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_bf16_units", lambda cpuinfo=None: "amx")
    assert runtime.resolve_precision("auto", cpu) == "bf16" and runtime.resolve_precision("32", cpu) == "32"
    assert runtime.precision_note("auto", cpu) == "bf16 autocast (auto: this CPU has AMX)"
    with runtime.autocast("auto", cpu):
        assert torch.is_autocast_cpu_enabled() and torch.get_autocast_cpu_dtype() == torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_bf16_units", lambda cpuinfo=None: "avx512_bf16")
    monkeypatch.setattr(runtime, "read_cpuinfo", lambda: "vendor_id : AuthenticAMD\n")
    assert runtime.precision_note("auto", cpu) == "bf16 autocast (auto: this CPU has AVX-512 bf16)"
    monkeypatch.setattr(runtime, "read_cpuinfo", lambda: "vendor_id : GenuineIntel\n")
    assert runtime.resolve_precision("auto", cpu) == "32"
    assert runtime.precision_note("auto", cpu) == ("fp32 (auto: this CPU has AVX-512 bf16 without AMX, slower than "
                                                   "fp32 on Intel)")
    monkeypatch.setattr(runtime, "cpu_bf16_units", lambda cpuinfo=None: None)
    assert runtime.resolve_precision("auto", cpu) == "32" and runtime.resolve_precision("bf16", cpu) == "bf16"
    assert runtime.precision_note("auto", cpu) == "fp32 (auto: no bf16 units on this CPU)"
    assert runtime.precision_note("bf16", cpu) == "bf16 autocast"
    with runtime.autocast("auto", cpu):
        assert not torch.is_autocast_cpu_enabled()
    monkeypatch.setattr(runtime, "cpu_bf16_units", lambda cpuinfo=None: "amx")
    assert [runtime.decoding_precision(p, cpu) for p in ("auto", "bf16", "32")] == ["32", "32", "32"]
