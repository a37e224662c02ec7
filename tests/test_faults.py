"""Faults that must end in one line naming the file, never in garbage or a traceback: non-finite weights,
unsafe pickles in encoder folders, truncated weight files."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from tav.checkpoint import check_finite
from tav.encoders.clip_l import load_clip_l, save_tiny_clip_l
from tav.errors import InputError


class _Shell:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-clip-folder",))


def test_check_finite_names_the_first_bad_tensor():
    check_finite({"a": torch.zeros(3), "step": torch.tensor(3)}, "f.pt")
    with pytest.raises(InputError, match=r"f.pt: tensor b holds 2 non-finite value\(s\)"):
        check_finite({"a": torch.zeros(3), "b": torch.tensor([1.0, float("nan"), float("inf")])}, "f.pt")


@pytest.fixture(scope="module")
def clip_l(tmp_path_factory):
    return save_tiny_clip_l(tmp_path_factory.mktemp("clip") / "clip-vit-large-patch14")


def test_clip_l_folder_with_a_malicious_bin_truncated_or_nan_weights(clip_l, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    weights = next(clip_l.glob("model.safetensors"))
    evil = tmp_path / "evil"
    shutil.copytree(clip_l, evil)
    (evil / weights.name).unlink()
    torch.save({"text_model.embeddings.position_ids": _Shell()}, evil / "pytorch_model.bin")
    with pytest.raises(InputError) as err:
        load_clip_l(evil)
    assert "refused to unpickle" in str(err.value) and "weights_only" not in str(err.value)
    assert not (tmp_path / "pwned-by-clip-folder").exists()

    cut = tmp_path / "cut"
    shutil.copytree(clip_l, cut)
    data = (cut / weights.name).read_bytes()
    (cut / weights.name).write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cannot load a CLIP model from this folder") as err:
        load_clip_l(cut)
    assert "\n" not in str(err.value)

    from safetensors.torch import load_file, save_file

    nan = tmp_path / "nan"
    shutil.copytree(clip_l, nan)
    state = load_file(nan / weights.name)
    key = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, nan / weights.name, metadata={"format": "pt"})
    with pytest.raises(InputError, match=f"tensor {key} holds"):
        load_clip_l(nan)


def test_non_finite_weights_are_refused_by_the_loaders(tmp_path):
    from tav.vqgan import VQGAN
    from tav.vqgan.load import load_vqgan, save_vqgan

    from .helpers import tiny_vqgan_cfg

    model = VQGAN(tiny_vqgan_cfg())
    path = save_vqgan(model, tmp_path / "ok.pt")
    assert isinstance(load_vqgan(path), VQGAN)
    with torch.no_grad():
        next(model.parameters()).view(-1)[3] = float("nan")
    first = next(name for name, _ in model.named_parameters())
    bad = save_vqgan(model, tmp_path / "nan.pt")
    with pytest.raises(InputError, match=rf"nan.pt: tensor {first} holds 1 non-finite value") as err:
        load_vqgan(bad)
    assert "\n" not in str(err.value)


def test_resume_from_non_finite_weights_is_refused(tmp_path):
    from tav_scripts.training import resume_path

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": 3}, ckpts / "last.ckpt")
    assert resume_path("last", tmp_path) == str(ckpts / "last.ckpt")
    torch.save({"state_dict": {"w": torch.tensor([1.0, float("inf")])}, "global_step": 4}, ckpts / "last.ckpt")
    with pytest.raises(InputError, match="tensor w holds 1 non-finite .*resume from an earlier checkpoint"):
        resume_path("last", tmp_path)


def test_sampler_outputs_are_checked_before_anything_is_written():
    from tav.errors import NonFiniteOutputError
    from tav_scripts.sampling import check_output

    check_output(0, "a", {"stage 1": torch.zeros(3, 2, 4, 4)})
    video = torch.zeros(3, 2, 4, 4)
    video[1, 1, 2, 2] = float("nan")
    with pytest.raises(NonFiniteOutputError, match=r"sample 4 \(clip_x\): the stage 2 output holds NaN"):
        check_output(4, "clip_x", {"stage 1": torch.zeros(1), "stage 2": video})


def test_json_is_written_strict(tmp_path):
    import json

    from tav.metrics.runs import write_record
    from tav.utils.fileio import write_jsonl_atomic

    write_jsonl_atomic(tmp_path / "m.jsonl", [{"id": 0, "audio": float("nan"), "x": [1.0, float("inf")]}])
    text = (tmp_path / "m.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=pytest.fail) == {"id": 0, "audio": None, "x": [1.0, None]}
    write_record(tmp_path / "r.json", {"value": float("-inf"), "N": 2})
    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=pytest.fail) == {"value": None, "N": 2}
    from tav.utils.fileio import write_json_atomic  # what the benchmarks' --json writes through

    write_json_atomic(tmp_path / "b.json", {"p": tmp_path, "x": [float("nan"), 1.5]})
    text = (tmp_path / "b.json").read_text()
    assert text.endswith("}\n")
    assert json.loads(text, parse_constant=pytest.fail) == {"p": str(tmp_path), "x": [None, 1.5]}
    assert not [f for f in tmp_path.iterdir() if f.name not in ("m.jsonl", "r.json", "b.json")]  # no temp left


@pytest.mark.parametrize("script", ["train_vqgan", "diffusion_video_train_3d"])
def test_unwritable_run_folder_is_one_line_before_any_work(script, tmp_path, capsys):
    import importlib

    from .helpers import make_tiny_vat

    data = make_tiny_vat(tmp_path / "data")
    (tmp_path / "blocker").write_text("")
    module = importlib.import_module(f"tav_scripts.{script}")
    flag = "--default_root_dir" if script == "train_vqgan" else "--save_dir"
    assert module.main(["--config", "tiny", "--data_path", str(data), flag, str(tmp_path / "blocker" / "run"),
                        "--max_steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot write there" in err and "blocker" in err


def test_sampler_checks_save_before_loading_models(tmp_path, capsys):
    from tav_scripts import sample_tav

    (tmp_path / "blocker").write_text("")
    argv = ["--gpt_text_ckpt", str(tmp_path / "none.ckpt"), "--vqgan_ckpt", str(tmp_path / "none.ckpt"),
            "--diffusion_ckpt", str(tmp_path / "none.pt"), "--data_path", str(tmp_path),
            "--save", str(tmp_path / "blocker" / "results")]
    assert sample_tav.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--save" in err and "cannot write there" in err


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_files_are_removed_and_never_read(tmp_path):
    import time

    from tav.metrics.folders import index_folder, open_run
    from tav.pipelines.results import ResultsFolder
    from tav.utils.fileio import _HOST, atomic_path, is_stale_temp, remove_stale_temps, temp_prefix

    run = tmp_path / "17_tav_URMP"
    stage2 = run / "fake_stage2"
    stage2.mkdir(parents=True)
    (stage2 / "generation_stage2_a_0.mp4").write_bytes(b"x")
    dead = stage2 / f".generation_stage2_b_1.tmp-{_HOST}-{_dead_pid()}-abcd1234.mp4"  # a killed writer's
    dead.write_bytes(b"")
    live = stage2 / f"{temp_prefix('generation_stage2_c_2')}abcd1234.mp4"  # this process is writing it
    live.write_bytes(b"")
    remote = stage2 / ".generation_stage2_d_3.tmp-otherhost-12-abcd1234.mp4"  # another host's: by age
    remote.write_bytes(b"")
    old = run / ".manifest.x1y2z3.tmp.jsonl"  # the older naming
    old.write_bytes(b"")
    assert is_stale_temp(dead) and not is_stale_temp(live) and not is_stale_temp(remote)
    assert not is_stale_temp(stage2 / "generation_stage2_a_0.mp4")
    assert list(index_folder(open_run(run), "fake_stage2", "mp4")) == [0]  # temp files are never samples
    hour_ago = time.time() - 7200
    os.utime(remote, (hour_ago, hour_ago))
    os.utime(old, (hour_ago, hour_ago))
    ResultsFolder(run, 30.0, 16000)  # a sampler (re)starting on this folder cleans up
    assert sorted(p.name for p in run.rglob(".*")) == [live.name]
    assert remove_stale_temps(run) == []
    with atomic_path(tmp_path / "out.txt") as tmp:
        assert tmp.name.startswith(f".out.tmp-{_HOST}-{os.getpid()}-") and not is_stale_temp(tmp)
        tmp.write_text("x")
    assert (tmp_path / "out.txt").read_text() == "x" and not tmp.exists()


def test_checkpoint_writes_are_atomic_in_the_destination_folder(tmp_path):
    from tav.training.trainer import AtomicCheckpointIO, TrainerOptions, build_trainer

    trainer = build_trainer(TrainerOptions(accelerator="cpu", devices="1", default_root_dir=str(tmp_path)))
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 2}, tmp_path / "ckpts" / "a.ckpt")
    assert torch.load(tmp_path / "ckpts" / "a.ckpt", weights_only=True)["global_step"] == 2
    with pytest.raises(Exception):  # noqa: B017 - fails half-way through the write (a lambda does not pickle)
        io.save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "bad": lambda: 0}, tmp_path / "ckpts" / "b.ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == ["a.ckpt"]  # no b.ckpt, no temp file
