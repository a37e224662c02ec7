"""The interface every frozen guidance/metric encoder implements (CLIP, AudioCLIP, wav2clip).

An encoder maps images, captions and/or audio into one joint embedding space. Callers never prepare
inputs by hand beyond the value range:

- images come as ``(N, 3, H, W)`` RGB floats in **[0, 1]** (any H, W); ``encode_images`` resizes to the
  encoder's input size (bilinear) and applies its own mean/std normalisation. It is differentiable, so
  guidance can backpropagate into the frames;
- captions come as plain strings; ``encode_texts`` tokenises them with the encoder's own tokenizer;
- audio comes as ``(N, S)`` mono waveforms **already at ``audio_rate`` and in ``audio_scale``** (see
  ``tav.encoders.audio``, which resamples the dataset's 48 kHz audio and cuts per-frame windows).

Every method returns **unnormalised** features ``(N, dim)``; callers L2-normalise where the maths needs it.
A modality an encoder does not have raises ``NotImplementedError`` naming the encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP image normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Encoder(nn.Module):
    """Base class: frozen, eval mode, no parameter needs grad. Subclasses set the class attributes."""

    name: str = "encoder"
    dim: int = 0  # joint embedding width
    image_size: int = 224  # square input size of the image tower
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD
    audio_rate: int | None = None  # Hz the audio tower was trained on (None: no audio tower)
    audio_scale: float = 1.0  # waveform multiplier expected by the audio tower (AudioCLIP: 32767, int16 range)

    def freeze(self) -> Encoder:
        """Eval mode, ``requires_grad_(False)``; returns self."""
        self.eval()
        self.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> Encoder:  # frozen encoders never leave eval mode
        return super().train(False)

    def preprocess_images(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` in [0, 1] -> ``(N, 3, S, S)`` resized (bilinear) and normalised, differentiable."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: images must be (N, 3, H, W), got {tuple(images.shape)}")
        size = self.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        mean = torch.tensor(self.image_mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std

    def encode_images(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` in [0, 1] -> ``(N, dim)`` features."""
        raise NotImplementedError(f"{self.name} has no image tower")

    def encode_texts(self, captions: Sequence[str]) -> Tensor:
        """``N`` captions -> ``(N, dim)`` features."""
        raise NotImplementedError(f"{self.name} has no text tower")

    def encode_audio(self, audio: Tensor) -> Tensor:
        """``(N, S)`` waveforms at ``audio_rate`` in ``audio_scale`` -> ``(N, dim)`` features."""
        raise NotImplementedError(f"{self.name} has no audio tower")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
