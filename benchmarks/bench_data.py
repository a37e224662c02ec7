"""DataLoader throughput and memory for the URMP preset (96 px, 16-frame items, 48 kHz audio).

Builds (once) a synthetic URMP-shaped dataset at 128 px with the demo generator, then measures
clips/s with 0 and 2 workers, and memory:

- in-process (0 workers): RSS over ``--items`` items, every 100 items: the dataset itself must not grow;
- 2 workers: RSS of the main process and of each worker, every 200 items over ``2 * --items`` items.
  Forked workers start by sharing the parent's pages and fault them in (copy-on-write) as they run, so
  their RSS rises towards the parent's size during the first epochs and must then stay flat.

    python benchmarks/bench_data.py [--data DIR] [--items 1000] [--batch_size 8]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from tav.data.config import load_data_config
from tav.data.dataset import VATDataset
from tav.data.demo import build_demo_dataset


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def process_rss_mib() -> list[float]:
    """RSS of this process, then of each direct child (the DataLoader workers)."""
    me = os.getpid()
    out = [rss_mib(me)]
    for task in Path(f"/proc/{me}/task").iterdir():
        children = (task / "children").read_text().split() if (task / "children").exists() else []
        out += [rss_mib(int(c)) for c in children]
    return out


def throughput(ds: VATDataset, workers: int, batch_size: int, items: int) -> float:
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)
    it, seen = iter(loader), 0
    next(it)  # start-up (worker spawn, first decode) is not throughput
    t0 = time.perf_counter()
    while seen < items:
        try:
            seen += len(next(it)["stem"])
        except StopIteration:
            it = iter(loader)
    return seen / (time.perf_counter() - t0)


def memory_curve(ds: VATDataset, workers: int, batch_size: int, items: int, every: int) -> list[list[float]]:
    """Per-process RSS (MiB; main first) after every ``every`` items."""
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)
    curve, seen, next_mark = [], 0, every
    while seen < items:
        for batch in loader:
            seen += len(batch["stem"])
            if seen >= next_mark:
                curve.append(process_rss_mib())
                next_mark += every
            if seen >= items:
                break
    return curve


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="results/bench_data/urmp128")
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--batch_size", type=int, default=8)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    build_demo_dataset(args.data, preset="urmp", n_train=64, n_test=0, size=128, seed=0)
    print(f"dataset: {args.data} (64 clips, 90 frames @ 30 fps, 128 px) ready in {time.perf_counter() - t0:.1f} s")
    ds = VATDataset(args.data, "train", load_data_config("urmp"))
    print(f"machine: {os.cpu_count()} cores; torch threads 1; batch {args.batch_size}; items -> (3,16,96,96)")
    for workers in (0, 2):
        rate = throughput(ds, workers, args.batch_size, min(args.items, 400))
        print(f"workers={workers}: {rate:.1f} clips/s")
    solo = [c[0] for c in memory_curve(ds, 0, args.batch_size, args.items, 100)]
    print(f"0 workers, RSS every 100 items over {args.items}: " + " ".join(f"{m:.0f}" for m in solo)
          + f" MiB (peak {max(solo):.0f}, last half {solo[-1] - solo[len(solo) // 2 - 1]:+.0f} MiB)")
    curve = memory_curve(ds, 2, args.batch_size, 2 * args.items, 200)
    print(f"2 workers, RSS [main, worker, worker] every 200 items over {2 * args.items}:")
    for i, row in enumerate(curve):
        print(f"  {200 * (i + 1):5d}: " + " ".join(f"{m:.0f}" for m in row) + f"  total {sum(row):.0f} MiB")
    totals = [sum(r) for r in curve]
    half = len(totals) // 2
    print(f"peak total {max(totals):.0f} MiB; total growth over the last {args.items} items: "
          f"{totals[-1] - totals[half - 1]:+.0f} MiB")


if __name__ == "__main__":
    main()
