"""Helpers shared by the test modules: the state-dict tables, a tiny VQGAN config and noise clips,
a tiny GPT, the tiny VAT dataset of the training tests and the metrics a training run logs."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tav.gpt import GPT, GPTConfig
from tav.vqgan import VQGANConfig

from .vat_fixtures import make_vat

STATE_DICTS = Path(__file__).resolve().parent / "data" / "state_dicts"


def spec_tsv(name: str) -> Path:
    """The state-dict table ``name`` (e.g. ``ta2v_vqgan.tsv``) in ``tests/data/state_dicts/``: key, shape and
    dtype of every tensor of the released upstream models."""
    return STATE_DICTS / name


def read_tsv(path: Path) -> tuple[list[tuple[str, list[int], str]], str]:
    """A state-dict table's rows ``(key, shape, dtype)`` in file order (the ``key`` column header skipped)
    and its ``#`` comment lines joined by newlines."""
    lines = path.read_text().splitlines()
    header = "\n".join(line for line in lines if line.startswith("#"))
    rows = [line.split("\t") for line in lines if not line.startswith("#") and not line.startswith("key\t")]
    return [(key, eval(shape), dtype) for key, shape, dtype in rows], header


def tiny_vqgan_cfg(**kw) -> VQGANConfig:
    """Narrow VQGAN (8 channels, 32 codes, BatchNorm, small discriminators) with real (2, 4, 4) down-sampling
    of 4-frame 16 px clips: only shapes matter. ``kw`` overrides fields."""
    base = dict(embedding_dim=8, n_codes=32, n_hiddens=8, norm="batch", disc_channels=8, disc_layers=2,
                resolution=16, sequence_length=4, downsample=(2, 4, 4))
    base.update(kw)
    return VQGANConfig(**base)


def clip(*shape: int, seed: int = 0) -> torch.Tensor:
    """Uniform noise in [-0.5, 0.5) of ``shape`` (the models' pixel range), reproducible by ``seed``."""
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) - 0.5


def make_tiny_vat(root: Path, n_frames: int = 8, stems: tuple[str, ...] = ("a_1", "b_2")) -> Path:
    """A VAT dataset of 16x16 clips at 30 fps (``n_frames`` each, one per stem and split), no spectrograms. The
    default, two 8-frame clips, gives a tiny-config item (4 frames at 16 px) 5 window starts per clip."""
    return make_vat(root, n_frames=n_frames, fps=30, stems=stems, size=(16, 16), spectrogram=False)


def metrics(root: Path | str, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every row of ``<root>/metrics.jsonl`` that logged ``key``."""
    rows = [json.loads(line) for line in (Path(root) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in rows if key in r]


def optimizer_steps(opt_state: dict) -> set[int]:
    """The distinct ``step`` counts of an Adam/AdamW ``state_dict()``'s parameter states."""
    return {int(s["step"]) for s in opt_state["state"].values()}


def assert_nearest_codes(codes: torch.Tensor, z: torch.Tensor, embeddings: torch.Tensor, tol: float = 1e-4) -> None:
    """Codes computed by another code path (a fused distance, another memory layout or batch shape) are nearest
    codes of the latents ``z (M, D)`` up to ``tol`` in squared distance: such paths round differently in the
    last bits, so on a near-tie they may pick the other of two equally near codes, and exact equality of the
    ids would depend on the CPU's GEMM blocking."""
    d = torch.cdist(z.double(), embeddings.double()).square()  # (M, K), float64 reference
    chosen = d.gather(1, codes.reshape(-1, 1).long()).squeeze(1)
    gap = chosen - d.min(1).values
    assert float(gap.max()) <= tol, f"a code is {float(gap.max()):.3g} farther than the nearest (tol {tol})"


REPO = Path(__file__).resolve().parent.parent


def run_script(script: str, argv: list[str]) -> None:
    """``python <script> <argv>`` in a fresh process from the repository root, as a user types it; fails the test
    with the script's stderr tail if it exits non-zero."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(REPO / script), *map(str, argv)], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, f"{script} exited {done.returncode}: {done.stderr[-2000:]}"


def load_script(path: str, name: str | None = None):
    """The module of a script outside the package (``benchmarks/...``, ``tools/...``), loaded from its file under
    ``name`` (default: its stem)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name or Path(path).stem, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_same_videos(a: Path, b: Path) -> int:
    """Both folders hold the same mp4 files (relative paths) with identical decoded frames; returns the count."""
    import numpy as np

    from tav.data.video import read_video

    names = sorted(p.relative_to(a) for p in a.rglob("*.mp4"))
    assert names and names == sorted(p.relative_to(b) for p in b.rglob("*.mp4"))
    for name in names:
        fa, fb = read_video(a / name)[0], read_video(b / name)[0]
        assert np.array_equal(fa, fb), f"{name}: max |diff| {np.abs(fa.astype(int) - fb).max()}"
    return len(names)


def tiny_gpt_cfg(**kw) -> GPTConfig:
    """A 2-layer, 32-wide GPT config over 4 text and 12 video positions (``kw`` overrides)."""
    base = dict(text_vocab_size=50, text_seq_len=4, n_codes=24, latent_shape=(2, 2, 3), block_size=32,
                n_layer=2, n_head=2, n_embd=32, embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0)
    base.update(kw)
    return GPTConfig(**base)


def tiny_gpt(seed: int = 0, **kw) -> GPT:
    """A seeded ``GPT(tiny_gpt_cfg(**kw))`` in eval mode, its position table random so positions matter."""
    torch.manual_seed(seed)
    model = GPT(tiny_gpt_cfg(**kw)).eval()
    with torch.no_grad():  # break the zero init of pos_emb so positions matter
        model.pos_emb.normal_(0, 0.5)
    return model


def rand_ids(cfg: GPTConfig, batch: int, n_video: int, seed: int = 0) -> torch.Tensor:
    """Seeded token ids ``(batch, text_seq_len + n_video)``: random text ids, then random video ids."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, cfg.text_vocab_size, (batch, cfg.text_seq_len), generator=g)
    codes = torch.randint(0, cfg.n_codes, (batch, n_video), generator=g)
    return torch.cat([text, codes + cfg.video_offset], dim=1)
