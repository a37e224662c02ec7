"""``benchmarks/bench_sample.py``'s stage-2 runner (also timed by ``bench_guidance_memory.py`` and
``bench_precision.py --nets guided_step``) runs its steps with the frozen networks' weights held as the samplers
hold them, for as long as the runner lives, and each step is one step of the sampler. Tiny networks."""

import gc
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tav.diffusion.schedule import GaussianSchedule, ProcessConfig
from tav.diffusion.unet3d import UNet, UNetConfig
from tav.encoders.base import Encoder
from tav.utils import runtime

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_sample  # noqa: E402
import bench_sample_report  # noqa: E402


class ConvEncoder(Encoder):
    """A stand-in guide with one convolution in its image tower (so ``sampling_weights`` has a weight to hold):
    images -> conv -> mean over space (dim 4); audio -> energies of 4 chunks; captions -> a fixed vector."""

    name, dim, image_size, audio_rate, audio_scale = "conv", 4, 8, 48000, 1.0

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.freeze()

    def encode_images(self, images):
        return self.conv(self.preprocess_images(images)).mean(dim=(2, 3))

    def encode_audio(self, audio):
        return torch.stack([c.pow(2).mean(-1) for c in audio.chunk(4, dim=-1)], -1) + 1.0

    def encode_texts(self, captions):
        return torch.stack([torch.tensor([len(c), 1.0, -1.0, 0.5]) for c in captions])


def _runner(precision, monkeypatch):
    monkeypatch.setattr(bench_sample, "FRAMES", 2)
    monkeypatch.setattr(bench_sample, "SIZE", 16)
    torch.manual_seed(0)
    unet = UNet(UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(8,), num_heads=2)).eval().requires_grad_(False)
    schedule = GaussianSchedule.from_config(ProcessConfig(), respacing="100")
    models = bench_sample.Models(None, None, unet, schedule, ConvEncoder(), ConvEncoder(), {})
    clips = torch.rand(1, 3, 2, 16, 16, generator=torch.Generator().manual_seed(1)) - 0.5
    audio = 0.1 * torch.randn(1, 2 * 48000 // 30, generator=torch.Generator().manual_seed(2))
    runner = bench_sample.OursStage2(models, bench_sample.Clock(), clips, audio, [0], precision)
    runner.prepare()
    return runner, unet, models


@pytest.mark.parametrize("units,channels_last", [("avx512_bf16", False), ("amx", True)])
def test_runner_keeps_the_weights_held_through_its_steps(monkeypatch, units, channels_last):
    """After ``prepare`` (and a garbage collection) the U-Net's and the guides' convolution weights stay bf16,
    channels-last on a CPU with AMX, while the runner steps; each step moves the sample."""
    monkeypatch.setattr(runtime, "cpu_bf16_units", lambda cpuinfo=None: units)
    runner, unet, models = _runner("bf16", monkeypatch)
    gc.collect()
    for net in (unet, models.audioclip, models.clip):
        weights = [m.weight for m in net.modules() if isinstance(m, runtime.CONVS) and m.weight.dim() in (4, 5)]
        assert weights and all(w.dtype == torch.bfloat16 for w in weights)
        layout = [w.is_contiguous(memory_format=torch.channels_last_3d if w.dim() == 5 else torch.channels_last)
                  for w in weights if w.shape[1] > 1 and w.shape[2:].numel() > 1]
        assert layout and all(v == channels_last for v in layout)
    runner.step()
    first = runner.x.clone()
    runner.step()
    assert runner.done == 2 and first.shape == (1, 3, 2, 16, 16)
    assert F.mse_loss(runner.x.float(), first.float()) > 0


def test_runner_in_fp32_leaves_the_weights():
    """Under fp32 nothing is held: the weights are the networks' own fp32 tensors."""
    with pytest.MonkeyPatch.context() as mp:
        runner, unet, _ = _runner("32", mp)
        gc.collect()
        assert all(p.dtype == torch.float32 for p in unet.parameters())
        runner.step()
        assert runner.x.dtype == torch.float32


def _records():
    """Measured records of a run whose ratios are known: upstream mode 2x ours in stage 1, 5x in stage 2."""
    breakdown = dict.fromkeys(bench_sample_report.BUCKETS, 0.25)
    s1 = {"ours": {"gpt": 3.0, "decode": 1.0, "total": 4.0}, "upstream": {"gpt": 6.0, "decode": 2.0, "total": 8.0},
          "tokens_timed": 576, "extrapolated": False, "vocab": 17000}
    s2 = {"n_steps": 75, "peak_rss_gib": 1.5, "warmup_step_b1_s": {"ours": 3.0, "upstream": 4.0},
          "ours": {"rebuild": 0.0, "prepare": 1.0, "steps": 15.0, "total": 16.0, "step": 2.0, "step_cpu": 2.0,
                   "step_breakdown": breakdown, "measured_steps_s": [4.0, 4.0]},
          "upstream": {"rebuild": 4.0, "prepare": 1.0, "steps": 75.0, "total": 80.0, "step": 1.0, "step_cpu": 10.0,
                       "step_breakdown": {**breakdown, "other": 1.0}, "measured_steps_s": [1.0]}}
    return s1, s2


def test_report_tables_carry_the_measured_ratios():
    import argparse

    s1, s2 = _records()
    args = argparse.Namespace(batch=2, precision="32", gpt_preset="urmp_upstream", steps_timed=2)
    setting = {"device": torch.device("cpu"), "frames": 16, "size": 64, "respacing": "100", "skip": 25,
               "unet": UNetConfig(image_size=64), "wall": 120.0, "load_before": "0.1",
               "params": {"gpt": 1.0, "vqgan": 2.0, "unet": 3.0, "audioclip": 4.0, "clip": 5.0}}
    text = bench_sample_report.report(args, setting, s1, s2)
    assert "| **stage 1** | **4.0** | **8.0** | **2.00x** |" in text
    assert "| **stage 2** | **16.0** | **80.0** | **5.00x** |" in text
    assert "| **total** | **20.0** | **88.0** | **4.40x** |" in text
    assert "| (one guided step, process CPU time) | 2.00 | 10.00 | 5.00x |" in text
    assert "| other (losses, sampler update, noise) | 0.25 | 1.00 | 4.00x |" in text
    assert "= **4.40x per video** (goal >= 10x): **NOT met**" in text
    assert "clip 3x16x64x64; respaced 100, skip 25 -> 75 DDPM steps" in text


def test_report_rows_get_two_more_digits_on_a_gpu():
    assert bench_sample_report.row("a", [0.004, 0.02]) == "| a | 0.0 | 0.0 | - |"
    assert bench_sample_report.row("a", [0.004, 0.02], gpu=True) == "| a | 0.004 | 0.020 | 5.00x |"
