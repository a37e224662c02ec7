"""Precomputed VQGAN codes of a VAT split, so GPT epochs never re-run the frozen VQGAN encoder.

One file per split, ``<cache_dir>/tokens-<split>-<key>.pt``, holding the codes of a fixed set of window
starts per clip:

- training split with ``train_crop: random``: every valid start ``0, stride, 2*stride, ... <= n - span``
  (``stride`` 1 = every start, the exact crop distribution of on-the-fly training); an item then draws
  one of its clip's cached windows uniformly at random, as the random crop would;
- any other crop mode (the deterministic ``seeded``/``center``/fixed eval crops): the one start the
  dataset would use.

File contents (a dict of tensors and plain values, read with ``weights_only=True``): ``codes``
``(M, t, h, w)`` int16 (int32 when ``n_codes > 32768``), ``starts`` ``(M,)`` int32, ``offsets``
``(n_clips + 1,)`` int64 (the windows of clip ``i`` are rows ``offsets[i]:offsets[i+1]``), ``stems``,
``key``, ``vqgan_hash``, ``version``.

``key`` is a sha256 over the VQGAN file hash, the clip list (stem, frame count, mp4 size and mtime), the
clip shape (resolution, sequence length, subsampling) and the window rule, so a changed VQGAN, dataset or
crop rule gets a new file (old files are left in place: they stay valid for their own VQGAN). Files are
written atomically; an existing file with the right key is reused as is.

Windows are cut exactly as ``VATDataset`` cuts them (decode, ``to_model_range``, subsample, per-frame
``resize_center_crop``) and encoded in fp32 with the VQGAN in eval mode, so cached codes equal on-the-fly
codes (up to float ties in the nearest-code search between different batch compositions).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from tav.checkpoint import safe_load
from tav.data.config import DataConfig
from tav.data.datamodule import check_enough_items
from tav.data.dataset import VATDataset, crop_start
from tav.data.layout import clip_files
from tav.data.video import read_video, resize_center_crop, to_model_range
from tav.errors import InputError
from tav.training.determinism import make_loader
from tav.utils.fileio import save_torch_atomic

if TYPE_CHECKING:  # data does not depend on the model code at run time
    from tav.vqgan.model import VQGAN

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def window_starts(ds: VATDataset, idx: int, stride: int) -> list[int]:
    """The window starts cached for clip ``idx`` of ``ds``: all (strided) for random crops, else the one."""
    cfg, n = ds.cfg, int(ds.frame_counts[idx])
    if ds.crop == "random":
        return list(range(0, n - cfg.span + 1, stride))
    return [crop_start(ds.crop, n, cfg.span, str(ds.stems[idx]), cfg.crop_seed, None)]


def cache_key(ds: VATDataset, vqgan_hash: str, stride: int) -> str:
    """Hex sha256 naming the cache of ``ds`` under a VQGAN (see the module docstring)."""
    cfg = ds.cfg
    clips = []
    for stem, frames in zip(ds.stems, ds.frame_counts, strict=True):
        st = clip_files(ds.split_dir, str(stem)).mp4.stat()
        clips.append([str(stem), int(frames), st.st_size, st.st_mtime_ns])
    rule = {"crop": ds.crop, "stride": stride if ds.crop == "random" else None, "crop_seed": cfg.crop_seed}
    shape = [cfg.resolution, cfg.sequence_length, cfg.sample_every_n_frames]
    blob = json.dumps({"v": CACHE_VERSION, "vqgan": vqgan_hash, "clips": clips, "shape": shape, "rule": rule})
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_path(cache_dir: str | os.PathLike, split: str, key: str) -> Path:
    return Path(cache_dir) / f"tokens-{split}-{key[:16]}.pt"


def clip_windows(ds: VATDataset, idx: int, starts: list[int]) -> Tensor:
    """Video windows ``(len(starts), 3, T, R, R)`` float in [-0.5, 0.5], cut as ``ds[idx]`` would cut them."""
    cfg = ds.cfg
    last = max(starts) + cfg.span
    frames, _ = read_video(clip_files(ds.split_dir, str(ds.stems[idx])).mp4, 0, last)  # (last, H, W, 3) uint8
    clip = to_model_range(frames)  # (3, last, H, W)
    wins = [resize_center_crop(clip[:, s : s + cfg.span : cfg.sample_every_n_frames], cfg.resolution)
            for s in starts]
    return torch.stack(wins)


@torch.no_grad()
def encode_windows(vqgan: VQGAN, windows: Tensor, batch_size: int) -> Tensor:
    """Codes ``(N, t, h, w)`` long of ``windows (N, 3, T, R, R)``; fp32 (autocast off), ``vqgan`` in eval mode."""
    device = next(vqgan.parameters()).device
    out = []
    with torch.autocast(device.type, enabled=False):
        for chunk in windows.split(batch_size):
            out.append(vqgan.encode(chunk.to(device, torch.float32)).cpu())
    return torch.cat(out)


def build_token_cache(ds: VATDataset, vqgan: VQGAN, path: Path, key: str, vqgan_hash: str, stride: int,
                      batch_size: int = 16) -> Path:
    """Encode every cached window of ``ds`` with ``vqgan`` (set to eval mode) and write ``path`` atomically."""
    if vqgan.training:
        raise InputError("token cache: the VQGAN must be in eval mode (its codebook and BatchNorm are frozen)")
    dtype = torch.int16 if vqgan.n_codes <= 2**15 else torch.int32
    codes, starts, offsets = [], [], [0]
    for i in range(len(ds)):
        s = window_starts(ds, i, stride)
        codes.append(encode_windows(vqgan, clip_windows(ds, i, s), batch_size).to(dtype))
        starts += s
        offsets.append(offsets[-1] + len(s))
        if (i + 1) % 100 == 0:
            log.info("token cache %s: %d / %d clips encoded", path.name, i + 1, len(ds))
    obj = {"codes": torch.cat(codes), "starts": torch.tensor(starts, dtype=torch.int32),
           "offsets": torch.tensor(offsets, dtype=torch.int64), "stems": [str(s) for s in ds.stems],
           "key": key, "vqgan_hash": vqgan_hash, "version": CACHE_VERSION}
    save_torch_atomic(obj, path)
    log.info("token cache %s: %d windows of %d clips written", path, offsets[-1], len(ds))
    return path


@dataclass
class TokenCache:
    """A loaded cache file (see the module docstring for the fields)."""

    codes: Tensor
    starts: Tensor
    offsets: Tensor
    stems: list[str]

    def windows(self, idx: int) -> tuple[int, int]:
        """Row range ``[lo, hi)`` of clip ``idx``."""
        return int(self.offsets[idx]), int(self.offsets[idx + 1])


def load_token_cache(path: str | os.PathLike, key: str) -> TokenCache:
    """Read a cache file and check it is the one ``key`` names (a stale or foreign file is a one-line error)."""
    obj = safe_load(path)
    if not isinstance(obj, dict) or obj.get("key") != key or obj.get("version") != CACHE_VERSION:
        raise InputError(f"{path}: not the token cache of this dataset and VQGAN (stale or foreign); delete it")
    return TokenCache(obj["codes"], obj["starts"], obj["offsets"], list(obj["stems"]))


class TokenDataset(Dataset):
    """A VAT split with cached codes instead of video: the index, captions and text ids come from
    ``VATDataset`` (no frame is decoded).

    Item: ``codes`` long ``(t, h, w)``, ``text`` long ``(L,)``, ``caption`` str, ``stem`` str, ``start`` int.
    Random-crop splits draw one cached window per item (torch's global RNG, seeded per item by
    ``tav.training.determinism``); other splits have one window per clip.
    """

    def __init__(self, ds: VATDataset, cache: TokenCache):
        if [str(s) for s in ds.stems] != cache.stems:
            raise InputError(f"{ds.split_dir}: the token cache lists other clips; delete it")
        self.ds, self.cache = ds, cache

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, idx: int) -> dict:
        lo, hi = self.cache.windows(idx)
        row = lo + int(torch.randint(hi - lo, (1,))) if hi - lo > 1 else lo
        return {"codes": self.cache.codes[row].long(), "text": self.ds.text[idx],
                "caption": str(self.ds.captions[idx]), "stem": str(self.ds.stems[idx]),
                "start": int(self.cache.starts[row])}


class TokenDataModule(pl.LightningDataModule):
    """Like ``VATDataModule`` (train on ``train/``, validate on ``test/``) but serving cached VQGAN codes.

    ``prepare_data`` (local rank 0, others wait) builds missing cache files with ``vqgan`` on the
    process's device and then drops its reference to the VQGAN; ``setup`` loads the files on every rank.
    """

    def __init__(self, data_path: str | os.PathLike, cfg: DataConfig, vqgan: VQGAN | None, vqgan_hash: str,
                 cache_dir: str | os.PathLike, batch_size: int = 8, num_workers: int = 4, stride: int = 1,
                 encode_batch_size: int = 16, seed: int = 0):
        super().__init__()
        self.seed = seed
        if stride < 1:
            raise InputError(f"token cache stride {stride}: must be >= 1")
        self.data_path, self.cfg, self.cache_dir = Path(data_path), cfg, Path(cache_dir)
        self.vqgan, self.vqgan_hash, self.stride = vqgan, vqgan_hash, stride
        self.batch_size, self.num_workers, self.encode_batch_size = batch_size, num_workers, encode_batch_size
        self._vat: dict[str, VATDataset] = {}
        self._sets: dict[str, TokenDataset] = {}

    def vat(self, split: str) -> VATDataset:
        if split not in self._vat:
            self._vat[split] = VATDataset(self.data_path, split, self.cfg)
        return self._vat[split]

    def ensure(self, split: str, device: torch.device | str = "cpu") -> tuple[Path, bool]:
        """The cache file of ``split`` and whether it was built now (False: reused)."""
        ds = self.vat(split)
        key = cache_key(ds, self.vqgan_hash, self.stride)
        path = cache_path(self.cache_dir, split, key)
        if path.is_file():
            log.info("token cache %s: reusing %s", split, path)
            return path, False
        if self.vqgan is None:
            raise InputError(f"{path}: token cache missing and no VQGAN given to build it")
        log.info("token cache %s: encoding %d clips with the VQGAN into %s", split, len(ds), path)
        vqgan = self.vqgan.to(device).eval()
        build_token_cache(ds, vqgan, path, key, self.vqgan_hash, self.stride, self.encode_batch_size)
        return path, True

    def prepare_data(self) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        for split in ("train", "test"):
            self.ensure(split, device)
        if self.vqgan is not None:
            self.vqgan.cpu()  # give the device memory back to the GPT
        self.vqgan = None

    def dataset(self, split: str) -> TokenDataset:
        if split not in self._sets:
            ds = self.vat(split)
            key = cache_key(ds, self.vqgan_hash, self.stride)
            self._sets[split] = TokenDataset(ds, load_token_cache(cache_path(self.cache_dir, split, key), key))
        return self._sets[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if shuffle:
            check_enough_items(self, len(self.dataset(split)), self.data_path / split)
        return make_loader(self.dataset(split), self.batch_size, shuffle=shuffle, seed=self.seed,
                           trainer=self.trainer, num_workers=self.num_workers, drop_last=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
