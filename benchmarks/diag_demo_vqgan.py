"""Where a demo VQGAN loses colour: per test clip, the shape's colour in the real clip and in its reconstruction,
and how many of the codes each caption colour uses are its own.

    python benchmarks/diag_demo_vqgan.py --ckpt results/demo/vqgan/checkpoints/last.ckpt \\
        --data results/demo/data [--json OUT]

Per test clip (whole clips at the VQGAN's resolution, as ``make demo`` reconstructs them): the median foreground
RGB over frames (``tav.metrics.synthetic.frame_objects``) of the real clip and of the reconstruction, and the
judged colour and shape (mode over frames). Per caption colour, over every clip of both splits: the distinct codes
its clips use and how many of them appear in the clips of at most one other colour ("own" codes). A codebook that
spends its codes on the shapes' outlines and shares them across colours decodes an average colour: a yellow shape
comes back half-way to red.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def clip_rows(data: Path) -> list[dict]:
    return [json.loads(line) for line in (data / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


def clip_codes_and_recon(model, data: Path, row: dict) -> tuple[np.ndarray, np.ndarray, Tensor]:
    """(real uint8 (T, R, R, 3), reconstruction uint8, codes (t, h, w)) of one whole clip."""
    from tav.data.layout import clip_files
    from tav.data.video import read_video, resize_center_crop, to_model_range, to_uint8

    frames, _ = read_video(clip_files(data / row["split"], row["stem"]).mp4)
    video = resize_center_crop(to_model_range(frames), model.cfg.resolution)[None]
    with torch.inference_mode():
        codes = model.encode(video)
        recon = model.decode(codes, size=tuple(video.shape[2:])).clamp(-0.5, 0.5)
    return to_uint8(video[0]).numpy(), to_uint8(recon[0]).numpy(), codes[0]


def foreground(frames: np.ndarray) -> dict:
    """Median foreground RGB (0-255) and the judged colour and shape (modes over frames) of uint8 frames."""
    from tav.metrics.synthetic import _mode, frame_objects

    obj = frame_objects(frames)
    rgb = np.nanmedian(obj.rgb, axis=0) * 255 if np.isfinite(obj.rgb).any() else np.full(3, np.nan)
    return {"rgb": [round(float(v), 1) for v in rgb], "colour": _mode(obj.colour), "shape": _mode(obj.shape)}


def diagnose(ckpt: Path, data: Path) -> dict:
    from tav.metrics.synthetic import parse_caption
    from tav.vqgan import load_vqgan

    model = load_vqgan(ckpt).eval()
    clips, used = [], defaultdict(Counter)
    for row in clip_rows(data):
        real, recon, codes = clip_codes_and_recon(model, data, row)
        colour, shape = parse_caption(row["caption"])
        used[colour].update(codes.flatten().tolist())
        if row["split"] == "test":
            clips.append({"stem": row["stem"], "colour": colour, "shape": shape, "real": foreground(real),
                          "recon": foreground(recon)})
    owners = Counter(code for counts in used.values() for code in counts)  # colours whose clips use each code
    per_colour = {c: {"codes": len(counts), "own": sum(owners[k] <= 2 for k in counts)} for c, counts in used.items()}
    return {"ckpt": str(ckpt), "clips": clips, "codes_by_colour": per_colour,
            "codes_used": len(owners), "n_codes": model.n_codes}


def table(result: dict) -> str:
    lines = ["| clip colour / shape | real RGB | recon RGB | judged colour | judged shape |", "|---|---|---|---|---|"]
    for c in result["clips"]:
        fmt = lambda v: "(" + ", ".join(f"{x:.0f}" for x in v) + ")"  # noqa: E731
        lines.append(f"| {c['colour']} {c['shape']} | {fmt(c['real']['rgb'])} | {fmt(c['recon']['rgb'])} | "
                     f"{c['recon']['colour']} | {c['recon']['shape']} |")
    lines += ["", f"codes used: {result['codes_used']} of {result['n_codes']}", "",
              "| caption colour | codes its clips use | own codes (used by at most 2 colours) |", "|---|---|---|"]
    lines += [f"| {c} | {v['codes']} | {v['own']} |" for c, v in sorted(result["codes_by_colour"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", type=Path, required=True, help="a demo VQGAN checkpoint")
    p.add_argument("--data", type=Path, default=Path("results/demo/data"), help="the demo dataset (manifest.jsonl)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    for path in (args.ckpt, args.data / "manifest.jsonl"):
        if not path.is_file():
            raise SystemExit(f"{path}: not found (run `make demo` first, or pass --ckpt / --data)")
    from tav.errors import InputError
    from tav.utils.fileio import write_text_atomic

    try:
        result = diagnose(args.ckpt, args.data)
    except InputError as err:
        raise SystemExit(f"diag_demo_vqgan: {err}") from None
    print(table(result))
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
