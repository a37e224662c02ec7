"""TIA2V: text + image + audio to video with three pixel-space diffusion U-Nets.

- ``TIA2VUNetConfig`` / ``tia2v_preset``: the content, motion and SHR architectures;
- ``TIA2VUNet``: the networks, in upstream's state-dict layout;
- ``load_tia2v_unet`` / ``save_tia2v_unet`` / ``transfer_content_to_motion``: checkpoints.
"""

from tav.tia2v.config import TIA2VUNetConfig, tia2v_config_from_dict, tia2v_preset
from tav.tia2v.load import (
    TIA2V_PROCESS,
    load_tia2v_unet,
    read_tia2v_checkpoint,
    save_tia2v_unet,
    tia2v_config_from_state_dict,
    transfer_content_to_motion,
)
from tav.tia2v.unet import TIA2VUNet

__all__ = [
    "TIA2VUNetConfig", "tia2v_config_from_dict", "tia2v_preset", "TIA2VUNet", "TIA2V_PROCESS", "load_tia2v_unet",
    "read_tia2v_checkpoint", "save_tia2v_unet", "tia2v_config_from_state_dict", "transfer_content_to_motion",
]
