"""Per-sample random number generators: sample ``i`` of a batch draws from its own seeded generator, so it
does not depend on the batch it is drawn in."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def sample_generators(seeds: Iterable[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` on ``device`` per seed, each ``manual_seed(int(seed))``: a batch of ``B``
    samples takes ``B`` seeds and gives ``B`` generators, in order."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
