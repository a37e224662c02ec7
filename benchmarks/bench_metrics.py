"""FVD/FID building blocks on CPU: the Fréchet distance at 2048-d, I3D and Inception feature throughput, resizing.

What is measured (random features and random weights; the speed does not depend on their values):

1. **Fréchet distance, D = 2048, N = 2048 per set** (the size of an FID on 2048 samples), float64:
   - ``ours``: ``frechet_from_stats`` (eigendecomposition of Σ_a, then of the (r, r) PSD matrix
     ``Rᵀ Σ_b R``), given precomputed statistics; ``stats`` is the cost of one ``frechet_stats``;
   - ``scipy``: ``frechet_scipy`` (``scipy.linalg.sqrtm`` of the non-symmetric product Σ_a Σ_b, as
     pytorch-fid and TA2V's ``fid.py``), on the same statistics.
   Both values are printed with their relative difference.
2. **I3D features** (``i3d_features``, the real Kinetics-400 I3D, random weights): videos/s for
   ``--i3d-videos`` uint8 clips of 16x224x224 in batches of ``--i3d-batch``.
3. **Inception features** (``inception_features``, the TF-FID Inception-v3): frames/s for
   ``--inception-frames`` uint8 frames of 299x299 in batches of ``--inception-batch``; the same for
   ``TINY_INCEPTION`` (a quarter of the channels: the demo's random-weight FID network).
4. **Resizing** 16 frames of 112x112 (the size of TA2V's real mp4s) to 224 and to 299: ``torch`` vs ``tf1``.
5. **Feature cache of the tools** (``tav.metrics.cache``, ``--feature_cache``): a results folder of
   ``--cache-videos`` clips (16x64x64 mp4s) per folder, and ``tools/tf_fvd/fvd.py`` (the real-layout I3D with
   random weights, through its ``main``) run on it three times: ``cold`` (empty cache), ``same`` (the same
   command again: real and fake features come from the cache) and ``new fake`` (``--fake_folder fake_stage1``:
   the real features come from the cache, the fake ones are computed). Wall time of each whole run (weight
   loading included), its cache hits/misses, and its ratio to the cold run.

Threads default to 1 (torch and numpy's BLAS; on the shared 2-core machines two contended threads are
much slower); ``--threads 2`` on an idle machine. Reported: medians over ``--rounds``. Default runtime
about 1 minute (1 thread, quiet machine; longer when loaded), most of it scipy's ``sqrtm`` and the cache runs' cold I3D.

    python benchmarks/bench_metrics.py [--threads 1] [--rounds 1] [--dim 2048] [--n 2048] [--i3d-videos 4]
        [--i3d-batch 2] [--inception-frames 16] [--inception-batch 8] [--cache-videos 4] [--skip-frechet]
        [--skip-features] [--skip-cache] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tav.metrics.frechet import frechet_from_stats, frechet_scipy, frechet_stats
from tav.metrics.i3d import I3D, i3d_features, seeded_random_init_
from tav.metrics.inception import TINY_INCEPTION, FIDInception, inception_features
from tav.metrics.resize import resize_bilinear

CACHE_FRAMES, CACHE_SIZE = 16, 64  # clips of the cache benchmark


def _blas_threads(n: int):
    """numpy's BLAS limited to ``n`` threads when threadpoolctl is installed (no-op otherwise)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(n)


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# ------------------------------------------------------------------------------------------- Fréchet
def frechet_benchmark(args) -> dict:
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(args.dim, args.dim)) / np.sqrt(args.dim)
    feats_a = rng.normal(size=(args.n, args.dim)) @ mix
    feats_b = rng.normal(size=(args.n, args.dim)) @ (mix + 0.1 * rng.normal(size=mix.shape) / np.sqrt(args.dim))
    secs: dict[str, list[float]] = {"stats": [], "ours": [], "scipy": []}
    values: dict[str, float] = {}
    stats_b = frechet_stats(feats_b)
    for r in range(args.rounds):
        t, stats_a = _timed(lambda: frechet_stats(feats_a))
        secs["stats"].append(t)
        order = ("ours", "scipy") if r % 2 == 0 else ("scipy", "ours")
        for name in order:
            if name == "ours":
                t, values["ours"] = _timed(lambda a=stats_a: frechet_from_stats(*a, *stats_b))
            else:
                t, (values["scipy"], values["scipy_imag_residual"]) = _timed(
                    lambda a=stats_a: frechet_scipy(*a, *stats_b))
            secs[name].append(t)
            print(f"  round {r}: {name} {t:.2f} s", file=sys.stderr)
    out = {k: statistics.median(v) for k, v in secs.items()}
    return {"seconds": out, "values": values, "dim": args.dim, "n": args.n,
            "relative_difference": abs(values["ours"] - values["scipy"]) / abs(values["scipy"])}


