"""The TIA2V content, motion and SHR U-Nets in upstream's state-dict layout.

Source: guided-diffusion's ``UNetModel`` with latent-diffusion's spatial transformers, as modified by TIA2V
(``tacm_unet.py``, ``tacm_unet_temp_dual.py``, ``tacm_unet_diffusion.py``); written fresh with the same
module tree so the released ``.pt`` state dicts (``tests/data/state_dicts/tia2v_*.tsv``) load strictly.

Layout, for levels with widths ``w_i = model_channels * channel_mult[i]``:

- ``time_embed``: sinusoid(model_channels) → Linear → SiLU → Linear, ``4·model_channels`` wide;
- ``input_blocks``: conv_in, then per level ``num_res_blocks`` × [ResBlock (+ SpatialTransformer
  (+ DualTemporalTransformer for motion)) at attention levels], a Downsample between levels;
- ``middle_block``: ResBlock, SpatialTransformer, [DualTemporalTransformer,] ResBlock;
- ``output_blocks``: mirrored with skip concatenation, ``num_res_blocks + 1`` per level, the last of each
  level but level 0 ending in an Upsample;
- ``out``: GroupNorm, SiLU, zero-initialised 3×3 conv to ``out_channels``.

Motion ResBlocks carry a ``temporal_conv``. The network maps ``(x_t, t, conditions) -> output`` only;
timestep rescaling and the Gaussian process live in ``tav.diffusion.schedule``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tav.diffusion.blocks import ResBlock, TimestepBlock
from tav.diffusion.unet3d import UNetSkeleton
from tav.errors import InputError
from tav.tia2v.attention import SpatialTransformer
from tav.tia2v.config import TIA2VUNetConfig
from tav.tia2v.temporal import DualTemporalTransformer, TemporalResBlock


class CondSequential(nn.Sequential):
    """``nn.Sequential`` handing the timestep embedding to ResBlocks, ``context`` to spatial transformers and
    ``context_temp`` to dual temporal transformers."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None = None,
                context_temp: Tensor | None = None) -> Tensor:
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, DualTemporalTransformer):
                x = layer(x, context_temp)
            else:
                x = layer(x)
        return x


