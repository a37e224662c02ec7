"""Video VQGAN (TATS architecture): config, model, EMA codebook, discriminators, losses, loading."""

from tav.vqgan.config import VQGANConfig, vqgan_config_from_dict, vqgan_preset
from tav.vqgan.load import (
    load_vqgan,
    read_vqgan_checkpoint,
    save_vqgan,
    vqgan_config_from_upstream,
    vqgan_from_state_dict,
)
from tav.vqgan.losses import Perceptual, build_perceptual, discriminator_loss, generator_loss
from tav.vqgan.model import VQGAN
from tav.vqgan.quantizer import EMACodebook

__all__ = [
    "VQGAN",
    "EMACodebook",
    "Perceptual",
    "VQGANConfig",
    "build_perceptual",
    "discriminator_loss",
    "generator_loss",
    "load_vqgan",
    "read_vqgan_checkpoint",
    "save_vqgan",
    "vqgan_config_from_dict",
    "vqgan_config_from_upstream",
    "vqgan_from_state_dict",
    "vqgan_preset",
]