# ------------------------------------------------------------------------------------------- features
def _throughput(fn, items: int, rounds: int) -> float:
    """Median items/s of ``fn()`` over ``rounds`` calls after one warm-up call."""
    fn()
    return items / statistics.median(_timed(fn)[0] for _ in range(rounds))


def features_benchmark(args) -> dict:
    gen = np.random.default_rng(1)
    i3d = seeded_random_init_(I3D(), 0).eval()
    videos = gen.integers(0, 256, size=(args.i3d_videos, 16, 224, 224, 3), dtype=np.uint8)
    i3d_vps = _throughput(lambda: i3d_features(i3d, videos, batch_size=args.i3d_batch), len(videos), args.rounds)
    print(f"  I3D: {i3d_vps:.2f} videos/s", file=sys.stderr)
    frames = gen.integers(0, 256, size=(args.inception_frames, 299, 299, 3), dtype=np.uint8)
    inc_fps = {}
    for name, config in (("graph", None), ("tiny", TINY_INCEPTION)):
        inception = seeded_random_init_(FIDInception(config), 0).eval()
        inc_fps[name] = _throughput(lambda m=inception: inception_features(m, frames, batch_size=args.inception_batch),
                                    len(frames), args.rounds)
        print(f"  Inception ({name}): {inc_fps[name]:.2f} frames/s", file=sys.stderr)
    clip = torch.rand(16, 3, 112, 112)
    resize = {f"{mode}_{size}": _throughput(lambda m=mode, s=size: resize_bilinear(clip, s, mode=m), len(clip),
                                            max(args.rounds, 3))
              for size in (224, 299) for mode in ("torch", "tf1")}
    return {"i3d_videos_per_s": i3d_vps, "i3d_batch": args.i3d_batch, "i3d_videos": args.i3d_videos,
            "inception_frames_per_s": inc_fps["graph"], "inception_tiny_frames_per_s": inc_fps["tiny"],
            "inception_batch": args.inception_batch,
            "resize_frames_per_s": resize}


