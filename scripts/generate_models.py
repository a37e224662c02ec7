"""``generate.py``'s model flags (the samplers' names) and how its models are built, once per run."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Any

import torch

from tav.checkpoint import recorded_data
from tav.errors import InputError
from tav.guidance import GuidanceConfig
from tav.pipelines.generate import TA2VModels, TIA2VModels, hashes_of
from tav.pipelines.ta2v import SamplingConfig
from tav.pipelines.tia2v import TIA2VSamplingConfig
from tav_scripts.cli_common import str2bool

log = logging.getLogger("generate")
DEFAULT_FPS = {"urmp": 30.0, "landscape": 10.0}  # for checkpoints that record no training fps
TA2V_DIFFUSION = "saved_ckpts/model300000.pt"
TIA2V_SHR = "saved_ckpts/ldm_opdif_0514/model420000.pt"
GUIDANCE_FLAGS = {"audio_emb_model": "audio_encoder", "text_guidance_model": "text_encoder",
                  "audio_guidance_lambda": "audio_lambda", "direction_lambda": "direction_lambda",
                  "text_guidance_lambda": "text_lambda", "range_lambda": "range_lambda", "aug_num": "aug_num",
                  "audio_window": "audio_window_s", "guidance_blur": "grad_blur"}


def add_ta2v_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("TA2V models and settings (sample_tav.py's flags)")
    g.add_argument("--gpt_text_ckpt", default=None, help="GPT checkpoint")
    g.add_argument("--vqgan_ckpt", default=None, help="the VQGAN the GPT was trained with")
    for flag in ("top_k", "top_p", "temperature"):
        g.add_argument(f"--{flag}", type=int if flag == "top_k" else float, default=None)
    g.add_argument("--gpt_cfg_scale", type=float, default=None,
                   help="classifier-free guidance of the GPT's tokens (default 1: none); needs text_dropout training")
    g.add_argument("--context_frames", type=int, default=None,
                   help="latent frames of the previous window the GPT continues from (default: half its grid)")
    g.add_argument("--skip_stage2", action="store_true", help="stage 1 only (GPT + VQGAN)")
    g.add_argument("--stage2_stride", type=int, default=None,
                   help="frames between the stage-2 windows (default half a window; 0: a whole window, no overlap)")
    g.add_argument("--audio_emb_model", choices=["wav2clip", "audioclip", "joint"], default=None)
    g.add_argument("--text_guidance_model", choices=["clip", "joint"], default=None)
    for flag in ("audio_guidance_lambda", "direction_lambda", "text_guidance_lambda", "range_lambda", "audio_window",
                 "guidance_blur"):
        g.add_argument(f"--{flag}", type=float, default=None)
    g.add_argument("--aug_num", type=int, default=None)
    for name in ("audioclip", "clip", "wav2clip", "joint"):
        g.add_argument(f"--{name}_ckpt", default=None, help=f"{name} weights (default under saved_ckpts/)")


def add_tia2v_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("TIA2V models and settings (sample_motion_optim.py's flags)")
    g.add_argument("--model_path", default=None, help="motion (\"TIA\") checkpoint")
    g.add_argument("--skip_shr", action="store_true", help="motion model only (no SHR)")
    g.add_argument("--shr_strength", type=float, default=None, help="SHR start t0/T")
    g.add_argument("--shr_skip_timesteps", type=int, default=None)
    g.add_argument("--hold_first_frame", type=str2bool, default=None)
    g.add_argument("--motion_init", choices=["zeros", "first"], default=None,
                   help="motion SDEdit input: the window's first frame then zeros, or every frame = that frame")
    g.add_argument("--hand_over", type=str2bool, default=True,
                   help="window k+1 starts from window k's last frame (False: every window from --image)")
    g.add_argument("--clip_l_ckpt", default=None, help="CLIP ViT-L/14 folder")
    g.add_argument("--beats_ckpt", default=None, help="BEATs file")
    g.add_argument("--beats_mode", choices=["fixed", "compat"], default=None)
    g.add_argument("--compat", choices=["tia2v", "fixed"], default=None)


def _given(args: argparse.Namespace, table: dict[str, str]) -> dict[str, Any]:
    """Config fields for the flags of ``table`` (flag -> field) that were given; the rest keep the defaults."""
    return {field: getattr(args, flag) for flag, field in table.items() if getattr(args, flag) is not None}


def _fps(args: argparse.Namespace, path: str) -> tuple[float, int, str]:
    """(fps, sample rate, where the fps came from): the checkpoint's record, else the --dataset preset."""
    data = recorded_data(path) or {}
    if data.get("fps"):
        return float(data["fps"]), int(data.get("sample_rate", 48000)), f"{path}"
    log.info("%s records no training fps; using the %s preset's %g fps (set --fps to change)", path, args.dataset,
             DEFAULT_FPS[args.dataset])
    return DEFAULT_FPS[args.dataset], 48000, f"--dataset {args.dataset}"


