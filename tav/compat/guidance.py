"""Upstream's stage-2 guidance (``--faithful-quirks``): TA2V's input mapping and audio chunking.

:class:`UpstreamGuidance` is :class:`tav.guidance.Guidance` with these hooks replaced (``Guidance(cfg, ...)``
returns it when ``cfg.faithful_quirks``):

- ``_encoder_frames``: frames go to CLIP / AudioCLIP as they are, in [-0.5, 0.5], without the +0.5 shift
  (the encoder then normalises them as if they were in [0, 1]);
- ``_view_frames`` / ``_plain_view``: the wav2clip views, view 0 included, are made from ``(x + 1) / 2``, which
  maps [-0.5, 0.5] to [0.25, 0.75];
- ``_direction_frames``: the wav2clip direction term embeds the frames resized to CLIP's input size, without
  the shift and without CLIP's mean/std normalisation (the raw tower ``clip.model.encode_image``);
- ``range_bounds``: the range term clamps x̂0 at [-1, 1], twice tav's data range, so it almost never acts;
- ``audio_mode``: the clip's raw audio is cut into ``n_frames`` equal rows (no resampling, no scaling), the
  ``"upstream"`` mode of :func:`tav.encoders.audio.encoder_audio`; ``audio_window_s`` is unused.

Reproduction only: the published TA2V guidance numbers were produced this way.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from tav.guidance import losses as L
from tav.guidance.guide import Guidance


class UpstreamGuidance(Guidance):
    """:class:`Guidance` with upstream's input mapping, wav2clip views, range bounds and audio chunking."""

    audio_mode = "upstream"
    range_bounds = (-1.0, 1.0)

    def _encoder_frames(self, x: Tensor) -> Tensor:
        """``(B, 3, T, H, W)`` in [-0.5, 0.5] -> ``(B*T, 3, H, W)`` unchanged (no +0.5 shift)."""
        return self._flat(x)

    def _view_frames(self, x_in: Tensor) -> Tensor:
        """``(B*T, 3, H, W)`` frames ``(x + 1) / 2`` in [0.25, 0.75] for the wav2clip views."""
        return (self._flat(x_in) + 1) / 2

    def _plain_view(self, plain: Tensor, frames: Tensor, b: int) -> Tensor:
        """View 0 ``(B, T, D)``: the CLIP embeddings of the ``(x + 1) / 2`` frames, not the encoder input's."""
        return self._embed(self.clip, frames, b)

    def _direction_frames(self, x_in: Tensor, plain: Tensor) -> Tensor:
        """``(B, T, D)`` raw-tower CLIP embeddings of the frames resized bilinearly to ``clip.image_size``,
        unshifted and un-normalised."""
        frames = self._flat(x_in)
        size = self.clip.image_size
        frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
        return L.normalize(self.clip.model.encode_image(frames)).view(x_in.shape[0], -1, self.clip.dim)
