"""The guided-diffusion U-Net (``UNetModel``), the TA2V stage-2 denoiser.

Source: Dhariwal & Nichol 2021 (https://github.com/openai/guided-diffusion, ``unet.py``); written fresh with
the same module tree, so the released ``model300000.pt`` (a bare state dict,
``tests/data/state_dicts/ta2v_diffusion_unet3d.tsv``) loads strictly. ``resblock_updown`` and class conditioning are
not implemented (TA2V uses neither). The network only maps ``(x_t, t) -> output``; the Gaussian process
(schedule, losses, samplers, timestep rescaling) lives elsewhere.

Layout, for ``L = len(channel_mult)`` levels with widths ``w_i = model_channels * channel_mult[i]``:

- ``time_embed``: sinusoid(model_channels) -> Linear -> SiLU -> Linear, ``4 * model_channels`` wide;
- ``input_blocks``: conv_in, then per level ``num_res_blocks`` x [ResBlock (+ attention)], and a
  Downsample between levels (H, W halve; frames never);
- ``middle_block``: ResBlock, attention, ResBlock;
- ``output_blocks``: per level in reverse, ``num_res_blocks + 1`` x [ResBlock on concat(h, skip)
  (+ attention)], the last one of each level but level 0 followed by an Upsample;
- ``out``: GroupNorm, SiLU, zero-initialised k3 conv to ``out_channels``.

:class:`UNetSkeleton` builds and runs this layout; the TIA2V U-Nets (``tav.tia2v.unet``) reuse it with
spatial/temporal transformers in place of the attention blocks.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tav.diffusion.blocks import (
    AttentionBlock,
    Downsample,
    GroupNorm32,
    ResBlock,
    TimestepSequential,
    Upsample,
    conv_nd,
    timestep_embedding,
    zero_init,
)
from tav.diffusion.config import UNetConfig, UNetShape
from tav.errors import InputError


class UNetSkeleton(nn.Module):
    """guided-diffusion's U-Net skeleton (module docstring), shared by :class:`UNet` and the TIA2V U-Nets.

    ``config`` needs :class:`~tav.diffusion.config.UNetShape`'s sizes plus ``num_res_blocks``, ``dims``,
    ``dropout``, ``use_scale_shift_norm`` and ``gradient_checkpointing``. A subclass picks the container of
    every block (``block_type``: its ``forward(x, emb, *conditions)`` routes the inputs to its layers), the
    layers that follow a ResBlock at attention levels and in the middle block (:meth:`_attention_layers`),
    and may replace the ResBlocks (:meth:`_res_block`).
    """

    block_type: type[nn.Sequential] = TimestepSequential

    def __init__(self, config: UNetShape) -> None:
        super().__init__()
        self.config = cfg = config
        mc, emb_dim, seq = cfg.model_channels, cfg.time_embed_dim, self.block_type
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        self.input_blocks = nn.ModuleList([seq(conv_nd(cfg.dims, cfg.in_channels, mc, 3, padding=1))])
        skip_widths = [mc]  # width of every input block's output, consumed in reverse by output_blocks
        ch, ds = mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [self._res_block(ch, mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_ds:
                    layers += self._attention_layers(ch)
                self.input_blocks.append(seq(*layers))
                skip_widths.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(seq(Downsample(ch, cfg.dims)))
                skip_widths.append(ch)
                ds *= 2

        self.middle_block = seq(self._res_block(ch, ch), *self._attention_layers(ch), self._res_block(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [self._res_block(ch + skip_widths.pop(), mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_ds:
                    layers += self._attention_layers(ch)
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch, cfg.dims))
                    ds //= 2
                self.output_blocks.append(seq(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(),
                                 zero_init(conv_nd(cfg.dims, ch, cfg.out_channels, 3, padding=1)))

    def _res_block(self, channels: int, out_channels: int) -> nn.Module:
        """The ResBlock ``channels -> out_channels`` (FiLM from the timestep embedding)."""
        cfg = self.config
        return ResBlock(channels, cfg.time_embed_dim, out_channels, dropout=cfg.dropout, dims=cfg.dims,
                        use_scale_shift_norm=cfg.use_scale_shift_norm, use_checkpoint=cfg.gradient_checkpointing)

    def _attention_layers(self, channels: int) -> list[nn.Module]:
        """The layers after a ResBlock ``channels`` wide at an attention level and in the middle block."""
        raise NotImplementedError

    def _denoise(self, x: Tensor, t: Tensor, *conditions: Tensor | None) -> Tensor:
        """The network on checked inputs: x ``(N, in_channels, ...)``, t ``(N,)``; every block also gets
        ``conditions``. Returns ``(N, out_channels, ...)`` in x's dtype."""
        dtype = self.time_embed[0].weight.dtype  # the weights' dtype: fp32, or bf16/fp16 for a cast model
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(dtype))
        skips = []
        h = x.to(dtype)
        for block in self.input_blocks:
            h = block(h, emb, *conditions)
            skips.append(h)
        h = self.middle_block(h, emb, *conditions)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, *conditions)
        return self.out(h).to(x.dtype)

    def set_gradient_checkpointing(self, on: bool) -> None:
        """Recompute the ResBlock and attention activations in the backward pass (``on``) or keep them: less memory
        for a backward through the network (training, or guidance's gradient w.r.t. the input), the same values,
        one more forward per backward. Overrides ``config.gradient_checkpointing`` on this instance."""
        for module in self.modules():
            if hasattr(module, "use_checkpoint"):
                module.use_checkpoint = bool(on)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameter elements (TA2V preset 318,258,694; TIA2V released 16,317,766 content,
        33,105,478 motion, 73,766,918 SHR)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


