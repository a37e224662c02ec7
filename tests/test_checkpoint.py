"""Checkpoint loading: safe unpickling, stage detection, tav / Lightning / upstream VQGAN formats."""

from __future__ import annotations

import argparse

import pytest
import torch

from tav.checkpoint import LIGHTNING_STAND_INS, detect_stage, read_checkpoint, safe_load, save_checkpoint
from tav.config import to_dict
from tav.errors import InputError
from tav.vqgan import VQGAN, VQGANConfig, load_vqgan, save_vqgan, vqgan_preset
from tav.vqgan.losses import build_perceptual

from .helpers import clip, read_tsv, spec_tsv, tiny_vqgan_cfg

TSV = spec_tsv("ta2v_vqgan.tsv")


def trained_tiny() -> VQGAN:
    """Tiny model whose codebook and BatchNorm statistics have moved away from their init."""
    torch.manual_seed(0)
    model = VQGAN(tiny_vqgan_cfg()).train()
    with torch.no_grad():
        model(clip(2, 3, 4, 16, 16))
    return model.eval()


def upstream_args(**kw) -> argparse.Namespace:
    """A TA2V ``train_vqgan.py`` namespace: the model flags plus unrelated data / trainer flags."""
    args = dict(embedding_dim=256, n_codes=16384, n_hiddens=32, lr=6e-5, downsample=[4, 8, 8],
                disc_channels=64, disc_layers=3, discriminator_iter_start=10000, disc_loss_type="hinge",
                image_gan_weight=1.0, video_gan_weight=1.0, l1_weight=4.0, gan_feat_weight=4.0,
                perceptual_weight=4.0, i3d_feat=False, restart_thres=1.0, no_random_restart=True,
                norm_type="batch", padding_type="replicate", image_channels=3, data_path="datasets/post_URMP/",
                sequence_length=16, resolution=96, batch_size=8, num_workers=16, image_folder=False,
                stft_data=False, gpus=1, accumulate_grad_batches=6, gradient_clip_val=1.0, max_steps=100000,
                progress_bar_refresh_rate=100, default_root_dir="path/to/save", precision=32, accelerator=None)
    args.update(kw)
    return argparse.Namespace(**args)


def tsv_state_dict(with_lpips: bool = True) -> dict[str, torch.Tensor]:
    """Random tensors with the released URMP VQGAN's keys, shapes and dtypes."""
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for key, shape, dtype in read_tsv(TSV)[0]:
        if key.startswith("perceptual_model.") and not with_lpips:
            continue
        if dtype == "int64":
            sd[key] = torch.tensor(7)
        elif key.endswith("running_var") or key.endswith(".N"):
            sd[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=gen) * 0.02
    return sd


def legacy_ckpt(sd: dict, args: argparse.Namespace) -> dict:
    """The layout of a Lightning-1.5 ``.ckpt`` as written by upstream TA2V."""
    return {"epoch": 6, "global_step": 35999, "pytorch-lightning_version": "1.5.4", "state_dict": sd,
            "callbacks": {"ModelCheckpoint{'monitor': 'val/recon_loss', 'mode': 'min'}": {"best_model_score": None}},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 9e-5, "betas": (0.5, 0.9), "params": [0]}]}],
            "lr_schedulers": [], "hparams_name": "kwargs", "hyper_parameters": {"args": args}}


# ------------------------------------------------------------------------------------------- safe_load
class _Exploit:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))  # unpickling would create the file


