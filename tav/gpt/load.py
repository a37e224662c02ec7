"""Save and load GPT checkpoints: ``tav`` files, our Lightning files and the released upstream ``.ckpt``.

Formats (all read with ``weights_only=True`` through ``tav.checkpoint``):
- ``tav``: ``{"stage": "gpt", "config": GPTConfig fields, "state_dict": GPT keys}`` (``save_gpt``);
- our Lightning checkpoints: ``hyper_parameters = {"stage": "gpt", "config": GPTConfig fields, or a run
  config holding them under "model"}``; the GPT's tensors sit under the ``gpt.`` prefix (the Lightning
  module's attribute name; ``transformer_text.`` is accepted too). Other tensors are ignored;
- upstream Lightning-1.5 files (``URMP-VAT_GPT.ckpt``, ``Landscape-VAT_GPT.ckpt``): ``state_dict`` =
  ``transformer_text.*`` (the GPT, incl. one causal ``attn.mask`` buffer per block, checked to be
  lower-triangular and dropped) + ``first_stage_model.*`` (the frozen VQGAN used for training, incl.
  discriminators and LPIPS); ``hyper_parameters["args"]`` is a pickled ``argparse.Namespace``. The GPT
  config comes from the Namespace with ``text_vocab_offset=21128`` (upstream's layout).

The embedded VQGAN's architecture is not in the Namespace (it was read from ``args.vqvae`` at training
time): it is rebuilt from the tensor shapes (codebook size and width, n_hiddens, norm, discriminator
size) plus ``args.resolution`` / ``args.sequence_length`` and ``downsample=(4, 8, 8)``, the factors of
both released VQGANs; pass ``vqgan_config=`` for anything else.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tav.checkpoint import Checkpoint, read_checkpoint, save_checkpoint, strict_from_state_dict
from tav.config import to_dict
from tav.errors import InputError
from tav.gpt.config import BERT_VOCAB_SIZE, UPSTREAM_TEXT_OFFSET, GPTConfig, gpt_config_from_dict
from tav.gpt.model import GPT
from tav.utils.fileio import file_sha256  # noqa: F401  (re-exported: what GPTConfig.vqgan_hash records)
from tav.vqgan.config import VQGANConfig, vqgan_config_from_dict
from tav.vqgan.load import load_vqgan, vqgan_from_state_dict
from tav.vqgan.model import VQGAN

log = logging.getLogger(__name__)

GPT_PREFIXES = ("gpt.", "transformer_text.")  # ours (Lightning module attribute), upstream
VQGAN_PREFIX = "first_stage_model."  # the frozen VQGAN copy inside upstream GPT checkpoints
UPSTREAM_DOWNSAMPLE = (4, 8, 8)

# upstream argparse name -> GPTConfig field (values copied unchanged)
_UPSTREAM_FIELDS = {"n_layer": "n_layer", "n_head": "n_head", "n_embd": "n_embd", "block_size": "block_size",
                    "embd_pdrop": "embd_pdrop", "resid_pdrop": "resid_pdrop", "attn_pdrop": "attn_pdrop",
                    "text_seq_len": "text_seq_len"}


# ------------------------------------------------------------------------------------------- upstream
def embedded_vqgan_config(sd: Mapping[str, Tensor], args: Mapping[str, Any] | None = None,
                          where: str = "state dict") -> VQGANConfig:
    """``VQGANConfig`` of a VQGAN state dict (no prefix) from its tensor shapes.

    Read from shapes: ``n_codes``, ``embedding_dim``, ``n_hiddens``, ``image_channels``, ``norm`` and the
    discriminator size; from ``args``: ``resolution``, ``sequence_length`` (and ``downsample`` if present,
    else (4, 8, 8)). Loss weights keep their defaults (irrelevant to a frozen model); ``lpips_input_scale``
    is the upstream value 1.0.
    """
    args = dict(args or {})
    try:
        n_codes, dim = sd["codebook.embeddings"].shape
        n_hiddens, channels = sd["encoder.conv_first.conv.weight"].shape[:2]
        disc_channels = sd["image_discriminator.model0.0.weight"].shape[0]
    except KeyError as err:
        raise InputError(f"{where}: not a VQGAN state dict (missing {err.args[0]})") from None
    disc_layers = sum(1 for k in sd if k.startswith("image_discriminator.model") and k.endswith(".0.weight")) - 2
    norm = "batch" if "encoder.final_block.0.running_mean" in sd else "group"
    data = dict(n_codes=int(n_codes), embedding_dim=int(dim), n_hiddens=int(n_hiddens),
                image_channels=int(channels), norm=norm, disc_channels=int(disc_channels), disc_layers=disc_layers,
                downsample=list(args.get("downsample") or UPSTREAM_DOWNSAMPLE), lpips_input_scale=1.0)
    for key in ("resolution", "sequence_length"):
        if args.get(key) is not None:
            data[key] = int(args[key])
    cfg = vqgan_config_from_dict(data, where=f"{where}: embedded VQGAN")
    n_stages = len({k.split(".")[2] for k in sd if k.startswith("encoder.conv_blocks.")})
    if n_stages != cfg.n_stages:
        raise InputError(f"{where}: the embedded VQGAN has {n_stages} encoder stages, which downsample="
                         f"{cfg.downsample} does not give; pass vqgan_config=VQGANConfig(...) describing it")
    return cfg


def gpt_config_from_upstream(args: Mapping[str, Any], n_codes: int, latent_shape: tuple[int, int, int],
                             where: str = "upstream args") -> GPTConfig:
    """``GPTConfig`` of an upstream ``TextTransformer`` from its argparse namespace (as a dict).

    ``n_codes`` / ``latent_shape`` are those of the VQGAN it was trained with. Only the released setting
    is supported: ``text_emb_model='bert'`` (offset 21128), ``n_unmasked=0``, no ``vtokens_pos``.
    """
    mode = args.get("text_emb_model")
    if mode != "bert" or args.get("cond1_stage_key", "text") != "text":
        raise InputError(f"{where}: text_emb_model={mode!r}, cond1_stage_key={args.get('cond1_stage_key')!r}: only "
                         "upstream's BERT text GPT can be loaded (its CLIP mode quantised features ill-definedly)")
    if args.get("n_unmasked") or args.get("vtokens_pos") or args.get("vtokens"):
        raise InputError(f"{where}: n_unmasked / vtokens / vtokens_pos are set; tav supports only the released "
                         "causal GPT over VQGAN-encoded videos")
    data = {ours: args[theirs] for theirs, ours in _UPSTREAM_FIELDS.items() if args.get(theirs) is not None}
    data.update(text_mode="bert", text_vocab_size=BERT_VOCAB_SIZE, text_vocab_offset=UPSTREAM_TEXT_OFFSET,
                n_codes=int(n_codes), latent_shape=list(latent_shape), mask_text_logits_at_sampling=True)
    return gpt_config_from_dict(data, where=where)


def _drop_causal_masks(sd: dict[str, Tensor], block_size: int, where: str) -> dict[str, Tensor]:
    """Remove upstream's ``blocks.N.attn.mask`` buffers after checking each is the plain causal mask."""
    out, causal = {}, None
    for k, v in sd.items():
        if not k.endswith(".attn.mask"):
            out[k] = v
            continue
        if causal is None:
            causal = torch.ones(block_size, block_size).tril_().view(1, 1, block_size, block_size)
        if tuple(v.shape) != tuple(causal.shape) or not torch.equal(v.to(causal.dtype) != 0, causal != 0):
            raise InputError(f"{where}: {k} is not the lower-triangular causal mask of block_size {block_size} "
                             "(n_unmasked > 0?), which tav does not implement")
    return out


