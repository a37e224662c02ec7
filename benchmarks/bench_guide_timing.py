"""Could the stage-2 guide put the shape's jumps on the notes if stage 2 could move the shape anywhere?

Stage 2 refines stage 1's clip from a late SDEdit start, which cannot carry a shape across the frame, so its
``onset_f1`` cannot show whether the guide knows *when* the shape should move. This benchmark asks the guide alone:
per clip, every frame may be shifted by any whole number of pixels up to ``--radius`` (the background, each frame's
median colour, fills in), and the shifts of the whole clip are chosen to minimise the guide's audio term (and, with
``--direction``, its direction term) plus ``--switch`` per change of shift between two frames (a Viterbi search
over the (2r+1)^2 shifts of each frame, exact for this cost). The judges then score the shifted clips:

- ``real`` frames: a guide that knows where the shape belongs at each moment leaves them where they are (with a
  small switching cost) and keeps their ``onset_f1``; a guide that does not moves them (more motion events);
- ``stage1`` frames: a guide that knows when the notes start moves the shape there (``onset_f1`` above the stage-1
  clips' and above its own chance level, each clip's motion against the other clips' sound).

The audio per frame is what the sampler gives the guide (``Guidance.prepare`` on the sound around the clip).

    python benchmarks/bench_guide_timing.py --results results/demo/17_tav_URMP \
        --joint_ckpt saved_ckpts/demo/joint_encoder.pt [--radius 8] [--switch 0 0.01 0.03 0.1] \
        [--direction 0 0.5] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tav.data.config import load_data_config
from tav.data.dataset import VATDataset
from tav.data.video import read_video
from tav.encoders.registry import get_encoder
from tav.errors import InputError
from tav.guidance import Guidance, GuidanceConfig
from tav.guidance import losses as L
from tav.metrics.synthetic import judge_video, onset_f1_chance

REPO = Path(__file__).resolve().parent.parent


def shift_grid(radius: int) -> list[tuple[int, int]]:
    """Every ``(dy, dx)`` with both in ``[-radius, radius]``; index ``radius * (2 * radius + 2)`` is ``(0, 0)``."""
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]


def shifted_views(frames: torch.Tensor, radius: int) -> torch.Tensor:
    """``frames (T, 3, H, W)`` in [0, 1] -> ``(T, S, 3, H, W)``: each frame moved by every shift of
    :func:`shift_grid` (content moves down/right for positive dy/dx), the uncovered border filled with the frame's
    median colour (the background)."""
    t, c, h, w = frames.shape
    r = radius
    bg = frames.flatten(2).median(-1).values[:, :, None, None]
    pad = bg.expand(t, c, h + 2 * r, w + 2 * r).clone()
    pad[:, :, r:r + h, r:r + w] = frames
    return torch.stack([pad[:, :, r - dy:r - dy + h, r - dx:r - dx + w] for dy, dx in shift_grid(r)], 1)


def best_path(unary: torch.Tensor, pair: list[torch.Tensor]) -> list[int]:
    """The state sequence minimising ``Σ_t unary[t, s_t] + Σ_t pair[t-1][s_{t-1}, s_t]`` (Viterbi): ``unary (T, S)``,
    ``pair``: ``T - 1`` tensors ``(S, S)``."""
    cost, back = unary[0].clone(), []
    for k in range(1, unary.shape[0]):
        best, arg = (cost[:, None] + pair[k - 1]).min(0)
        back.append(arg)
        cost = best + unary[k]
    path = [int(cost.argmin())]
    for arg in reversed(back):
        path.append(int(arg[path[-1]]))
    return path[::-1]


def search_shifts(emb: torch.Tensor, audio: torch.Tensor, switch: float, direction: float) -> list[int]:
    """Per-frame shift indices for frame embeddings ``emb (T, S, D)`` of every shift and per-frame audio
    embeddings ``audio (T, D)`` (unit vectors): the guide's audio term ``mean_t 1 - cos(I_t, A_t)``, plus
    ``direction`` times its direction term ``mean_t 1 - cos(ΔI, ΔA)``, plus ``switch`` per change of shift."""
    t, s, _ = emb.shape
    unary = (1 - (emb * audio[:, None]).sum(-1)) / t
    change = switch * (1 - torch.eye(s))
    pair = []
    for k in range(1, t):
        cost = change
        if direction:
            d_img = emb[k][None] - emb[k - 1][:, None]  # (S_prev, S, D)
            d_aud = (audio[k] - audio[k - 1]).expand_as(d_img)
            cost = cost + direction * (1 - F.cosine_similarity(d_img, d_aud, dim=-1, eps=1e-8)) / (t - 1)
        pair.append(cost)
    return best_path(unary, pair)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """``(T, 3, H, W)`` in [0, 1] -> uint8 ``(T, H, W, 3)``."""
    return (frames.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def load_clips(results: Path, data_path: Path | None):
    """The results folder's rows with the dataset items they were sampled from (``id`` indexes the test split)."""
    manifest = results / "manifest.jsonl"
    if not manifest.is_file():
        raise SystemExit(f"{results}: no manifest.jsonl; pass a folder sample_tav.py wrote (e.g. "
                         f"results/demo/17_tav_URMP after make demo)")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    s = rows[0]["settings"]
    guide = GuidanceConfig(audio_encoder="joint", text_encoder="joint", audio_window_s=s["audio_window"])
    cfg = load_data_config("urmp" if s["dataset"] == "URMP" else "landscape", frames_per_file=s["load_vid_len"],
                           resolution=s["resolution"], sequence_length=s["sequence_length"], tokenizer="bert",
                           audio_context_s=guide.audio_window_s / 2)
    data = VATDataset(data_path or REPO / s["data_path"], "test", cfg)
    items = [data[r["id"]] for r in rows]
    for r, it in zip(rows, items, strict=True):
        if it["stem"] != r["stem"] or it["start"] != r["start"]:
            raise SystemExit(f"{results}: row {r['id']} is {r['stem']}@{r['start']}, the data has "
                             f"{it['stem']}@{it['start']}: pass the --data the folder was sampled from")
    return rows, items, cfg, guide


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=REPO / "results/demo/17_tav_URMP")
    p.add_argument("--data", type=Path, default=None, help="default: the folder's recorded data_path")
    p.add_argument("--joint_ckpt", type=Path, default=REPO / "saved_ckpts/demo/joint_encoder.pt")
    p.add_argument("--radius", type=int, default=8, help="largest shift, pixels")
    p.add_argument("--switch", type=float, nargs="+", default=[0.0, 0.01, 0.03, 0.1])
    p.add_argument("--direction", type=float, nargs="+", default=[0.0, 0.5])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows, items, cfg, guide_cfg = load_clips(a.results, a.data)
    enc = get_encoder("joint", str(a.joint_ckpt), "cpu")
    guide = Guidance(guide_cfg, None, audio_encoder=enc, clip=enc)
    settings = [(k, d) for d in a.direction for k in a.switch]
    judged: dict[str, list] = {}
    for r, it in zip(rows, items, strict=True):
        cond = guide.prepare(it["audio_context"][None].float(), [it["caption"]], cfg.sample_rate,
                             cfg.sequence_length, spans=it["audio_span"][None])
        wave = it["audio"].reshape(-1).numpy()
        sources = {"real": it["video"].transpose(0, 1) + 0.5,
                   "stage1": torch.from_numpy(read_video(a.results / r["files"]["fake_stage1"])[0])
                   .permute(0, 3, 1, 2).float() / 255}
        for name, frames in sources.items():
            judged.setdefault(name, []).append(judge_video(to_uint8(frames), cfg.fps, wave, cfg.sample_rate))
            views = shifted_views(frames, a.radius)
            with torch.no_grad():
                emb = L.normalize(enc.encode_images(views.flatten(0, 1))).view(*views.shape[:2], -1)
            for k, d in settings:
                path = search_shifts(emb, cond.audio[0], k, d)
                moved = torch.stack([views[i, s] for i, s in enumerate(path)])
                judged.setdefault(f"{name}, switch {k:g}, direction {d:g}", []).append(
                    judge_video(to_uint8(moved), cfg.fps, wave, cfg.sample_rate))
    table = {}
    for name, js in judged.items():
        f1 = [j.onset_f1 for j in js]
        table[name] = {"onset_f1": float(np.mean(f1)), "onset_f1_chance": onset_f1_chance(js)[0],
                       "events": int(sum(len(j.events) for j in js)), "onsets": int(sum(len(j.onsets) for j in js)),
                       "n": len(js)}
    lines = ["| frames, search | onset_f1 | chance | motion events | onsets |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {v['onset_f1']:.3f} | {v['onset_f1_chance']:.3f} | {v['events']} | {v['onsets']} |"
              for n, v in table.items()]
    print("\n".join(lines))
    if a.json:
        a.json.write_text(json.dumps({"results": str(a.results), "radius": a.radius, "table": table}, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InputError as e:  # a missing or wrong file: one line, no traceback
        sys.exit(f"bench_guide_timing.py: error: {e}")
