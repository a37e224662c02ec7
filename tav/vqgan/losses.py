"""VQGAN training losses: L1 + commitment + LPIPS + PatchGAN + feature matching.

Source: the VQGAN objective of Esser et al. 2021 (https://github.com/CompVis/taming-transformers) with
the two-discriminator video variant of TATS (https://github.com/songweige/TATS). Hinge loss: Lim & Ye
2017; feature matching: pix2pixHD (Wang et al. 2018).

Deliberate differences from upstream:
- before ``discriminator_iter_start`` the discriminators are not run at all (upstream runs them with
  weight 0, so the losses and gradients are the same; only their BatchNorm running statistics differ);
- LPIPS is always in eval mode (upstream built it with `.eval()`, but Lightning's `train()` re-enables the
  dropout of its linear heads; inferred);
- LPIPS sees ``lpips_input_scale * x`` (default 2: [-1, 1]; upstream fed [-0.5, 0.5], compat value 1).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tav.errors import InputError
from tav.vqgan.config import VQGANConfig
from tav.vqgan.model import VQGAN

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's VGG16 ImageNet weights (LPIPS backbone)
VGG16_URL = "https://download.pytorch.org/models/" + VGG16_FILE
_LPIPS_MIN_SIDE = 16  # smaller frames are replicate-padded up to this size


# ------------------------------------------------------------------------------------------- GAN terms
def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss 0.5 * (mean relu(1 - real) + mean relu(1 + fake)); scalar >= 0."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Non-saturating GAN discriminator loss 0.5 * (mean softplus(-real) + mean softplus(fake))."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


D_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


def generator_adv_loss(logits_fake: Tensor) -> Tensor:
    """Generator adversarial loss -mean(D(fake)) (for both hinge and vanilla discriminators)."""
    return -logits_fake.mean()


def feature_matching_loss(feats_fake: list[Tensor], feats_real: list[Tensor], layer_weight: float) -> Tensor:
    """``layer_weight * sum_i L1(fake_i, sg(real_i))`` over all discriminator blocks but the logits."""
    loss = feats_fake[0].new_zeros(())
    for fake, real in zip(feats_fake[:-1], feats_real[:-1], strict=True):
        loss = loss + layer_weight * F.l1_loss(fake, real.detach())
    return loss


def gan_factor(step: int, start: int) -> float:
    """1.0 once ``step >= start`` (``discriminator_iter_start``), else 0.0."""
    return 1.0 if step >= start else 0.0


def random_frame_index(video: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One frame index per clip, ``(B,)`` long in [0, T), on ``video``'s device."""
    idx = torch.randint(0, video.shape[2], (video.shape[0],), generator=generator,
                        device=generator.device if generator is not None else video.device)
    return idx.to(video.device)


def select_frames(video: Tensor, frame_idx: Tensor) -> Tensor:
    """Frame ``frame_idx[b]`` of each clip: ``(B, C, T, H, W)`` -> ``(B, C, H, W)``."""
    return video[torch.arange(video.shape[0], device=video.device), :, frame_idx]


# ------------------------------------------------------------------------------------------- LPIPS
class Perceptual(nn.Module):
    """LPIPS-VGG distance with a fixed input scale; frozen and always in eval mode.

    ``forward(x, y)``: frames ``(B, 3, H, W)`` in [-0.5, 0.5] -> ``(B,)`` distances >= 0. Inputs are
    multiplied by ``input_scale`` first: 2.0 gives LPIPS its expected [-1, 1]; 1.0 reproduces upstream.
    Frames smaller than 16 px are replicate-padded to 16 (VGG16 pools four times).
    """

    def __init__(self, net: nn.Module, input_scale: float, random_backbone: bool):
        super().__init__()
        self.lpips = net.eval().requires_grad_(False)
        self.input_scale = input_scale
        self.random_backbone = random_backbone  # True only for tests: the distance is then meaningless

    def train(self, mode: bool = True) -> Perceptual:
        return self  # frozen metric: never switch dropout on

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        s = self.input_scale
        x, y = x * s, y * s
        short = _LPIPS_MIN_SIDE - min(x.shape[-2:])
        if short > 0:  # VGG16's four max-pools need >= 16 px (e.g. the README's --resolution 9)
            pad = (0, max(0, _LPIPS_MIN_SIDE - x.shape[-1]), 0, max(0, _LPIPS_MIN_SIDE - x.shape[-2]))
            x, y = F.pad(x, pad, mode="replicate"), F.pad(y, pad, mode="replicate")
        return self.lpips(x, y).flatten()


