"""wav2clip's audio encoder as a frozen ``Encoder`` (keys: ``tests/data/state_dicts/wav2clip.tsv``).

The model is the ``wav2clip`` package's own ``ResNetExtractor`` (a ResNet-18 over a log spectrogram,
n_fft 512, hop 353, then a 512-512-512 MLP), built offline. ``wav2clip.get_model(pretrained=False)`` builds
it *without* the MLP, so we build the extractor and attach the package's ``MLPLayers`` ourselves, which
is the module tree ``get_model()`` makes from the released file.

The released ``Wav2CLIP.pt`` names its tensors ``audio_encoder.*`` and ``audio_transform.*``; the module
names are ``encoder.*`` and ``transform.*``. ``load_wav2clip`` maps one onto the other and loads strictly.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor
from wav2clip.model.encoder import MLPLayers, ResNetExtractor

from tav.checkpoint import check_finite, safe_load, state_dict_of
from tav.encoders.base import Encoder
from tav.errors import InputError
from tav.utils.fileio import save_torch_atomic
from tav.utils.paths import ckpt_dir

WAV2CLIP_FILE = "Wav2CLIP.pt"
WAV2CLIP_FLAG = "--wav2clip_ckpt"
WAV2CLIP_RELEASES = "https://github.com/descriptinc/lyrebird-wav2clip/releases"
# released-file prefix -> module prefix
RELEASE_PREFIXES = {"audio_encoder.": "encoder.", "audio_transform.": "transform."}


def build_wav2clip_model() -> ResNetExtractor:
    """The wav2clip extractor with its MLP head, randomly initialised (global RNG), in eval mode."""
    model = ResNetExtractor(scenario="frozen", transform=False)
    model.transform = MLPLayers(units=[512, 512, 512], dropout=0.1)
    return model.eval()


class Wav2CLIPEncoder(Encoder):
    """Frozen wav2clip audio tower: 16 kHz mono waveforms in [-1, 1] -> 512-d CLIP-ViT-B/32-space features.

    The package normalises the log spectrogram by the mean and std of the **whole batch** it is given
    (upstream embeds one clip's 16 rows together). ``per_item_norm=True`` normalises each waveform on its
    own instead, so a row's embedding does not depend on the other rows.
    """

    name = "wav2clip"
    dim = 512
    audio_rate = 16000
    audio_scale = 1.0

    def __init__(self, model: ResNetExtractor, per_item_norm: bool = False):
        super().__init__()
        self.model = model
        self.per_item_norm = per_item_norm
        self.freeze()

    def encode_audio(self, audio: Tensor) -> Tensor:
        """``(N, S)`` float waveforms in [-1, 1] at 16 kHz (S > 256) -> ``(N, 512)`` unnormalised features.

        Same maths as ``wav2clip.embed_audio`` (the package's forward), on tensors and without grad.
        """
        if audio.dim() != 2:
            raise ValueError(f"{self.name}: audio must be (N, S), got {tuple(audio.shape)}")
        audio = audio.to(self.device, torch.float32)
        with torch.no_grad():
            if self.per_item_norm:
                return torch.cat([self.model(row[None]) for row in audio])
            return self.model(audio)


def to_module_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename released keys (``audio_encoder.*``, ``audio_transform.*``) to module keys; others unchanged."""
    out = {}
    for key, value in state.items():
        for old, new in RELEASE_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def to_release_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of ``to_module_keys``: module keys -> the released file's names."""
    out = {}
    for key, value in state.items():
        for old, new in RELEASE_PREFIXES.items():
            if key.startswith(new):
                key = old + key[len(new):]
                break
        out[key] = value
    return out


def _read_state(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise InputError(f"{path}: wav2clip weights not found; download {WAV2CLIP_FILE} from the wav2clip "
                         f"release page ({WAV2CLIP_RELEASES}) into saved_ckpts/ (or $TAV_CKPT_DIR), "
                         f"or pass {WAV2CLIP_FLAG} PATH")
    state = state_dict_of(safe_load(path))
    if state is None:
        raise InputError(f"{path}: no wav2clip state dict inside (expected a {{name: tensor}} mapping)")
    state = to_module_keys(state)
    # Like the package, keep only the audio model's tensors (a release may carry other entries).
    state = {k: v for k, v in state.items() if k.startswith(tuple(RELEASE_PREFIXES.values()))}
    if not state:
        raise InputError(f"{path}: not a wav2clip checkpoint (no audio_encoder.* / audio_transform.* tensors)")
    return state


def load_wav2clip(path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                  per_item_norm: bool = False) -> Wav2CLIPEncoder:
    """The frozen wav2clip encoder from ``path`` (default ``ckpt_dir() / "Wav2CLIP.pt"``) on ``device``."""
    path = Path(path) if path is not None else ckpt_dir() / WAV2CLIP_FILE
    state = _read_state(path)
    check_finite(state, str(path))
    model = build_wav2clip_model()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raise InputError(f"{path}: weights do not fit wav2clip's ResNetExtractor: "
                         f"{' '.join(lines[1:2] or lines)[:300]}") from None
    return Wav2CLIPEncoder(model, per_item_norm=per_item_norm).to(device)


def save_tiny_wav2clip(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write the real wav2clip architecture with seeded random weights under the released names (atomically).

    BatchNorm running statistics are randomised too, so a load that skipped buffers would show.
    The global RNG is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_wav2clip_model()
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    state = to_release_keys({k: v.detach().clone() for k, v in model.state_dict().items()})
    path = Path(path)
    save_torch_atomic(state, path)
    return path
