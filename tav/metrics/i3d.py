"""Inception-I3D (Kinetics-400) for FVD: the network, its loaders, and the feature extractor.

``I3D`` is Inception-v1 inflated to 3D (Carreira & Zisserman, "Quo Vadis, Action Recognition?",
arXiv:1705.07750) as in DeepMind's ``kinetics-i3d`` Sonnet graph, which TF-Hub ``i3d-kinetics-400/1``
exports and the FVD reference reads at ``RGB/inception_i3d/Mean:0``: the 400 logits averaged over time.
TF "SAME" padding is applied per input shape (asymmetric, the extra pixel at the end), as TF does.

Weight files (``saved_ckpts/``, never downloaded):

- ``i3d_pretrained_400.pt``: the TF-Hub weights converted to a state dict by VideoGPT and shipped with TATS.
  Its key layout is ``<Endpoint>.conv3d.weight``, ``<Endpoint>.bn.{weight,bias,running_mean,
  running_var}``; inception blocks ``Mixed_*`` have branches ``b0, b1a, b1b, b2a, b2b, b3b``; the head is
  ``logits.conv3d.{weight,bias}``. ``I3D`` uses exactly these names (checked by the tests).
- ``i3d_torchscript.pt``: StyleGAN-V's TorchScript port, called with ``rescale=False, resize=False,
  return_features=True`` on ``(N, 3, T, 224, 224)`` input in [-1, 1]. With ``return_features=True`` it
  returns the 400-d pre-softmax logits averaged over time (StyleGAN-V: "raw features before the softmax
  layer"; ``universome/fvd-comparison`` measures an L2 difference of 2.6e-4 from the TF-Hub ``Mean:0``
  output on 4 clips), i.e. the same quantity as ``I3D.forward``.

BatchNorm epsilon: the Sonnet graph uses ``snt.BatchNorm``'s default 1e-3 (what ``TF_BN_EPS`` reproduces);
VideoGPT/TATS's ``pytorch_i3d.py`` builds its BatchNorm with 1e-5. The files store no epsilon, so
``I3D(bn_eps=VIDEOGPT_BN_EPS)`` reproduces VideoGPT/TATS numbers and the default follows TF.

``I3DConfig`` describes smaller variants for tests and ``make demo`` only (random weights, never a FVD
backbone): a channel multiplier and the temporal kernel of the final average pool. The Kinetics-400 I3D
needs ``MIN_FRAMES`` = 9 frames; ``time_pool=1`` takes clips of any length (the demo's are 8 frames). A
variant is saved as a ``tav`` checkpoint ``{"stage": "i3d", "config", "state_dict"}``, so ``load_i3d``
rebuilds it; weight files of the released layout always load as the full network.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tav.checkpoint import check_finite, is_torchscript, safe_load, save_checkpoint, state_dict_of, weights_misfit
from tav.config import from_dict, to_dict
from tav.errors import InputError
from tav.metrics.resize import resize_bilinear, to_unit_float
from tav.utils.fileio import save_torch_atomic, write_text_atomic
from tav.utils.paths import ckpt_dir

I3D_TORCHSCRIPT_FILE = "i3d_torchscript.pt"
I3D_STATE_DICT_FILE = "i3d_pretrained_400.pt"
I3D_TORCHSCRIPT_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt"
I3D_FLAG = "--i3d_ckpt"
I3D_SIZE = 224  # input resolution of the TF-Hub graph
NUM_CLASSES = 400  # Kinetics-400
TF_BN_EPS = 1e-3  # snt.BatchNorm default, used by the TF graph
VIDEOGPT_BN_EPS = 1e-5  # VideoGPT/TATS pytorch_i3d.py
TEMPORAL_STRIDE = 8  # Conv3d_1a, MaxPool3d_4a and MaxPool3d_5a each halve time (TF SAME: ceil)
MIN_FRAMES = 9  # the final (2, 7, 7) average pool needs >= 2 time steps after that 8x temporal reduction
I3D_STAGE = "i3d"  # the ``stage`` of a saved I3DConfig variant


@dataclass(frozen=True)
class I3DConfig:
    """Architecture of an I3D variant; the defaults are the Kinetics-400 I3D of the TF-Hub graph.

    ``width``: multiplier of every layer's channel count (each rounded, at least 1); ``time_pool``:
    temporal kernel of the final average pool (2 in the graph). Inputs need ``min_frames`` frames.
    """

    width: float = 1.0
    time_pool: int = 2

    def __post_init__(self):
        if not self.width > 0:
            raise InputError(f"I3DConfig.width must be > 0, got {self.width}")
        if self.time_pool < 1:
            raise InputError(f"I3DConfig.time_pool must be >= 1, got {self.time_pool}")

    @property
    def min_frames(self) -> int:
        """Fewest input frames: ``time_pool`` time steps must remain after the 8x temporal reduction."""
        return TEMPORAL_STRIDE * (self.time_pool - 1) + 1

    def channels(self, n: int) -> int:
        return max(1, round(n * self.width))


TINY_I3D = I3DConfig(width=0.25, time_pool=1)  # make demo: a quarter of the channels, clips of any length


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) of one axis: output ``ceil(size / stride)``, extra pixel after."""
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Unit3D(nn.Module):
    """Conv3d (TF SAME padding) -> BatchNorm3d -> ReLU; ``(N, C, T, H, W)`` -> ``(N, C', T', H', W')``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), norm_act: bool = True, bn_eps: float = TF_BN_EPS):
        super().__init__()
        self.kernel = kernel
        self.stride = stride
        self.relu = norm_act
        self.conv3d = nn.Conv3d(in_ch, out_ch, kernel, stride=stride, bias=not norm_act)
        self.bn = nn.BatchNorm3d(out_ch, eps=bn_eps, momentum=0.001) if norm_act else None

    def forward(self, x: Tensor) -> Tensor:
        pt = _same_pad(x.shape[2], self.kernel[0], self.stride[0])
        ph = _same_pad(x.shape[3], self.kernel[1], self.stride[1])
        pw = _same_pad(x.shape[4], self.kernel[2], self.stride[2])
        x = self.conv3d(F.pad(x, [pw[0], pw[1], ph[0], ph[1], pt[0], pt[1]]))
        if self.bn is not None:
            x = self.bn(x)
        if self.relu:
            x = F.relu(x)
        return x


class MaxPool3dSame(nn.Module):
    """3D max pool with TF "SAME" padding (padded cells never win, as in TF); no parameters."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel = kernel
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        pt = _same_pad(x.shape[2], self.kernel[0], self.stride[0])
        ph = _same_pad(x.shape[3], self.kernel[1], self.stride[1])
        pw = _same_pad(x.shape[4], self.kernel[2], self.stride[2])
        x = F.pad(x, [pw[0], pw[1], ph[0], ph[1], pt[0], pt[1]], value=float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride)


