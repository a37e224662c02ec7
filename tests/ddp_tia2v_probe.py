"""Run by test_tia2v_pipeline: `python ddp_tia2v_probe.py OUT_DIR PART <TIA2V training flags>`.

Trains through ``scripts/tia2v_cli.train`` (Lightning's DDP launcher re-executes this command line once per
extra process) and has every rank dump its network weights, step and world size to OUT_DIR.
"""

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from tav_scripts import tia2v_cli


class DumpState(pl.Callback):
    def __init__(self, out: str):
        self.out = Path(out)

    def on_train_end(self, trainer, pl_module):
        state = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}
        state["global_step"] = trainer.global_step
        state["world_size"] = trainer.world_size
        torch.save(state, self.out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    tia2v_cli.train(sys.argv[2], sys.argv[3:], callbacks=[DumpState(sys.argv[1])])
