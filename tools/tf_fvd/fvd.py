"""FVD between a run's real and generated videos.

The README seed line runs as written:

    python tools/tf_fvd/fvd.py --exp_tag 1_tav_URMP --real_folder real --fake_folder fake_stage2 --mode full

I3D Kinetics-400 (a PyTorch port of the TF-Hub weights, from a local file): 400-d logits averaged over
time per clip, then the float64 Fréchet distance over all clips (``--mode size``: over consecutive chunks of
``--size`` clips, mean ± std). Default protocol: RGB, torch bilinear resize to 224, [-1, 1]; ``--protocol
ta2v``: BGR, TF1 ``resize_bilinear``, the batch-of-2 remainder dropped. Without ``--fake_folder`` both
``--fake1_folder`` and ``--fake2_folder`` are evaluated. Writes ``<run>/metrics_fvd.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tav.metrics import i3d
from tav.metrics.frechet import frechet_distance
from tav.metrics.i3d import i3d_features, load_i3d
from tav_tools import metric_common as mc

TOOL = "fvd.py"


def features(model, videos: np.ndarray, resize: str) -> np.ndarray:
    """uint8 ``(n, T, H, W, 3)`` -> ``(n, 400)`` float64 I3D logits averaged over time."""
    return i3d_features(model, videos, resize=resize).numpy()


def distance(protocol: str, notes: list):
    if protocol == "ta2v":
        notes.append("tf-gan takes the matrix square root by SVD in float32; tav uses the float64 symmetric "
                     "eigen route (same value up to rounding)")
        notes.append("tav writes files without upstream's 2-px border and macro-block rescale: numbers are "
                     "protocol-comparable, not file-identical")
    return frechet_distance


def preprocessing(args) -> dict:
    ta2v = args.protocol == "ta2v"
    return {"colour": "BGR" if ta2v else "RGB",
            "resize": "TF1 resize_bilinear to 224 (half_pixel_centers=False)" if ta2v
            else "torch bilinear to 224 (align_corners=False, no antialias)",
            "range": "[-1,1] (2x/255-1)", "pre_resize": args.resize and f"area {args.resize[0]}x{args.resize[1]}",
            "frames": "all frames of each file (same count for real and fake)",
            "statistic": "Fréchet distance over clips, float64 mean and covariance (ddof=1)",
            "batch": f"remainder of {args.batch_size}-clip batches dropped" if ta2v else "no clip dropped"}


def weights_path(path: str | None) -> Path:
    return Path(path) if path is not None else i3d.default_i3d_path()


SPEC = mc.FrechetTool(tool=TOOL, name="fvd", backbone="I3D Kinetics-400 (TF-Hub i3d-kinetics-400/1 port)",
                      weights_flag="i3d_ckpt", load=lambda path, device: load_i3d(path, device=device),
                      weights_path=weights_path, features=features, distance=distance,
                      preprocessing=preprocessing)


def build_parser():
    return mc.frechet_parser(__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> int:
    return mc.run_tool(TOOL, lambda a: mc.frechet_evaluate(SPEC, build_parser().parse_args(a), a), argv)


if __name__ == "__main__":
    sys.exit(main())
