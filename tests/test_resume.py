"""Resume that ends where the uninterrupted run ends: data order, per-step seeds, checkpoints written once a step
is complete, leftovers of the killed attempt set aside (``tav.training.determinism``, ``StepCheckpoint``,
``tav.training.resume``)."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from tav.errors import InputError
from tav.training.determinism import EpochSampler, SeededItems, mix_seed
from tav.training.resume import (
    check_no_earlier_run,
    newest_checkpoint,
    prepare_resume,
    resume_point,
    start_fresh,
    truncate_metrics,
)

from .resume_harness import NoisyItems, differences, fit, kill_and_resume, snapshot


@pytest.fixture(autouse=True)
def quiet():
    logging.disable(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


def test_epoch_sampler_shards_cover_each_epoch_and_skip_resumes_inside_it():
    data = list(range(11))
    shards = [list(EpochSampler(data, True, seed=5, rank=r, num_replicas=2)) for r in range(2)]
    indices = [i for s in shards for i, _ in s]
    assert sorted(set(indices)) == data and len(indices) == 12  # padded to a multiple of the processes
    again = list(EpochSampler(data, True, seed=5, rank=0, num_replicas=2))
    assert again == shards[0]  # the order and the item seeds depend on (seed, epoch) only
    other = EpochSampler(data, True, seed=5, rank=0, num_replicas=2)
    other.set_epoch(1)
    assert [i for i, _ in other] != [i for i, _ in shards[0]]
    resumed = EpochSampler(data, True, seed=5, rank=0, num_replicas=2, start=(0, 4))
    assert list(resumed) == shards[0][4:]
    resumed.set_epoch(1)
    assert list(resumed) == list(other)  # the skip belongs to the interrupted epoch only
    plain = EpochSampler(data, False, seed=5)
    assert [i for i, _ in plain] == data


def test_seeded_items_draw_the_same_augmentation_whatever_the_global_rng():
    items = SeededItems(NoisyItems())
    torch.manual_seed(1)
    a = items[(3, 77)]
    torch.manual_seed(2)
    b = items[(3, 77)]
    assert torch.equal(a, b) and not torch.equal(a, items[(3, 78)])
    before = torch.get_rng_state()
    items[(4, 1)]
    assert torch.equal(torch.get_rng_state(), before)  # reading leaves the caller's RNG alone
    assert mix_seed(1, "a") == mix_seed(1, "a") != mix_seed("1", "a")


# Kill points around the coincidences of the schedule: validation every 3 batches, a checkpoint every 4 steps,
# epochs of 5 batches (11 items, batch 2, last one dropped); and a run whose checkpoint, validation and epoch end
# fall on the same steps. Each resumed run must end with the uninterrupted run's checkpoint files (weights
# bitwise), metrics rows and final weights.
SWEEPS = [
    ({"val": 3, "every": 4}, [("on_train_batch_end", 8), ("on_train_batch_start", 5), ("on_validation_end", 9),
                              ("on_train_epoch_end", 15), ("on_validation_start", 12), ("on_train_batch_end", 2)]),
    ({"val": 5, "every": 5}, [("on_validation_end", 10), ("on_train_epoch_end", 5), ("on_train_batch_start", 11)]),
    ({"val": 1.0, "every": 4}, [("on_train_epoch_end", 5), ("on_train_batch_end", 9)]),
    ({"val": 3, "every": 4, "accumulate": 2}, [("on_validation_end", 1), ("on_train_epoch_end", 3),
                                               ("on_train_batch_start", 9)]),
]


@pytest.mark.parametrize("settings,kills", SWEEPS, ids=["val3-ckpt4", "all-at-5", "val-per-epoch", "accumulate2"])
def test_killed_and_resumed_runs_end_as_the_uninterrupted_one(tmp_path, settings, kills):
    ref_weights = fit(tmp_path / "ref", **settings)
    ref = snapshot(tmp_path / "ref")
    assert len(ref[0]) >= 3 and len(ref[1]) > 17  # checkpoints and rows to compare
    for hook, step in kills:
        root = tmp_path / f"{hook}-{step}"
        final = kill_and_resume(root, (hook, step), **settings)
        assert final is not None, f"the kill point {hook}/{step} was never reached"
        assert differences(ref, snapshot(root)) == [], (hook, step)
        assert all(torch.equal(final[k], ref_weights[k]) for k in ref_weights), (hook, step)


def test_a_resume_drops_later_rows_and_checkpoints_and_keeps_an_abandoned_branch(tmp_path):
    fit(tmp_path / "run", every=4)
    root, folder = tmp_path / "run", tmp_path / "run" / "checkpoints"
    rows = (root / "metrics.jsonl").read_text().splitlines()
    early = folder / "epoch=1-step=8.ckpt"
    point = resume_point(early)
    assert point.step == 8 and 0 < point.metrics_bytes < (root / "metrics.jsonl").stat().st_size
    done = prepare_resume(root, early)  # an older checkpoint on purpose: later ones are kept aside
    kept = [json.loads(r)["step"] for r in (root / "metrics.jsonl").read_text().splitlines()]
    assert max(kept) < 8 < max(json.loads(r)["step"] for r in rows) and len(kept) < len(rows)
    aside = folder / "superseded-step8"
    assert sorted(f.name for f in aside.iterdir()) == ["epoch=2-step=12.ckpt", "epoch=3-step=16.ckpt", "last.ckpt"]
    assert any("moved 3 checkpoints" in line for line in done)
    assert not (folder / "last.ckpt").exists() and early.is_file()


def test_newest_checkpoint_prefers_a_later_best_and_skips_accumulation_windows(tmp_path):
    fit(tmp_path / "r", every=4, max_steps=9)
    folder = tmp_path / "r" / "checkpoints"
    assert newest_checkpoint(folder) == folder / "last.ckpt"
    last = torch.load(folder / "last.ckpt", weights_only=False)
    later = dict(last, global_step=11)
    torch.save(later, folder / "best-epoch=2-step=11-val_loss=0.1.ckpt")
    assert newest_checkpoint(folder).name.startswith("best-epoch=2-step=11")
    later["tav_resume"] = dict(later["tav_resume"], pending_grads=True)
    torch.save(later, folder / "best-epoch=2-step=11-val_loss=0.1.ckpt")
    assert newest_checkpoint(folder) == folder / "last.ckpt"
    assert newest_checkpoint(tmp_path / "nothing") is None


def test_a_fresh_run_refuses_an_earlier_runs_folder_and_restarts_a_checkpointless_attempt(tmp_path):
    fit(tmp_path / "r", every=4, max_steps=5)
    with pytest.raises(InputError, match=r"holds the checkpoints of an earlier run .*--resume last"):
        check_no_earlier_run(tmp_path / "r")
    attempt = tmp_path / "a"
    attempt.mkdir()
    (attempt / "metrics.jsonl").write_text('{"step": 0}\n')
    assert start_fresh(attempt) and not (attempt / "metrics.jsonl").exists()


def test_truncate_metrics_counts_the_rows_it_drops(tmp_path):
    f = tmp_path / "m.jsonl"
    f.write_text('{"step": 0}\n{"step": 1}\n{"step": 2}\n')
    assert truncate_metrics(f, len('{"step": 0}\n')) == 2
    assert f.read_text() == '{"step": 0}\n'
    assert truncate_metrics(f, None) == 0 and truncate_metrics(f, 100) == 0


def test_epoch_end_saves_wait_for_epoch_min_seconds_and_change_nothing_else(tmp_path, monkeypatch):
    """Epochs of 5 steps, saves every 4: with a long minimum interval no epoch's end writes ``last.ckpt``, and the
    run ends with the same files, rows and weights as one that saves at every epoch's end."""
    writes = []
    save = pl.Trainer.save_checkpoint
    monkeypatch.setattr(pl.Trainer, "save_checkpoint",
                        lambda self, path, *a, **k: (writes.append((self.global_step, Path(path).name)),
                                                     save(self, path, *a, **k))[1])
    every_epoch = fit(tmp_path / "every", val=3, every=4)
    n_every = len(writes)
    writes.clear()
    throttled = fit(tmp_path / "throttled", val=3, every=4, epoch_min_seconds=3600.0)
    assert ("last.ckpt" in {name for _, name in writes}) and n_every > len(writes)
    assert {step for step, name in writes if name == "last.ckpt"} <= {17}  # only the end of training
    assert differences(snapshot(tmp_path / "every"), snapshot(tmp_path / "throttled")) == []
    assert all(torch.equal(throttled[k], every_epoch[k]) for k in every_epoch)
