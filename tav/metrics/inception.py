"""The TF-FID Inception-v3 (pool3, 2048-d) for FID: network, loader and per-frame feature extractor.

``FIDInception`` is the graph of TF's ``inception-2015-12-05`` as pytorch-fid ports it: torchvision's
Inception-v3 blocks, except that
- the average-pool branches of Mixed_5b..5d (A), 6b..6e (C) and 7b (E, first) do not count the zero
  padding (TF's average pool ignores padded cells);
- Mixed_7c (E, second) pools its pool branch with a 3x3 **max** pool, a quirk of that TF graph.
Weights: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``, whose keys are torchvision's
``Inception3(num_classes=1008, aux_logits=False)`` names (``Conv2d_1a_3x3.conv.weight``,
``Mixed_5b.branch_pool.bn.running_var``, ..., ``fc.weight (1008, 2048)``); ``FIDInception`` uses the same
names, so the file loads strictly. The 1008-way ``fc`` head is kept only for that; FID reads pool3.
``InceptionConfig(width)`` narrows every layer (``TINY_INCEPTION``: a quarter of the channels, 1/16 of the
work, for ``make demo`` and tests with random weights); such a variant is saved as a ``tav`` checkpoint that
records its config.
Structure source: pytorch-fid ``inception.py`` (``fid_inception_v3``, ``FIDInceptionA/C/E_1/E_2``),
https://github.com/mseitzer/pytorch-fid/blob/master/src/pytorch_fid/inception.py
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.inception import BasicConv2d, InceptionA, InceptionB, InceptionC, InceptionD, InceptionE

from tav.checkpoint import check_finite, safe_load, save_checkpoint, state_dict_of, weights_misfit
from tav.config import to_dict
from tav.errors import InputError
from tav.metrics.i3d import mark_random_weights, model_device, saved_variant_config, seeded_random_init_
from tav.metrics.resize import resize_bilinear, resize_clean, to_unit_float
from tav.utils.fileio import save_torch_atomic
from tav.utils.paths import ckpt_dir

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_GLOB = "pt_inception-2015-12-05-*.pth"
INCEPTION_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_FILE
INCEPTION_FLAG = "--inception_ckpt"
INCEPTION_SIZE = 299
FEATURE_DIM = 2048  # pool3
INCEPTION_STAGE = "inception"  # the ``stage`` of a saved InceptionConfig variant


@dataclass(frozen=True)
class InceptionConfig:
    """Architecture of a TF-FID Inception variant; the default is the graph itself.

    ``width``: multiplier of every layer's channel count, a multiple of 1/16 in (0, 1]: every count of the graph
    is a multiple of 16, so each stays whole and each block's concatenation still matches the next block's input.
    Pool3 then has ``2048 * width`` features.
    """

    width: float = 1.0

    def __post_init__(self):
        if not (0 < self.width <= 1 and float(self.width * 16).is_integer()):
            raise InputError(f"InceptionConfig.width must be a multiple of 1/16 in (0, 1], got {self.width}")

    def channels(self, n: int) -> int:
        return int(n * self.width)


TINY_INCEPTION = InceptionConfig(width=0.25)  # make demo: a quarter of the channels (~1/16 of the work)


def _tf_avg_pool(x: Tensor) -> Tensor:
    """3x3 stride-1 average pool that, as in TF, averages only over cells inside the image."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(InceptionA):
    """torchvision ``InceptionA`` (35x35 grid) with TF's padding-free average pool."""

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))], dim=1)


class FIDInceptionC(InceptionC):
    """torchvision ``InceptionC`` (17x17 grid, factorised 7x7) with TF's padding-free average pool."""

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_2(self.branch7x7dbl_1(x))
        bd = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(bd)))
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_tf_avg_pool(x))], dim=1)


class FIDInceptionE(InceptionE):
    """torchvision ``InceptionE`` (8x8 grid); ``pool="avg"``: TF's padding-free average (Mixed_7b),
    ``pool="max"``: 3x3 max pool (Mixed_7c in the TF-FID graph)."""

    def __init__(self, in_channels: int, pool: str = "avg", conv_block=None):
        super().__init__(in_channels, conv_block=conv_block)
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.max_pool = pool == "max"

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], dim=1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], dim=1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], dim=1)


def _narrow_conv(channels, in_channels: int, out_channels: int, **kwargs) -> BasicConv2d:
    """torchvision's ``BasicConv2d`` with both channel counts passed through ``channels`` (the variant's width)."""
    return BasicConv2d(channels(in_channels), channels(out_channels), **kwargs)


