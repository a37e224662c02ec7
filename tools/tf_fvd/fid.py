"""Per-frame FID between a run's real and generated videos.

The README seed line runs as written:

    python tools/tf_fvd/fid.py --exp_tag 1_tav_URMP --real_folder real --fake_folder fake_stage2 --mode full

Every frame of every clip is a sample (N clips of T frames => T·N samples per side): Inception pool3
2048-d features, then the float64 Fréchet distance (``--mode size``: over consecutive chunks of ``--size``
clips, mean ± std). Default protocol: the TF-FID Inception weights, RGB, torch bilinear resize to 299;
``--protocol ta2v``: BGR, TF1 ``resize_bilinear``, scipy ``sqrtm`` with the eps retry (its imaginary residual
is logged), the batch remainder dropped. Writes ``<run>/metrics_fid.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tav.metrics import inception
from tav.metrics.frechet import frechet_distance, frechet_scipy, frechet_stats
from tav.metrics.inception import inception_features, load_inception
from tav_tools import metric_common as mc

TOOL = "fid.py"
MAX_IMAG = 1e-3  # upstream raises above this imaginary residual; tav logs it and records a note


def features(model, videos: np.ndarray, resize: str) -> np.ndarray:
    """uint8 ``(n, T, H, W, 3)`` -> ``(n, T, 2048)`` float64 per-frame Inception features."""
    n, t = videos.shape[:2]
    flat = inception_features(model, videos.reshape(n * t, *videos.shape[2:]), resize=resize)
    return flat.reshape(n, t, -1)


def per_frame(feats: np.ndarray) -> np.ndarray:
    """``(n, T, 2048)`` -> ``(n*T, 2048)``: every frame is a sample."""
    return feats.reshape(-1, feats.shape[-1])


def distance(protocol: str, notes: list):
    if protocol != "ta2v":
        return frechet_distance
    notes.append("Inception weights converted to PyTorch and float32 conv numerics differ slightly from Keras/TF")

    def scipy_route(a: np.ndarray, b: np.ndarray) -> float:
        value, residual = frechet_scipy(*frechet_stats(a), *frechet_stats(b))
        if residual > MAX_IMAG:
            mc.log.warning("sqrtm imaginary residual %.3g > %g (upstream would raise)", residual, MAX_IMAG)
            notes.append(f"sqrtm imaginary residual {residual:.3g} above {MAX_IMAG:g} (upstream raises)")
        return value

    return scipy_route


def preprocessing(args) -> dict:
    ta2v = args.protocol == "ta2v"
    return {"colour": "BGR" if ta2v else "RGB",
            "resize": "TF1 resize_bilinear to 299 (half_pixel_centers=False)" if ta2v
            else "PIL bicubic to 299 per channel, antialiased (clean-fid)" if args.resize_mode == "clean"
            else "torch bilinear to 299 (align_corners=False, as pytorch-fid)",
            "range": "[-1,1] (2x/255-1)" if ta2v else "as the Inception port expects",
            "pre_resize": args.resize and f"area {args.resize[0]}x{args.resize[1]}",
            "samples": "per-frame FID: every frame of every clip, N clips of T frames => T*N samples per side "
                       "(values[...]['samples_per_side'])",
            "statistic": "scipy sqrtm with eps retry, imaginary part dropped" if ta2v
            else "Fréchet distance, float64 mean and covariance (ddof=1), symmetric eigen square root",
            "batch": f"remainder of {args.batch_size}-clip batches dropped" if ta2v else "no clip dropped"}


def weights_path(path: str | None) -> Path:
    return Path(path) if path is not None else inception.default_inception_path()


SPEC = mc.FrechetTool(tool=TOOL, name="fid", backbone="Inception-v3 pool3 (2048-d)", weights_flag="inception_ckpt",
                      load=lambda path, device: load_inception(path, device=device), weights_path=weights_path,
                      features=features, distance=distance, preprocessing=preprocessing, per_item=per_frame,
                      min_items=1)


def build_parser():
    p = mc.frechet_parser(__doc__.split("\n\n")[0])
    p.add_argument("--resize_mode", choices=["torch", "clean"], default="torch",
                   help="resize to 299: torch bilinear as pytorch-fid (default) or clean-fid's antialiased PIL "
                        "bicubic; --protocol ta2v always uses TF1 bilinear")
    return p


def main(argv: list[str] | None = None) -> int:
    return mc.run_tool(TOOL, lambda a: mc.frechet_evaluate(SPEC, build_parser().parse_args(a), a), argv)


if __name__ == "__main__":
    sys.exit(main())