_VOCAB_HINT = " (check text_vocab_offset: 21128 for released weights)"


def gpt_from_state_dict(cfg: GPTConfig, state_dict: Mapping[str, Tensor], where: str = "state dict") -> GPT:
    """Build ``GPT(cfg)`` and load ``state_dict`` (no prefix) strictly; upstream causal-mask buffers are
    checked and dropped. Missing, unexpected or mis-shaped tensors raise a one-line ``InputError``
    (``tav.checkpoint.strict_from_state_dict``). Returns the model in train mode on CPU."""
    sd = _drop_causal_masks(dict(state_dict), cfg.block_size, where)
    return strict_from_state_dict(lambda: GPT(cfg), sd, where, "GPT",
                                  shape_hints={"tok_emb.weight": _VOCAB_HINT, "head.weight": _VOCAB_HINT})


# ------------------------------------------------------------------------------------------- files
def _sub(sd: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _gpt_tensors(ckpt: Checkpoint) -> dict[str, Tensor]:
    if ckpt.format == "tav":
        return dict(ckpt.state_dict)
    for prefix in GPT_PREFIXES:
        sd = _sub(ckpt.state_dict, prefix)
        if sd:
            return sd
    if ckpt.format == "lightning" and "tok_emb.weight" in ckpt.state_dict:
        return dict(ckpt.state_dict)
    raise InputError(f"{ckpt.path}: no GPT tensors under {' or '.join(GPT_PREFIXES)}")


def _embedded_vqgan_sd(ckpt: Checkpoint) -> dict[str, Tensor]:
    return _sub(ckpt.state_dict, VQGAN_PREFIX)


def _base_config(ckpt: Checkpoint, vqgan_config: VQGANConfig | None) -> GPTConfig:
    where = str(ckpt.path)
    if ckpt.config is not None:
        data = ckpt.config.get("model") if isinstance(ckpt.config.get("model"), dict) else ckpt.config
        return gpt_config_from_dict(dict(data), where=f"{where}: config")
    if ckpt.legacy_args is None:
        raise InputError(f"{where}: holds GPT weights but no config (a bare state dict); convert it first")
    vq_sd = _embedded_vqgan_sd(ckpt)
    if vqgan_config is None:
        if not vq_sd:
            raise InputError(f"{where}: no embedded VQGAN ({VQGAN_PREFIX}*); pass vqgan_config=VQGANConfig(...)")
        vqgan_config = embedded_vqgan_config(vq_sd, ckpt.legacy_args, where)
    return gpt_config_from_upstream(ckpt.legacy_args, vqgan_config.n_codes, vqgan_config.latent_shape,
                                    where=f"{where}: hyper_parameters.args")


def _apply_overrides(cfg: GPTConfig, overrides: Mapping[str, Any], where: str) -> GPTConfig:
    if not overrides:
        return cfg
    return gpt_config_from_dict({**to_dict(cfg), **overrides}, where=f"{where}: overrides")


def read_gpt_checkpoint(path: str | os.PathLike, vqgan_config: VQGANConfig | None = None,
                        **overrides: Any) -> tuple[GPTConfig, dict[str, Tensor], Checkpoint]:
    """Config (with ``overrides`` applied), GPT state dict (prefix removed) and raw ``Checkpoint``."""
    ckpt = read_checkpoint(path, expect="gpt")
    cfg = _apply_overrides(_base_config(ckpt, vqgan_config), overrides, str(ckpt.path))
    return cfg, _gpt_tensors(ckpt), ckpt


def load_embedded_vqgan(ckpt: Checkpoint, gpt_cfg: GPTConfig | None = None,
                        vqgan_config: VQGANConfig | None = None) -> VQGAN | None:
    """The VQGAN stored under ``first_stage_model.*`` (eval mode, CPU), or ``None`` if there is none.

    Its config: ``vqgan_config``, else the run config's ``vqgan`` section (our files), else the shapes.
    """
    sd = _embedded_vqgan_sd(ckpt)
    if not sd:
        return None
    where = f"{ckpt.path}: {VQGAN_PREFIX}*"
    if vqgan_config is None and ckpt.config is not None and isinstance(ckpt.config.get("vqgan"), dict):
        vqgan_config = vqgan_config_from_dict(ckpt.config["vqgan"], where=f"{ckpt.path}: config.vqgan")
    if vqgan_config is None:
        vqgan_config = embedded_vqgan_config(sd, ckpt.legacy_args, where)
    model = vqgan_from_state_dict(vqgan_config, sd, where=where).eval()
    if gpt_cfg is not None:
        check_vqgan_compat(gpt_cfg, model)
    return model


def load_gpt(path: str | os.PathLike, device: str | torch.device = "cpu", *, with_vqgan: bool = False,
             vqgan_config: VQGANConfig | None = None, **overrides: Any) -> GPT | tuple[GPT, VQGAN | None]:
    """GPT in eval mode on ``device`` from a ``tav`` file, our Lightning file or an upstream ``.ckpt``.

    ``overrides`` replace stored ``GPTConfig`` fields (e.g. ``text_vocab_offset=21128``,
    ``mask_text_logits_at_sampling=False``). ``with_vqgan=True`` returns ``(gpt, vqgan)`` where ``vqgan``
    is the embedded ``first_stage_model`` (what upstream decodes with) or ``None``. ``vqgan_config``
    describes that embedded VQGAN when its shapes and the Namespace do not (see module docstring).
    Wrong-stage files and mismatched weights raise a one-line ``InputError`` naming the file.
    """
    cfg, sd, ckpt = read_gpt_checkpoint(path, vqgan_config, **overrides)
    model = gpt_from_state_dict(cfg, sd, where=str(ckpt.path)).to(device).eval()
    if not with_vqgan:
        return model
    vqgan = load_embedded_vqgan(ckpt, cfg, vqgan_config)
    return model, None if vqgan is None else vqgan.to(device)


def load_stage1(gpt_path: str | os.PathLike, vqgan_path: str | os.PathLike,
                device: str | torch.device = "cpu") -> tuple[GPT, VQGAN]:
    """The TA2V stage 1 for sampling: the GPT and the VQGAN it was trained on, in eval mode on ``device``.

    The VQGAN must match the GPT (codebook, code grid, file hash when recorded: one-line ``InputError``). An
    upstream GPT file carries its own copy of the VQGAN; when that copy differs from ``vqgan_path``, it is
    the one decoded with (what upstream did), with a warning.
    """
    gpt, embedded = load_gpt(gpt_path, device, with_vqgan=True)
    vqgan = load_vqgan(vqgan_path, device)
    check_vqgan_compat(gpt.cfg, vqgan, vqgan_path)
    if embedded is not None:
        same = all(torch.equal(v, embedded.state_dict()[k]) for k, v in vqgan.state_dict().items())
        if not same:
            log.warning("%s differs from the VQGAN embedded in %s; decoding with the embedded one (upstream "
                        "behaviour)", vqgan_path, gpt_path)
            vqgan = embedded
    return gpt, vqgan.eval()


def save_gpt(model: GPT, path: str | os.PathLike, **extra: Any) -> Path:
    """Write ``model`` as a ``tav`` checkpoint (config + state dict; ``extra`` adds e.g. ``step``)."""
    return save_checkpoint(path, "gpt", to_dict(model.cfg), model.state_dict(), **extra)


# ------------------------------------------------------------------------------------------- VQGAN check
def check_vqgan_compat(gpt_cfg: GPTConfig, vqgan: VQGAN, vqgan_path: str | os.PathLike | None = None) -> None:
    """Raise a one-line ``InputError`` if ``vqgan`` is not the VQGAN the GPT was trained on.

    Compares the codebook size and code grid, and the file hash when both ``gpt_cfg.vqgan_hash`` and
    ``vqgan_path`` are known.
    """
    name = str(vqgan_path) if vqgan_path is not None else "VQGAN"
    if vqgan.n_codes != gpt_cfg.n_codes:
        raise InputError(f"{name}: codebook has {vqgan.n_codes} codes but the GPT was trained on a VQGAN with "
                         f"{gpt_cfg.n_codes}; use the VQGAN checkpoint the GPT was trained with")
    if tuple(vqgan.latent_shape) != tuple(gpt_cfg.latent_shape):
        raise InputError(f"{name}: code grid {tuple(vqgan.latent_shape)} differs from the GPT's "
                         f"{tuple(gpt_cfg.latent_shape)}; use the VQGAN checkpoint the GPT was trained with")
    if gpt_cfg.vqgan_hash and vqgan_path is not None:
        digest = file_sha256(vqgan_path)
        if digest != gpt_cfg.vqgan_hash:
            raise InputError(f"{name}: sha256 {digest[:12]}... differs from the VQGAN the GPT was trained on "
                             f"({gpt_cfg.vqgan_hash[:12]}...); use that checkpoint")

