"""Run by test_train_vqgan: `python ddp_vqgan_probe.py OUT_DIR <train_vqgan flags>`.

Trains through ``scripts/train_vqgan.train`` (Lightning's DDP launcher re-executes this command line once
per extra process) and has every rank dump its codebook buffers and one encoder weight to OUT_DIR.
"""

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from tav_scripts import train_vqgan


class DumpState(pl.Callback):
    def __init__(self, out: str):
        self.out = Path(out)

    def on_train_end(self, trainer, pl_module):
        cb = pl_module.vqgan.codebook
        state = {name: t.detach().clone() for name, t in cb.state_dict().items()}
        state["encoder_weight"] = pl_module.vqgan.encoder.conv_first.conv.weight.detach().clone()
        state["global_step"] = trainer.global_step
        state["world_size"] = trainer.world_size
        torch.save(state, self.out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    train_vqgan.train(sys.argv[2:], callbacks=[DumpState(sys.argv[1])])
