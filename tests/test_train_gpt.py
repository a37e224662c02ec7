"""GPT training (scripts/train_text_transformer.py + tav.training.gpt_module + tav.data.token_cache): seed
line, checkpoints that load through tav.load_gpt, resume, token cache, VQGAN checks, overfit. Tiny, CPU."""

import copy
import dataclasses
import hashlib
import math
import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from tav.checkpoint import safe_load
from tav.config import from_dict
from tav.data import token_cache
from tav.data.config import DataConfig
from tav.data.dataset import VATDataset
from tav.errors import InputError
from tav.gpt import GPT, check_vqgan_compat, gpt_preset, load_gpt, save_gpt
from tav.training.gpt_module import GPTModule, GPTTrainConfig, effective_lr, lr_factor, param_groups
from tav.vqgan import VQGAN, VQGANConfig, load_vqgan, save_vqgan, vqgan_preset
from tav_scripts import train_text_transformer as script

from .helpers import make_tiny_vat, metrics, optimizer_steps

SEED_LINE = (
    "--num_workers 4 --val_check_interval 0.5 --progress_bar_refresh_rate 100 --gpus 1 --sync_batchnorm "
    "--batch_size 8 --first_stage_key video --cond1_stage_key text --text_stft_cond --text_emb_model bert "
    "--vqvae path/to/video/vqgan --data_path datasets/post_URMP/ --load_vid_len 30 --default_root_dir path/to/save "
    "--base_lr 4.5e-05 --first_stage_vocab_size 16384 --block_size 1024 --n_layer 12 --n_head 8 --n_embd 512 "
    "--resolution 96 --sequence_length 16 --text_seq_len 12 --max_steps 500000 --embd_pdrop 0.2 --resid_pdrop 0.2 "
    "--attn_pdrop 0.2"
).split()


def _tiny_vqgan_file(path: Path, seed: int, data: Path) -> Path:
    """The tiny VQGAN preset (GroupNorm, so train- and eval-mode latents agree) with its codebook initialised
    from the latents of every training window, so different windows map to different codes."""
    cfg = from_dict(DataConfig, {"resolution": 16, "sequence_length": 4, "downsample": [2, 4, 4],
                                 "frames_per_file": 8, "tokenizer": "none"})
    windows = [VATDataset(data, "train", dataclasses.replace(cfg, train_crop=str(s)))[i]["video"]
               for s in range(5) for i in range(2)]
    torch.manual_seed(seed)
    vqgan = VQGAN(dataclasses.replace(vqgan_preset("tiny"), norm="group", n_hiddens=16)).train()
    with torch.no_grad():
        # data-dependent codebook init from noisy copies: no two codes tie for a clean window's latent
        vqgan(torch.cat([torch.stack(windows)] * 2) + 0.05 * torch.randn(20, 3, 4, 16, 16))
    return save_vqgan(vqgan.eval(), path)


@pytest.fixture(scope="module")
def vqgans(tmp_path_factory, vat):
    folder = tmp_path_factory.mktemp("vqgan")
    return _tiny_vqgan_file(folder / "a.ckpt", 0, vat), _tiny_vqgan_file(folder / "b.ckpt", 1, vat)


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tiny(data, vqgan, root, *extra):
    return ["--config", "tiny", "--vqvae", str(vqgan), "--data_path", str(data), "--load_vid_len", "8",
            "--default_root_dir", str(root), "--accelerator", "cpu", "--devices", "1", "--num_workers", "0",
            "--progress_bar_refresh_rate", "0", "--log_every_n_steps", "1", *map(str, extra)]


class Probe(pl.Callback):
    """Records the state fit starts from and the module at the end."""

    def __init__(self):
        self.start_step, self.start_opt, self.module = None, None, None

    def on_train_start(self, trainer, pl_module):
        self.start_step = trainer.global_step
        self.start_opt = copy.deepcopy(trainer.optimizers[0].state_dict())

    def on_train_end(self, trainer, pl_module):
        self.module = pl_module