class TIA2VUNet(UNetSkeleton):
    """Denoiser of one TIA2V part, called with upstream's argument order:

    - content: ``net(x, timesteps, context)``;
    - motion: ``net(x, timesteps, context, context_temp)``;
    - shr: ``net(x, timesteps, context)``.

    See :meth:`forward` for the shapes. The block layout is :class:`tav.diffusion.unet3d.UNetSkeleton`'s,
    with the spatial (+ dual temporal) transformers after the ResBlocks of attention levels.
    """

    config: TIA2VUNetConfig
    block_type = CondSequential

    def __init__(self, config: TIA2VUNetConfig) -> None:
        super().__init__(config)

    def _res_block(self, channels: int, out_channels: int) -> ResBlock:
        cfg = self.config
        if cfg.is_motion:
            return TemporalResBlock(channels, cfg.time_embed_dim, out_channels, cfg.num_frames, dropout=cfg.dropout,
                                    temporal_dropout=cfg.temporal_dropout,
                                    use_scale_shift_norm=cfg.use_scale_shift_norm,
                                    use_checkpoint=cfg.gradient_checkpointing)
        return super()._res_block(channels, out_channels)

    def _attention_layers(self, channels: int) -> list[nn.Module]:
        """The spatial transformer of an attention level (+ the dual temporal block for motion; the † switches
        make it build upstream's variant from :mod:`tav.compat.tia2v`)."""
        cfg = self.config
        heads = cfg.heads_for(channels)
        common = dict(depth=cfg.transformer_depth, dropout=cfg.dropout, impl=cfg.attention_impl,
                      use_checkpoint=cfg.gradient_checkpointing)
        layers: list[nn.Module] = [SpatialTransformer(
            channels, heads, cfg.context_dim, dims=cfg.dims, frames=cfg.num_frames,
            text_tokens=None if cfg.part == "shr" else cfg.text_tokens, double_residual=bool(cfg.double_residual),
            **common)]
        if cfg.is_motion:
            layers.append(DualTemporalTransformer(
                channels, heads, cfg.context_dim_temp, cfg.num_frames, audio_tokens=cfg.audio_tokens,
                text_tokens=cfg.text_tokens, mix_ratio=cfg.mix_ratio, frame_collapse=cfg.dual_block_frame_collapse,
                row_mapping=cfg.audio_row_mapping, pos_emb=cfg.temporal_pos_emb, **common))
        return layers

    def forward(self, x: Tensor, timesteps: Tensor, context: Tensor, context_temp: Tensor | None = None) -> Tensor:
        """Predict the network output for noisy ``x`` at ``timesteps`` under the conditions.

        x: content/motion ``(B·F, in_channels, H, W)`` (a clip's F = ``config.num_frames`` frames adjacent,
        ``b c f h w -> (b f) c h w``); SHR ``(B, in_channels, F, H, W)`` (any F). Values in the process's data
        range; H, W multiples of ``config.spatial_divisor``.
        timesteps: the values the network sees (already rescaled): a scalar, ``(N,)`` with N = x.shape[0]
        (per-frame t allowed), or for content/motion ``(B,)`` (one per clip, repeated over its frames).
        context: ``(B, M, context_dim)``. Content/motion: ``text_tokens`` text states then the image
        token(s) (M = 78 upstream: 77 CLIP-L states + 1 projected image embedding); SHR: the text states.
        context_temp (motion only): ``(B·F, audio_tokens + text_tokens, context_dim_temp)``, per frame its
        audio tokens then the text (85 upstream: 8 BEATs tokens + 77 CLIP-L states).
        Returns ``(N, out_channels, ...)`` like x: channels ``[:C]`` the predicted noise ε, ``[C:]`` the
        learned-variance interpolation v (about [-1, 1]) when ``config.learn_sigma``.
        """
        t = self._check_inputs(x, timesteps, context, context_temp)
        return self._denoise(x, t, context, context_temp)

    def _check_inputs(self, x: Tensor, timesteps: Tensor, context: Tensor, context_temp: Tensor | None) -> Tensor:
        """Validate shapes (one-line ``InputError``s) and return the timesteps as ``(x.shape[0],)``."""
        cfg = self.config
        layout = "(B, C, F, H, W)" if cfg.dims == 3 else "(B·F, C, H, W)"
        if x.ndim != cfg.dims + 2 or x.shape[1] != cfg.in_channels:
            raise InputError(f"TIA2V {cfg.part} U-Net: input of shape {tuple(x.shape)}; expected {layout} with "
                             f"C={cfg.in_channels}")
        d = cfg.spatial_divisor
        if x.shape[-1] % d or x.shape[-2] % d:
            raise InputError(f"TIA2V {cfg.part} U-Net: input of shape {tuple(x.shape)}: H and W must be multiples "
                             f"of {d}")
        n = x.shape[0]
        if cfg.dims == 2 and n % cfg.num_frames:
            raise InputError(f"TIA2V {cfg.part} U-Net: {n} frames are not whole {cfg.num_frames}-frame clips "
                             "(config.num_frames); flatten the clips as (b f)")
        clips = n // cfg.num_frames if cfg.dims == 2 else n
        self._check_context(context, clips)
        if cfg.is_motion:
            want = (n, cfg.audio_tokens + cfg.text_tokens, cfg.context_dim_temp)
            if context_temp is None or tuple(context_temp.shape) != want:
                got = None if context_temp is None else tuple(context_temp.shape)
                raise InputError(f"TIA2V motion U-Net: context_temp of shape {got}; expected {want} (per frame: "
                                 f"{cfg.audio_tokens} audio tokens, then {cfg.text_tokens} text tokens)")
        return self._timesteps(timesteps, x, clips)

    def _check_context(self, context: Tensor, clips: int) -> None:
        cfg = self.config
        min_tokens = 1 if cfg.part == "shr" else cfg.text_tokens + 1
        if context is None or context.ndim != 3 or context.shape[0] != clips or context.shape[1] < min_tokens \
                or context.shape[2] != cfg.context_dim:
            got = None if context is None else tuple(context.shape)
            what = "text tokens" if cfg.part == "shr" else f"{cfg.text_tokens} text tokens + >= 1 image token"
            raise InputError(f"TIA2V {cfg.part} U-Net: context of shape {got}; expected ({clips}, M, "
                             f"{cfg.context_dim}) per clip ({what})")

    def _timesteps(self, timesteps: Tensor | float, x: Tensor, clips: int) -> Tensor:
        n = x.shape[0]
        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0:
            return t.expand(n)
        if t.shape == (clips,) and clips != n:
            return t.repeat_interleave(n // clips)
        if t.shape != (n,):
            raise InputError(f"TIA2V {self.config.part} U-Net: timesteps of shape {tuple(t.shape)}; expected ({n},)"
                             f" (one per frame/sample), ({clips},) (one per clip) or a scalar")
        return t
