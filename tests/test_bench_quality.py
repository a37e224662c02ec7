"""Small versions of the quality tables (benchmarks/bench_quality.py) on tiny models and a tiny demo dataset, and
the demo's quality record (scripts/demo_quality.py). The targets belong to the benchmark and the demo output;
here the judges' values must lie in [0, 1] and be ordered as constructed (real >= real with rotated captions)."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from tav.data.demo import build_demo_dataset
from tav.diffusion.config import UNetConfig
from tav.diffusion.load import save_unet
from tav.diffusion.schedule import ProcessConfig
from tav.diffusion.unet3d import UNet
from tav.encoders.joint import save_tiny_joint
from tav.errors import InputError
from tav.gpt import GPT, gpt_preset, save_gpt
from tav.gpt.load import file_sha256
from tav.metrics.synthetic import parse_caption
from tav.vqgan import VQGAN, save_vqgan
from tav_scripts import demo_quality as dq
from tav_scripts.demo_stages import DEMO_CFG, DEMO_TEMPERATURE, DEMO_TOP_K, DEMO_TOP_P

from .helpers import REPO, load_script, tiny_vqgan_cfg

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def _bench():
    return load_script("benchmarks/bench_quality.py")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """A demo dataset of 2 test clips at 32 px and the demo's checkpoint names, with tiny random models."""
    root = tmp_path_factory.mktemp("bench")
    build_demo_dataset(root / "data", n_train=0, n_test=2, size=32, seed=3)
    ckpt = root / "ckpt"
    ckpt.mkdir()
    torch.manual_seed(0)
    vq = save_vqgan(VQGAN(tiny_vqgan_cfg()).eval(), ckpt / "vqgan.ckpt")
    save_gpt(GPT(dataclasses.replace(gpt_preset("tiny"), n_codes=32, latent_shape=(2, 4, 4),
                                     vqgan_hash=file_sha256(vq))), ckpt / "gpt.ckpt")
    net = UNet(UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                          attention_resolutions=(8,), num_heads=2))
    for p in net.parameters():  # a fresh U-Net predicts exactly 0
        torch.nn.init.normal_(p, std=0.02)
    save_unet(net, ckpt / "diffusion.pt", ProcessConfig(steps=100))
    save_tiny_joint(ckpt / "joint_encoder.pt")
    return {"root": root, "ckpt": ckpt, "data": root / "data"}


def test_small_tables_are_judged_in_range_and_ordered(kit, tmp_path):
    bench = _bench()
    tiny = "--resolution 16 --sequence_length 4 --timestep_respacing 8 --skip_timesteps 2 --batch_size 2"
    out = tmp_path / "q.json"
    record = bench.main(["--ckpt_dir", str(kit["ckpt"]), "--data", str(kit["data"]), "--n", "2", "--tables",
                         "ablation", "precision", "--sample_args", tiny, "--json", str(out), "--md",
                         str(tmp_path / "q.md")])
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert "cores, torch" in record["machine"] and "thread(s)" in record["machine"]
    assert record["commit"] is None or len(record["commit"]) >= 7  # a clean clone has one; a tarball none
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically
    ablation = record["tables"]["ablation"]
    assert list(ablation)[:3] == ["real", "real, captions rotated (control)", "stage 1 (GPT + VQGAN)"]
    assert len(ablation) == 3 + 6 and set(record["tables"]["precision"]) == {"fp32", "bf16 autocast"}
    for table in record["tables"].values():
        for row in table.values():
            assert row["n"] == 2
            for key in ("colour_acc", "shape_acc", "onset_f1"):
                mean, ci = row[key]
                assert mean is None or 0.0 <= mean <= 1.0
                assert ci is None or ci >= 0.0
            assert row["onset_f1_chance"] is None or 0.0 <= row["onset_f1_chance"] <= 1.0
    real, rotated = ablation["real"], ablation["real, captions rotated (control)"]
    assert real["colour_acc"][0] == 1.0  # the two clips' colours differ (seed 3): rotation must miss both
    assert real["colour_acc"][0] >= rotated["colour_acc"][0] and rotated["colour_acc"][0] == 0.0
    assert all(r["s_per_video"] > 0 for r in list(ablation.values())[3:])  # stage 2 timed per video
    assert "| real |" in (tmp_path / "q.md").read_text() and "| onset chance |" in (tmp_path / "q.md").read_text()
    stage1 = ablation[bench.STAGE1]
    paired = record["paired"]
    assert set(paired) == {"ablation", "precision"}
    assert set(paired["ablation"]) == {bench.STAGE1, "stage 2, no guidance"} and set(paired["precision"]) == {"fp32"}
    vs_stage1 = paired["ablation"][bench.STAGE1]
    assert bench.STAGE1 not in vs_stage1 and set(vs_stage1) == set(ablation) - {bench.STAGE1}
    for key in ("colour_acc", "shape_acc"):  # every clip judged: the mean difference is the difference of the means
        assert vs_stage1["real"][key][0] == pytest.approx(real[key][0] - stage1[key][0])
        assert vs_stage1["real"][key][2] == 2
    assert set(paired["precision"]["fp32"]) == {"bf16 autocast"}
    text = (tmp_path / "q.md").read_text()
    assert f"**ablation: difference from {bench.STAGE1}** (paired over the same 2 clips" in text
    assert "**precision: difference from fp32**" in text


