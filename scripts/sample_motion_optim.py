"""TIA2V sampling (spec tia2v.md §6): text + first image + audio -> motion U-Net clip -> optional SHR refinement.

The README seed line runs as written (with real or tiny checkpoints at those paths):

    python scripts/sample_motion_optim.py --resolution 64 --batch_size 1 --diffusion_steps 4000 \
      --noise_schedule cosine --num_channels 64 --num_res_blocks 2 --class_cond False \
      --model_path saved_ckpts/your_model.pt --num_samples 50 --image_size 64 --learn_sigma True --text_stft_cond \
      --audio_emb_model beats --data_path datasets/post_URMP --in_channels 3 --clip_denoised True --run 0

Sample ``i`` is the ``i``-th test clip (deterministic window) with seed ``--seed + i``. Its conditions (the
caption's CLIP-L text states, the window's first-frame CLIP-L image embedding, BEATs tokens per frame) come
from the condition cache, built once for the test split. The motion model starts from the first frame + zeros
(SDEdit, ``--skip_timesteps`` of the original chain, upstream 100); with an SHR checkpoint
(``--diffusion_ckpt``) each clip is then upsampled to ``--model_output_size`` and refined with
``--shr_strength`` (t0/T, default 0.375 = skip 2500 of 4000: a refinement) or ``--shr_skip_timesteps`` (the
seed line's editor default 100 re-synthesises the clip). Both run
respaced (``--timestep_respacing``, default "200"; ``--use_ddim``). Architectures come from the checkpoints;
the architecture flags of the seed line are accepted and checked against them.

Outputs: ``<save>/<run>_tacm_<dataset>/{real,fake_stage1,fake_stage2,audio,txt}/`` (``groundtruth_<i>.mp4``,
``video_<i>.mp4``, ...) at the dataset fps with the audio muxed in, plus ``manifest.jsonl``; a re-run skips
finished samples. ``--legacy_folders`` adds upstream's ``fake1_6fps``-style folder names.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

try:  # imported as scripts.sample_motion_optim (tests, demo) or run as a file
    from scripts.cli_common import add_verbose_flag, run_samples, sample_main, str2bool
except ImportError:
    from cli_common import add_verbose_flag, run_samples, sample_main, str2bool

from tav.checkpoint import read_checkpoint
from tav.data.audio import read_audio
from tav.data.config import DataConfig, load_data_config
from tav.data.layout import clip_files
from tav.diffusion.schedule import GaussianSchedule
from tav.encoders.registry import clear_encoder_cache
from tav.errors import InputError
from tav.pipelines.results import ResultsFolder, SampleRecord
from tav.pipelines.ta2v import stage_seed
from tav.pipelines.tia2v import TIA2VSampler, TIA2VSamplingConfig
from tav.tia2v.datamodule import ConditionSpec, TIA2VDataModule
from tav.tia2v.load import STAGES, load_tia2v_unet
from tav.utils.fileio import file_sha256
from tav.utils.runtime import deterministic_kernels, pick_device

log = logging.getLogger("sample_motion_optim")
DATASETS = {"urmp": "urmp", "landscape": "landscape"}
# motion-factory flags of the seed line: checked against the checkpoint (architecture comes from the file)
ARCH_FLAGS = {"num_channels": "model_channels", "num_res_blocks": "num_res_blocks", "image_size": "image_size",
              "in_channels": "in_channels", "num_heads": "num_heads", "context_dim": "context_dim"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_verbose_flag(p)
    d = p.add_argument_group("data and outputs")
    d.add_argument("--data_path", default="datasets/post_URMP", help="dataset root (test/ is sampled)")
    d.add_argument("--dataset", default="", help="urmp | landscape (default: from --data_path)")
    d.add_argument("--load_vid_len", type=int, default=None, help="frames per pre-cut clip (URMP 90)")
    d.add_argument("--resolution", type=int, default=None, help="motion frame size (default: the model's)")
    d.add_argument("--sequence_length", type=int, default=None, help="frames (default: the model's, 16)")
    d.add_argument("--text_stft_cond", action="store_true", help="seed flag (text-audio-video data); always on")
    d.add_argument("--text_emb_model", default="clip", choices=["clip"])
    d.add_argument("--audio_emb_model", default="beats", choices=["beats"])
    d.add_argument("--num_workers", type=int, default=0, help="accepted")
    d.add_argument("--cache_dir", default=None, help="condition cache (default <data_path>/tia2v_cache)")
    d.add_argument("--save", default="./results/", help="results root")
    d.add_argument("--run", default="0", help="run id: <save>/<run>_tacm_<dataset>")
    d.add_argument("--num_samples", "--n_sample", dest="num_samples", type=int, default=10)
    d.add_argument("--batch_size", type=int, default=1, help="clips per batch")
    d.add_argument("--seed", type=int, default=404, help="sample i uses seed + i")
    d.add_argument("--legacy_folders", action="store_true", help="also write fake1_6fps/ fake1_30fps/ fake2_6fps/")
    d.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 | mps")
    d.add_argument("--precision", choices=["32", "bf16"], default="32", help="bf16 autocast (GPU)")
    d.add_argument("--progress", type=str2bool, default=True, help="per-step bars")
    m = p.add_argument_group("models")
    m.add_argument("--model_path", default="", help="motion (\"TIA\") checkpoint: tav, Lightning or upstream")
    m.add_argument("--diffusion_ckpt", default="saved_ckpts/ldm_opdif_0514/model420000.pt", help="SHR checkpoint")
    m.add_argument("--skip_shr", action="store_true", help="stage 1 only (no SHR)")
    m.add_argument("--compat", choices=["tia2v", "fixed"], default=None,
                   help="override the checkpoint's behaviour switches (upstream files default to tia2v)")
    m.add_argument("--clip_l_ckpt", default=None, help="CLIP ViT-L/14 folder")
    m.add_argument("--beats_ckpt", default=None, help="BEATs file")
    m.add_argument("--beats_mode", choices=["fixed", "compat"], default=None,
                   help="BEATs input (default: compat for upstream weights, else what the model was trained on)")
    s = p.add_argument_group("sampling")
    s.add_argument("--timestep_respacing", default="200", help='"200", "ddim50", ... ("" = every step)')
    s.add_argument("--use_ddim", type=str2bool, default=False)
    s.add_argument("--skip_timesteps", type=int, default=100, help="motion SDEdit start (of the original chain)")
    s.add_argument("--shr_strength", type=float, default=0.375, help="SHR start t0/T (0.375 = skip 2500 of 4000)")
    s.add_argument("--shr_skip_timesteps", type=int, default=None,
                   help="SHR: original-chain steps to skip, instead of --shr_strength (upstream: 100)")
    s.add_argument("--model_output_size", type=int, default=128, help="SHR frame size")
    s.add_argument("--clip_denoised", type=str2bool, default=True, help="clamp x0 (to the data range)")
    s.add_argument("--reimpose_first_frame", action="store_true", help="put the given frame 0 back")
    s.add_argument("--faithful-quirks", "--faithful_quirks", dest="faithful_quirks", action="store_true",
                   help="upstream's x0 clamp to [-1, 1] and one seed for every sample")
    x = p.add_argument_group("seed-line flags checked against the checkpoint or accepted")
    for name in ARCH_FLAGS:
        x.add_argument(f"--{name}", type=int, default=None)
    x.add_argument("--diffusion_steps", type=int, default=None)
    x.add_argument("--noise_schedule", choices=["cosine", "linear"], default=None)
    x.add_argument("--learn_sigma", type=str2bool, default=None)
    x.add_argument("--class_cond", type=str2bool, default=False)
    x.add_argument("--vqgan_ckpt", default="", help="accepted; unused (TIA2V is pixel-space)")
    for name in ("text_guidance_lambda", "range_lambda", "audio_guidance_lambda", "direction_lambda"):
        x.add_argument(f"--{name}", type=float, default=None, help="accepted; upstream's SHR runs unguided")
    return p


def dataset_name(args: argparse.Namespace) -> str:
    """``urmp`` / ``landscape`` from ``--dataset`` or the data path."""
    name = args.dataset.lower() or ("landscape" if "landscape" in str(args.data_path).lower() else "urmp")
    if name not in DATASETS:
        raise InputError(f"--dataset {args.dataset}: choose urmp or landscape")
    return name


def beats_mode_of(path: str, net, given: str | None) -> str:
    """The BEATs input mode the motion weights expect: the flag, else the file's record, else compat for
    upstream-quirk weights and fixed otherwise."""
    if given:
        return given
    try:
        raw = read_checkpoint(path, expect=STAGES["motion"]).raw
    except InputError:  # an upstream bare state dict records nothing
        raw = {}
    recorded = raw.get("beats_mode") or (raw.get("hyper_parameters") or {}).get("beats_mode")
    if recorded:
        return recorded
    cfg = net.config
    return "compat" if (cfg.dual_block_frame_collapse or cfg.audio_row_mapping) else "fixed"


def _check_arch(args: argparse.Namespace, net, path: str) -> None:
    for flag, field in ARCH_FLAGS.items():
        given = getattr(args, flag)
        if given is not None and given != getattr(net.config, field):
            raise InputError(f"--{flag} {given}: {path} has {field}={getattr(net.config, field)}; the "
                             "architecture comes from the checkpoint, drop the flag or pass the right file")
    steps = net.process.steps
    if args.diffusion_steps is not None and args.diffusion_steps != steps:
        raise InputError(f"--diffusion_steps {args.diffusion_steps}: {path} was trained with {steps} steps")


@dataclass
class Setup:
    sampler: TIA2VSampler
    data: object
    results: ResultsFolder
    data_cfg: DataConfig
    hashes: dict[str, str]
    n: int


def _models(args: argparse.Namespace, device: torch.device):
    if not args.model_path:
        raise InputError("--model_path: pass the motion (\"TIA\") checkpoint, e.g. saved_ckpts/tia_0906/"
                         "model110000.pt")
    motion = load_tia2v_unet(args.model_path, "motion", device, compat=args.compat)
    _check_arch(args, motion, args.model_path)
    respacing = args.timestep_respacing or None
    m_sched = GaussianSchedule.from_config(motion.process, respacing=respacing)
    shr = s_sched = None
    if not args.skip_shr:
        if not Path(args.diffusion_ckpt).is_file():
            raise InputError(f"--diffusion_ckpt {args.diffusion_ckpt}: no such file; pass the SHR (\"Diffusion\") "
                             "checkpoint, or --skip_shr for the motion stage only")
        shr = load_tia2v_unet(args.diffusion_ckpt, "shr", device, compat=args.compat)
        s_sched = GaussianSchedule.from_config(shr.process, respacing=respacing)
    return motion, m_sched, shr, s_sched


def setup(args: argparse.Namespace) -> Setup:
    """Build the models, the test conditions and the results folder (all once)."""
    device = pick_device(args.device)
    deterministic_kernels(device)
    motion, m_sched, shr, s_sched = _models(args, device)
    cfg = motion.config
    name = dataset_name(args)
    frames = args.sequence_length or cfg.num_frames
    if frames != cfg.num_frames or (args.resolution or cfg.image_size) != cfg.image_size:
        raise InputError(f"--sequence_length/--resolution: the motion model makes {cfg.num_frames} frames of "
                         f"{cfg.image_size} px; drop the flags or pass those values")
    data_cfg = load_data_config(name, frames_per_file=args.load_vid_len, resolution=cfg.image_size,
                                sequence_length=frames, tokenizer="none", load_audio=False, downsample=[1, 1, 1])
    mode = beats_mode_of(args.model_path, motion, args.beats_mode)
    spec = ConditionSpec(args.clip_l_ckpt, args.beats_ckpt, mode, str(device), need_audio=True)
    cache_dir = args.cache_dir or str(Path(args.data_path) / "tia2v_cache")
    dm = TIA2VDataModule(args.data_path, data_cfg, cache_dir, spec)
    dm.build_cache("test")
    clear_encoder_cache()  # the conditions are cached: the encoders are not needed while sampling
    data = dm.dataset("test")
    scfg = TIA2VSamplingConfig(skip_timesteps=args.skip_timesteps, shr_strength=args.shr_strength,
                               shr_skip_timesteps=args.shr_skip_timesteps,
                               shr_size=args.model_output_size, sampler="ddim" if args.use_ddim else "ddpm",
                               clip_denoised=(1.0 if args.faithful_quirks else 0.5) if args.clip_denoised else 0.0,
                               reimpose_first_frame=args.reimpose_first_frame, precision=args.precision)
    root = Path(args.save) / f"{args.run}_tacm_{name}"
    results = ResultsFolder(root, data_cfg.fps, data_cfg.sample_rate, naming="tia2v",
                            legacy_folders=args.legacy_folders, stage2=shr is not None)
    hashes = {"model_path": file_sha256(args.model_path)}
    if shr is not None:
        hashes["diffusion_ckpt"] = file_sha256(args.diffusion_ckpt)
    log.info("BEATs input mode %s; motion %s, SHR %s", mode, m_sched, s_sched)
    return Setup(TIA2VSampler(motion, m_sched, shr, s_sched, scfg), data, results, data_cfg, hashes,
                 min(args.num_samples, len(data)))


def window_audio(st: Setup, data_path: str, stem: str, start: int) -> np.ndarray:
    """The mono audio of frames ``[start, start + F)`` at the dataset rate, ``(F * spf,)`` in [-1, 1]."""
    cfg = st.data_cfg
    spf = cfg.samples_per_frame
    wave = read_audio(clip_files(Path(data_path) / "test", stem).audio, cfg.sample_rate)
    chunk = wave[start * spf: (start + cfg.sequence_length) * spf]
    return np.pad(chunk, (0, cfg.sequence_length * spf - len(chunk))).astype(np.float32)


def _run_batch(st: Setup, args: argparse.Namespace, indices: list[int]) -> None:
    items = [st.data[i] for i in indices]
    seeds = [args.seed if args.faithful_quirks else args.seed + i for i in indices]
    video = torch.stack([it["video"] for it in items])
    text = torch.stack([it["text"] for it in items])
    image = torch.stack([it["image"] for it in items])
    tokens = torch.stack([it["audio_tokens"] for it in items])
    v1, v2, secs = st.sampler.run(video[:, :, 0], text, image, tokens, video.shape[2], seeds,
                                  [stage_seed(s, 1) for s in seeds], progress=args.progress)
    for b, (i, it) in enumerate(zip(indices, items, strict=True)):
        info = {"seed": seeds[b], "start": int(it["start"]), "checkpoints": st.hashes, "batch": len(indices),
                "seconds": {k: v / len(indices) for k, v in secs.items()}}
        stage2 = [] if v2 is None else [v2[b].cpu()]
        audio = window_audio(st, args.data_path, it["stem"], int(it["start"]))
        st.results.write(SampleRecord(i, it["stem"], it["caption"], it["video"], v1[b].cpu(), stage2, audio, info))


def sample(argv: list[str] | None = None) -> Path:
    """Run the sampler; returns the results folder. Raises ``InputError`` for bad flags/files."""
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.num_samples < 1:
        raise InputError("--batch_size and --num_samples must be >= 1")
    if args.class_cond:
        raise InputError("--class_cond True: TIA2V is conditioned on text, image and audio; pass False")
    st = setup(args)
    run_samples(st.n, lambda i: st.results.is_done(i, str(st.data.stems[i])), args.batch_size,
                lambda batch: _run_batch(st, args, batch), st.results.root, log)
    return st.results.root


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 for bad input (one line on stderr)."""
    return sample_main("sample_motion_optim", sample, argv)


if __name__ == "__main__":
    sys.exit(main())
