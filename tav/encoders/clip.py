"""CLIP ViT-B/32 (OpenAI weights) as a frozen ``Encoder``, built on ``open_clip``'s ``CLIP`` model.

Input 224, OpenAI mean/std, QuickGELU activations. Weight files accepted by
``load_clip``:

- OpenAI's released ``ViT-B-32.pt``, a TorchScript archive (mostly fp16 tensors);
- a plain ``{name: tensor}`` state dict in OpenAI's key layout (what ``save_tiny_clip`` writes);
- open_clip's ``open_clip_pytorch_model.bin`` for ``ViT-B-32``/``openai`` (the same key layout).

The architecture (widths, layers, patch size, resolution, context length) is read off the tensor shapes,
so a tiny test CLIP loads through the same path as the real one. The model always runs in fp32.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, build_model_from_openai_state_dict
from torch import Tensor

from tav.checkpoint import check_finite, is_torchscript, safe_load, state_dict_of
from tav.encoders.base import Encoder
from tav.errors import InputError
from tav.utils.fileio import save_torch_atomic
from tav.utils.paths import ckpt_dir

CLIP_FILE = "ViT-B-32.pt"
CLIP_FLAG = "--clip_ckpt"
# Entries of OpenAI's archive that are not weights: scalar attributes and the causal text mask, which
# the model rebuilds itself.
_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


class CLIPEncoder(Encoder):
    """Frozen CLIP image and text towers; features live in the ``dim``-wide joint space (512 for ViT-B/32)."""

    name = "clip"

    def __init__(self, model: CLIP):
        super().__init__()
        self.model = model
        self.dim = int(model.text_projection.shape[1])
        self.image_size = int(model.visual.image_size[0])
        self.context_length = int(model.context_length)
        sequence_first(model)
        self.freeze()

    def encode_images(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` RGB float in [0, 1] -> ``(N, dim)`` unnormalised features; differentiable in images."""
        return self.model.encode_image(self.preprocess_images(images))

    def encode_texts(self, captions: Sequence[str]) -> Tensor:
        """``N`` captions -> ``(N, dim)`` unnormalised features (CLIP BPE, ``context_length`` tokens, truncated)."""
        tokens = open_clip.tokenize(list(captions), context_length=self.context_length)  # (N, 77) long
        return self.model.encode_text(tokens.to(self.device))


def sequence_first(model: CLIP) -> CLIP:
    """Run ``model``'s two transformers sequence-first, ``(L, N, D)``: the same operations on the same values.

    Batch-first, each ``nn.MultiheadAttention`` transposes its input to ``(L, N, D)`` as a strided view; under
    bf16 autocast the input projection of that view went through a batched matmul over a weight expanded to
    ``(L, D, 3D)`` and copied, forward and backward (4.6 s of a 5.3 s ViT-B/32 image pass + backward on 16
    frames, 2 AMD cores; 1.1 s after). Sequence-first, the transformer transposes once into a contiguous tensor.
    """
    for transformer in (model.visual.transformer, model.transformer):
        transformer.batch_first = False
        for block in transformer.resblocks:
            block.attn.batch_first = False
    return model


def _missing_message(path: Path) -> str:
    return (f"{path}: CLIP ViT-B/32 weights not found; download {CLIP_FILE} (OpenAI CLIP release, or "
            f"open_clip 'ViT-B-32' 'openai' weights) into saved_ckpts/ (or $TAV_CKPT_DIR), "
            f"or pass {CLIP_FLAG} PATH")


def read_clip_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The CLIP weights in ``path`` as ``{name: tensor}`` in OpenAI's layout, non-weight entries dropped.

    Raises ``InputError`` (one line, naming the file) when it is missing or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(_missing_message(path))
    if is_torchscript(path):
        # TorchScript deserialisation (OpenAI's release format): tensors plus TorchScript code read by the
        # C++ loader, not a pickle of Python globals. Only ``state_dict()`` is used; no method is called.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still the format
                state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except (RuntimeError, ValueError) as err:
            raise InputError(f"{path}: unreadable TorchScript archive: {str(err).splitlines()[0][:200]}") from None
    else:
        state = state_dict_of(safe_load(path))
        if state is None:
            raise InputError(f"{path}: no CLIP state dict inside (expected a {{name: tensor}} mapping)")
    state = {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in _NON_WEIGHT_KEYS}
    if "visual.proj" not in state or "text_projection" not in state:
        raise InputError(f"{path}: not a CLIP ViT checkpoint in OpenAI's layout (no visual.proj/text_projection); "
                         f"pass {CLIP_FLAG} with {CLIP_FILE}")
    return state


def clip_from_state_dict(state: dict[str, Tensor], source: str = "state dict") -> CLIP:
    """Build an fp32 ``CLIP`` whose architecture is inferred from ``state`` and load it strictly.

    ``open_clip``'s builder infers widths/layers/patch/resolution (heads = width // 64, QuickGELU) and
    loads into fp16-cast weights; the fp32 values are then loaded again so an fp32 file round-trips exactly.
    """
    check_finite(state, source)
    try:
        model = build_model_from_openai_state_dict(dict(state), quick_gelu=True, cast_dtype=None)
        model.float()
        model.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError, ValueError) as err:
        raise InputError(f"{source}: weights do not fit a CLIP ViT in OpenAI's layout: "
                         f"{str(err).strip().splitlines()[0][:300]}") from None
    return model


def load_clip(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> CLIPEncoder:
    """The frozen CLIP encoder from ``path`` (default ``ckpt_dir() / "ViT-B-32.pt"``) on ``device``."""
    path = Path(path) if path is not None else ckpt_dir() / CLIP_FILE
    model = clip_from_state_dict(read_clip_state_dict(path), source=str(path))
    return CLIPEncoder(model).to(device)


def tiny_clip_model(seed: int = 0) -> CLIP:
    """A randomly initialised tiny CLIP ViT (224 input, patch 32, width 128/64, one layer per tower, 512-d: the
    joint width of ViT-B/32, which wav2clip's audio embeddings share).

    It keeps the real vocabulary (49408) and context (77) so the real tokenizer applies. Heads are
    ``width // 64`` as the OpenAI-layout builder assumes. The global RNG is left untouched.
    """
    vision = CLIPVisionCfg(layers=1, width=128, head_width=64, patch_size=32, image_size=224)
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(512, vision_cfg=vision, text_cfg=text, quick_gelu=True)
    return model.eval()


def save_tiny_clip(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write ``tiny_clip_model(seed)`` as a plain OpenAI-layout state dict to ``path`` (atomically)."""
    state = {k: v.detach().clone() for k, v in tiny_clip_model(seed).state_dict().items()}
    path = Path(path)
    save_torch_atomic(state, path)
    return path