def test_paired_differences_pair_clip_by_clip():
    bench = _bench()

    def row(colour, shape):
        return {"per_clip": {str(k): {"colour_acc": c, "shape_acc": s, "onset_f1": None, "pitch_height": None,
                                      "flicker": 0.0} for k, (c, s) in enumerate(zip(colour, shape, strict=True))}}

    rows = {"ref": row([1, 0, 1, 1], [0, 0, 1, 0]), "b": row([0, 0, 1, 1], [1, 0, 1, None]),
            "no clips": {"colour_acc": [0.5, 0.1]}}
    rows["c"] = {"per_clip": {k: v for k, v in row([1, 1, 1, 1], [0, 0, 0, 0])["per_clip"].items() if k != "3"}}
    out = bench.paired_differences(rows, "ref")
    assert set(out) == {"b", "c"}  # the reference and rows without per-clip values are left out
    mean, ci, n = out["b"]["colour_acc"]
    assert (mean, n) == (-0.25, 4) and ci == pytest.approx(1.96 * 0.5 / 2)  # differences -1, 0, 0, 0
    assert out["b"]["shape_acc"] == [pytest.approx(1 / 3), pytest.approx(1.96 * np.std([1, 0, 0], ddof=1) / 3**0.5),
                                     3]  # clip 3's shape is None in b: not paired
    assert out["b"]["onset_f1"] == [None, None, 0] and out["b"]["flicker"] == [0.0, 0.0, 4]
    assert out["c"]["colour_acc"][:1] + out["c"]["colour_acc"][2:] == [1 / 3, 3]  # clip 3 missing from c
    assert bench.paired_differences(rows, "absent") == {} and bench.paired_differences(rows, "no clips") == {}


def test_steps_rows_start_sdedit_at_the_same_fraction():
    bench = _bench()
    assert dict(bench.steps_rows())["DDPM 100"]["skip_timesteps"] == bench.DEMO_SKIP  # the demo's start
    short = dict(bench.steps_rows(skip=0.95))  # 9.5 of DDIM 10 rounds to 10: one step is still run
    assert [short[k]["skip_timesteps"] for k in ("DDIM 10", "DDPM 25", "DDIM 50", "DDPM 200")] == [9, 24, 48, 190]
    rows = dict(bench.steps_rows(skip=0.9))
    assert rows["DDPM 100"] == {"timestep_respacing": "100", "skip_timesteps": 90}
    assert rows["DDPM 25"]["skip_timesteps"] == 22 and rows["DDPM 200"]["skip_timesteps"] == 180
    assert rows["DDIM 10"] == {"timestep_respacing": "ddim10", "skip_timesteps": 9, "ddim": True}
    assert [k for k in rows] == ["DDPM 25", "DDPM 50", "DDPM 100", "DDPM 200", "DDIM 10", "DDIM 25", "DDIM 50"]
    upstream = bench.steps_rows(skip=0.9, upstream_steps=4000)[-1]
    assert upstream == ("DDPM 4000 (upstream: every step)", {"timestep_respacing": "", "skip_timesteps": 3600})


