"""TIA2V training items: VAT video windows with their conditions read from the condition cache.

No encoder runs here (upstream ran a ViT-L text encoder in every DataLoader worker): the
text states, the per-frame image embeddings and the per-frame audio tokens come from
``tav.tia2v.conditions.build_condition_cache``. Windows are cut as in ``VATDataset``: random starts for
training, deterministic ones (``eval_crop``, seeded per stem by default) for test. The default
``DataLoader`` collate batches the items.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor

from tav.data.config import DataConfig
from tav.data.dataset import VATDataset
from tav.errors import InputError
from tav.tia2v.conditions import (
    CACHE_COMMAND,
    clip_source,
    entry_path,
    key_satisfies,
    read_entry,
    read_manifest,
    split_cache_dir,
    tia2v_data_config,
)


def _stale(where: Path | str, why: str) -> InputError:
    return InputError(f"{where}: condition cache is stale ({why}); rebuild it: {CACHE_COMMAND}")


class TIA2VDataset(VATDataset):
    """``<root>/<split>`` clips with conditions from ``<cache_dir>/<split>/<R>px``.

    Item (a dict; ``F`` = ``sequence_length``, ``R`` = ``resolution``):
      video         float32 (3, F, R, R) in [-0.5, 0.5]
      text          float32 (77, D) CLIP-L text states of the caption
      image         float32 (D,) CLIP-L image embedding of the window's first frame (cached ``img[start]``)
      audio_tokens  float32 (F, P, D_a) the window's per-frame audio tokens (only when the cache has them,
                    i.e. it was built with an audio function: the motion model)
      caption str (all caption lines joined; the text states encode the first line);  stem str;  start int

    Raises ``InputError`` naming the cache and the command that builds it when the split's cache is missing,
    unfinished, or stale (built for other settings, or before a clip's caption/video/audio changed).
    """

    def __init__(self, root: str | os.PathLike, split: str, data_cfg: DataConfig, cache_dir: str | os.PathLike,
                 train: bool | None = None):
        super().__init__(root, split, tia2v_data_config(data_cfg), train)
        self.cache_dir, self.split = Path(cache_dir), split
        manifest = read_manifest(cache_dir, split, self.cfg.resolution)
        self.key: dict = manifest["key"]
        self.has_audio_tokens: bool = bool(manifest["audio_tokens"])
        if self.key.get("resolution") != self.cfg.resolution:
            raise _stale(split_cache_dir(cache_dir, split, self.cfg.resolution),
                         f"built at resolution {self.key.get('resolution')}, the data config asks for "
                         f"{self.cfg.resolution}")
        entries = manifest["entries"]
        for stem in self.stems:
            stem = str(stem)
            if stem not in entries:
                raise _stale(self._path(stem), "no entry for this clip")
            if entries[stem] != clip_source(self.split_dir, stem):
                raise _stale(self._path(stem), "the clip's caption, video or audio changed")
        self.sources = entries

    def _path(self, stem: str) -> Path:
        """The cache entry file of ``stem``."""
        return entry_path(self.cache_dir, self.split, stem, self.cfg.resolution)

    def _entry(self, stem: str) -> dict:
        path = self._path(stem)
        entry = read_entry(path, mmap=True)
        if entry is None:
            raise InputError(f"{path}: missing or unreadable condition cache entry; {CACHE_COMMAND}")
        if not key_satisfies(entry.get("key", {}), self.key) or entry.get("source") != self.sources[stem]:
            raise _stale(path, "the entry was rebuilt under other settings after the manifest was written")
        return entry

    def __getitem__(self, idx: int) -> dict:
        item = super().__getitem__(idx)  # video, caption, stem, start (and empty token ids under "text")
        entry = self._entry(item["stem"])
        start, cfg = item["start"], self.cfg
        stop = start + cfg.span
        if stop > int(entry["frames"]):
            raise _stale(self._path(item["stem"]),
                         f"it holds {int(entry['frames'])} frames, the window needs frames {start}..{stop - 1}")
        item["text"] = _own(entry["text"])
        item["image"] = _own(entry["img"][start])
        if self.has_audio_tokens:
            item["audio_tokens"] = _own(entry["audio_tokens"][start:stop:cfg.sample_every_n_frames])
        return item


def _own(x: Tensor) -> Tensor:
    # A copy that does not keep the memory-mapped file alive.
    return x.clone().contiguous()
