"""Upstream's TIA2V motion-model bugs, the switch values of ``compat="tia2v"``, and upstream's sampling
settings (``sample_motion_optim.py --faithful-quirks``).

The released motion weights were trained with two bugs in the dual temporal block (``tacm_unet_temp_dual.py``);
they only produce the published videos when the same bugs are reproduced at inference:

- ``dual_block_frame_collapse`` (:class:`FrameCollapsedDualTemporalTransformer`): upstream indexed each
  temporal transformer's output with ``[0]``, which takes frame 0 of clip 0 ``(C, H, W)`` and broadcasts it to
  every frame of every clip; the block then adds the same feature map to all frames.
- ``audio_row_mapping`` (:class:`RowMappedTemporalTransformer`): upstream repeated the per-frame context over
  the ``H·W`` per-pixel sequences (``b m d -> (b r) m d``, ``r = H·W / F``), so all frames of pixel
  ``p = h·W + w`` attend to frame ``p // r``'s tokens: at 16×16 with F = 16, feature row h hears frame h's
  audio, whatever frame it belongs to.

:class:`tav.tia2v.temporal.TemporalTransformer` and :class:`~tav.tia2v.temporal.DualTemporalTransformer`
return these subclasses when built with ``row_mapping=True`` / ``frame_collapse=True`` (what the U-Net does
from the config's switches). ``double_residual`` is not here: it is part of the released content/motion
architecture, an ordinary :class:`tav.tia2v.config.TIA2VUNetConfig` field, although ``compat_switches`` sets
it for upstream files too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tav.errors import InputError
from tav.tia2v.config import MOTION_ONLY, TIA2VUNetConfig
from tav.tia2v.temporal import DualTemporalTransformer, TemporalBlock, TemporalTransformer

if TYPE_CHECKING:
    from tav.pipelines.tia2v import TIA2VSamplingConfig

COMPAT_MODES = ("tia2v", "fixed")
UPSTREAM_CLIP_DENOISED = 1.0  # upstream clamps x̂0 to [-1, 1], twice tav's data range [-0.5, 0.5]


# ------------------------------------------------------------------------------------------ motion blocks
class RowMappedTemporalBlock(TemporalBlock):
    """:class:`TemporalBlock` whose cross-attention queries are grouped by upstream's context repeat: the
    ``H·W / F`` consecutive pixels of block k (all their frames) attend to frame k's context row."""

    @staticmethod
    def frame_groups(x: Tensor, clips: int) -> Tensor:
        """(B·HW, F, C) -> (B·F, HW, C): row b·F + k holds every frame of pixels [k·HW/F, (k+1)·HW/F)."""
        n, f, c = x.shape
        return x.reshape(clips * f, (n // clips // f) * f, c)

    @staticmethod
    def undo_frame_groups(x: Tensor, shape: torch.Size, clips: int) -> Tensor:
        """Inverse of :meth:`frame_groups`: (B·F, HW, C) -> ``shape`` = (B·HW, F, C)."""
        return x.reshape(shape)


class RowMappedTemporalTransformer(TemporalTransformer):
    """:class:`TemporalTransformer` with upstream's audio row mapping (``audio_row_mapping``, released weights);
    ``H·W`` must be a multiple of F."""

    block_type = RowMappedTemporalBlock

    def _check_grid(self, hh: int, ww: int) -> None:
        if (hh * ww) % self.frames:
            raise InputError(f"audio_row_mapping needs H·W ({hh}x{ww}) to be a multiple of F={self.frames} "
                             "(upstream's context repeat); turn the switch off for this size")


class FrameCollapsedDualTemporalTransformer(DualTemporalTransformer):
    """:class:`DualTemporalTransformer` with upstream's ``[0]`` indexing (``dual_block_frame_collapse``,
    released weights): output ``x + mix·(T0(x)[0] − x) + (1 − mix)·(T1(x)[0] − x)``."""

    def _frames_out(self, y: Tensor) -> Tensor:
        """``y`` (B·F, C, H, W) -> ``y[0]`` (C, H, W): frame 0 of clip 0, broadcast to every frame."""
        return y[0]


# ------------------------------------------------------------------------------------------ loading
def compat_switches(part: str, compat: str | None) -> dict[str, bool]:
    """The ``TIA2VUNetConfig`` switch values that ``compat`` sets for ``part`` (empty for None).

    ``"tia2v"`` (upstream files, the released weights): ``double_residual`` for content/motion, and for motion
    both bugs on; ``"fixed"``: the motion bugs off. ``double_residual`` is the released architecture, so
    ``"fixed"`` leaves it as the file has it.
    """
    if compat is None:
        return {}
    if compat not in COMPAT_MODES:
        raise InputError(f"compat={compat!r}: must be one of {COMPAT_MODES} or None")
    on = compat == "tia2v"
    switches = {"double_residual": True} if on and part != "shr" else {}
    if part == "motion":
        switches.update(dict.fromkeys(MOTION_ONLY, on))
    return switches


def has_motion_bugs(cfg: TIA2VUNetConfig) -> bool:
    """True when a motion config reproduces either upstream bug (weights trained by upstream's code)."""
    return any(getattr(cfg, name) for name in MOTION_ONLY)


# ------------------------------------------------------------------------------------------ sampling
def upstream_sampling(cfg: TIA2VSamplingConfig) -> TIA2VSamplingConfig:
    """``cfg`` with upstream's x̂0 clamp ([-1, 1] wherever ``cfg`` clamps at all) and without holding frame 0."""
    return dataclasses.replace(cfg, clip_denoised=UPSTREAM_CLIP_DENOISED if cfg.clip_denoised else 0.0,
                               hold_first_frame=False)


def upstream_seeds(seed: int, indices: Sequence[int]) -> list[int]:
    """Upstream's per-sample seeds: ``seed`` for every sample (tav gives sample i ``seed + i``)."""
    return [int(seed)] * len(indices)