def test_start_rows_pair_each_start_with_an_unguided_chain():
    rows = _bench().start_rows((75, 90))
    assert [label for label, _ in rows] == ["all terms, skip 75", "no guidance, skip 75", "all terms, skip 90",
                                            "no guidance, skip 90"]
    assert rows[2][1] == {"skip_timesteps": 90}
    assert rows[3][1] == {"audio_guidance_lambda": 0, "direction_lambda": 0, "text_guidance_lambda": 0,
                          "skip_timesteps": 90}


def test_weight_rows_parse_audio_direction_text():
    bench = _bench()
    assert bench.weight_rows(["10000:0:2e4"]) == [("λ 10000 / 0 / 20000", {"audio_guidance_lambda": 10000.0,
                                                                          "direction_lambda": 0.0,
                                                                          "text_guidance_lambda": 20000.0})]
    with pytest.raises(SystemExit, match="--weights '1:2'"):
        bench.weight_rows(["1:2"])


def test_training_split_is_sampled_as_the_test_split(kit, tmp_path):
    bench = _bench()
    data = tmp_path / "data"
    build_demo_dataset(data, n_train=2, n_test=1, size=32, seed=5)
    view = bench.split_as_test(data, "train", tmp_path)
    assert sorted(p.name for p in (view / "test").iterdir()) == sorted(p.name for p in (data / "train").iterdir())
    assert (view / "manifest.jsonl").read_text() == (data / "manifest.jsonl").read_text()
    assert not (view / "train").exists() and bench.split_as_test(data, "test", tmp_path) == data
    tiny = "--resolution 16 --sequence_length 4 --timestep_respacing 8 --skip_timesteps 2 --batch_size 2"
    record = bench.main(["--ckpt_dir", str(kit["ckpt"]), "--data", str(data), "--n", "2", "--split", "train",
                         "--tables", "starts", "--sample_args", tiny, "--md", str(tmp_path / "s.md")])
    starts = record["tables"]["starts"]
    assert record["split"] == "train" and len(starts) == 3 + 2 * len(bench.START_SKIPS)
    assert starts["real"]["n"] == 2 and starts["real"]["colour_acc"][0] == 1.0  # judged against the train captions
    assert "N = 2 demo train clips" in (tmp_path / "s.md").read_text()
    with pytest.raises(SystemExit, match="no demo train split"):
        bench.main(["--ckpt_dir", str(kit["ckpt"]), "--data", str(kit["data"]), "--split", "train"])


def test_stage_one_is_guided_as_the_demo_guides_it(kit, tmp_path):
    bench = _bench()
    argv = bench.sample_argv(kit["ckpt"], kit["data"], tmp_path, 2, {})
    assert argv[argv.index("--gpt_cfg_scale") + 1] == "1.0"  # the kit's GPT trained without caption dropout
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    vq = kit["ckpt"] / "vqgan.ckpt"
    save_gpt(GPT(dataclasses.replace(gpt_preset("tiny"), n_codes=32, latent_shape=(2, 4, 4), text_dropout=0.1,
                                     vqgan_hash=file_sha256(vq))), ckpt / "gpt.ckpt")
    argv = bench.sample_argv(ckpt, kit["data"], tmp_path, 2, {}, ["--gpt_cfg_scale", "3"])
    assert argv[argv.index("--gpt_cfg_scale") + 1] == str(DEMO_CFG) == "2.0" and argv[-2:] == ["--gpt_cfg_scale", "3"]