class Mixed(nn.Module):
    """Inception block: 1x1 | 1x1->3x3x3 | 1x1->3x3x3 | maxpool->1x1, concatenated on channels.

    ``widths = (b0, b1a, b1b, b2a, b2b, b3b)`` output channels; the output has ``b0 + b1b + b2b + b3b``.
    """

    def __init__(self, in_ch: int, widths: tuple[int, int, int, int, int, int], bn_eps: float = TF_BN_EPS):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        k3 = (3, 3, 3)
        self.b0 = Unit3D(in_ch, w0, bn_eps=bn_eps)
        self.b1a = Unit3D(in_ch, w1a, bn_eps=bn_eps)
        self.b1b = Unit3D(w1a, w1b, k3, bn_eps=bn_eps)
        self.b2a = Unit3D(in_ch, w2a, bn_eps=bn_eps)
        self.b2b = Unit3D(w2a, w2b, k3, bn_eps=bn_eps)
        self.b3a = MaxPool3dSame(k3, (1, 1, 1))
        self.b3b = Unit3D(in_ch, w3b, bn_eps=bn_eps)
        self.out_channels = w0 + w1b + w2b + w3b

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class I3D(nn.Module):
    """Inception-I3D, Kinetics-400, in the key layout of VideoGPT/TATS ``i3d_pretrained_400.pt``.

    ``forward(x (N, 3, T, 224, 224) float in [-1, 1], RGB as trained) -> (N, 400)`` pre-softmax logits
    averaged over the remaining time steps (TF ``Mean:0``). T >= 9; T = 16 leaves one time step.
    ``config`` (tests and the demo only) builds a smaller variant; ``min_frames`` is its fewest frames.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, bn_eps: float = TF_BN_EPS, config: I3DConfig | None = None):
        super().__init__()
        cfg = config or I3DConfig()
        self.config = cfg
        self.time_pool = cfg.time_pool
        self.min_frames = cfg.min_frames
        self.bn_eps = e = bn_eps  # recorded so that metric outputs can state it

        def mixed(in_ch: int, widths: tuple[int, ...]) -> Mixed:
            return Mixed(in_ch, tuple(cfg.channels(w) for w in widths), e)

        c = cfg.channels
        self.Conv3d_1a_7x7 = Unit3D(3, c(64), (7, 7, 7), (2, 2, 2), bn_eps=e)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(c(64), c(64), bn_eps=e)
        self.Conv3d_2c_3x3 = Unit3D(c(64), c(192), (3, 3, 3), bn_eps=e)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = mixed(c(192), (64, 96, 128, 16, 32, 32))  # in/out channels at width 1: 192 -> 256
        self.Mixed_3c = mixed(self.Mixed_3b.out_channels, (128, 128, 192, 32, 96, 64))  # -> 480
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = mixed(self.Mixed_3c.out_channels, (192, 96, 208, 16, 48, 64))  # -> 512
        self.Mixed_4c = mixed(self.Mixed_4b.out_channels, (160, 112, 224, 24, 64, 64))  # -> 512
        self.Mixed_4d = mixed(self.Mixed_4c.out_channels, (128, 128, 256, 24, 64, 64))  # -> 512
        self.Mixed_4e = mixed(self.Mixed_4d.out_channels, (112, 144, 288, 32, 64, 64))  # -> 528
        self.Mixed_4f = mixed(self.Mixed_4e.out_channels, (256, 160, 320, 32, 128, 128))  # -> 832
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = mixed(self.Mixed_4f.out_channels, (256, 160, 320, 32, 128, 128))  # -> 832
        self.Mixed_5c = mixed(self.Mixed_5b.out_channels, (384, 192, 384, 48, 128, 128))  # -> 1024
        # TF: Logits/Conv3d_0c_1x1, with bias
        self.logits = Unit3D(self.Mixed_5c.out_channels, num_classes, norm_act=False)

    def features(self, x: Tensor) -> Tensor:
        """``(N, 3, T, 224, 224)`` in [-1, 1] -> Mixed_5c output ``(N, 1024, ceil(T/8), 7, 7)``."""
        x = self.MaxPool3d_2a_3x3(self.Conv3d_1a_7x7(x))
        x = self.MaxPool3d_3a_3x3(self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x)))
        x = self.MaxPool3d_4a_3x3(self.Mixed_3c(self.Mixed_3b(x)))
        x = self.Mixed_4f(self.Mixed_4e(self.Mixed_4d(self.Mixed_4c(self.Mixed_4b(x)))))
        return self.Mixed_5c(self.Mixed_5b(self.MaxPool3d_5a_2x2(x)))

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 3, T, 224, 224)`` float in [-1, 1] -> ``(N, 400)`` time-averaged logits."""
        # TF: VALID 2x7x7 average (time_pool x 7 x 7 for a variant); dropout is a no-op
        x = F.avg_pool3d(self.features(x), (self.time_pool, 7, 7), stride=1)
        x = self.logits(x)  # (N, 400, T', 1, 1) at 224 input
        return x.mean(dim=(2, 3, 4))  # TF squeezes the 1x1 spatial axes and averages over time