class UNet(UNetSkeleton):
    """Denoiser ``(x_t, t) -> output`` with guided-diffusion's ``UNetModel`` state-dict layout."""

    config: UNetConfig

    def __init__(self, config: UNetConfig) -> None:
        super().__init__(config)

    def _attention_layers(self, channels: int) -> list[nn.Module]:
        cfg = self.config
        return [AttentionBlock(channels, cfg.heads_for(channels), legacy_order=not cfg.use_new_attention_order,
                               impl=cfg.attention_impl, use_checkpoint=cfg.gradient_checkpointing)]

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Predict the network output for noisy samples ``x`` at timesteps ``t``.

        x: ``(B, in_channels, T, H, W)`` (dims 3) or ``(B, in_channels, H, W)`` (dims 2), float, in the data
        range of the process (any T; H and W multiples of ``config.spatial_divisor``).
        t: ``(B,)`` (or a scalar, broadcast) int or float, the values the network sees (already rescaled by
        the process if it rescales).
        Returns ``(B, out_channels, *x.shape[2:])`` in x's dtype: for the TA2V config, channels ``[:3]`` are
        the predicted noise and ``[3:]`` the learned-variance interpolation ``v`` in about [-1, 1].
        """
        self._check_input(x)
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise InputError(f"UNet: t has shape {tuple(t.shape)}; expected ({x.shape[0]},), one per sample")
        return self._denoise(x, t)

    def _check_input(self, x: Tensor) -> None:
        cfg = self.config
        layout = "(B, C, T, H, W)" if cfg.dims == 3 else "(B, C, H, W)"
        if x.ndim != cfg.dims + 2 or x.shape[1] != cfg.in_channels:
            raise InputError(f"UNet: input of shape {tuple(x.shape)}; expected {layout} with C={cfg.in_channels}")
        d = cfg.spatial_divisor
        if x.shape[-1] % d or x.shape[-2] % d:
            raise InputError(f"UNet: input of shape {tuple(x.shape)}: H and W must be multiples of {d} "
                             f"(2 ** (len(channel_mult) - 1) for channel_mult={cfg.channel_mult})")
