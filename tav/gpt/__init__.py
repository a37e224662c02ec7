"""Text -> video-token GPT (minGPT): config, model with KV cache, sampling, checkpoint loading."""

from tav.gpt.config import GPTConfig, gpt_config_from_dict, gpt_preset
from tav.gpt.load import (
    check_vqgan_compat,
    embedded_vqgan_config,
    file_sha256,
    gpt_config_from_upstream,
    gpt_from_state_dict,
    load_embedded_vqgan,
    load_gpt,
    load_stage1,
    read_gpt_checkpoint,
    save_gpt,
)
from tav.gpt.model import GPT, KVCache, token_accuracy, token_loss
from tav.gpt.sampling import filter_logits, sample_codes

__all__ = [
    "GPT",
    "GPTConfig",
    "KVCache",
    "check_vqgan_compat",
    "embedded_vqgan_config",
    "file_sha256",
    "filter_logits",
    "gpt_config_from_dict",
    "gpt_config_from_upstream",
    "gpt_from_state_dict",
    "gpt_preset",
    "load_embedded_vqgan",
    "load_gpt",
    "load_stage1",
    "read_gpt_checkpoint",
    "sample_codes",
    "save_gpt",
    "token_accuracy",
    "token_loss",
]