class TorchScriptI3D(nn.Module):
    """A TorchScript I3D archive (StyleGAN-V ``i3d_torchscript.pt``) behind ``I3D``'s call convention.

    ``forward(x (N, 3, T, 224, 224) in [-1, 1]) -> (N, 400)``: the archive's ``forward`` is called with
    ``rescale=False, resize=False, return_features=True`` when it takes those arguments (StyleGAN-V's
    does; it then returns the 400-d time-averaged pre-softmax logits), and with ``x`` alone otherwise.
    """

    def __init__(self, module: torch.jit.ScriptModule, source: str = "TorchScript archive"):
        super().__init__()
        self.module = module
        self.source = source
        names = {a.name for a in module.forward.schema.arguments}
        self.stylegan_v_call = {"rescale", "resize", "return_features"} <= names
        self.min_frames = MIN_FRAMES  # the Kinetics-400 architecture

    def forward(self, x: Tensor) -> Tensor:
        if self.stylegan_v_call:
            out = self.module(x, rescale=False, resize=False, return_features=True)
        else:
            out = self.module(x)
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise InputError(f"{self.source}: the TorchScript I3D returned {shape}, expected (N, {NUM_CLASSES})")
        return out


def _missing_message(path: Path | None) -> str:
    where = f"{path}: no such file; " if path is not None else f"no I3D weights in {ckpt_dir()}/; "
    return (f"{where}put {I3D_TORCHSCRIPT_FILE} (StyleGAN-V, {I3D_TORCHSCRIPT_URL}) or {I3D_STATE_DICT_FILE} "
            f"(VideoGPT/TATS release) into saved_ckpts/ (or $TAV_CKPT_DIR), or pass {I3D_FLAG} PATH")