def test_safe_load_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Exploit(str(marker))}, path)
    with pytest.raises(InputError) as err:
        safe_load(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "open" in msg and "allow-list" in msg
    assert not marker.exists()


class _Shell:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned-by-pickle",))


def test_safe_load_names_a_refused_global_and_never_advises_weights_only_false(tmp_path, monkeypatch):
    """torch 2.14 words its refusal "unsupported GLOBAL posix.system whose module posix is blocked" and adds advice
    to retry with ``weights_only=False``: we name the global and never pass that advice on."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "shell.pt"
    torch.save({"state_dict": _Shell()}, path)
    with pytest.raises(InputError) as err:
        safe_load(path)
    msg = str(err.value)
    assert "refused to unpickle" in msg and "system" in msg and "allow-list" in msg and "\n" not in msg
    assert "weights_only" not in msg and "corrupt" not in msg
    assert not (tmp_path / "pwned-by-pickle").exists()


def test_safe_load_missing_and_corrupt(tmp_path):
    with pytest.raises(InputError, match="no such checkpoint"):
        safe_load(tmp_path / "nope.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint") as err:
        safe_load(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    noise = tmp_path / "noise.pt"  # random bytes: a corrupt file, not a refused global
    noise.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InputError, match="corrupt or truncated") as err:
        safe_load(noise)
    assert "allow-list" not in str(err.value) and "\n" not in str(err.value)
    assert "weights_only" not in str(err.value)
    whole = tmp_path / "whole.pt"  # a real file cut in half: torch's reason, without its generic advice
    torch.save({"w": torch.zeros(100000)}, whole)
    (tmp_path / "half.pt").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(InputError, match=r"half.pt: not a readable PyTorch checkpoint \(truncated or corrupt\?\): "
                                         r"[^.]+; re-download or re-export it$"):
        safe_load(tmp_path / "half.pt")


def test_safe_load_namespace_and_lightning_stand_in(tmp_path):
    from pytorch_lightning.callbacks.model_checkpoint import ModelCheckpoint  # same qualified name as 1.x

    path = tmp_path / "old.ckpt"
    torch.save({"callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.15)}},
                "hyper_parameters": {"args": argparse.Namespace(n_codes=7, downsample=[4, 8, 8])}}, path)
    obj = safe_load(path)
    (key, state), = obj["callbacks"].items()
    assert key is LIGHTNING_STAND_INS["pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"]
    assert key is not ModelCheckpoint and float(state["best_model_score"]) == pytest.approx(0.15)
    assert obj["hyper_parameters"]["args"].n_codes == 7


def test_detect_stage():
    t = torch.zeros(1)
    assert detect_stage({"stage": "gpt", "config": {}, "state_dict": {}}) == "gpt"
    assert detect_stage({"hyper_parameters": {"stage": "vqgan", "config": {}}, "state_dict": {"a": t}}) == "vqgan"
    assert detect_stage({"state_dict": {"codebook.embeddings": t}}) == "vqgan"
    assert detect_stage({"state_dict": {"transformer_text.x": t, "first_stage_model.codebook.embeddings": t}}) == "gpt"
    assert detect_stage({"input_blocks.0.0.weight": t, "time_embed.0.weight": t}) == "unet"
    assert detect_stage({"cfg": {}, "model": {"post_extract_proj.weight": t}}) == "beats"
    assert detect_stage({"something": t}) is None
    assert detect_stage([1, 2]) is None


# ------------------------------------------------------------------------------------------- VQGAN formats
def test_upstream_lightning_ckpt_loads_strictly(tmp_path):
    sd = tsv_state_dict()
    path = tmp_path / "epoch=6-step=35999-train_recon_loss=0.15.ckpt"
    torch.save(legacy_ckpt(sd, upstream_args()), path)
    model = load_vqgan(path)
    assert not model.training
    cfg = model.cfg
    assert (cfg.norm, cfg.random_restart, cfg.lpips_input_scale, cfg.lr) == ("batch", False, 1.0, 6e-5)
    assert cfg.latent_shape == (4, 12, 12) and cfg == VQGANConfig(**{**to_dict(vqgan_preset("urmp")),
                                                                       "lpips_input_scale": 1.0,
                                                                       "downsample": (4, 8, 8),
                                                                       "betas": (0.5, 0.9)})
    ours = model.state_dict()
    assert bool(ours.pop("codebook.initialised"))
    assert set(ours) == {k for k in sd if not k.startswith("perceptual_model.")}
    for k, v in ours.items():
        assert torch.equal(v, sd[k]), k
    with torch.no_grad():
        video = clip(1, 3, 4, 16, 16)
        codes = model.encode(video)
        assert codes.shape == (1, 1, 2, 2)
        out = model.decode(codes)
        assert out.shape == (1, 3, 4, 16, 16) and torch.isfinite(out).all()
        # nearest code by brute force
        z = model.encode_latents(video).movedim(1, -1).reshape(-1, 256)
        assert torch.equal(torch.cdist(z, model.codebook.embeddings).argmin(1), codes.flatten())
    # the LPIPS weights shipped inside the released file build the perceptual loss
    lp = build_perceptual(1.0, state_dict=sd)
    assert torch.equal(lp.lpips.state_dict()["lin4.model.1.weight"], sd["perceptual_model.lin4.model.1.weight"])


def test_upstream_ckpt_without_lpips_and_odd_resolution(tmp_path):
    path = tmp_path / "vqgan.ckpt"
    torch.save(legacy_ckpt(tsv_state_dict(with_lpips=False), upstream_args(resolution=9)), path)
    model = load_vqgan(path)
    assert model.cfg.resolution == 9 and model.latent_shape == (4, 2, 2)


def test_tav_checkpoint_round_trip(tmp_path):
    model = trained_tiny()
    path = save_vqgan(model, tmp_path / "vqgan.pt", step=3)
    ckpt = read_checkpoint(path, expect="vqgan")
    assert ckpt.format == "tav" and ckpt.raw["step"] == 3 and ckpt.raw["version"] == 1
    loaded = load_vqgan(path)
    assert loaded.cfg == model.cfg and bool(loaded.codebook.initialised)
    video = clip(2, 3, 4, 16, 16, seed=1)
    with torch.no_grad():
        codes = model.encode(video)
        assert torch.equal(loaded.encode(video), codes)
        assert torch.equal(loaded.decode(codes), model.decode(codes))
        assert torch.equal(loaded(video)[0], model(video)[0])


def test_our_lightning_checkpoint_loads(tmp_path):
    model = trained_tiny()
    sd = {f"vqgan.{k}": v for k, v in model.state_dict().items()}
    sd["perceptual.lin0.model.1.weight"] = torch.zeros(1, 64, 1, 1)  # other parts of the wrapper
    path = tmp_path / "last.ckpt"
    run_config = {"model": to_dict(model.cfg), "trainer": {"max_steps": 10}}
    torch.save({"state_dict": sd, "hyper_parameters": {"stage": "vqgan", "config": run_config},
                "pytorch-lightning_version": "2.6.0", "epoch": 0, "global_step": 10}, path)
    loaded = load_vqgan(path)
    video = clip(1, 3, 4, 16, 16, seed=2)
    with torch.no_grad():
        assert torch.equal(loaded(video)[0], model(video)[0])


def test_wrong_stage_files_give_one_line_errors(tmp_path):
    t = torch.zeros(2, 2)
    gpt = tmp_path / "gpt.ckpt"
    torch.save({"state_dict": {"transformer_text.tok_emb.weight": t, "first_stage_model.codebook.embeddings": t},
                "hyper_parameters": {"args": upstream_args()}}, gpt)
    with pytest.raises(InputError, match="GPT checkpoint.*but a video VQGAN checkpoint") as err:
        load_vqgan(gpt)
    assert str(gpt) in str(err.value) and "\n" not in str(err.value)
    unet = tmp_path / "model300000.pt"
    torch.save({"input_blocks.0.0.weight": t, "time_embed.0.weight": t, "out.2.weight": t}, unet)
    with pytest.raises(InputError, match="U-Net"):
        load_vqgan(unet)
    other = tmp_path / "other.pt"
    torch.save({"weight": t}, other)
    with pytest.raises(InputError, match="no recognisable model"):
        load_vqgan(other)


def test_shape_and_key_mismatch_errors(tmp_path):
    model = trained_tiny()
    sd = model.state_dict()
    path = tmp_path / "mismatch.pt"
    save_checkpoint(path, "vqgan", to_dict(tiny_vqgan_cfg(n_codes=64)), sd)
    with pytest.raises(InputError, match=r"codebook\.embeddings has shape \(32, 8\).*\(64, 8\)") as err:
        load_vqgan(path)
    assert str(path) in str(err.value)
    del sd["decoder.conv_last.conv.bias"]
    save_checkpoint(path, "vqgan", to_dict(model.cfg), sd)
    with pytest.raises(InputError, match="1 missing"):
        load_vqgan(path)
    save_checkpoint(path, "vqgan", to_dict(model.cfg), model.state_dict(), version=99)
    with pytest.raises(InputError, match="newer"):
        load_vqgan(path)
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    with pytest.raises(InputError, match="no config"):
        load_vqgan(bare)
    assert torch.equal(load_vqgan(bare, config=model.cfg).codebook.embeddings, model.codebook.embeddings)