# ------------------------------------------------------------------------------------------- feature cache
def _results_folder(run: Path, n: int) -> None:
    """``n`` random smooth 16x64x64 clips in each of real/, fake_stage1/, fake_stage2/, paired by a manifest."""
    from tav.data.video import write_video

    gen = np.random.default_rng(2)
    rows = []
    for i in range(n):
        files = {f: f"{f}/{f}_clip_{i}.mp4" for f in ("real", "fake_stage1", "fake_stage2")}
        for rel in files.values():
            small = gen.integers(0, 256, size=(CACHE_FRAMES, 8, 8, 3), dtype=np.uint8)
            write_video(run / rel, np.repeat(np.repeat(small, 8, axis=1), 8, axis=2), 30)
        rows.append({"id": i, "stem": "clip", "caption": "", "files": files})
    (run / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def cache_benchmark(args) -> dict:
    """Three runs of fvd.py on one folder: cold, the same again, another fake folder (see the module doc)."""
    from tav.metrics.i3d import save_tiny_i3d
    from tav_tools.tf_fvd import fvd

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = root / "results" / "1_bench"
        _results_folder(run, args.cache_videos)
        weights = save_tiny_i3d(root / "i3d.pt", seed=0)
        runs = {}
        for label, fake in (("cold", "fake_stage2"), ("same", "fake_stage2"), ("new fake", "fake_stage1")):
            argv = ["--exp_tag", "1_bench", "--results_root", str(root / "results"), "--real_folder", "real",
                    "--fake_folder", fake, "--mode", "full", "--device", "cpu", "--i3d_ckpt", str(weights)]
            with contextlib.redirect_stdout(io.StringIO()):
                t, code = _timed(lambda a=argv: fvd.main(a))
            if code != 0:
                raise RuntimeError(f"fvd.py exited {code}")
            cache = json.loads((run / "metrics_fvd.json").read_text())["values"][fake]["cache"]
            runs[label] = {"seconds": t, "fake_folder": fake, **cache}
            print(f"  fvd.py {label}: {t:.2f} s, cache {cache}", file=sys.stderr)
    cold = runs["cold"]["seconds"]
    for r in runs.values():
        r["ratio_to_cold"] = r["seconds"] / cold
    return {"videos": args.cache_videos, "frames": CACHE_FRAMES, "size": CACHE_SIZE, "runs": runs}


# ------------------------------------------------------------------------------------------- report
def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def report(frechet: dict | None, feats: dict | None, load_before: str, cache: dict | None = None) -> str:
    lines = ["## Metric building blocks (fp32 networks, float64 statistics; CPU)", "",
             f"machine: {platform.machine()}, torch {torch.__version__}, numpy {np.__version__}, threads "
             f"{torch.get_num_threads()}, load average before {load_before}, after {_loadavg()}", ""]
    if frechet:
        s, v = frechet["seconds"], frechet["values"]
        lines += [f"### Fréchet distance, D = {frechet['dim']}, N = {frechet['n']} per set", "",
                  "| step | seconds | value |", "|---|---|---|",
                  f"| `frechet_stats` (one set) | {s['stats']:.2f} | |",
                  f"| ours: `frechet_from_stats` (symmetric eigen route) | {s['ours']:.2f} | {v['ours']:.9g} |",
                  f"| scipy: `frechet_scipy` (`sqrtm` of Σ_a Σ_b) | {s['scipy']:.2f} | {v['scipy']:.9g} |", "",
                  f"speed-up {s['scipy'] / s['ours']:.1f}x; relative difference {frechet['relative_difference']:.2e}; "
                  f"scipy imaginary residual {v['scipy_imag_residual']:.2e}", ""]
    if feats:
        r = feats["resize_frames_per_s"]
        lines += ["### Feature extraction (random weights, real architectures)", "",
                  "| network | input | batch | throughput |", "|---|---|---|---|",
                  f"| I3D (Kinetics-400) | uint8 16x224x224 clips | {feats['i3d_batch']} | "
                  f"{feats['i3d_videos_per_s']:.2f} videos/s |",
                  f"| TF-FID Inception-v3 | uint8 299x299 frames | {feats['inception_batch']} | "
                  f"{feats['inception_frames_per_s']:.2f} frames/s |",
                  f"| its `TINY_INCEPTION` (a quarter of the channels; make demo) | uint8 299x299 frames | "
                  f"{feats['inception_batch']} | {feats['inception_tiny_frames_per_s']:.2f} frames/s |", "",
                  "resize of 112x112 frames, frames/s: " + ", ".join(f"{k} {v:.0f}" for k, v in r.items()), ""]
    if cache:
        lines += [f"### Feature cache: fvd.py on {cache['videos']} clips per folder ({cache['frames']}x{cache['size']}x"
                  f"{cache['size']} mp4s), real-layout I3D", "",
                  "| run | seconds | cache hits / misses | time vs cold |", "|---|---|---|---|"]
        lines += [f"| {label} (`--fake_folder {r['fake_folder']}`) | {r['seconds']:.2f} | {r['hits']} / "
                  f"{r['misses']} | {r['ratio_to_cold']:.2f} |" for label, r in cache["runs"].items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (1: robust on a shared machine)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--i3d-videos", type=int, default=4)
    p.add_argument("--i3d-batch", type=int, default=2)
    p.add_argument("--inception-frames", type=int, default=16)
    p.add_argument("--inception-batch", type=int, default=8)
    p.add_argument("--cache-videos", type=int, default=4, help="clips per folder of the feature-cache benchmark")
    p.add_argument("--skip-frechet", action="store_true")
    p.add_argument("--skip-features", action="store_true")
    p.add_argument("--skip-cache", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = _loadavg()
    with _blas_threads(args.threads):
        frechet = None if args.skip_frechet else frechet_benchmark(args)
        feats = None if args.skip_features else features_benchmark(args)
        cache = None if args.skip_cache else cache_benchmark(args)
    print(report(frechet, feats, load_before, cache))
    if args.json:
        args.json.write_text(json.dumps({"frechet": frechet, "features": feats, "cache": cache,
                                         "threads": args.threads}, indent=2))


if __name__ == "__main__":
    main()
