"""Run by test_dataset_ddp: a 2-process CPU DDP job that records which stems each rank loads."""

import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from tav.data.config import load_data_config
from tav.data.datamodule import VATDataModule


class Probe(pl.LightningModule):
    def __init__(self, out: Path):
        super().__init__()
        self.out, self.w = out, torch.nn.Parameter(torch.zeros(1))
        self.seen = {"train": [], "val": []}

    def training_step(self, batch, _):
        self.seen["train"] += batch["stem"]
        return (self.w * batch["video"].mean()).sum()

    def validation_step(self, batch, _):
        self.seen["val"] += batch["stem"]

    def on_fit_end(self):
        (self.out / f"rank{self.global_rank}.json").write_text(json.dumps(self.seen))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(data: str, out: str) -> None:
    cfg = load_data_config("urmp", resolution=32)
    dm = VATDataModule(data, cfg, batch_size=1, num_workers=0)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    trainer.fit(Probe(Path(out)), datamodule=dm)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
