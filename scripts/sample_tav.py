"""TA2V two-stage sampling: test captions -> GPT + VQGAN clips -> audio/text-guided SDEdit refinement.

The README seed line runs as written (with real or tiny checkpoints at those paths):

    python scripts/sample_tav.py --gpt_text_ckpt saved_ckpts/best_checkpoint-val_text_loss=2.74.ckpt \
      --text_stft_cond --vqgan_ckpt saved_ckpts/epoch=6-step=35999-train_recon_loss=0.15.ckpt \
      --text_emb_model bert --data_path datasets/post_URMP/ --top_k 2048 --top_p 0.80 --n_sample 50 --run 17 \
      --dataset URMP --load_vid_len 90 --audio_emb_model audioclip --resolution 96 --batch_size 1 \
      --model_output_size 128 --noise_schedule cosine --iterations_num 1 --audio_guidance_lambda 10000 \
      --direction_lambda 5000 --text_guidance_lambda 10000 --diffusion_ckpt saved_ckpts/model300000.pt

Sample ``i`` is the ``i``-th test clip with seed ``--seed + i``; outputs go to ``<save>/<run>_tav_<dataset>/``.
Defaults come from ``tav.pipelines.ta2v.SamplingConfig`` and ``tav.guidance.GuidanceConfig`` (the released
command); ``--preset ta2v_upstream`` gives the upstream script's. The stages, the flags and the results folder
are described in docs/sampling.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from tav.data.config import load_data_config
from tav.data.dataset import VATDataset
from tav.diffusion.load import load_diffusion
from tav.errors import InputError
from tav.gpt.load import load_stage1
from tav.guidance import Guidance, GuidanceConfig, build_guidance
from tav.pipelines.results import ResultsFolder
from tav.pipelines.ta2v import SamplingConfig, TwoStageSampler
from tav.utils.fileio import file_sha256
from tav_scripts import sampling
from tav_scripts.cli_common import str2bool

DATASETS = {"URMP": "urmp", "landscape": "landscape"}
SAMPLING_FLAGS = {"top_k": "top_k", "top_p": "top_p", "temperature": "temperature", "gpt_cfg_scale": "gpt_cfg_scale",
                  "model_output_size": "output_size", "timestep_respacing": "respacing",
                  "skip_timesteps": "skip_timesteps", "iterations_num": "iterations", "precision": "precision",
                  "guidance_checkpointing": "guidance_checkpointing"}
GUIDANCE_FLAGS = {"audio_emb_model": "audio_encoder", "text_guidance_model": "text_encoder",
                  "audio_guidance_lambda": "audio_lambda",
                  "direction_lambda": "direction_lambda", "text_guidance_lambda": "text_lambda",
                  "range_lambda": "range_lambda", "aug_num": "aug_num", "audio_window": "audio_window_s",
                  "faithful_quirks": "faithful_quirks", "guidance_blur": "grad_blur"}
IGNORED = ("prompt", "init_image", "mask", "gpu_id", "output_path", "output_file", "vid", "export_assets",
           "local_clip_guided_diffusion", "no_enforce_background", "lpips_sim_lambda", "l2_sim_lambda",
           "background_preservation_loss", "stft_vqgan_ckpt", "compute_fvd")


class TA2VRecipe(sampling.SamplingRecipe):
    name, description = "sample_tav", __doc__.split("\n\n")[0]
    log = logging.getLogger("sample_tav")

    def add_flags(self, p: argparse.ArgumentParser) -> None:
        s = p.add_argument_group("stage 1 (GPT + VQGAN)")
        s.add_argument("--gpt_text_ckpt", required=True, help="GPT checkpoint (tav, Lightning or upstream .ckpt)")
        s.add_argument("--vqgan_ckpt", required=True, help="VQGAN checkpoint the GPT was trained with")
        s.add_argument("--stft_vqgan_ckpt", default="", help="accepted; unused")
        sampling.config_flag(s, "top_k", SamplingConfig, "top_k", type=int)
        sampling.config_flag(s, "top_p", SamplingConfig, "top_p", type=float)
        sampling.config_flag(s, "temperature", SamplingConfig, "temperature", type=float)
        sampling.config_flag(s, "gpt_cfg_scale", SamplingConfig, "gpt_cfg_scale", type=float,
                             help="classifier-free guidance of the GPT's tokens; needs a GPT trained with text_dropout")
        s.add_argument("--text_emb_model", choices=["bert", "clip"], default=None, help="checked against the GPT")
        d = sampling.add_common_flags(p, ("--n_sample",), 2048, 4, "tav")
        d.add_argument("--data_path", default="./datasets/post_URMP/", help="dataset root (test/ is sampled)")
        d.add_argument("--dataset", choices=list(DATASETS), default="URMP", help="data preset and folder suffix")
        d.add_argument("--load_vid_len", type=int, default=None, help="frames per pre-cut clip (URMP 90, Landscape 30)")
        d.add_argument("--resolution", type=int, default=None, help="stage-1 (VQGAN) clip size; default the VQGAN's")
        d.add_argument("--sequence_length", type=int, default=16)
        d.add_argument("--text_stft_cond", action="store_true", help="seed flag: text-audio-video data (always)")
        sampling.config_flag(d, "precision", SamplingConfig, "precision", choices=["auto", "32", "bf16"],
                             help="bf16 autocast around the networks; auto: bf16 on a GPU with bf16 or a CPU with AMX")
        d.add_argument("--compute_fvd", action="store_true", help="accepted; use tools/tf_fvd/fvd.py")
        _add_stage2(p)

    def check_args(self, args: argparse.Namespace) -> None:
        if args.iterations_num < 1:
            raise InputError("--iterations_num must be >= 1")
        if args.audio_emb_model == "STFT":
            raise InputError("--audio_emb_model STFT: no STFT guidance model was released; use audioclip or wav2clip")
        for name in IGNORED:
            if getattr(args, name, None) not in (None, False, ""):
                self.log.debug("--%s has no effect in tav's video sampler", name)

    def setup(self, args: argparse.Namespace, device: torch.device) -> sampling.Setup:
        gpt, vqgan = load_stage1(args.gpt_text_ckpt, args.vqgan_ckpt, device)
        if args.text_emb_model is not None and args.text_emb_model != gpt.cfg.text_mode:
            raise InputError(f"--text_emb_model {args.text_emb_model}: {args.gpt_text_ckpt} was trained with "
                             f"{gpt.cfg.text_mode} captions")
        scfg = sampling.config_from_args(SamplingConfig, SAMPLING_FLAGS, args,
                                         sampler="ddim" if args.ddim else "ddpm")
        net, schedule, guidance = _stage2_models(args, scfg, device)
        if net.config.image_size != scfg.output_size:
            self.log.warning("--model_output_size %d differs from the U-Net's training size %d", scfg.output_size,
                             net.config.image_size)
        made = gpt.cfg.latent_shape[-1] * vqgan.cfg.downsample[-1]  # stage-1 clip size in pixels
        if args.resolution is not None and args.resolution != made:
            raise InputError(f"--resolution {args.resolution}: the GPT + VQGAN make {made}-px clips, so the real and "
                             f"generated videos would differ in size; pass --resolution {made} or leave it out")
        frames = vqgan.cfg.sequence_length
        if args.sequence_length != frames:
            raise InputError(f"--sequence_length {args.sequence_length}: the GPT + VQGAN make {frames}-frame clips; "
                             f"pass --sequence_length {frames}")
        data_cfg = load_data_config(DATASETS[args.dataset], frames_per_file=args.load_vid_len,
                                    resolution=args.resolution or vqgan.cfg.resolution, sequence_length=frames,
                                    tokenizer=gpt.cfg.text_mode, text_seq_len=gpt.cfg.text_seq_len,
                                    downsample=list(vqgan.cfg.downsample),
                                    audio_context_s=_audio_context_s(guidance))
        data = VATDataset(args.data_path, "test", data_cfg)
        results = ResultsFolder(Path(args.save) / f"{args.run}_tav_{args.dataset}", data_cfg.fps,
                                data_cfg.sample_rate, lossless=args.lossless_video)
        hashes = {k: file_sha256(getattr(args, k)) for k in ("gpt_text_ckpt", "vqgan_ckpt", "diffusion_ckpt")}
        sampler = TwoStageSampler(gpt, vqgan, net, schedule, guidance, scfg)
        return sampling.Setup(data, results, hashes, min(args.n_sample, len(data)), {"sampler": sampler})

    def generate(self, st: sampling.Setup, items: list[dict], seeds: list[int],
                 args: argparse.Namespace) -> sampling.Batch:
        sampler = st.state["sampler"]
        ids = torch.stack([it["text"] for it in items])
        audio = torch.stack([it["audio"].reshape(-1) for it in items]).float()
        guide_audio, spans = audio, None
        if "audio_context" in items[0]:  # per-frame windows centred on each frame, from the sound around the clip
            guide_audio = torch.stack([it["audio_context"] for it in items]).float()
            spans = torch.stack([it["audio_span"] for it in items])
        v1, v2, secs = sampler.run(ids, guide_audio, [it["caption"] for it in items], st.data.cfg.sample_rate,
                                   seeds, progress=args.progress, spans=spans)
        terms = sampler.guidance.last_terms
        return sampling.Batch(stage1=list(v1), stage2=[[v[b] for v in v2] for b in range(len(items))],
                              audio=[a.numpy() for a in audio], seconds=secs,
                              info=[{"guidance_final": {k: float(v[b]) for k, v in terms.items()}}
                                    for b in range(len(items))])


def _audio_context_s(guidance: Guidance) -> float:
    """Seconds of sound the dataset reads on each side of a clip: half the guidance window, so that every frame's
    window is centred on that frame even in a clip shorter than the window (0 where no audio term is on, or in
    upstream's equal-rows audio mode)."""
    c = guidance.cfg
    return c.audio_window_s / 2 if c.uses_audio and guidance.audio_mode == "window" else 0.0


def _add_stage2(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("stage 2 (diffusion + guidance)")
    g.add_argument("--diffusion_ckpt", default="saved_ckpts/model300000.pt")
    sampling.config_flag(g, "timestep_respacing", SamplingConfig, "respacing")
    sampling.config_flag(g, "skip_timesteps", SamplingConfig, "skip_timesteps", type=int)
    g.add_argument("--ddim", action="store_true", help="DDIM steps instead of DDPM")
    g.add_argument("--guidance_checkpointing", action="store_true",
                   help="recompute the U-Net and image-tower activations in the guidance backward: ~40%% less "
                        "memory per video, ~1.3x the time per step, the same videos")
    sampling.config_flag(g, "model_output_size", SamplingConfig, "output_size", type=int, help="diffusion frame size")
    g.add_argument("--noise_schedule", choices=["cosine", "linear"], default=None, help="bare state dicts only")
    g.add_argument("--rescale_timesteps", type=str2bool, default=None,
                   help="bare state dicts: whether the network saw t*1000/steps")
    sampling.config_flag(g, "audio_emb_model", GuidanceConfig, "audio_encoder",
                         choices=["STFT", "wav2clip", "audioclip", "joint"])
    sampling.config_flag(g, "text_guidance_model", GuidanceConfig, "text_encoder", choices=["clip", "joint"],
                         help="frame and caption towers of the text term")
    for flag, name in (("audio_guidance_lambda", "audio_lambda"), ("text_guidance_lambda", "text_lambda"),
                       ("direction_lambda", "direction_lambda"), ("range_lambda", "range_lambda")):
        sampling.config_flag(g, flag, GuidanceConfig, name, type=float)
    sampling.config_flag(g, "aug_num", GuidanceConfig, "aug_num", type=int, help="views per frame (wav2clip)")
    sampling.config_flag(g, "guidance_blur", GuidanceConfig, "grad_blur", type=float,
                         help="smooth the guidance gradient per frame by a Gaussian of this std (pixels; 0: off)")
    sampling.config_flag(g, "iterations_num", SamplingConfig, "iterations", type=int,
                         help="independent refinements per sample")
    sampling.config_flag(g, "audio_window", GuidanceConfig, "audio_window_s", type=float,
                         help="seconds of audio embedded per frame")
    g.add_argument("--faithful-quirks", "--faithful_quirks", dest="faithful_quirks", action="store_true",
                   help="upstream's guidance input mapping and audio chunking (reproduction only)")
    for name in ("audioclip", "clip", "wav2clip", "joint"):
        g.add_argument(f"--{name}_ckpt", default=None, help=f"{name} weights (default under saved_ckpts/)")
    x = p.add_argument_group("accepted for upstream compatibility; no effect")
    sampling.add_accepted(x, ("prompt", "init_image", "mask", "output_path", "output_file", "vid"), "no effect")
    sampling.add_accepted(x, ("gpu_id",), "no effect: use --device", type=int)
    sampling.add_accepted(x, ("lpips_sim_lambda", "l2_sim_lambda"), "no effect", type=float)
    sampling.add_accepted(x, ("export_assets", "local_clip_guided_diffusion", "no_enforce_background",
                              "background_preservation_loss"), "no effect", action="store_true", default=False)


def _stage2_models(args: argparse.Namespace, scfg: SamplingConfig, device: torch.device):
    defaults = {k: v for k, v in (("noise_schedule", args.noise_schedule),
                                  ("rescale_timesteps", args.rescale_timesteps)) if v is not None}
    net, schedule = load_diffusion(args.diffusion_ckpt, device, respacing=scfg.respacing,
                                   process_defaults=defaults)
    gcfg = sampling.config_from_args(GuidanceConfig, GUIDANCE_FLAGS, args)
    weights = {name: getattr(args, f"{name}_ckpt") for name in ("audioclip", "wav2clip", "clip", "joint")}
    return net, schedule, build_guidance(gcfg, schedule, device, weights)


def sample(argv: list[str] | None = None) -> Path:
    """Run the sampler; returns the results folder. Raises ``InputError`` for bad flags/files."""
    return sampling.sample(TA2VRecipe(), argv)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 for bad input (one line on stderr)."""
    return sampling.main(TA2VRecipe(), argv)


if __name__ == "__main__":
    sys.exit(main())