def test_mean_ci_is_the_normal_interval():
    mean, half = _bench().mean_ci([0.0, 1.0, 1.0, 0.0, None, float("nan")])
    assert mean == 0.5 and half == pytest.approx(1.96 * np.std([0, 1, 1, 0], ddof=1) / 2)
    assert _bench().mean_ci([]) == (None, None)


def test_quality_record_merges_stages_and_prints_a_table(tmp_path):
    dq.record_quality(tmp_path, "stage1", {"n": 4, "colour_acc": 0.5, "shape_acc": 0.25})
    dq.record_quality(tmp_path, "vqgan_recon", {"n": 4, "psnr": 28.5, "colour_acc": 1.0})
    dq.record_quality(tmp_path, "tia2v_motion", {"n": 4, "frame0_psnr": float("inf")})
    data = json.loads((tmp_path / "quality.json").read_text())
    assert list(data) == ["vqgan_recon", "stage1", "tia2v_motion"]  # demo order, whatever the call order
    assert data["vqgan_recon"]["psnr"] == 28.5 and data["tia2v_motion"]["frame0_psnr"] == "inf"
    lines = dq.quality_lines(tmp_path)
    assert lines[1].split()[7:9] == ["onset_f1", "chance"]
    assert lines[2].split()[:3] == ["vqgan_recon", "4", "28.5"] and "inf" in lines[4]
    assert not list(tmp_path.glob("*.tmp*"))


def test_psnr_of_known_errors():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0, 0] = 255  # one of 96 values off by the peak: MSE = 255^2 / 96
    assert dq.psnr(a, b) == pytest.approx(10 * math.log10(96))
    assert dq.psnr(a, a) == math.inf


def test_missing_checkpoints_or_data_are_one_line(kit, tmp_path):
    bench = _bench()
    with pytest.raises(SystemExit, match="gpt.ckpt: missing; run `make demo` first"):
        bench.main(["--ckpt_dir", str(tmp_path), "--data", str(kit["data"])])
    with pytest.raises(SystemExit, match="no demo test split"):
        bench.main(["--ckpt_dir", str(kit["ckpt"]), "--data", str(tmp_path / "nowhere")])