class FIDInception(nn.Module):
    """Inception-v3 of TF-FID in the key layout of ``pt_inception-2015-12-05-*.pth``.

    ``forward(x (N, 3, 299, 299) float in [-1, 1], RGB) -> (N, feature_dim)`` pool3 features (2048 for the graph,
    ``2048 * config.width`` for a narrower variant).
    """

    def __init__(self, config: InceptionConfig | None = None):
        super().__init__()
        self.config = config or InceptionConfig()
        c = self.config.channels
        conv = partial(_narrow_conv, c)  # every block's layers, with the graph's channel counts scaled
        self.Conv2d_1a_3x3 = BasicConv2d(3, c(32), kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = conv(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = conv(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = conv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = conv(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32, conv_block=conv)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64, conv_block=conv)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64, conv_block=conv)
        self.Mixed_6a = InceptionB(288, conv_block=conv)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128, conv_block=conv)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160, conv_block=conv)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160, conv_block=conv)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192, conv_block=conv)
        self.Mixed_7a = InceptionD(768, conv_block=conv)
        self.Mixed_7b = FIDInceptionE(1280, pool="avg", conv_block=conv)
        self.Mixed_7c = FIDInceptionE(2048, pool="max", conv_block=conv)
        self.feature_dim = c(FEATURE_DIM)
        self.fc = nn.Linear(self.feature_dim, 1008)  # the graph's ImageNet head: in the weight file, unused by FID

    def forward(self, x: Tensor) -> Tensor:
        # channel counts of the graph; a variant has ``width`` times as many
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (N, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (N, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # (N, 288, 35, 35)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))))  # (N, 768, 17, 17)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # (N, 2048, 8, 8)
        return x.mean(dim=(2, 3))  # pool3


def _missing_message(path: Path | None) -> str:
    where = f"{path}: no such file; " if path is not None else f"no FID Inception weights in {ckpt_dir()}/; "
    return (f"{where}download {INCEPTION_FILE} ({INCEPTION_URL}) into saved_ckpts/ (or $TAV_CKPT_DIR), "
            f"or pass {INCEPTION_FLAG} PATH")


def default_inception_path() -> Path:
    """``ckpt_dir()/pt_inception-2015-12-05-6726825d.pth``, else the first ``pt_inception-2015-12-05-*.pth``."""
    exact = ckpt_dir() / INCEPTION_FILE
    if exact.is_file():
        return exact
    others = sorted(ckpt_dir().glob(INCEPTION_GLOB))
    if others:
        return others[0]
    raise InputError(_missing_message(None))


def load_inception(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> FIDInception:
    """The frozen ``FIDInception`` from ``path`` (default ``default_inception_path()``) on ``device``, eval mode.

    ``safe_load`` + strict ``load_state_dict`` (into ``FIDInception(config)`` for a variant saved by
    ``save_tiny_inception(config=...)``); a missing or unfit file raises a one-line ``InputError``
    naming the file, the pytorch-fid release URL and ``--inception_ckpt``.
    """
    path = Path(path) if path is not None else default_inception_path()
    if not path.is_file():
        raise InputError(_missing_message(path))
    obj = safe_load(path)
    state = state_dict_of(obj)
    if state is None:
        raise InputError(f"{path}: no Inception state dict inside (expected a {{name: tensor}} mapping); "
                         f"pass {INCEPTION_FLAG} with {INCEPTION_FILE}")
    model = FIDInception(saved_variant_config(obj, path, INCEPTION_STAGE, InceptionConfig))
    misfit = weights_misfit(obj, model, state)
    if misfit:
        raise InputError(f"{path}: weights do not fit the TF-FID Inception ({INCEPTION_FILE} layout): {misfit}; "
                         f"pass {INCEPTION_FLAG} with {INCEPTION_FILE}")
    check_finite(state, str(path))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval().requires_grad_(False)


def save_tiny_inception(path: str | os.PathLike, seed: int = 0, config: InceptionConfig | None = None) -> Path:
    """Write an ``FIDInception`` with seeded random weights, atomically; it loads through ``load_inception``.

    For tests and ``make demo``. Without ``config``: the real graph as a plain state dict, like the pytorch-fid
    file (~95 MB). With ``config`` (e.g. ``TINY_INCEPTION``, ~6 MB): a ``tav`` checkpoint that records it.
    """
    model = seeded_random_init_(FIDInception(config), seed)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    if config is not None:
        save_checkpoint(path, INCEPTION_STAGE, to_dict(config), state)
    else:
        save_torch_atomic(state, path)
    mark_random_weights(path, seed)
    return path


@torch.inference_mode()
def inception_features(model: nn.Module, frames: np.ndarray | Tensor, resize: str = "torch",
                       batch_size: int = 32) -> Tensor:
    """Per-frame FID features of ``frames (N, H, W, 3)`` (uint8, or float in [0, 1]) -> ``(N, D)`` float64
    (``D = model.feature_dim``: 2048 for the graph).

    Same conventions as ``i3d_features``: channel order as given, ``to_unit_float`` once, every frame
    resized to 299x299 by ``resize_bilinear(mode=resize)`` (``"torch"`` | ``"tf1"``) or, for ``"clean"``, by
    clean-fid's ``resize_clean``, scaled to [-1, 1], batches of ``batch_size``
    on the model's device, no frame dropped. The result is on CPU.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (N, H, W, 3), got {tuple(frames.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = model_device(model)
    out = []
    for start in range(0, frames.shape[0], batch_size):
        if resize == "clean":  # clean-fid: PIL bicubic per channel, antialiased
            x = resize_clean(frames[start:start + batch_size], INCEPTION_SIZE).to(device)
        else:
            x = to_unit_float(frames[start:start + batch_size], device).permute(0, 3, 1, 2)  # (B, 3, H, W)
            x = resize_bilinear(x, INCEPTION_SIZE, mode=resize)
        out.append(model(x * 2.0 - 1.0).to("cpu", torch.float64))
    return torch.cat(out) if out else torch.zeros(0, getattr(model, "feature_dim", FEATURE_DIM), dtype=torch.float64)