def _vgg_to_lpips_keys(vgg: dict[str, Tensor], net: nn.Module) -> dict[str, Tensor]:
    """torchvision ``features.{i}.{weight,bias}`` -> LPIPS ``net.slice{k}.{i}.*`` (same layer objects)."""
    wanted = {k.split(".", 2)[2]: k for k in net.state_dict() if k.startswith("net.slice")}  # "0.weight" -> key
    out = {}
    for name, t in vgg.items():
        if name.startswith("features.") and name[len("features."):] in wanted:
            out[wanted[name[len("features."):]]] = t
    missing = set(wanted.values()) - set(out)
    if missing:
        raise InputError(f"VGG16 file lacks {len(missing)} backbone tensors (e.g. {sorted(missing)[0]}); "
                         f"expected torchvision's {VGG16_FILE}")
    return out


def _find_vgg(vgg_path: str | Path | None) -> Path:
    from tav.utils.paths import ckpt_dir

    if vgg_path is not None:
        candidates = [Path(vgg_path)]
    else:
        candidates = [ckpt_dir() / VGG16_FILE, Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE]
    for c in candidates:
        if c.is_file():
            return c
    raise InputError(f"LPIPS needs the VGG16 weights {candidates[0]}: download {VGG16_URL} to "
                     f"{' or '.join(str(c) for c in candidates)} (or load LPIPS from a released VQGAN .ckpt)")


def _new_lpips_vgg() -> nn.Module:
    """``lpips.LPIPS`` v0.1 VGG with the wheel's linear heads and an uninitialised-weights backbone."""
    import lpips  # heavy import (torchvision), only when a perceptual loss is built

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecated `pretrained=` argument
        return lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)


