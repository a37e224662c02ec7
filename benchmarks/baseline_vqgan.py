"""Upstream-style (TATS / TA2V) VQGAN forward and training step, for benchmarking only.

This is a straightforward re-statement of how the upstream code computes the *same* model, written over
the modules of ``tav.vqgan.VQGAN`` (same architecture, same parameter shapes, same weights), so that
``benchmarks/bench_vqgan.py`` can time our implementation against it in one run. It follows
songweige/TATS ``tats/tats_vqgan.py`` and ``tats/modules/codebook.py`` (used unchanged by TA2V):

- SiLU is written as ``x * torch.sigmoid(x)`` (upstream's ``silu``), in the ResBlocks and final blocks;
- the EMA codebook computes the full distance matrix with autograd on, a one-hot ``(M, K)`` matrix, the
  EMA sums as the matmul ``flat.T @ onehot`` (2*D*M*K FLOPs), the perplexity from the one-hot mean,
  and tiles + permutes a restart pool on every training forward even with ``--no_random_restart``;
  ``encode`` runs that same codebook forward (one-hot, perplexity) in eval mode;
- one random frame per clip is picked with ``torch.gather`` on a repeated ``(B, C, 1, H, W)`` index;
- a training step is PyTorch Lightning 1.x automatic optimisation with two optimisers: for each
  optimiser the whole ``forward(x, optimizer_idx)`` runs again (encoder, codebook with its EMA update,
  decoder, a new random frame), with ``toggle_optimizer`` freezing the other optimiser's parameters;
  gradients are clipped to norm 1 (the README's ``--gradient_clip_val 1.0``).

Not reproduced (no effect on cost): logging calls, SyncBatchNorm (single-process SyncBatchNorm runs
``F.batch_norm``, like our BatchNorm), upstream's own LPIPS copy (we use the same ``lpips`` network).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from tav.vqgan.model import VQGAN, Decoder, Encoder, ResBlock


def silu(x: Tensor) -> Tensor:
    """Upstream's SiLU: two ops, saves ``x`` and ``sigmoid(x)`` for backward."""
    return x * torch.sigmoid(x)


def resblock(rb: ResBlock, x: Tensor) -> Tensor:
    h = rb.conv1(silu(rb.norm1(x)))
    return x + rb.conv2(silu(rb.norm2(h)))


def encoder_forward(enc: Encoder, x: Tensor) -> Tensor:
    h = enc.conv_first(x)
    for stage in enc.conv_blocks:
        h = resblock(stage.res, stage.down(h))
    return silu(enc.final_block[0](h))


def decoder_forward(dec: Decoder, x: Tensor) -> Tensor:
    h = silu(dec.final_block[0](x))
    for stage in dec.conv_blocks:
        h = resblock(stage.res2, resblock(stage.res1, stage.up(h)))
    return dec.conv_last(h)


def _shift_channels_last(z: Tensor) -> Tensor:
    """Upstream ``shift_dim(z, 1, -1).flatten(end_dim=-2)``: ``(B, D, t, h, w)`` -> ``(B*t*h*w, D)``."""
    return z.permute(0, 2, 3, 4, 1).contiguous().flatten(end_dim=-2)


