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
