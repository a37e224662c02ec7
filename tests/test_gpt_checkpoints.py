"""Text -> video-token GPT checkpoints: upstream files (TSV shapes, Lightning 1.5 layout with the embedded
VQGAN), our own round trip, wrong stages and mismatched weights."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from tav.checkpoint import Checkpoint, save_checkpoint
from tav.config import to_dict
from tav.errors import InputError
from tav.gpt import (
    GPT,
    GPTConfig,
    check_vqgan_compat,
    embedded_vqgan_config,
    file_sha256,
    gpt_from_state_dict,
    gpt_preset,
    load_gpt,
    save_gpt,
)
from tav.gpt.load import _base_config
from tav.vqgan import VQGAN, save_vqgan, vqgan_from_state_dict, vqgan_preset

from .helpers import rand_ids, read_tsv, spec_tsv, tiny_gpt, tiny_gpt_cfg, tiny_vqgan_cfg

TSV = spec_tsv("ta2v_gpt.tsv")
TSV_GPT_PARAMS = 76_766_208  # header of ta2v_gpt.tsv

def tsv_entries(prefix: str):
    for key, shape, dtype in read_tsv(TSV)[0]:
        if key.startswith(prefix):
            yield key[len(prefix):], tuple(shape), dtype


def test_tsv_state_dict_loads_strictly_with_upstream_offset():
    cfg = gpt_preset("urmp_upstream")
    sd = {}
    for key, shape, _ in tsv_entries("transformer_text."):
        sd[key] = torch.ones(shape).tril_() if key.endswith("attn.mask") else torch.full(shape, 0.01)
    model = gpt_from_state_dict(cfg, sd)
    assert sum(p.numel() for p in model.parameters()) == TSV_GPT_PARAMS
    assert model.tok_emb.weight.shape == (37512, 512) and model.head.weight[0, 0].item() == pytest.approx(0.01)
    with pytest.raises(InputError, match="tok_emb.weight.*text_vocab_offset") as err:
        gpt_from_state_dict(gpt_preset("urmp"), sd)
    assert "\n" not in str(err.value)
    sd["blocks.3.attn.mask"] = torch.ones(1, 1, 1024, 1024)
    with pytest.raises(InputError, match="blocks.3.attn.mask is not the lower-triangular"):
        gpt_from_state_dict(cfg, sd)
    # the embedded VQGAN's architecture comes from its shapes
    vq_sd = {k: torch.zeros(s, dtype=getattr(torch, d)) for k, s, d in tsv_entries("first_stage_model.")}
    vq_cfg = embedded_vqgan_config(vq_sd, {"resolution": 96, "sequence_length": 16})
    urmp = vqgan_preset("urmp")
    for name in ("n_codes", "embedding_dim", "n_hiddens", "norm", "downsample", "disc_channels", "disc_layers",
                 "latent_shape"):
        assert getattr(vq_cfg, name) == getattr(urmp, name), name
    vqgan_from_state_dict(vq_cfg, vq_sd)  # strict


def upstream_gpt_args(**kw) -> argparse.Namespace:
    """A TA2V ``train_text_transformer.py`` namespace (model, data and trainer flags)."""
    args = dict(vqvae="path/to/video/vqgan", stft_vqvae=None, unconditional=False, base_lr=4.5e-5, vocab_size=16384,
                first_stage_vocab_size=16384, block_size=32, n_layer=2, n_head=2, n_embd=32, embd_pdrop=0.2,
                resid_pdrop=0.2, attn_pdrop=0.2, n_unmasked=0, sample_every_n_latent_frames=0,
                first_stage_key="video", cond1_stage_key="text", cond2_stage_key="label",
                data_path="datasets/post_URMP/",
                sequence_length=4, resolution=16, batch_size=8, num_workers=4, image_channels=3, vtokens=False,
                vtokens_pos=False, text_stft_cond=True, text_emb_model="bert", audio_emb_model="STFT",
                text_seq_len=4, truncate_captions=False, gpus=1, max_steps=500000, val_check_interval=0.5,
                sync_batchnorm=True, class_cond_dim=None, default_root_dir="path/to/save")
    args.update(kw)
    return argparse.Namespace(**args)


def tiny_vqgan(n_codes: int = 24) -> VQGAN:
    torch.manual_seed(0)
    return VQGAN(tiny_vqgan_cfg(n_codes=n_codes, downsample=(4, 8, 8), lpips_input_scale=1.0)).eval()


def upstream_gpt_file(tmp_path: Path, **arg_kw) -> tuple[Path, GPT, VQGAN]:
    """A Lightning-1.5 GPT ``.ckpt`` laid out as upstream writes it, with tiny models."""
    vqgan = tiny_vqgan(n_codes=16384)  # 21128 + 16384 ids cover the 30522 BERT ids, as upstream
    gpt = tiny_gpt(text_vocab_size=30522, text_vocab_offset=21128, n_codes=16384, latent_shape=vqgan.latent_shape,
                   embd_pdrop=0.2, resid_pdrop=0.2, attn_pdrop=0.2)
    sd = {f"transformer_text.{k}": v for k, v in gpt.state_dict().items()}
    for i in range(gpt.cfg.n_layer):
        sd[f"transformer_text.blocks.{i}.attn.mask"] = torch.ones(32, 32).tril().view(1, 1, 32, 32)
    sd.update({f"first_stage_model.{k}": v for k, v in vqgan.state_dict().items() if k != "codebook.initialised"})
    sd["first_stage_model.perceptual_model.lin0.model.1.weight"] = torch.zeros(1, 64, 1, 1)
    path = tmp_path / "best_checkpoint-val_text_loss=2.74.ckpt"
    torch.save({"epoch": 3, "global_step": 1000, "pytorch-lightning_version": "1.5.10", "state_dict": sd,
                "optimizer_states": [], "lr_schedulers": [], "hparams_name": "kwargs",
                "hyper_parameters": {"args": upstream_gpt_args(**arg_kw), "ckpt_path": None, "ignore_keys": [],
                                     "first_stage_key": "video", "cond1_stage_key": "text", "pkeep": 1.0,
                                     "sos_token": 0}}, path)
    return path, gpt, vqgan


def test_upstream_ckpt_loads_strictly_with_embedded_vqgan(tmp_path):
    path, gpt, vqgan = upstream_gpt_file(tmp_path)
    loaded, vq = load_gpt(path, with_vqgan=True)
    cfg = loaded.cfg
    assert not loaded.training and (cfg.video_offset, cfg.vocab_size, cfg.latent_shape) == (21128, 37512, (1, 2, 2))
    assert (cfg.n_layer, cfg.embd_pdrop, cfg.text_seq_len, cfg.mask_text_logits_at_sampling) == (2, 0.2, 4, True)
    tokens = rand_ids(cfg, 2, cfg.video_seq_len - 1)
    with torch.no_grad():
        assert torch.equal(loaded.logits(tokens), gpt.eval().logits(tokens))
    assert vq.cfg.downsample == (4, 8, 8) and vq.n_codes == 16384 and bool(vq.codebook.initialised)
    for k, v in vqgan.state_dict().items():
        if k != "codebook.initialised":
            assert torch.equal(vq.state_dict()[k], v), k
    compat = load_gpt(path, mask_text_logits_at_sampling=False)
    assert compat.cfg.mask_text_logits_at_sampling is False
    with pytest.raises(InputError, match="tok_emb.weight") as err:
        load_gpt(path, text_vocab_offset=None)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="unknown key"):
        load_gpt(path, n_layers=3)
    (tmp_path / "clip").mkdir()
    clip_path, _, _ = upstream_gpt_file(tmp_path / "clip", text_emb_model="clip")
    with pytest.raises(InputError, match="text_emb_model='clip'"):
        load_gpt(clip_path)


@pytest.mark.parametrize("pos", ["absolute", "axial"])
def test_tav_and_lightning_round_trip(tmp_path, pos):
    import tav

    model = tiny_gpt(vqgan_hash="ab" * 32, pos_emb=pos)
    path = save_gpt(model, tmp_path / "gpt.pt", step=7)
    loaded = tav.load_gpt(path)
    assert loaded.cfg == model.cfg and not loaded.training
    tokens = rand_ids(model.cfg, 2, 5)
    with torch.no_grad():
        assert torch.equal(loaded.logits(tokens), model.logits(tokens))
    assert load_gpt(path, with_vqgan=True)[1] is None
    # our Lightning checkpoint: the GPT under "gpt.", a run config with the model under "model"
    sd = {f"gpt.{k}": v for k, v in model.state_dict().items()}
    sd["vqgan.codebook.embeddings"] = torch.zeros(24, 8)  # other parts of the module are ignored
    light = tmp_path / "last.ckpt"
    run = {"model": to_dict(model.cfg), "train": {"weight_decay": 0.01}}
    torch.save({"state_dict": sd, "hyper_parameters": {"stage": "gpt", "config": run},
                "pytorch-lightning_version": "2.6.0", "global_step": 3}, light)
    with torch.no_grad():
        assert torch.equal(load_gpt(light).logits(tokens), model.logits(tokens))


def test_wrong_stage_and_mismatched_weights(tmp_path):
    vq_path = save_vqgan(tiny_vqgan(), tmp_path / "vqgan.pt")
    with pytest.raises(InputError, match="holds a tav 'vqgan' checkpoint.*GPT") as err:
        load_gpt(vq_path)
    assert "\n" not in str(err.value)
    model = tiny_gpt()
    sd = model.state_dict()
    del sd["blocks.1.mlp.2.bias"]
    bad = save_checkpoint(tmp_path / "bad.pt", "gpt", to_dict(model.cfg), sd)
    with pytest.raises(InputError, match="1 missing"):
        load_gpt(bad)


def test_vqgan_mismatch_error(tmp_path):
    vqgan = tiny_vqgan()
    vq_path = save_vqgan(vqgan, tmp_path / "vqgan.pt")
    cfg = tiny_gpt_cfg(latent_shape=vqgan.latent_shape)
    check_vqgan_compat(cfg, vqgan, vq_path)
    check_vqgan_compat(GPTConfig(**{**to_dict(cfg), "vqgan_hash": file_sha256(vq_path)}), vqgan, vq_path)
    cases = [(tiny_gpt_cfg(n_codes=16, latent_shape=(1, 2, 2)), "24 codes.*16"),
             (tiny_gpt_cfg(), r"code grid \(1, 2, 2\) differs.*\(2, 2, 3\)"),
             (GPTConfig(**{**to_dict(cfg), "vqgan_hash": "0" * 64}), "sha256")]
    for bad, pattern in cases:
        with pytest.raises(InputError, match=pattern) as err:
            check_vqgan_compat(bad, vqgan, vq_path)
        assert "\n" not in str(err.value) and str(vq_path) in str(err.value)


def test_embedded_vqgan_needs_config_for_other_factors(tmp_path):
    vq = VQGAN(tiny_vqgan_cfg(n_codes=16384))
    sd = vq.state_dict()
    with pytest.raises(InputError, match="2 encoder stages.*vqgan_config"):
        embedded_vqgan_config(sd, {"resolution": 16})
    legacy_sd = {"first_stage_model." + k: v for k, v in sd.items()}
    ckpt = Checkpoint(tmp_path / "x.ckpt", "gpt", "legacy-lightning", legacy_sd, None,
                      vars(upstream_gpt_args(block_size=64)), None)
    cfg = _base_config(ckpt, vq.cfg)
    assert cfg.latent_shape == (2, 4, 4) and cfg.n_codes == 16384 and cfg.block_size == 64
