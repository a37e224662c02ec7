"""Same command, same bytes: a file written through a random temp name does not carry that name.

``torch.save`` given a path names the zip archive's root folder after the file, so every ``atomic_path`` write
(``.<stem>.tmp-<host>-<pid>-<random>``) used to embed its random temp name in the checkpoint."""

import zipfile

import torch

from tav.checkpoint import save_checkpoint
from tav.encoders.clip import save_tiny_clip
from tav.training.trainer import AtomicCheckpointIO
from tav.utils.fileio import save_torch_atomic


def _roots(path):
    with zipfile.ZipFile(path) as z:
        return {name.split("/")[0] for name in z.namelist()}


def test_torch_files_written_twice_are_the_same_bytes(tmp_path):
    obj = {"w": torch.arange(6.0).view(2, 3), "step": 3}
    a, b = save_torch_atomic(obj, tmp_path / "a.pt"), save_torch_atomic(obj, tmp_path / "sub" / "b.pt")
    assert a.read_bytes() == b.read_bytes() and _roots(a) == {"archive"}
    assert torch.equal(torch.load(b, weights_only=True)["w"], obj["w"])
    assert not list(tmp_path.rglob(".*tmp*"))


def test_checkpoints_and_encoders_written_twice_are_the_same_bytes(tmp_path):
    sd = {"layer.weight": torch.ones(2, 2)}
    one = save_checkpoint(tmp_path / "one.ckpt", "vqgan", {"embedding_dim": 4}, sd, step=7)
    two = save_checkpoint(tmp_path / "two.ckpt", "vqgan", {"embedding_dim": 4}, sd, step=7)
    assert one.read_bytes() == two.read_bytes()
    assert save_tiny_clip(tmp_path / "c1.pt").read_bytes() == save_tiny_clip(tmp_path / "c2.pt").read_bytes()
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": sd, "epoch": 1}, tmp_path / "l1.ckpt")
    io.save_checkpoint({"state_dict": sd, "epoch": 1}, tmp_path / "l2.ckpt")
    assert (tmp_path / "l1.ckpt").read_bytes() == (tmp_path / "l2.ckpt").read_bytes()
