"""The demo's sampling scripts read this run's models: ``gather_checkpoints`` replaces the copies of an earlier run."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from tav.gpt import GPT, GPTConfig, load_gpt, save_gpt
from tav_scripts.demo_sample import gather_checkpoints, refresh_copy


def _gpt(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(text_vocab_size=32, text_seq_len=4, n_codes=16, latent_shape=(1, 2, 2), block_size=8,
                         n_layer=1, n_head=2, n_embd=8))


def _run(tmp_path, name: str, seed: int) -> SimpleNamespace:
    """A demo run whose stages left a VQGAN, a GPT and a diffusion file (their bytes depend on ``seed``)."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "vqgan.ckpt").write_bytes(f"vqgan {seed}".encode())
    (folder / "ema.pt").write_bytes(f"diffusion {seed}".encode())
    gpt = save_gpt(_gpt(seed), folder / "gpt.ckpt", data={"name": "urmp", "fps": 30, "sample_rate": 48000})
    return SimpleNamespace(state={"vqgan_ckpt": folder / "vqgan.ckpt", "diffusion_ckpt": folder / "ema.pt",
                                  "gpt_ckpt": gpt, "joint_ckpt": tmp_path / "joint.pt"})


def test_a_retrained_run_replaces_the_last_runs_models(tmp_path):
    (tmp_path / "joint.pt").write_bytes(b"joint")
    ckpts = tmp_path / "ckpts"
    first = gather_checkpoints(_run(tmp_path, "first", 0), ckpts)
    assert first["vqgan"].read_bytes() == b"vqgan 0" and first["diffusion"].read_bytes() == b"diffusion 0"
    second = gather_checkpoints(_run(tmp_path, "second", 1), ckpts)
    assert second["vqgan"].read_bytes() == b"vqgan 1" and second["diffusion"].read_bytes() == b"diffusion 1"
    want = _gpt(1).state_dict()
    got = load_gpt(second["gpt"]).state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items())
    assert not torch.equal(load_gpt(second["gpt"]).state_dict()["head.weight"], _gpt(0).state_dict()["head.weight"])
    assert second["joint"] == tmp_path / "joint.pt"
    # the same run again (the demo's generate stage after its sample stage): nothing is rewritten, so the
    # sampler's record of its checkpoints' hashes still holds
    run = _run(tmp_path, "third", 2)
    before = {k: v.stat().st_ino for k, v in gather_checkpoints(run, ckpts).items()}
    assert {k: v.stat().st_ino for k, v in gather_checkpoints(run, ckpts).items()} == before


def test_refresh_copy_keeps_an_identical_file(tmp_path):
    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_bytes(b"same")
    dst.write_bytes(b"same")
    before = dst.stat().st_ino
    refresh_copy(src, dst)
    assert dst.stat().st_ino == before  # not rewritten
    src.write_bytes(b"new")
    refresh_copy(src, dst)
    assert dst.read_bytes() == b"new" and not list(tmp_path.glob("*.tmp*"))