def test_equal_quality_mode_compares_paired_differences(kit, tmp_path, monkeypatch):
    """``bench_sample.py --equal-quality`` on the tiny models: the reference (upstream's setting) first, then the
    candidates, each judged and timed per video; a candidate is equal when no judge's paired CI says worse."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench_sample
    import equal_quality as eq

    ref = {"judges": {"colour_acc": [1, 1, 0, 1], "shape_acc": [1, 0, 1, 1], "onset_f1": [0.5] * 4,
                      "flicker": [0.1] * 4}}
    same = {"judges": {k: list(v) for k, v in ref["judges"].items()}}
    worse = {"judges": {**same["judges"], "colour_acc": [0, 0, 0, 0], "flicker": [0.3, 0.3, 0.31, 0.3]}}
    assert all(eq.equal_quality(same, ref).values())
    assert eq.equal_quality(worse, ref) == {"colour_acc": False, "shape_acc": True, "onset_f1": True,
                                            "flicker": False}
    assert eq.paired_difference([1, 1, 1, 1], [0, 0, 0, 0]) == (1.0, 0.0)
    out = tmp_path / "eq.json"
    bench_sample.main(["--equal-quality", "--ckpt_dir", str(kit["ckpt"]), "--data", str(kit["data"]), "--n", "2",
                       "--sample_args", "--resolution 16 --sequence_length 4", "--json", str(out)])
    record = json.loads(out.read_text())
    rows = record["rows"]
    assert rows[0]["setting"] == record["reference"] and "upstream setting" in rows[0]["setting"]
    assert rows[0]["precision"] == "32" and len(rows) == 10  # the reference and 9 candidates
    assert "thread(s)" in record["machine"] and "commit" in record
    assert rows[0]["speedup_stage2"] == 1.0 and all(r["stage2_s"] > 0 for r in rows)
    for r in rows[1:]:
        assert set(r["equal"]) == set(eq.EQUAL_JUDGES) and r["precision"] in ("32", "bf16")
        for mean, half in r["judges"].values():
            assert mean is None or half >= 0
    assert record["recommended"] is None or record["recommended"] in [r["setting"] for r in rows[1:]]


def test_demo_stage1_bench_judges_each_folder_the_same_way(kit, tmp_path, monkeypatch):
    """``bench_demo_stage1.py`` on the tiny models: one folder under two names gives the same record (seeded per
    caption and repetition), the judges lie in [0, 1] over reps × captions clips, and the JSON is written."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench_demo_stage1 as b1

    out = tmp_path / "s1.json"
    rec = b1.main(["--ckpt_dir", f"a={kit['ckpt']}", "--ckpt_dir", f"b={kit['ckpt']}", "--data", str(kit["data"]),
                   "--reps", "2", "--json", str(out)])
    a, b = rec["results"]["a"], rec["results"]["b"]
    assert a == b and a["n"] == 4 and a["cfg_scale"] == 1.0  # the tiny GPT trained without caption dropout
    assert rec["precision"] == "32"  # the samplers decode in fp32 on a CPU
    for key in b1.JUDGED:
        assert 0.0 <= a[key][0] <= 1.0 and a[key][1] >= 0.0
    # per shape: the captions' shapes, whose count-weighted means give back the overall shape_acc
    named = [parse_caption(c)[1] for c in b1.split_captions(kit["data"])] * 2
    assert sorted(a["by_shape"]) == sorted(set(named))
    total = sum(a["by_shape"][s][0] * named.count(s) for s in a["by_shape"])
    assert total == pytest.approx(a["shape_acc"][0] * len(named))
    assert json.loads(out.read_text())["results"]["a"] == a
    assert not list(tmp_path.glob("*.tmp*"))
    assert set(a["variety"]) == {"position_spread", "identical_pairs"} and 0 <= a["variety"]["identical_pairs"] <= 1
    # dark: one 0/1 per clip (1: no shape in any frame), their mean the reported share
    assert len(a["values"]["dark"]) == 4 and set(a["values"]["dark"]) <= {0.0, 1.0}
    assert a["dark"][0] == pytest.approx(sum(a["values"]["dark"]) / 4)
    assert rec["real_position_spread"] is None or 0 <= rec["real_position_spread"] <= 2 ** 0.5
    # per repetition: their mean is the overall figure, and --first_seed 100 draws what repetition 1 drew
    assert len(a["by_rep"]) == 2 and rec["first_seed"] == 0
    assert sum(r["colour_acc"] for r in a["by_rep"]) / 2 == pytest.approx(a["colour_acc"][0])
    shifted = b1.main(["--ckpt_dir", f"a={kit['ckpt']}", "--data", str(kit["data"]), "--reps", "1", "--first_seed",
                       "100"])["results"]["a"]
    assert shifted["by_rep"] == a["by_rep"][1:] and shifted["values"]["shape_acc"] == a["values"]["shape_acc"][2:]
    from tav_scripts.demo import parse_args as demo_options

    parsed = b1.parse_args(["--ckpt_dir", f"a={kit['ckpt']}", "--data", str(kit["data"])])
    assert parsed.steps == demo_options([]).gpt_steps  # --train's default steps are the demo GPT's
    with pytest.raises(SystemExit):
        b1.main(["--ckpt_dir", str(kit["ckpt"]), "--data", str(kit["data"])])  # no NAME=
    with pytest.raises(SystemExit):
        b1.main(["--ckpt_dir", f"a={tmp_path}", "--data", str(kit["data"])])  # no checkpoints there


