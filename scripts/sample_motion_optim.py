"""TIA2V sampling: text + first image + audio -> motion U-Net clip -> optional SHR refinement.

The README seed line runs as written (with real or tiny checkpoints at those paths):

    python scripts/sample_motion_optim.py --resolution 64 --batch_size 1 --diffusion_steps 4000 \
      --noise_schedule cosine --num_channels 64 --num_res_blocks 2 --class_cond False \
      --model_path saved_ckpts/your_model.pt --num_samples 50 --image_size 64 --learn_sigma True --text_stft_cond \
      --audio_emb_model beats --data_path datasets/post_URMP --in_channels 3 --clip_denoised True --run 0

Sample ``i`` is the ``i``-th test clip with seed ``--seed + i``; outputs go to
``<save>/<run>_tacm_<dataset>/``. Defaults come from ``tav.pipelines.tia2v.TIA2VSamplingConfig``;
``--preset tia2v_upstream`` gives the upstream script's. The stages, the flags and the results folder are
described in docs/sampling.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from tav.compat.tia2v import upstream_sampling, upstream_seeds
from tav.data.audio import frames_audio
from tav.data.config import DataConfig, load_data_config
from tav.data.layout import clip_files
from tav.encoders.registry import clear_encoder_cache
from tav.errors import InputError
from tav.pipelines.results import ResultsFolder
from tav.pipelines.ta2v import stage_seed
from tav.pipelines.tia2v import TIA2VSamplingConfig, load_tia2v_sampler
from tav.tia2v.load import beats_mode_for
from tav.tia2v.splits import ConditionSpec, TIA2VSplits
from tav.utils.fileio import file_sha256
from tav_scripts import sampling
from tav_scripts.cli_common import str2bool

DATASETS = {"urmp": "urmp", "landscape": "landscape"}
# motion-factory flags of the seed line: checked against the checkpoint (architecture comes from the file)
ARCH_FLAGS = {"num_channels": "model_channels", "num_res_blocks": "num_res_blocks", "image_size": "image_size",
              "in_channels": "in_channels", "num_heads": "num_heads", "context_dim": "context_dim"}
CONFIG_FLAGS = {"timestep_respacing": "respacing", "skip_timesteps": "skip_timesteps", "shr_strength": "shr_strength",
                "shr_skip_timesteps": "shr_skip_timesteps", "model_output_size": "shr_size",
                "reimpose_first_frame": "reimpose_first_frame", "hold_first_frame": "hold_first_frame",
                "motion_init": "motion_init", "audio_cfg_scale": "audio_cfg_scale",
                "precision": "precision"}


class TIA2VRecipe(sampling.SamplingRecipe):
    name, description = "sample_motion_optim", __doc__.split("\n\n")[0]
    log = logging.getLogger("sample_motion_optim")

    def add_flags(self, p: argparse.ArgumentParser) -> None:
        d = sampling.add_common_flags(p, ("--num_samples", "--n_sample"), 10, 1, "tacm")
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
        d.add_argument("--legacy_folders", action="store_true", help="also write fake1_6fps/ fake1_30fps/ fake2_6fps/")
        sampling.config_flag(d, "precision", TIA2VSamplingConfig, "precision", choices=["auto", "32", "bf16"],
                             help="bf16 autocast around the networks; auto: bf16 on a GPU with bf16 or a CPU with AMX")
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
        _add_sampling_flags(p)

    def check_args(self, args: argparse.Namespace) -> None:
        if args.class_cond:
            raise InputError("--class_cond True: TIA2V is conditioned on text, image and audio; pass False")
        if not args.model_path:
            raise InputError("--model_path: pass the motion (\"TIA\") checkpoint, e.g. saved_ckpts/tia_0906/"
                             "model110000.pt")

    def seeds(self, args: argparse.Namespace, indices: list[int]) -> list[int]:
        return upstream_seeds(args.seed, indices) if args.faithful_quirks else super().seeds(args, indices)

    def setup(self, args: argparse.Namespace, device: torch.device) -> sampling.Setup:
        scfg = sampling.config_from_args(TIA2VSamplingConfig, CONFIG_FLAGS, args,
                                         sampler="ddim" if args.use_ddim else "ddpm",
                                         clip_denoised=0.5 if args.clip_denoised else 0.0)
        if args.faithful_quirks:
            scfg = upstream_sampling(scfg)
        sampler = load_tia2v_sampler(args.model_path, None if args.skip_shr else args.diffusion_ckpt, scfg,
                                     device, compat=args.compat)
        motion = sampler.motion.net
        sampling.check_flags_match(args, ARCH_FLAGS, motion.config, args.model_path)
        sampling.check_flags_match(args, {"diffusion_steps": "steps"}, motion.process, args.model_path)
        name = dataset_name(args)
        data_cfg = _data_config(args, motion.config, name)
        mode = args.beats_mode or beats_mode_for(args.model_path, motion)
        spec = ConditionSpec(args.clip_l_ckpt, args.beats_ckpt, mode, str(device), need_audio=True)
        dm = TIA2VSplits(args.data_path, data_cfg, args.cache_dir or str(Path(args.data_path) / "tia2v_cache"), spec)
        dm.build_cache("test")
        clear_encoder_cache()  # the conditions are cached: the encoders are not needed while sampling
        data = dm.dataset("test")
        results = ResultsFolder(Path(args.save) / f"{args.run}_tacm_{name}", data_cfg.fps, data_cfg.sample_rate,
                                naming="tia2v", legacy_folders=args.legacy_folders, stage2=sampler.shr is not None,
                                lossless=args.lossless_video)
        hashes = {"model_path": file_sha256(args.model_path)}
        if sampler.shr is not None:
            hashes["diffusion_ckpt"] = file_sha256(args.diffusion_ckpt)
        self.log.info("BEATs input mode %s; motion %s, SHR %s", mode, sampler.motion_schedule, sampler.shr_schedule)
        return sampling.Setup(data, results, hashes, min(args.n_sample, len(data)),
                              {"sampler": sampler, "data_cfg": data_cfg})

    def generate(self, st: sampling.Setup, items: list[dict], seeds: list[int],
                 args: argparse.Namespace) -> sampling.Batch:
        video = torch.stack([it["video"] for it in items])
        text = torch.stack([it["text"] for it in items])
        image = torch.stack([it["image"] for it in items])
        tokens = torch.stack([it["audio_tokens"] for it in items])
        v1, v2, secs = st.state["sampler"].run(video[:, :, 0], text, image, tokens, video.shape[2], seeds,
                                               [stage_seed(s, 1) for s in seeds], progress=args.progress)
        cfg = st.state["data_cfg"]
        audio = [frames_audio(clip_files(Path(args.data_path) / "test", it["stem"]).audio, cfg.sample_rate,
                              cfg.samples_per_frame, int(it["start"]), cfg.sequence_length) for it in items]
        stage2 = [[] if v2 is None else [v2[b]] for b in range(len(items))]
        return sampling.Batch(stage1=list(v1), stage2=stage2, audio=audio, seconds=secs)


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    C = TIA2VSamplingConfig
    s = p.add_argument_group("sampling")
    sampling.config_flag(s, "timestep_respacing", C, "respacing", help='"200", "ddim50", ... ("" = every step)')
    s.add_argument("--use_ddim", type=str2bool, default=False)
    sampling.config_flag(s, "skip_timesteps", C, "skip_timesteps", type=int,
                         help="motion SDEdit start (of the original chain)")
    sampling.config_flag(s, "shr_strength", C, "shr_strength", type=float, help="SHR start t0/T")
    sampling.config_flag(s, "shr_skip_timesteps", C, "shr_skip_timesteps", type=int,
                         help="SHR: original-chain steps to skip, instead of --shr_strength (upstream: 100)")
    sampling.config_flag(s, "model_output_size", C, "shr_size", type=int, help="SHR frame size")
    s.add_argument("--clip_denoised", type=str2bool, default=True, help="clamp x0 (to the data range)")
    s.add_argument("--reimpose_first_frame", action="store_true", help="put the given frame 0 back")
    sampling.config_flag(s, "motion_init", C, "motion_init", choices=["zeros", "first"],
                         help="motion SDEdit input: frame 0 then zeros (upstream) or every frame = frame 0")
    sampling.config_flag(s, "hold_first_frame", C, "hold_first_frame", type=str2bool,
                         help="keep frame 0 on the given frame's forward process at every step")
    sampling.config_flag(s, "audio_cfg_scale", C, "audio_cfg_scale", type=float,
                         help="motion: classifier-free guidance on the sound, 1 = none (a model trained with "
                              "--audio_dropout)")
    s.add_argument("--faithful-quirks", "--faithful_quirks", dest="faithful_quirks", action="store_true",
                   help="upstream's x0 clamp to [-1, 1] and one seed for every sample")
    x = p.add_argument_group("seed-line flags checked against the checkpoint or accepted")
    sampling.add_accepted(x, [*ARCH_FLAGS, "diffusion_steps"], "checked against the motion checkpoint", type=int)
    x.add_argument("--noise_schedule", choices=["cosine", "linear"], default=None)
    x.add_argument("--learn_sigma", type=str2bool, default=None)
    x.add_argument("--class_cond", type=str2bool, default=False)
    x.add_argument("--vqgan_ckpt", default="", help="accepted; unused (TIA2V is pixel-space)")
    sampling.add_accepted(x, ("text_guidance_lambda", "range_lambda", "audio_guidance_lambda", "direction_lambda"),
                          "accepted; upstream's SHR runs unguided", type=float)


def dataset_name(args: argparse.Namespace) -> str:
    """``urmp`` / ``landscape`` from ``--dataset`` or the data path."""
    name = args.dataset.lower() or ("landscape" if "landscape" in str(args.data_path).lower() else "urmp")
    if name not in DATASETS:
        raise InputError(f"--dataset {args.dataset}: choose urmp or landscape")
    return name


def _data_config(args: argparse.Namespace, cfg, name: str) -> DataConfig:
    """The test clips the motion model makes: its frame count and size (flags that disagree are errors)."""
    frames = args.sequence_length or cfg.num_frames
    if frames != cfg.num_frames or (args.resolution or cfg.image_size) != cfg.image_size:
        raise InputError(f"--sequence_length/--resolution: the motion model makes {cfg.num_frames} frames of "
                         f"{cfg.image_size} px; drop the flags or pass those values")
    return load_data_config(name, frames_per_file=args.load_vid_len, resolution=cfg.image_size,
                            sequence_length=frames, tokenizer="none", load_audio=False, downsample=[1, 1, 1])


def sample(argv: list[str] | None = None) -> Path:
    """Run the sampler; returns the results folder. Raises ``InputError`` for bad flags/files."""
    return sampling.sample(TIA2VRecipe(), argv)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 for bad input (one line on stderr)."""
    return sampling.main(TIA2VRecipe(), argv)


if __name__ == "__main__":
    sys.exit(main())