# ------------------------------------------------------------------------------------------- CLI
def test_seed_line_parses(vat, tmp_path, capsys):
    """The README line with its paths pointed at a URMP-shaped VQGAN (16384 codes, 96 px, 16 frames)."""
    cfg = VQGANConfig(embedding_dim=4, n_codes=16384, n_hiddens=4, norm="batch", disc_channels=4, disc_layers=1,
                      resolution=96, sequence_length=16, downsample=(4, 8, 8))
    vq = save_vqgan(VQGAN(cfg), tmp_path / "urmp_vqgan.ckpt")
    argv = list(SEED_LINE)
    for flag, value in (("--vqvae", vq), ("--data_path", vat), ("--default_root_dir", tmp_path / "run")):
        argv[argv.index(flag) + 1] = str(value)
    assert script.main([*argv, "--dry_run"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
    m, t, d, tr = out["model"], out["train"], out["data"], out["trainer"]
    assert (m["n_codes"], m["latent_shape"], m["block_size"], m["n_layer"], m["n_head"], m["n_embd"]) == \
        (16384, [4, 12, 12], 1024, 12, 8, 512)
    assert (m["embd_pdrop"], m["resid_pdrop"], m["attn_pdrop"], m["text_seq_len"]) == (0.2, 0.2, 0.2, 12)
    assert (m["text_mode"], m["text_vocab_offset"], m["vqgan_hash"]) == ("bert", None, sha(vq))
    assert (t["batch_size"], t["num_workers"], t["base_lr"], t["first_stage_key"], t["cond_key"]) == \
        (8, 4, 4.5e-5, "video", "text")
    assert (t["max_steps"], t["save_every_n_steps"], t["weight_decay"], t["lr_schedule"]) == \
        (500000, 20000, 0.01, "cosine_steps")
    assert out["world_size"] == 1 and out["effective_lr"] == pytest.approx(3.6e-4)  # 1 * 1 * 8 * 4.5e-5
    assert (d["frames_per_file"], d["resolution"], d["sequence_length"], d["text_seq_len"], d["tokenizer"]) == \
        (30, 96, 16, 12, "bert")
    assert (tr["max_steps"], tr["val_check_interval"], tr["progress_bar_refresh_rate"], tr["sync_batchnorm"]) == \
        (500000, 0.5, 100, True)
    assert out["vqgan_path"] == str(vq) and "--text_stft_cond" in out["command"]

    # the upstream-reproduction preset: offset 21128, wd 0.8, periodic cosine
    assert script.main([*argv, "--config", "urmp_upstream", "--dry_run"]) == 0
    up = yaml.safe_load(capsys.readouterr().out)
    assert up["model"]["text_vocab_offset"] == 21128 and up["train"]["weight_decay"] == 0.8
    assert (up["train"]["lr_schedule"], up["train"]["cosine_t_max"]) == ("cosine_epochs", 15)
    assert script.main([*argv, "--text_vocab_offset", "21128", "--weight_decay", "0.1", "--dry_run"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["model"]["text_vocab_offset"] == 21128 and out["train"]["weight_decay"] == 0.1

    # flags that disagree with the VQGAN file
    for flag, value, match in (("--first_stage_vocab_size", "1024", "--first_stage_vocab_size 1024 disagrees"),
                               ("--resolution", "64", "has resolution 96")):
        bad = list(argv)
        bad[bad.index(flag) + 1] = value
        assert script.main([*bad, "--dry_run"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and match in err and str(vq) in err


@pytest.fixture
def gpt_file(tmp_path):
    return save_gpt(GPT(gpt_preset("tiny")), tmp_path / "a_gpt.ckpt")


@pytest.mark.parametrize("extra,match", [
    (["--text_emb_model", "clip"], "ViT-B-32.pt, which are missing"),
    (["--resume", "last"], "--resume last: no checkpoint in"),
    (["--cond1_stage_key", "audio"], "audio never enters the GPT"),
    (["--set", "train.lr_schedule=linear"], "lr_schedule"),
    (["--set", "n_codes=32"], "disagrees with --vqvae"),
    (["--lr_schedule", "cosine_steps", "--max_steps", "-1"], "give --max_steps > 0"),
    (["--data_path", "/nonexistent/vat"], "no such folder"),
])
def test_bad_input_is_one_line_exit_2(vat, vqgans, tmp_path, capsys, monkeypatch, extra, match):
    monkeypatch.setenv("TAV_CKPT_DIR", str(tmp_path / "empty"))
    assert script.main([*tiny(vat, vqgans[0], tmp_path / "run"), *extra, "--dry_run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and match in err, err


def test_wrong_stage_vqvae_is_one_line_error(vat, gpt_file, tmp_path, capsys):
    assert script.main(tiny(vat, gpt_file, tmp_path / "run", "--max_steps", 1)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(gpt_file) in err and "'gpt' checkpoint" in err and "VQGAN" in err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------- units
def test_lr_rule_schedule_and_decay_groups():
    assert effective_lr(4.5e-5, "upstream", 1, 1, 8) == pytest.approx(3.6e-4)
    assert effective_lr(4.5e-5, "upstream", 2, 4, 8) == pytest.approx(8 * 8 * 4.5e-5)
    assert effective_lr(4.5e-5, "none", 2, 4, 8) == 4.5e-5
    assert [lr_factor(s, "cosine_steps", 0, 4) for s in range(5)] == pytest.approx([1, 0.8535534, 0.5, 0.1464466, 0])
    assert [lr_factor(s, "cosine_steps", 2, 4) for s in range(5)] == pytest.approx([0.5, 1, 1, 0.5, 0])
    assert [lr_factor(s, "constant", 2, 4) for s in range(4)] == [0.5, 1, 1, 1]
    gpt = GPT(gpt_preset("tiny"))
    decay, no_decay = param_groups(gpt, 0.8)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.8, 0.0)
    names = {id(p): n for n, p in gpt.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == sorted(
        n for n, _ in gpt.named_parameters() if n.endswith("weight") and (".attn." in n or ".mlp." in n
                                                                        or n == "head.weight"))
    no = {names[id(p)] for p in no_decay["params"]}
    assert {"pos_emb", "tok_emb.weight", "ln_f.weight", "ln_f.bias", "blocks.0.ln1.weight",
            "blocks.0.attn.key.bias"} <= no
    assert len(decay["params"]) + len(no) == len(names)


# ------------------------------------------------------------------------------------------- train / resume
@pytest.fixture(scope="module")
def trained(vat, vqgans, tmp_path_factory):
    """3 steps (2 clips, batch 2: one batch per epoch), constant lr, a periodic checkpoint at step 2."""
    root = tmp_path_factory.mktemp("gpt_run")
    probe = Probe()
    best = script.train(tiny(vat, vqgans[0], root, "--batch_size", 2, "--max_steps", 3, "--save_every_n_steps", 2,
                             "--lr_schedule", "constant", "--weight_decay", 0.05), callbacks=[probe])
    return root, best, probe


def test_checkpoints_load_through_load_gpt(trained, vqgans):
    root, best, probe = trained
    last = safe_load(root / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 3 and optimizer_steps(last["optimizer_states"][0]) == {3}
    groups = last["optimizer_states"][0]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0] and [g["betas"] for g in groups][0] == (0.9, 0.95)
    assert groups[0]["lr"] == pytest.approx(effective_lr(1e-4, "upstream", 1, 1, 2))
    assert (root / "checkpoints" / "epoch=1-step=2.ckpt").is_file() and best.is_file() and "val_text_loss" in best.name
    hp = last["hyper_parameters"]
    assert hp["stage"] == "gpt" and hp["config"]["vqgan_hash"] == sha(vqgans[0]) and hp["vqgan_path"] == str(vqgans[0])
    assert hp["data"]["fps"] == 30.0 and hp["data"]["sample_rate"] == 48000  # generate.py's default --fps
    assert (hp["config"]["n_codes"], hp["config"]["latent_shape"]) == (64, [2, 4, 4])
    assert all(k.startswith("gpt.") for k in last["state_dict"])  # the frozen VQGAN is referenced, not stored
    run_cfg = yaml.safe_load((root / "config.yaml").read_text())
    assert "--lr_schedule constant" in run_cfg["command"] and run_cfg["effective_lr"] == pytest.approx(2e-4)

    frozen = probe.module.frozen.module  # on-the-fly encoding: eval mode throughout, outside the module tree
    assert not frozen.training and all(m is not frozen for m in probe.module.modules())
    trained_gpt = probe.module.gpt.eval()
    tokens = torch.cat([torch.randint(0, 30522, (2, 12)), torch.randint(0, 64, (2, 20)) + 30522], dim=1)
    with torch.no_grad():
        expected = trained_gpt.logits(tokens)
        assert torch.equal(load_gpt(root / "checkpoints" / "last.ckpt").logits(tokens), expected)
        from_best = load_gpt(best)
        sd = {k[4:]: v for k, v in safe_load(best)["state_dict"].items()}
        assert all(torch.equal(v, sd[k]) for k, v in from_best.state_dict().items())
    assert from_best.cfg.vqgan_hash == sha(vqgans[0])

    rows = metrics(root, "train_text_loss")
    assert [s for s, _ in rows] == [1, 2, 3] and all(v > 0 for _, v in rows)
    assert [s for s, _ in metrics(root, "val_text_loss")] == [1, 2, 3]
    assert all(0 <= v <= 1 for key in ("train_text_acc1", "train_text_acc5", "val_text_acc5")
               for _, v in metrics(root, key))


def test_resume_last_continues_with_optimizer_state(trained, vat, vqgans, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(trained[0], root)
    saved = safe_load(root / "checkpoints" / "last.ckpt")
    probe = Probe()
    script.train(tiny(vat, vqgans[0], root, "--batch_size", 2, "--max_steps", 4, "--save_every_n_steps", 2,
                      "--lr_schedule", "constant", "--weight_decay", 0.05, "--resume", "last"), callbacks=[probe])
    assert probe.start_step == 3 and optimizer_steps(probe.start_opt) == {3}
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(probe.start_opt["state"][0][key], saved["optimizer_states"][0]["state"][0][key],
                                   rtol=0, atol=0)
    resumed = safe_load(root / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 4 and optimizer_steps(resumed["optimizer_states"][0]) == {4}
    assert [s for s, _ in metrics(root, "train_text_loss")] == [1, 2, 3, 4]


def test_vqgan_mismatch_on_resume_and_load(trained, vat, vqgans, tmp_path, capsys):
    root = tmp_path / "run"
    shutil.copytree(trained[0], root)
    assert script.main(tiny(vat, vqgans[1], root, "--batch_size", 2, "--max_steps", 4, "--resume", "last")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--resume" in err and "sha256" in err and str(vqgans[1]) in err
    gpt = load_gpt(root / "checkpoints" / "last.ckpt")
    check_vqgan_compat(gpt.cfg, load_vqgan(vqgans[0]), vqgans[0])  # the right one passes
    with pytest.raises(InputError, match="differs from the VQGAN the GPT was trained on") as info:
        check_vqgan_compat(gpt.cfg, load_vqgan(vqgans[1]), vqgans[1])
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------- token cache
def test_precomputed_tokens_match_on_the_fly_reuse_and_invalidate(vat, vqgans, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    common = ["--batch_size", 2, "--max_steps", 1, "--precompute_tokens", "--token_cache_dir", cache]
    script.train(tiny(vat, vqgans[0], tmp_path / "run1", *common))
    files = {p.name: p.stat().st_mtime_ns for p in cache.glob("tokens-*.pt")}
    assert sorted(n.split("-")[1] for n in files) == ["test", "train"]
    run_cfg = yaml.safe_load((tmp_path / "run1" / "config.yaml").read_text())
    cfg = from_dict(DataConfig, run_cfg["data"])
    model_cfg = gpt_preset("tiny")
    module = GPTModule(model_cfg, GPTTrainConfig(), load_vqgan(vqgans[0]))  # the on-the-fly path
    for split in ("train", "test"):
        obj = safe_load(next(cache.glob(f"tokens-{split}-*.pt")))
        assert obj["codes"].dtype == torch.int16 and obj["vqgan_hash"] == sha(vqgans[0])
        ds = VATDataset(vat, split, cfg)
        if split == "train":
            assert obj["offsets"].tolist() == [0, 5, 10] and obj["starts"].tolist() == [0, 1, 2, 3, 4] * 2
        else:
            assert obj["starts"].tolist() == [ds[i]["start"] for i in range(2)]
        for row, start in enumerate(obj["starts"].tolist()):
            clip = row // 5 if split == "train" else row
            fixed = VATDataset(vat, split, from_dict(DataConfig, {**run_cfg["data"], "train_crop": str(start),
                                                                   "eval_crop": str(start)}))
            item = fixed[clip]
            _, codes = module.batch_inputs({"text": item["text"][None], "video": item["video"][None]})
            assert torch.equal(obj["codes"][row].long(), codes[0]), (split, row)
    train_codes = safe_load(next(cache.glob("tokens-train-*")))["codes"]
    assert len({tuple(c.flatten().tolist()) for c in train_codes}) >= 3  # windows differ: a non-trivial check

    def no_encoding(*args, **kwargs):
        raise AssertionError("the token cache was re-encoded")

    monkeypatch.setattr(token_cache, "encode_windows", no_encoding)
    script.train(tiny(vat, vqgans[0], tmp_path / "run2", *common))  # reused: no encoding at all
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("tokens-*.pt")} == files

    calls = []
    monkeypatch.setattr(token_cache, "encode_windows", lambda *a, **k: calls.append(1) or real_encode(*a, **k))
    script.train(tiny(vat, vqgans[1], tmp_path / "run3", *common))  # another VQGAN: new cache files
    new = {p.name for p in cache.glob("tokens-*.pt")} - set(files)
    assert len(new) == 2 and len(calls) == 4  # 2 clips x 2 splits
    assert all(safe_load(cache / n)["vqgan_hash"] == sha(vqgans[1]) for n in new)


real_encode = token_cache.encode_windows


# ------------------------------------------------------------------------------------------- learning
def test_overfits_one_clip(tmp_path, vqgans):
    """One 4-frame clip (a single window), cached codes: the video-token loss falls well below its start."""
    one = make_tiny_vat(tmp_path / "one", n_frames=4, stems=("c_3",))
    root = tmp_path / "run"
    script.train(tiny(one, vqgans[0], root, "--load_vid_len", 4, "--batch_size", 1, "--max_steps", 60,
                      "--base_lr", 3e-3, "--lr_scaling", "none", "--lr_schedule", "constant", "--weight_decay", 0,
                      "--limit_val_batches", 0, "--save_every_n_steps", 0, "--precompute_tokens"))
    losses = [v for _, v in metrics(root, "train_text_loss")]
    acc = [v for _, v in metrics(root, "train_text_acc1")]
    assert len(losses) == 60 and all(v == v for v in losses)
    # starts near chance over the 64 codes (the default softmax is over video codes only), then falls
    assert abs(losses[0] - math.log(64)) < 0.5 and sum(losses[-5:]) / 5 < 0.25 * losses[0], (losses[0], losses[-5:])
    assert acc[-1] > 0.5


def test_metrics_logged_only_where_lightning_writes_them_give_the_same_rows(tmp_path, vqgans, monkeypatch):
    """The module logs (and computes its accuracies) only at the steps Lightning writes (``logs_this_step``): the
    rows of metrics.jsonl are those of a run that logs at every step, values included."""
    import json

    from tav.training import gpt_module

    one = make_tiny_vat(tmp_path / "one", n_frames=4, stems=("c_3",))
    argv = ["--load_vid_len", 4, "--batch_size", 1, "--max_steps", 7, "--limit_val_batches", 0,
            "--save_every_n_steps", 0, "--precompute_tokens"]

    def rows(root):
        text = (root / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in text]

    script.train(tiny(one, vqgans[0], tmp_path / "gated", *argv, "--log_every_n_steps", 3))
    monkeypatch.setattr(gpt_module, "logs_this_step", lambda module: True)
    script.train(tiny(one, vqgans[0], tmp_path / "every", *argv, "--log_every_n_steps", 3))
    gated = rows(tmp_path / "gated")
    assert [r["step"] for r in gated if "train_text_loss" in r] == [3, 6]
    assert gated == rows(tmp_path / "every")
    assert all({"train_text_acc1", "train_text_acc5", "lr"} <= r.keys() for r in gated if "train_text_loss" in r)


def test_caption_dropout_replaces_whole_rows_at_the_configured_rate_in_training_only():
    cfg = dataclasses.replace(gpt_preset("tiny"), text_dropout=0.25)
    module = GPTModule(cfg, GPTTrainConfig(seed=7)).train()
    prefix = torch.randint(1, cfg.text_vocab_size, (4000, cfg.text_seq_len))
    module.on_train_batch_start({}, 3)
    dropped = module.drop_captions(prefix)
    null = (dropped == 0).all(1)  # (B,) rows that became the null prefix (all [PAD])
    assert abs(float(null.float().mean()) - 0.25) < 0.03
    assert torch.equal(dropped[~null], prefix[~null])  # the others are untouched
    module.on_train_batch_start({}, 3)  # the same batch again (a resumed run): the same rows
    assert torch.equal(module.drop_captions(prefix), dropped)
    module.on_train_batch_start({}, 4)
    assert not torch.equal(module.drop_captions(prefix), dropped)
    assert torch.equal(module.eval().drop_captions(prefix), prefix)  # validation sees every caption
    assert torch.equal(GPTModule(gpt_preset("tiny"), GPTTrainConfig()).train().drop_captions(prefix), prefix)
