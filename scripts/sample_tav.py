"""TA2V two-stage sampling (spec ta2v.md §6): test captions -> GPT + VQGAN clips -> audio/text-guided SDEdit.

The README seed line runs as written (with real or tiny checkpoints at those paths):

    python scripts/sample_tav.py --gpt_text_ckpt saved_ckpts/best_checkpoint-val_text_loss=2.74.ckpt \
      --text_stft_cond --vqgan_ckpt saved_ckpts/epoch=6-step=35999-train_recon_loss=0.15.ckpt \
      --text_emb_model bert --data_path datasets/post_URMP/ --top_k 2048 --top_p 0.80 --n_sample 50 --run 17 \
      --dataset URMP --load_vid_len 90 --audio_emb_model audioclip --resolution 96 --batch_size 1 \
      --model_output_size 128 --noise_schedule cosine --iterations_num 1 --audio_guidance_lambda 10000 \
      --direction_lambda 5000 --text_guidance_lambda 10000 --diffusion_ckpt saved_ckpts/model300000.pt

Outputs: ``<save>/<run>_tav_<dataset>/{real,fake_stage1,fake_stage2,audio,txt}/`` with upstream's names plus
``manifest.jsonl`` (``tav.pipelines.results``). Sample ``i`` is the ``i``-th test clip (deterministic crop)
with seed ``--seed + i``; re-running the same command skips finished samples. Every model and encoder is
built once. The diffusion architecture and process come from ``--diffusion_ckpt``; ``--noise_schedule`` and
``--rescale_timesteps`` only fill in what an upstream bare state dict does not record.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

try:  # imported as scripts.sample_tav (tests, demo) or run as a file
    from scripts.cli_common import add_verbose_flag, run_samples, sample_main, str2bool
except ImportError:
    from cli_common import add_verbose_flag, run_samples, sample_main, str2bool

from tav.data.config import load_data_config
from tav.data.dataset import VATDataset
from tav.diffusion.load import load_diffusion
from tav.encoders.registry import get_encoder
from tav.errors import InputError
from tav.gpt.load import check_vqgan_compat, file_sha256, load_gpt
from tav.guidance import Guidance, GuidanceConfig
from tav.pipelines.results import ResultsFolder, SampleRecord
from tav.pipelines.ta2v import SamplingConfig, TwoStageSampler
from tav.utils.runtime import deterministic_kernels, pick_device
from tav.vqgan.load import load_vqgan

log = logging.getLogger("sample_tav")
DATASETS = {"URMP": "urmp", "landscape": "landscape"}
IGNORED = ("prompt", "init_image", "mask", "gpu_id", "output_path", "output_file", "vid", "export_assets",
           "local_clip_guided_diffusion", "no_enforce_background", "lpips_sim_lambda", "l2_sim_lambda",
           "background_preservation_loss", "stft_vqgan_ckpt", "compute_fvd")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_verbose_flag(p)
    s = p.add_argument_group("stage 1 (GPT + VQGAN)")
    s.add_argument("--gpt_text_ckpt", required=True, help="GPT checkpoint (tav, Lightning or upstream .ckpt)")
    s.add_argument("--vqgan_ckpt", required=True, help="VQGAN checkpoint the GPT was trained with")
    s.add_argument("--stft_vqgan_ckpt", default="", help="accepted; unused")
    s.add_argument("--top_k", type=int, default=2048)
    s.add_argument("--top_p", type=float, default=0.80)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--text_emb_model", choices=["bert", "clip"], default=None, help="checked against the GPT")
    d = p.add_argument_group("data and outputs")
    d.add_argument("--data_path", default="./datasets/post_URMP/", help="dataset root (test/ is sampled)")
    d.add_argument("--dataset", choices=list(DATASETS), default="URMP", help="data preset and folder suffix")
    d.add_argument("--load_vid_len", type=int, default=None, help="frames per pre-cut clip (URMP 90, Landscape 30)")
    d.add_argument("--resolution", type=int, default=None, help="stage-1 (VQGAN) clip size; default the VQGAN's")
    d.add_argument("--sequence_length", type=int, default=16)
    d.add_argument("--text_stft_cond", action="store_true", help="seed flag: text-audio-video data (always)")
    d.add_argument("--save", default="./results/", help="results root")
    d.add_argument("--run", default="0", help="run id: <save>/<run>_tav_<dataset>")
    d.add_argument("--n_sample", type=int, default=2048, help="samples = min(n_sample, test clips)")
    d.add_argument("--batch_size", type=int, default=4, help="samples per batch through both stages")
    d.add_argument("--seed", type=int, default=404, help="sample i uses seed + i")
    d.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 | mps")
    d.add_argument("--precision", choices=["32", "bf16"], default="32", help="bf16 autocast (GPU)")
    d.add_argument("--compute_fvd", action="store_true", help="accepted; use tools/tf_fvd/fvd.py")
    d.add_argument("--progress", type=str2bool, default=True, help="per-step bars (GPT tokens, diffusion steps)")
    _add_stage2(p)
    return p


def _add_stage2(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("stage 2 (diffusion + guidance)")
    g.add_argument("--diffusion_ckpt", default="saved_ckpts/model300000.pt")
    g.add_argument("--timestep_respacing", default="100")
    g.add_argument("--skip_timesteps", type=int, default=25)
    g.add_argument("--ddim", action="store_true")
    g.add_argument("--model_output_size", type=int, default=256, help="diffusion frame size (README 128)")
    g.add_argument("--noise_schedule", choices=["cosine", "linear"], default=None, help="bare state dicts only")
    g.add_argument("--rescale_timesteps", type=str2bool, default=None, help="bare state dicts: compat (§5.2)")
    g.add_argument("--audio_emb_model", choices=["STFT", "wav2clip", "audioclip"], default="wav2clip")
    g.add_argument("--audio_guidance_lambda", type=float, default=1000)
    g.add_argument("--text_guidance_lambda", type=float, default=1000)
    g.add_argument("--direction_lambda", type=float, default=0)
    g.add_argument("--range_lambda", type=float, default=50)
    g.add_argument("--aug_num", type=int, default=8)
    g.add_argument("--iterations_num", type=int, default=8)
    g.add_argument("--audio_window", type=float, default=0.5, help="seconds of audio embedded per frame")
    g.add_argument("--faithful-quirks", "--faithful_quirks", dest="faithful_quirks", action="store_true",
                   help="upstream's guidance input mapping and audio chunking (reproduction only)")
    for name in ("audioclip", "clip", "wav2clip"):
        g.add_argument(f"--{name}_ckpt", default=None, help=f"{name} weights (default under saved_ckpts/)")
    x = p.add_argument_group("accepted for upstream compatibility; no effect")
    for name in ("prompt", "init_image", "mask", "output_path", "output_file", "vid"):
        x.add_argument(f"--{name}", default=None)
    x.add_argument("--gpu_id", type=int, default=None)
    for name in ("lpips_sim_lambda", "l2_sim_lambda"):
        x.add_argument(f"--{name}", type=float, default=None)
    for name in ("export_assets", "local_clip_guided_diffusion", "no_enforce_background",
                 "background_preservation_loss"):
        x.add_argument(f"--{name}", action="store_true")


@dataclass
class Setup:
    sampler: TwoStageSampler
    data: VATDataset
    results: ResultsFolder
    hashes: dict[str, str]
    n: int


def _stage1_models(args: argparse.Namespace, device: torch.device):
    gpt, embedded = load_gpt(args.gpt_text_ckpt, device, with_vqgan=True)
    if args.text_emb_model is not None and args.text_emb_model != gpt.cfg.text_mode:
        raise InputError(f"--text_emb_model {args.text_emb_model}: {args.gpt_text_ckpt} was trained with "
                         f"{gpt.cfg.text_mode} captions")
    vqgan = load_vqgan(args.vqgan_ckpt, device)
    check_vqgan_compat(gpt.cfg, vqgan, args.vqgan_ckpt)
    if embedded is not None:  # upstream decodes with the VQGAN copy inside the GPT file
        same = all(torch.equal(v, embedded.state_dict()[k]) for k, v in vqgan.state_dict().items())
        if not same:
            log.warning("%s differs from the VQGAN embedded in %s; decoding with the embedded one (upstream "
                        "behaviour)", args.vqgan_ckpt, args.gpt_text_ckpt)
            vqgan = embedded
    return gpt, vqgan.eval()


def _stage2_models(args: argparse.Namespace, device: torch.device):
    defaults = {k: v for k, v in (("noise_schedule", args.noise_schedule),
                                  ("rescale_timesteps", args.rescale_timesteps)) if v is not None}
    net, schedule = load_diffusion(args.diffusion_ckpt, device, respacing=args.timestep_respacing,
                                   process_defaults=defaults)
    if args.audio_emb_model == "STFT":
        raise InputError("--audio_emb_model STFT: no STFT guidance model was released; use audioclip or wav2clip")
    gcfg = GuidanceConfig(audio_encoder=args.audio_emb_model, audio_lambda=args.audio_guidance_lambda,
                          direction_lambda=args.direction_lambda, text_lambda=args.text_guidance_lambda,
                          range_lambda=args.range_lambda, aug_num=args.aug_num, audio_window_s=args.audio_window,
                          faithful_quirks=args.faithful_quirks)
    audio_enc = (get_encoder(gcfg.audio_encoder, getattr(args, f"{gcfg.audio_encoder}_ckpt"), device)
                 if gcfg.uses_audio else None)
    clip = get_encoder("clip", args.clip_ckpt, device) if gcfg.needs_clip else None
    return net, schedule, Guidance(gcfg, schedule, audio_encoder=audio_enc, clip=clip)


def setup(args: argparse.Namespace) -> Setup:
    """Build models, encoders, the test set and the results folder (all once)."""
    device = pick_device(args.device)
    deterministic_kernels(device)
    for name in IGNORED:
        if getattr(args, name, None) not in (None, False, ""):
            log.debug("--%s has no effect in tav's video sampler", name)
    gpt, vqgan = _stage1_models(args, device)
    net, schedule, guidance = _stage2_models(args, device)
    if net.config.image_size != args.model_output_size:
        log.warning("--model_output_size %d differs from the U-Net's training size %d", args.model_output_size,
                    net.config.image_size)
    frames = vqgan.cfg.sequence_length
    if args.sequence_length != frames:
        raise InputError(f"--sequence_length {args.sequence_length}: the GPT + VQGAN make {frames}-frame clips; "
                         f"pass --sequence_length {frames}")
    data_cfg = load_data_config(DATASETS[args.dataset], frames_per_file=args.load_vid_len,
                                resolution=args.resolution or vqgan.cfg.resolution, sequence_length=frames,
                                tokenizer=gpt.cfg.text_mode, text_seq_len=gpt.cfg.text_seq_len,
                                downsample=list(vqgan.cfg.downsample))
    data = VATDataset(args.data_path, "test", data_cfg)
    cfg = SamplingConfig(top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                         output_size=args.model_output_size, skip_timesteps=args.skip_timesteps,
                         sampler="ddim" if args.ddim else "ddpm", iterations=args.iterations_num,
                         precision=args.precision)
    root = Path(args.save) / f"{args.run}_tav_{args.dataset}"
    results = ResultsFolder(root, data_cfg.fps, data_cfg.sample_rate)
    hashes = {k: file_sha256(getattr(args, k)) for k in ("gpt_text_ckpt", "vqgan_ckpt", "diffusion_ckpt")}
    return Setup(TwoStageSampler(gpt, vqgan, net, schedule, guidance, cfg), data, results, hashes,
                 min(args.n_sample, len(data)))


def _run_batch(st: Setup, args: argparse.Namespace, indices: list[int]) -> None:
    items = [st.data[i] for i in indices]
    seeds = [args.seed + i for i in indices]
    ids = torch.stack([it["text"] for it in items])
    audio = torch.stack([it["audio"].reshape(-1) for it in items]).float()
    captions = [it["caption"] for it in items]
    v1, v2, secs = st.sampler.run(ids, audio, captions, st.data.cfg.sample_rate, seeds, progress=args.progress)
    terms = st.sampler.guidance.last_terms
    for b, (i, it) in enumerate(zip(indices, items, strict=True)):
        info = {"seed": seeds[b], "start": int(it["start"]), "checkpoints": st.hashes, "batch": len(indices),
                "seconds": {k: v / len(indices) for k, v in secs.items()},
                "guidance_final": {k: float(v[b]) for k, v in terms.items()}}
        st.results.write(SampleRecord(i, it["stem"], it["caption"], it["video"], v1[b].cpu(),
                                      [v[b].cpu() for v in v2], it["audio"].reshape(-1).numpy(), info))


def sample(argv: list[str] | None = None) -> Path:
    """Run the sampler; returns the results folder. Raises ``InputError`` for bad flags/files."""
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.iterations_num < 1 or args.n_sample < 1:
        raise InputError("--batch_size, --iterations_num and --n_sample must be >= 1")
    st = setup(args)
    run_samples(st.n, lambda i: st.results.is_done(i, str(st.data.stems[i])), args.batch_size,
                lambda batch: _run_batch(st, args, batch), st.results.root, log)
    return st.results.root


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 for bad input (one line on stderr)."""
    return sample_main("sample_tav", sample, argv)


if __name__ == "__main__":
    sys.exit(main())