def default_i3d_path() -> Path:
    """``ckpt_dir()/i3d_torchscript.pt`` if present, else ``ckpt_dir()/i3d_pretrained_400.pt``; else InputError."""
    for name in (I3D_TORCHSCRIPT_FILE, I3D_STATE_DICT_FILE):
        if (ckpt_dir() / name).is_file():
            return ckpt_dir() / name
    raise InputError(_missing_message(None))


def _load_torchscript(path: Path, device: torch.device) -> TorchScriptI3D:
    # TorchScript deserialisation: tensors plus TorchScript code run by the C++ interpreter, not a pickle of
    # Python globals (the same trust level as OpenAI's CLIP release format).
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still the format
            module = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as err:
        raise InputError(f"{path}: unreadable TorchScript archive: {str(err).splitlines()[0][:200]}") from None
    return TorchScriptI3D(module.eval(), source=str(path))


def load_i3d(path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
             bn_eps: float = TF_BN_EPS) -> nn.Module:
    """The frozen FVD I3D from ``path`` (default: ``default_i3d_path()``) on ``device``, in eval mode.

    A TorchScript archive becomes a ``TorchScriptI3D``; a state dict (``safe_load``) is loaded strictly
    into ``I3D(bn_eps=bn_eps)`` (into ``I3D(config=...)`` for a variant saved by ``save_tiny_i3d``). Either
    way ``model(x (N, 3, T, 224, 224) in [-1, 1]) -> (N, 400)``. Missing or unfit files raise a one-line
    ``InputError`` naming the file and ``--i3d_ckpt``.
    """
    path = Path(path) if path is not None else default_i3d_path()
    if not path.is_file():
        raise InputError(_missing_message(path))
    device = torch.device(device)
    if is_torchscript(path):
        model = _load_torchscript(path, device)
    else:
        obj = safe_load(path)
        state = state_dict_of(obj)
        if state is None:
            raise InputError(f"{path}: no I3D state dict inside (expected a {{name: tensor}} mapping); "
                             f"pass {I3D_FLAG} with {I3D_STATE_DICT_FILE} or {I3D_TORCHSCRIPT_FILE}")
        model = I3D(bn_eps=bn_eps, config=saved_variant_config(obj, path, I3D_STAGE, I3DConfig))
        misfit = weights_misfit(obj, model, state)
        if misfit:
            raise InputError(f"{path}: weights do not fit the Kinetics-400 I3D ({I3D_STATE_DICT_FILE} layout): "
                             f"{misfit}; pass {I3D_FLAG} with {I3D_STATE_DICT_FILE} or {I3D_TORCHSCRIPT_FILE}")
        check_finite(state, str(path))
        model.load_state_dict(state, strict=True)
        model = model.to(device)
    return model.eval().requires_grad_(False)


def seeded_random_init_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Overwrite every parameter and BatchNorm buffer of ``model`` with seeded random values (in place).

    Convolutions and linear layers: He-normal weights, small normal biases; BatchNorm: scale in
    [0.5, 1.5], shift and running mean N(0, 0.1²), running variance in [0.5, 1.5]. Activations keep a
    usable scale through deep stacks, so features of random-weight networks are finite and informative.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=gen))
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return model