def test_draw_variety_on_hand_made_draws(monkeypatch):
    """Position spread: the mean distance between two draws' centres of one caption, unseen shapes left out;
    identical pairs: the share of draw pairs with the same codes; None below two repetitions."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench_demo_stage1 as b1

    codes = [torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([[1, 2, 3], [4, 5, 7]])]  # caption 0 drawn twice alike
    centres = [np.array([[0.1, 0.1], [0.5, 0.5]]), np.array([[0.4, 0.5], [np.nan, np.nan]])]
    v = b1.draw_variety(codes, centres)
    assert v["identical_pairs"] == 0.5 and v["position_spread"] == pytest.approx(0.5)  # the 3-4-5 triangle
    three = b1.draw_variety([*codes, codes[0]], [*centres, centres[0]])  # pairs (1,0), (2,0), (2,1)
    assert three["identical_pairs"] == pytest.approx(4 / 6)  # caption 0 in all three pairs, caption 1 in one
    # seen gaps: caption 0 in pairs (1,0), (2,0), (2,1): 0.5, 0, 0.5; caption 1 only in (2,0): 0
    assert three["position_spread"] == pytest.approx((0.5 + 0.0 + 0.5 + 0.0) / 4)
    assert b1.draw_variety(codes[:1], centres[:1]) is None


def test_demo_stage1_bench_split_and_cfg_scale(kit, tmp_path, monkeypatch):
    """``--split train`` judges every training caption ``--reps`` times; ``--cfg_scale`` replaces the demo's scale
    and is the one the GPT samples with; a negative scale is an argparse error."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench_demo_stage1 as b1

    import tav.gpt

    data = tmp_path / "data"
    build_demo_dataset(data, n_train=3, n_test=2, size=32, seed=3)
    base = ["--ckpt_dir", f"a={kit['ckpt']}", "--data", str(data), "--reps", "1"]
    with pytest.raises(InputError, match="text_dropout"):  # the tiny GPT has no unconditional model to guide
        b1.main([*base, "--cfg_scale", "4"])
    scales, nucleus, sample = [], [], tav.gpt.sample_codes  # record the settings, then sample unguided

    def recorded(*a, **k):
        scales.append(k["cfg_scale"])
        nucleus.append((k["top_k"], k["top_p"], k["temperature"]))
        return sample(*a, **{**k, "cfg_scale": 1.0})

    monkeypatch.setattr(tav.gpt, "sample_codes", recorded)
    rec = b1.main([*base, "--split", "train"])
    assert rec["split"] == "train" and rec["captions"] == 3 and rec["results"]["a"]["n"] == 3
    assert b1.main(base)["results"]["a"]["n"] == 2
    assert scales == [1.0, 1.0]  # trained without caption dropout: the demo's scale for this GPT is 1
    guided = b1.main([*base, "--cfg_scale", "4"])["results"]["a"]
    assert guided["cfg_scale"] == 4.0 and scales[-1] == 4.0
    assert nucleus[0] == (DEMO_TOP_K, DEMO_TOP_P, DEMO_TEMPERATURE)  # by default the GPT samples as the demo does
    rec = b1.main([*base, "--top_k", "7", "--top_p", "0.9", "--temperature", "0.5"])
    assert nucleus[-1] == (7, 0.9, 0.5) and (rec["top_k"], rec["top_p"], rec["temperature"]) == (7, 0.9, 0.5)
    for bad in (["--cfg_scale", "-1"], ["--top_k", "0"], ["--top_p", "0"], ["--top_p", "1.5"], ["--temperature", "0"]):
        with pytest.raises(SystemExit):
            b1.main([*base, *bad])


