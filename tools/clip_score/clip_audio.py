"""CLIP-audio score of a results folder: each frame against its own audio window,
``100 · cos`` averaged over frames, then over videos.

The README seed line runs as written:

    python tools/clip_score/clip_audio.py --exp_tag 1_tav_URMP --audio_folder audio --video_folder fake_stage2 \
        --audio_emb_model audioclip

AudioCLIP scores its own image tower against its audio tower (its clamped logit scale is reported too);
wav2clip scores CLIP ViT-B/32 frames against wav2clip audio. Without ``--video_folder`` it evaluates real,
fake_stage1 and fake_stage2. ``--protocol ta2v`` reproduces upstream (48 kHz audio in 16 equal raw chunks,
BGR, no normalisation, AudioCLIP's logit-scaled number, dropped remainder). Writes
``<run>/metrics_clip_audio.json``.
"""

from __future__ import annotations

import argparse
import sys

from tav.data.audio import read_audio
from tav.encoders.registry import get_encoder, resolve_encoder_path
from tav.errors import InputError
from tav.metrics.clip_score import audio_features, audio_image_scale, frame_audio_scores, image_features
from tav.metrics.folders import RunFolder, Source, audio_rate, find_run, load_videos, open_run
from tav.metrics.runs import metric_record, score_summary
from tav_tools import metric_common as mc

TOOL = "clip_audio.py"
UPSTREAM_RATE = 48000  # upstream reloads every wav with librosa at 48 kHz


def build_parser() -> argparse.ArgumentParser:
    p = mc.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--audio_folder", default="audio", help="wav folder of the run")
    p.add_argument("--audio_emb_model", choices=("audioclip", "wav2clip", "joint"), default="wav2clip",
                   help="audio tower (upstream default wav2clip; joint: an encoder trained on your clips)")
    p.add_argument("--audio_tag", default=None, help="take the audio from the run folder of this tag")
    p.add_argument("--sequence_length", type=int, default=16, help="frames per video (the first ones)")
    p.add_argument("--window_s", type=float, default=0.5, help="audio window per frame in seconds (tav protocol)")
    mc.add_batch_size(p, 2, "videos per batch")
    mc.add_video_folder_flags(p)
    return p


def towers(args: argparse.Namespace, device) -> tuple:
    """(audio encoder, image encoder or None, backbone record)."""
    name = args.audio_emb_model
    path = resolve_encoder_path(name, getattr(args, f"{name}_ckpt"))
    described = {"audioclip": "AudioCLIP (image and audio towers)", "joint": "joint encoder (frame and audio towers)",
                 "wav2clip": "wav2clip audio + CLIP ViT-B/32 image"}
    backbone = mc.weights_info(described[name], path, f"--{name}_ckpt")
    audio = get_encoder(name, path, device)
    if name in ("audioclip", "joint"):  # paired towers: the encoder's own image tower
        backbone["logit_scale_ai"] = audio_image_scale(audio)
        return audio, None, backbone
    clip, backbone["image_tower"] = mc.clip_encoder(args, device)
    return audio, clip, backbone


def preprocessing(args: argparse.Namespace, audio_enc, image_enc) -> dict:
    size = image_enc.image_size
    if args.protocol == "ta2v":
        frames = {"colour": "BGR", "resize": f"bilinear resize to {size}x{size}", "normalisation": "none"}
        audio = f"read at {UPSTREAM_RATE} Hz, {args.sequence_length} equal raw chunks, float amplitude"
    else:
        frames = {"colour": "RGB", "resize": f"bicubic short side to {size} + centre crop",
                  "normalisation": "encoder mean/std"}
        audio = (f"true rate -> {audio_enc.audio_rate} Hz, {args.window_s} s window centred on each frame, "
                 f"x{audio_enc.audio_scale:g}")
    score = ("clamp(exp(logit_scale_ai),1,100)*cos" if args.protocol == "ta2v" and args.audio_emb_model == "audioclip"
             else "100*cos")
    return {**frames, "range": "[0,1]", "pre_resize": args.resize and f"area {args.resize[0]}x{args.resize[1]}",
            "frames_per_video": args.sequence_length, "audio": audio,
            "score": f"{score} of frame t vs audio window t, mean over frames then videos"}


def read_audios(paths, protocol: str) -> tuple[list, int]:
    if protocol == "ta2v":
        return [read_audio(p, UPSTREAM_RATE) for p in paths], UPSTREAM_RATE
    rates = {audio_rate(p) for p in paths}
    if len(rates) != 1:
        raise InputError(f"{paths[0].parent}: wavs at several sample rates {sorted(rates)}; write them at one rate")
    rate = rates.pop()
    return [read_audio(p, rate) for p in paths], rate


def evaluate_folder(args, encoders, backbone, run: RunFolder, audio_run: RunFolder, folder: str) -> tuple[dict, dict]:
    audio_enc, clip_enc = encoders
    image_enc = clip_enc if clip_enc is not None else audio_enc
    sources = {"video": Source(run, folder), "audio": Source(audio_run, args.audio_folder, "wav")}
    pairs = mc.protocol_pairs(args, sources, run.path / folder)
    paths = [p.files["video"] for p in pairs]
    videos = mc.video_summary(paths)
    cache = mc.frame_cache(args, run, backbone.get("image_tower", backbone)["sha256"], image_enc.image_size)
    img = cache.features(paths, lambda ps: image_features(
        image_enc, load_videos(ps, args.sequence_length, args.resize), args.protocol))
    waves, rate = read_audios([p.files["audio"] for p in pairs], args.protocol)
    aud = audio_features(audio_enc, waves, rate, img.shape[1], args.protocol, args.window_s)
    scores = frame_audio_scores(img, aud, audio_image_scale(audio_enc))
    groups = mc.groups_of(args, len(pairs), folder)
    chunked = args.mode == "size"
    keys = [p.key for p in pairs]
    summary = score_summary(scores.primary(args.protocol), groups, keys, chunked=chunked)
    summary["cos100"] = score_summary(scores.cos100, groups, chunked=chunked)
    if scores.logit is not None:
        summary["logit_scaled"] = {**score_summary(scores.logit, groups, chunked=chunked), "scale": scores.scale}
    for extra in ("cos100", "logit_scaled"):
        summary.get(extra, {}).pop("per_video", None)
    summary["cache"] = {"hits": cache.hits, "misses": cache.misses}
    return summary, videos


def evaluate(argv: list[str] | None) -> None:
    args = build_parser().parse_args(argv)
    runs, folders = mc.score_runs(args)
    audio_enc, clip_enc, backbone = towers(args, mc.device_of(args))
    records = []
    for run in runs:
        audio_run = open_run(find_run(args.results_root, args.audio_tag)) if args.audio_tag else run
        values, videos = {}, {}
        for folder in folders:
            values[folder], videos[folder] = evaluate_folder(args, (audio_enc, clip_enc), backbone, run, audio_run,
                                                             folder)
        compared = {f: str(run.path / f) for f in folders}
        compared["audio"] = str(audio_run.path / args.audio_folder)
        prep = preprocessing(args, audio_enc, clip_enc or audio_enc)
        records.append((run, metric_record(
            "clip_audio", args.protocol, values, backbone, prep, videos, compared, run.path, run.manifest_sha256,
            audio_emb_model=args.audio_emb_model, mode=args.mode, size=args.size,
            command=mc.command_line(TOOL, argv))))
    mc.finish(TOOL, "clip_audio", args, records)


def main(argv: list[str] | None = None) -> int:
    return mc.run_tool(TOOL, evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