def build(args: argparse.Namespace, device: torch.device) -> TA2VModels | TIA2VModels:
    return build_ta2v(args, device) if args.method == "ta2v" else build_tia2v(args, device)


def build_ta2v(args: argparse.Namespace, device: torch.device) -> TA2VModels:
    from tav.data.text import build_tokenizer, load_bert_tokenizer
    from tav.diffusion.load import load_diffusion
    from tav.gpt.load import load_stage1
    from tav.guidance import build_guidance
    from tav.pipelines.ta2v import TwoStageSampler

    if not (args.gpt_text_ckpt and args.vqgan_ckpt):
        raise InputError("--method ta2v needs --gpt_text_ckpt and --vqgan_ckpt (and --diffusion_ckpt for stage 2)")
    gpt, vqgan = load_stage1(args.gpt_text_ckpt, args.vqgan_ckpt, device)
    if gpt.cfg.text_mode != "bert":
        raise InputError(f"{args.gpt_text_ckpt}: generate.py takes BERT-prefix GPTs; this one is {gpt.cfg.text_mode}")
    scfg = SamplingConfig(**_given(args, {"top_k": "top_k", "top_p": "top_p", "temperature": "temperature",
                                          "gpt_cfg_scale": "gpt_cfg_scale",
                                          "model_output_size": "output_size", "timestep_respacing": "respacing",
                                          "skip_timesteps": "skip_timesteps"}),
                          sampler="ddim" if args.ddim else "ddpm", precision=args.precision)
    diffusion = args.diffusion_ckpt or TA2V_DIFFUSION
    defaults = {"noise_schedule": args.noise_schedule} if args.noise_schedule else {}
    net, schedule = load_diffusion(diffusion, device, respacing=scfg.respacing, process_defaults=defaults)
    gcfg = GuidanceConfig(**_given(args, GUIDANCE_FLAGS))
    weights = {name: getattr(args, f"{name}_ckpt") for name in ("audioclip", "wav2clip", "clip", "joint")}
    guidance = build_guidance(gcfg, schedule, device, weights)
    fps, rate, source = _fps(args, args.gpt_text_ckpt)
    tok = load_bert_tokenizer()
    settings = {"sampling": dataclasses.asdict(scfg), "guidance": dataclasses.asdict(gcfg), "fps_source": source,
                "context_frames": args.context_frames, "stage2": not args.skip_stage2,
                "stage2_stride": args.stage2_stride, "device": str(device)}
    return TA2VModels(TwoStageSampler(gpt, vqgan, net, schedule, guidance, scfg),
                      build_tokenizer("bert", gpt.cfg.text_seq_len), lambda c: len(tok(c)["input_ids"]), fps, rate,
                      hashes_of({"gpt_text_ckpt": args.gpt_text_ckpt, "vqgan_ckpt": args.vqgan_ckpt,
                                 "diffusion_ckpt": diffusion}), settings, args.context_frames, not args.skip_stage2,
                      args.stage2_stride)


def build_tia2v(args: argparse.Namespace, device: torch.device) -> TIA2VModels:
    from tav.encoders.registry import get_encoder
    from tav.pipelines.tia2v import load_tia2v_sampler
    from tav.tia2v.load import beats_mode_for
    from tav.tia2v.splits import audio_tokens_fn

    if not args.model_path:
        raise InputError("--method tia2v needs --model_path (the motion checkpoint)")
    fields = _given(args, {"timestep_respacing": "respacing", "skip_timesteps": "skip_timesteps",
                           "shr_strength": "shr_strength", "shr_skip_timesteps": "shr_skip_timesteps",
                           "model_output_size": "shr_size", "hold_first_frame": "hold_first_frame",
                           "motion_init": "motion_init"})
    scfg = TIA2VSamplingConfig(**fields, sampler="ddim" if args.ddim else "ddpm", precision=args.precision)
    shr_path = None if args.skip_shr else (args.diffusion_ckpt or TIA2V_SHR)
    sampler = load_tia2v_sampler(args.model_path, shr_path, scfg, device, compat=args.compat)
    mode = args.beats_mode or beats_mode_for(args.model_path, sampler.motion.net)
    clip_l = get_encoder("clip_l", args.clip_l_ckpt, str(device))
    tokens = audio_tokens_fn(get_encoder("beats", args.beats_ckpt, str(device)), mode)
    fps, rate, source = _fps(args, args.model_path)
    settings = {"sampling": dataclasses.asdict(scfg), "beats_mode": mode, "fps_source": source,
                "shr": shr_path is not None, "hand_over": args.hand_over, "device": str(device)}
    return TIA2VModels(sampler, clip_l, tokens, fps, rate,
                       hashes_of({"model_path": args.model_path, "diffusion_ckpt": shr_path}), settings,
                       shr_path is not None, args.hand_over)