def test_the_demo_samples_stage_one_with_one_setting(kit, tmp_path):
    """``sample_tav.sh``, ``generate.sh`` and bench_quality.py give the demo GPT the same top-k and top-p
    and temperature (``DEMO_TOP_K``, ``DEMO_TOP_P``, ``DEMO_TEMPERATURE``), and sample_tav.py's parser reads them
    back as given."""
    from tav_scripts import demo_generate, demo_sample, sample_tav

    def flag(argv, name):
        return argv[argv.index(name) + 1]

    files = {k: tmp_path / f"{k}.ckpt" for k in ("gpt", "vqgan", "diffusion", "joint")}
    sample = demo_sample.sample_command(files, kit["data"], tmp_path / "out", 2)
    generate = demo_generate.generate_commands(files, {"clip_l": tmp_path / "c", "beats": tmp_path / "b"},
                                               {"motion": tmp_path / "m", "shr": tmp_path / "s"})["ta2v"]
    bench = _bench().sample_argv(kit["ckpt"], kit["data"], tmp_path, 2, {})
    for argv in (sample, generate, bench):
        assert (flag(argv, "--top_k"), float(flag(argv, "--top_p")), float(flag(argv, "--temperature"))) == (
            str(DEMO_TOP_K), DEMO_TOP_P, DEMO_TEMPERATURE)
    from tav_scripts import sampling

    args = sampling.build_parser(sample_tav.TA2VRecipe(), sample[1:]).parse_args(sample[1:])
    assert (args.top_k, args.top_p, args.temperature) == (DEMO_TOP_K, DEMO_TOP_P, DEMO_TEMPERATURE)
    assert args.lossless_video is True  # the demo's results are bit-exact, so the judges see the sampler's frames


def test_demo_stage1_bench_trains_recipes_per_seed_and_reuses_them(kit, tmp_path, monkeypatch):
    """``bench_demo_stage1.py --train``: each recipe trains the demo's GPT once per seed on the given VQGAN (its flags
    reach the stored config), reports its validation loss, pools the judges over seeds, and reuses finished runs."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench_demo_stage1 as b1

    from tav.gpt import load_gpt

    data = tmp_path / "data"
    build_demo_dataset(data, n_train=2, n_test=2, size=32, seed=3)
    args = ["--train", "axial=--set pos_emb=axial --base_lr 3e-3", "--vqgan", str(kit["ckpt"] / "vqgan.ckpt"),
            "--seeds", "0", "1", "--steps", "2", "--out", str(tmp_path / "runs"), "--data", str(data), "--reps", "1"]
    rec = b1.main(args)
    r = rec["results"]["axial"]
    assert set(r["per_seed"]) == {"0", "1"} and r["n"] == 4 and rec["steps"] == 2  # 2 seeds x 1 rep x 2 captions
    assert r["flags"] == "--set pos_emb=axial --base_lr 3e-3"
    for one in r["per_seed"].values():
        assert one["n"] == 2 and math.isfinite(one["val_loss"])
    pooled = [v for one in r["per_seed"].values() for v in one["values"]["colour_acc"]]
    assert r["colour_acc"][0] == pytest.approx(float(np.mean(pooled)))
    ckpts = sorted((tmp_path / "runs" / "axial_s1" / "checkpoints").glob("best-*.ckpt"))
    assert load_gpt(ckpts[-1]).cfg.pos_emb == "axial"
    stamp = ckpts[-1].stat().st_mtime_ns
    assert b1.main(args)["results"]["axial"] == r  # reused, not retrained: the same checkpoints and judges
    assert ckpts[-1].stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit):
        b1.main(["--train", "x=", "--data", str(data)])  # no --out


@pytest.mark.parametrize("units, demo, expected", [("avx512_bf16", "bf16", "bf16"), ("amx", "bf16", "32"),
                                                   ("avx512_bf16", "32", "32"), (None, "32", "32")])
def test_demo_gpt_trains_in_bf16_on_avx512_bf16_only(monkeypatch, units, demo, expected):
    """The demo GPT's precision follows the demo's, except on AMX (measured slower there); ``gpt_argv`` carries it,
    so ``bench_demo_stage1.py --train`` trains what ``make demo`` trains on the same CPU."""
    from tav_scripts import demo_stages

    monkeypatch.setattr(demo_stages, "cpu_bf16_units", lambda: units)
    assert demo_stages.gpt_precision(demo) == expected
    argv = demo_stages.gpt_argv(REPO / "v.ckpt", REPO / "d", REPO / "r", 4, 10, demo_stages.gpt_precision(demo))
    assert argv[argv.index("--precision") + 1] == expected and argv.count("--precision") == 1
