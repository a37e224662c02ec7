"""The guide-timing benchmark's search: shifted views, the Viterbi path and the cost it minimises."""

import itertools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_guide_timing as bgt  # noqa: E402


def test_shifted_views_move_the_content_and_fill_with_the_background():
    frames = torch.full((2, 3, 6, 6), 0.1)
    frames[:, :, 2, 3] = 0.9  # one bright pixel per frame on a 0.1 background
    views = bgt.shifted_views(frames, 2)
    grid = bgt.shift_grid(2)
    assert views.shape == (2, 25, 3, 6, 6) and grid[2 * (2 * 2 + 2)] == (0, 0)
    assert torch.equal(views[:, grid.index((0, 0))], frames)
    for dy, dx in ((1, 0), (0, -2), (-2, 2)):
        v = views[0, grid.index((dy, dx)), 0]
        assert v[2 + dy, 3 + dx] == 0.9 and (v == 0.9).sum() == 1 and torch.all((v == 0.9) | (v == 0.1))


def _brute_force(unary, pair):
    t, s = unary.shape
    best = min(itertools.product(range(s), repeat=t),
               key=lambda p: float(sum(unary[i, p[i]] for i in range(t))
                                   + sum(pair[i - 1][p[i - 1], p[i]] for i in range(1, t))))
    return list(best)


def test_best_path_is_the_exact_minimum():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        unary = torch.rand(4, 3, generator=g)
        pair = [torch.rand(3, 3, generator=g) for _ in range(3)]
        assert bgt.best_path(unary, pair) == _brute_force(unary, pair)


def test_search_follows_the_audio_and_the_switch_cost_holds_it():
    """Frame embeddings equal to the audio at one shift per frame: without a switching cost the search takes that
    shift in every frame; with a large one it keeps one shift for the whole clip."""
    g = torch.Generator().manual_seed(1)
    audio = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    emb = F.normalize(torch.randn(4, 5, 8, generator=g), dim=-1)
    want = [0, 3, 3, 1]
    for t, s in enumerate(want):
        emb[t, s] = audio[t]
    assert bgt.search_shifts(emb, audio, 0.0, 0.0) == want
    held = bgt.search_shifts(emb, audio, 10.0, 0.0)
    assert len(set(held)) == 1 and held[0] == 3  # the shift that matches two of the four frames