def _load_lpips_state(net: nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Load LPIPS keys (bare, or a whole released VQGAN state dict with ``perceptual_model.*``)."""
    prefix = "perceptual_model."
    if any(k.startswith(prefix) for k in state_dict):
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    result = net.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("lins.")]  # `lins.i` aliases `lin{i}`
    if missing or result.unexpected_keys:
        raise InputError(f"LPIPS state dict does not match LPIPS-VGG: missing {missing[:2]}, "
                         f"unexpected {result.unexpected_keys[:2]}")


def build_perceptual(input_scale: float = 2.0, vgg_path: str | Path | None = None,
                     state_dict: dict[str, Tensor] | None = None, random_backbone: bool = False) -> Perceptual:
    """LPIPS-VGG (v0.1 linear heads from the ``lpips`` wheel) with its VGG16 backbone from a local file.

    Sources, first match wins: ``state_dict`` (LPIPS keys, bare or with the released checkpoints'
    ``perceptual_model.`` prefix: the released VQGAN .ckpt carries the whole LPIPS); else
    ``random_backbone=True`` (tests only; warns); else the torchvision file ``vgg_path`` or
    ``vgg16-397923af.pth`` in ``saved_ckpts/`` ($TAV_CKPT_DIR) or the torch hub cache. Nothing is
    downloaded; a missing file raises ``InputError`` naming it.
    """
    from tav.checkpoint import safe_load

    vgg_file = _find_vgg(vgg_path) if state_dict is None and not random_backbone else None  # fail fast
    net = _new_lpips_vgg()
    if state_dict is not None:
        _load_lpips_state(net, state_dict)
    elif random_backbone:
        warnings.warn("LPIPS built with a random VGG16 backbone: perceptual losses are meaningless "
                      "(use only in tests)", stacklevel=2)
    else:
        net.load_state_dict(_vgg_to_lpips_keys(safe_load(vgg_file), net), strict=False)
    return Perceptual(net, input_scale, random_backbone=random_backbone and state_dict is None)


# ------------------------------------------------------------------------------------------- VQGAN objective
def _gan_generator_terms(model: VQGAN, video: Tensor, recon: Tensor, frames: Tensor,
                         frames_rec: Tensor) -> dict[str, Tensor]:
    """Adversarial and feature-matching terms of the generator pass (before ``gan_factor``)."""
    cfg = model.cfg
    layer_w = 4.0 / (cfg.disc_layers + 1)
    logits_img, feats_img = model.image_discriminator(frames_rec)
    logits_vid, feats_vid = model.video_discriminator(recon)
    with torch.no_grad():
        _, real_img = model.image_discriminator(frames)
        _, real_vid = model.video_discriminator(video)
    adv = cfg.image_gan_weight * generator_adv_loss(logits_img) + cfg.video_gan_weight * generator_adv_loss(logits_vid)
    feat = recon.new_zeros(())
    if cfg.image_gan_weight > 0:
        feat = feat + feature_matching_loss(feats_img, real_img, layer_w)
    if cfg.video_gan_weight > 0:
        feat = feat + feature_matching_loss(feats_vid, real_vid, layer_w)
    return {"g_adv": adv, "feat_match": cfg.gan_feat_weight * feat}


def gradient_difference_loss(recon: Tensor, video: Tensor, exponent: int = 1) -> Tensor:
    """Mean distance between the horizontal and vertical pixel differences of two ``(..., H, W)`` videos: L1
    (``exponent`` 1) or squared (2). Squared, it is an MSE whose weight grows with spatial frequency as
    4 sin²(ω/2) per axis, so corners and thin tips count more while flat colour keeps the weight of the MSE.

    Source: the gradient difference loss of Mathieu et al. 2016 (arXiv:1511.05440), on signed differences.
    """
    def dx(v: Tensor) -> Tensor:
        return v[..., :, 1:] - v[..., :, :-1]

    def dy(v: Tensor) -> Tensor:
        return v[..., 1:, :] - v[..., :-1, :]

    dist = F.l1_loss if exponent == 1 else F.mse_loss
    return dist(dx(recon), dx(video)) + dist(dy(recon), dy(video))


def chroma_loss(recon: Tensor, video: Tensor) -> Tensor:
    """MSE between the chroma of two ``(B, C, ...)`` videos: each pixel minus the mean of its C channels.

    A grey offset (the same error on every channel) costs nothing; an error on one of three channels costs
    2/3 of its MSE.
    """
    return F.mse_loss(recon - recon.mean(dim=1, keepdim=True), video - video.mean(dim=1, keepdim=True))


def reconstruction_loss(cfg: VQGANConfig, recon: Tensor, video: Tensor) -> Tensor:
    """``l1_weight * L1 + l2_weight * MSE + grad_weight * edges + chroma_weight * chroma MSE`` between two
    ``(B, C, T, H, W)`` videos (each term only if set; the edge term's exponent is ``grad_exponent``)."""
    loss = cfg.l1_weight * F.l1_loss(recon, video)
    if cfg.l2_weight:
        loss = loss + cfg.l2_weight * F.mse_loss(recon, video)
    if cfg.grad_weight:
        loss = loss + cfg.grad_weight * gradient_difference_loss(recon, video, cfg.grad_exponent)
    if cfg.chroma_weight:
        loss = loss + cfg.chroma_weight * chroma_loss(recon, video)
    return loss


def generator_loss(model: VQGAN, perceptual: Perceptual | None, video: Tensor, recon: Tensor,
                   vq: dict[str, Tensor], step: int, frame_idx: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Autoencoder loss of one step: recon + commitment + perceptual + factor * (adv + feature matching).

    ``video``/``recon``: ``(B, C, T, H, W)`` in [-0.5, 0.5] (recon with gradient); ``vq``: the dict of
    ``model(video)``; ``frame_idx (B,)``: the frame each clip shows the 2D discriminator and LPIPS.
    ``perceptual`` may be None only when ``cfg.perceptual_weight == 0``. Returns ``(loss, parts)``,
    parts detached for logging.
    """
    cfg = model.cfg
    parts = {"recon_loss": reconstruction_loss(cfg, recon, video), "commitment_loss": vq["commitment_loss"]}
    frames, frames_rec = select_frames(video, frame_idx), select_frames(recon, frame_idx)
    if cfg.perceptual_weight > 0:
        if perceptual is None:
            raise InputError("vqgan.perceptual_weight > 0 needs an LPIPS module (build_perceptual)")
        parts["perceptual_loss"] = cfg.perceptual_weight * perceptual(frames, frames_rec).mean()
    factor = gan_factor(step, cfg.discriminator_iter_start)
    if factor > 0:
        gan = _gan_generator_terms(model, video, recon, frames, frames_rec)
        parts.update({k: factor * v for k, v in gan.items()})
    loss = sum(parts.values())
    parts["perplexity"] = vq["perplexity"]
    return loss, {k: v.detach() for k, v in parts.items()}


def discriminator_loss(model: VQGAN, video: Tensor, recon: Tensor, step: int,
                       frame_idx: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Discriminator loss: factor * (w_img * d(D2(frame), D2(frame_rec)) + w_vid * d(D3(x), D3(x_rec))).

    Inputs are detached here. ``d`` is the hinge or vanilla loss of ``cfg.disc_loss_type``. Before
    ``discriminator_iter_start`` returns a zero scalar without running the discriminators.
    """
    cfg = model.cfg
    factor = gan_factor(step, cfg.discriminator_iter_start)
    if factor == 0:
        zero = video.new_zeros(())
        return zero, {"d_image_loss": zero, "d_video_loss": zero}
    d_loss = D_LOSSES[cfg.disc_loss_type]
    video, recon = video.detach(), recon.detach()
    frames, frames_rec = select_frames(video, frame_idx), select_frames(recon, frame_idx)
    logits_real_img, _ = model.image_discriminator(frames)
    logits_real_vid, _ = model.video_discriminator(video)
    logits_fake_img, _ = model.image_discriminator(frames_rec)
    logits_fake_vid, _ = model.video_discriminator(recon)
    d_img = d_loss(logits_real_img, logits_fake_img)
    d_vid = d_loss(logits_real_vid, logits_fake_vid)
    loss = factor * (cfg.image_gan_weight * d_img + cfg.video_gan_weight * d_vid)
    return loss, {"d_image_loss": d_img.detach(), "d_video_loss": d_vid.detach()}