def _tile(x: Tensor, n_codes: int) -> Tensor:
    d, ew = x.shape
    if d < n_codes:
        x = x.repeat((n_codes + d - 1) // d, 1)
        x = x + torch.randn_like(x) * (0.01 / math.sqrt(ew))
    return x


def codebook_forward(model: VQGAN, z: Tensor, random_restart: bool = False) -> dict[str, Tensor]:
    """TATS ``Codebook.forward`` over our codebook's buffers (assumed initialised)."""
    cb = model.codebook
    n_codes = cb.n_codes
    flat = _shift_channels_last(z)
    distances = ((flat ** 2).sum(dim=1, keepdim=True) - 2 * flat @ cb.embeddings.t()
                 + (cb.embeddings.t() ** 2).sum(dim=0, keepdim=True))
    idx = torch.argmin(distances, dim=1)
    onehot = F.one_hot(idx, n_codes).type_as(flat)
    idx = idx.view(z.shape[0], *z.shape[2:])
    emb = F.embedding(idx, cb.embeddings).permute(0, 4, 1, 2, 3)
    commitment = 0.25 * F.mse_loss(z, emb.detach())
    if cb.training:
        n_total = onehot.sum(dim=0)
        encode_sum = flat.t() @ onehot
        cb.N.data.mul_(0.99).add_(n_total, alpha=0.01)
        cb.z_avg.data.mul_(0.99).add_(encode_sum.t(), alpha=0.01)
        n = cb.N.sum()
        weights = (cb.N + 1e-7) / (n + n_codes * 1e-7) * n
        cb.embeddings.data.copy_(cb.z_avg / weights.unsqueeze(1))
        y = _tile(flat, n_codes)
        k_rand = y[torch.randperm(y.shape[0])][:n_codes]
        if random_restart:
            usage = (cb.N.view(n_codes, 1) >= cb.restart_thres).float()
            cb.embeddings.data.mul_(usage).add_(k_rand * (1 - usage))
    avg_probs = torch.mean(onehot, dim=0)
    perplexity = torch.exp(-torch.sum(avg_probs * torch.log(avg_probs + 1e-10)))
    return {"embeddings": (emb - z).detach() + z, "encodings": idx, "commitment_loss": commitment,
            "perplexity": perplexity}


def encode(model: VQGAN, x: Tensor) -> Tensor:
    """Upstream ``VQGAN.encode``: codes ``(B, t, h, w)`` (through the full codebook forward)."""
    z = model.pre_vq_conv(encoder_forward(model.encoder, x))
    return codebook_forward(model, z)["encodings"]


def decode(model: VQGAN, codes: Tensor) -> Tensor:
    """Upstream ``VQGAN.decode``."""
    h = F.embedding(codes, model.codebook.embeddings).permute(0, 4, 1, 2, 3)
    return decoder_forward(model.decoder, model.post_vq_conv(h))


def _hinge(real: Tensor, fake: Tensor) -> Tensor:
    return 0.5 * (torch.mean(F.relu(1.0 - real)) + torch.mean(F.relu(1.0 + fake)))


def forward(model: VQGAN, perceptual, x: Tensor, optimizer_idx: int, disc_factor: float = 1.0) -> Tensor:
    """TATS ``VQGAN.forward(x, optimizer_idx)`` + ``training_step``: the loss of one optimiser pass."""
    cfg = model.cfg
    B, C, T, H, W = x.shape
    z = model.pre_vq_conv(encoder_forward(model.encoder, x))
    vq = codebook_forward(model, z, cfg.random_restart)
    x_recon = decoder_forward(model.decoder, model.post_vq_conv(vq["embeddings"]))
    recon_loss = F.l1_loss(x_recon, x) * cfg.l1_weight
    frame_idx = torch.randint(0, T, [B])
    sel = frame_idx.reshape(-1, 1, 1, 1, 1).repeat(1, C, 1, H, W)
    frames = torch.gather(x, 2, sel).squeeze(2)
    frames_recon = torch.gather(x_recon, 2, sel).squeeze(2)
    if optimizer_idx == 0:
        perceptual_loss = perceptual(frames, frames_recon).mean() * cfg.perceptual_weight
        logits_image_fake, pred_image_fake = model.image_discriminator(frames_recon)
        logits_video_fake, pred_video_fake = model.video_discriminator(x_recon)
        g_loss = (cfg.image_gan_weight * -torch.mean(logits_image_fake)
                  + cfg.video_gan_weight * -torch.mean(logits_video_fake))
        aeloss = disc_factor * g_loss
        feat_w = 4.0 / (3 + 1)
        image_feat, video_feat = 0, 0
        if cfg.image_gan_weight > 0:
            _, pred_image_real = model.image_discriminator(frames)
            for i in range(len(pred_image_fake) - 1):
                image_feat += feat_w * F.l1_loss(pred_image_fake[i], pred_image_real[i].detach())
        if cfg.video_gan_weight > 0:
            _, pred_video_real = model.video_discriminator(x)
            for i in range(len(pred_video_fake) - 1):
                video_feat += feat_w * F.l1_loss(pred_video_fake[i], pred_video_real[i].detach())
        gan_feat = disc_factor * cfg.gan_feat_weight * (image_feat + video_feat)
        return recon_loss + vq["commitment_loss"] + aeloss + perceptual_loss + gan_feat
    logits_image_real, _ = model.image_discriminator(frames.detach())
    logits_video_real, _ = model.video_discriminator(x.detach())
    logits_image_fake, _ = model.image_discriminator(frames_recon.detach())
    logits_video_fake, _ = model.video_discriminator(x_recon.detach())
    return disc_factor * (cfg.image_gan_weight * _hinge(logits_image_real, logits_image_fake)
                          + cfg.video_gan_weight * _hinge(logits_video_real, logits_video_fake))


def _toggle(params_on: list[torch.nn.Parameter], params_off: list[torch.nn.Parameter]) -> None:
    """Lightning 1.x ``toggle_optimizer``: only the current optimiser's parameters require grad."""
    for p in params_off:
        p.requires_grad_(False)
    for p in params_on:
        p.requires_grad_(True)


def training_step(model: VQGAN, perceptual, x: Tensor, opt_ae: torch.optim.Optimizer,
                  opt_disc: torch.optim.Optimizer, clip: float = 1.0) -> tuple[float, float]:
    """One upstream step: two optimiser passes, each with its own full forward. Returns (g, d) losses."""
    ae, disc = model.autoencoder_parameters(), model.discriminator_parameters()
    losses = []
    for idx, (opt, on, off) in enumerate(((opt_ae, ae, disc), (opt_disc, disc, ae))):
        _toggle(on, off)
        loss = forward(model, perceptual, x, idx)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(on, clip)
        opt.step()
        losses.append(float(loss.detach()))
    _toggle(ae + disc, [])
    return losses[0], losses[1]