def saved_variant_config(obj, path: Path, stage: str, cls: type):
    """The config dataclass ``cls`` of a network variant saved as a tav checkpoint of ``stage`` (by
    ``save_tiny_i3d(config=...)`` or ``save_tiny_inception(config=...)``); ``None`` for other files. A value the
    config refuses raises a one-line ``InputError`` naming the file."""
    if not (isinstance(obj, dict) and obj.get("stage") == stage and isinstance(obj.get("config"), dict)):
        return None
    try:
        return from_dict(cls, obj["config"], where=f"{path}: config")
    except InputError as err:
        raise InputError(err if str(path) in str(err) else f"{path}: config: {err}") from None


def random_weights_note(path: str | os.PathLike) -> Path:
    """``<weights>.random.json``: written beside a weight file of seeded random values, so that metric records
    (and reports) can say the numbers come from random weights."""
    return Path(f"{path}.random.json")


def mark_random_weights(path: str | os.PathLike, seed: int) -> Path:
    """Write the note of :func:`random_weights_note` for ``path`` (atomic)."""
    note = random_weights_note(path)
    write_text_atomic(note, json.dumps({"random_init_seed": seed, "weights": Path(path).name}) + "\n")
    return note


def save_tiny_i3d(path: str | os.PathLike, seed: int = 0, config: I3DConfig | None = None) -> Path:
    """Write an ``I3D`` with seeded random weights, atomically; it loads through ``load_i3d``.

    For tests and ``make demo``. Without ``config``: the real architecture as a plain state dict, like
    ``i3d_pretrained_400.pt`` (about 50 MB). With ``config`` (e.g. ``TINY_I3D``, about 3 MB): a ``tav``
    checkpoint that records it, so that ``load_i3d`` rebuilds the variant.
    """
    model = seeded_random_init_(I3D(config=config), seed)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    if config is not None:
        save_checkpoint(path, I3D_STAGE, to_dict(config), state)
    else:
        save_torch_atomic(state, path)
    mark_random_weights(path, seed)
    return path


def model_device(model: nn.Module) -> torch.device:
    """The device of the first parameter of ``model`` (CPU for a parameter-free module)."""
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


@torch.inference_mode()
def i3d_features(model: nn.Module, videos: np.ndarray | Tensor, resize: str = "torch",
                 batch_size: int = 8) -> Tensor:
    """FVD features of ``videos (N, T, H, W, 3)`` (uint8, or float in [0, 1]) -> ``(N, 400)`` float64 on CPU.

    The channel order is used as given (the caller picks RGB, or BGR for ``--protocol ta2v``). Per batch of
    ``batch_size`` videos: to [0, 1] (``to_unit_float``), every frame resized to 224x224 by
    ``resize_bilinear(mode=resize)``, scaled to [-1, 1], run through ``model`` on its device. Every video
    is used; the last batch may be smaller. Videos need ``model.min_frames`` frames (``MIN_FRAMES`` = 9 for
    the Kinetics-400 I3D); shorter ones are an ``InputError``, never padded.
    """
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos must be (N, T, H, W, 3), got {tuple(videos.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    need = getattr(model, "min_frames", MIN_FRAMES)
    if videos.shape[1] < need:
        raise InputError(f"FVD's I3D needs at least {need} frames per video (16 is the standard), these "
                         f"videos have {videos.shape[1]}")
    device = model_device(model)
    out = []
    for start in range(0, videos.shape[0], batch_size):
        clip = to_unit_float(videos[start:start + batch_size], device)
        b, t, h, w, _ = clip.shape
        frames = clip.reshape(b * t, h, w, 3).permute(0, 3, 1, 2)  # (B*T, 3, H, W)
        frames = resize_bilinear(frames, I3D_SIZE, mode=resize)
        x = frames.reshape(b, t, 3, I3D_SIZE, I3D_SIZE).transpose(1, 2)  # (B, 3, T, 224, 224)
        out.append(model(x * 2.0 - 1.0).to("cpu", torch.float64))
    return torch.cat(out) if out else torch.zeros(0, NUM_CLASSES, dtype=torch.float64)
