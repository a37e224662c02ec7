"""tav: text- and audio-guided video generation (TA2V and TIA2V), re-implemented.

Public entry points are imported lazily so that ``import tav`` stays cheap (no torch import).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_vqgan": ("tav.vqgan.load", "load_vqgan"),
    "load_gpt": ("tav.gpt.load", "load_gpt"),
    "load_unet": ("tav.diffusion.load", "load_unet"),
    "load_diffusion": ("tav.diffusion.load", "load_diffusion"),
    "load_tia2v_unet": ("tav.tia2v.load", "load_tia2v_unet"),
    "save_tia2v_unet": ("tav.tia2v.load", "save_tia2v_unet"),
    "get_encoder": ("tav.encoders.registry", "get_encoder"),
    "VATDataset": ("tav.data.dataset", "VATDataset"),
    "VATDataModule": ("tav.data.datamodule", "VATDataModule"),
    "load_data_config": ("tav.data.config", "load_data_config"),
    "generate": ("tav.pipelines.generate", "generate"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'tav' has no attribute {name!r}")


__all__ = list(_LAZY)
