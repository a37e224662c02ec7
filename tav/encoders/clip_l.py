"""CLIP ViT-L/14 (Hugging Face ``CLIPModel`` folder) as a frozen ``Encoder``: TIA2V's text and image conditions.

The text condition is the text tower's ``last_hidden_state`` ``(77, 768)`` of
the caption tokenised like HF ``CLIPTokenizer`` (padded to 77 with ``<|endoftext|>``, truncated); the image
condition is ``get_image_features`` ``(768,)`` (the projected image embedding) after CLIP preprocessing.

``load_clip_l`` reads a ``from_pretrained`` folder (``saved_ckpts/clip-vit-large-patch14``). The folder's own
tokenizer files are used when present; a folder without ``vocab.json``/``merges.txt`` (``save_tiny_clip_l``
writes none) falls back to open_clip's bundled copy of the same OpenAI BPE vocabulary, with HF's text
normalisation and HF's padding (see ``OpenCLIPTokenizer``).
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from tav.checkpoint import check_finite, refused_unpickling
from tav.encoders.base import Encoder
from tav.errors import InputError

CLIP_L_FOLDER = "clip-vit-large-patch14"
CLIP_L_FLAG = "--clip_l_ckpt"
CLIP_L_CONTEXT = 77  # tokens per caption, <|startoftext|> ... <|endoftext|> then padding
BOS_ID, EOS_ID = 49406, 49407  # <|startoftext|>, <|endoftext|> (also HF's pad token for this model)
TOKENIZER_FILES = ("vocab.json", "merges.txt")


def first_line(caption: str) -> str:
    """The first non-empty line of ``caption``, stripped ("" if none): upstream encodes a caption file's lines
    separately and keeps the first line's states."""
    return next((line.strip() for line in caption.splitlines() if line.strip()), "")


class HFTokenizer:
    """``captions -> (B, 77) long`` with the folder's HF ``CLIPTokenizer`` (pad to max length, truncate)."""

    def __init__(self, folder: str | os.PathLike, context_length: int = CLIP_L_CONTEXT):
        from transformers import CLIPTokenizer

        self.tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.context_length = context_length

    def __call__(self, captions: Sequence[str]) -> Tensor:
        out = self.tok(list(captions), padding="max_length", max_length=self.context_length, truncation=True,
                       return_tensors="pt")
        return out["input_ids"].long()

    def count(self, caption: str) -> int:
        """Tokens of ``caption`` before truncation, start and end tokens included."""
        return len(self.tok(caption)["input_ids"])


def _hf_normalise(text: str) -> str:
    # What HF's CLIPTokenizer (transformers 5) does before BPE: NFC, runs of whitespace -> one space, lowercase.
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).lower()


class OpenCLIPTokenizer:
    """``captions -> (B, 77) long`` from open_clip's bundled OpenAI BPE, matching HF ``CLIPTokenizer`` ids.

    open_clip's vocabulary is the one HF converted for ``openai/clip-vit-large-patch14`` (same ids; the
    special tokens 49406/49407). Two differences from ``open_clip.tokenize`` are removed: it pads with 0 (HF
    pads with ``<|endoftext|>`` = 49407) and it cleans text with ftfy + HTML unescaping (HF does NFC,
    whitespace collapse and lowercasing only). Truncation keeps 76 tokens and ends with 49407, as both do.
    """

    def __init__(self, context_length: int = CLIP_L_CONTEXT):
        from open_clip.tokenizer import SimpleTokenizer

        self.bpe = SimpleTokenizer()
        self.bpe.clean_fn = _hf_normalise  # encode() applies clean_fn, then the BPE
        self.context_length = context_length

    def __call__(self, captions: Sequence[str]) -> Tensor:
        n = self.context_length
        ids = torch.full((len(captions), n), EOS_ID, dtype=torch.long)
        for i, text in enumerate(captions):
            row = [BOS_ID, *self.bpe.encode(text)][: n - 1] + [EOS_ID]
            ids[i, : len(row)] = torch.tensor(row)
        return ids

    def count(self, caption: str) -> int:
        """Tokens of ``caption`` before truncation, start and end tokens included."""
        return len(self.bpe.encode(caption)) + 2


def has_tokenizer_files(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds an HF tokenizer (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``)."""
    folder = Path(folder)
    return (folder / "tokenizer.json").is_file() or all((folder / f).is_file() for f in TOKENIZER_FILES)


def write_tokenizer_files(folder: str | os.PathLike) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` (HF's CLIP tokenizer format) built from open_clip's bundled BPE
    into ``folder``, so that HF ``CLIPTokenizer.from_pretrained(folder)`` works offline. Returns ``folder``."""
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(k, k): v for k, v in SimpleTokenizer().encoder.items()}
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1: 49152 - 256 - 2 + 1]
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def _pooled(out) -> Tensor:
    # transformers 5 returns a model output whose pooler_output is projected; 4.x returned the tensor.
    return out if isinstance(out, Tensor) else out.pooler_output


class CLIPLEncoder(Encoder):
    """Frozen HF CLIP (ViT-L/14 for the real weights): text states, projected text/image features.

    ``text_dim`` is the text tower width (768), ``dim`` the projection width (768), ``image_size`` 224.
    """

    name = "clip_l"

    def __init__(self, model, tokenizer):
        super().__init__()
        self.model = model
        self.tokenize = tokenizer  # captions -> (B, 77) long
        cfg = model.config
        self.dim = int(cfg.projection_dim)
        self.text_dim = int(cfg.text_config.hidden_size)
        self.image_size = int(cfg.vision_config.image_size)
        self.context_length = CLIP_L_CONTEXT
        self.freeze()

    def token_ids(self, captions: Sequence[str]) -> Tensor:
        """``B`` captions (first line of each) -> ``(B, 77)`` long ids on the encoder's device."""
        return self.tokenize([first_line(c) for c in captions]).to(self.device)

    def encode_text_states(self, captions: Sequence[str]) -> Tensor:
        """``B`` captions -> ``(B, 77, text_dim)`` float ``last_hidden_state`` of the text tower (ids only, no
        attention mask, as upstream; the causal mask keeps padding from reaching earlier tokens)."""
        return self.model.text_model(input_ids=self.token_ids(captions)).last_hidden_state

    def preprocess_images(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` in [0, 1] -> ``(N, 3, 224, 224)`` the ``CLIPImageProcessor`` way, in torch:
        shorter side to 224 (bicubic, antialiased, long side ``int(224 * long / short)``), clamp to [0, 1] (PIL
        works in uint8), centre crop, CLIP mean/std. Differentiable except where clamped."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: images must be (N, 3, H, W), got {tuple(images.shape)}")
        s = self.image_size
        h, w = images.shape[-2:]
        size = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        if (h, w) != size:
            images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
            images = images.clamp(0, 1)
        top, left = (size[0] - s) // 2, (size[1] - s) // 2
        images = images[:, :, top: top + s, left: left + s]
        mean = torch.tensor(self.image_mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std

    def encode_image_embeds(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` RGB in [0, 1] -> ``(N, dim)`` projected image embeddings (``get_image_features``)."""
        pixels = self.preprocess_images(images.to(self.device, torch.float32))
        return _pooled(self.model.get_image_features(pixel_values=pixels))

    def encode_images(self, images: Tensor) -> Tensor:
        """Same as ``encode_image_embeds``: ``(N, 3, H, W)`` in [0, 1] -> ``(N, dim)``."""
        return self.encode_image_embeds(images)

    def encode_texts(self, captions: Sequence[str]) -> Tensor:
        """``N`` captions -> ``(N, dim)`` projected pooled text features (``get_text_features``)."""
        return _pooled(self.model.get_text_features(input_ids=self.token_ids(captions)))


def _missing_message(path: Path) -> str:
    return (f"{path}: CLIP ViT-L/14 folder not found; download it from huggingface.co/openai/clip-vit-large-"
            f"patch14 (e.g. `huggingface-cli download openai/clip-vit-large-patch14 --local-dir saved_ckpts/"
            f"{CLIP_L_FOLDER}`) or pass {CLIP_L_FLAG} FOLDER")


def load_clip_l(path: str | os.PathLike, device: str | torch.device = "cpu") -> CLIPLEncoder:
    """The frozen CLIP-L encoder from the HF ``from_pretrained`` folder ``path`` (offline), fp32, on ``device``.

    Raises ``InputError`` (one line naming the folder and ``--clip_l_ckpt``) when the folder is missing, is a
    file, or does not hold a CLIP model.
    """
    from transformers import CLIPModel

    path = Path(path)
    if not path.exists():
        raise InputError(_missing_message(path))
    if not path.is_dir() or not (path / "config.json").is_file():
        raise InputError(f"{path}: not a Hugging Face model folder (no config.json); {CLIP_L_FLAG} takes the "
                         f"{CLIP_L_FOLDER} folder downloaded from huggingface.co/openai/clip-vit-large-patch14")
    from safetensors import SafetensorError

    try:
        model = CLIPModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    except pickle.UnpicklingError as err:  # pytorch_model.bin refused by the weights-only unpickler
        raise refused_unpickling(path / "pytorch_model.bin", err) from None
    except (OSError, ValueError, KeyError, RuntimeError, EOFError, SafetensorError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: cannot load a CLIP model from this folder ({first}); {CLIP_L_FLAG} takes the "
                         f"{CLIP_L_FOLDER} folder from huggingface.co/openai/clip-vit-large-patch14") from None
    check_finite(model.state_dict(), str(path))
    tokenizer = HFTokenizer(path) if has_tokenizer_files(path) else OpenCLIPTokenizer()
    return CLIPLEncoder(model, tokenizer).to(device)


def tiny_clip_l_config(width: int = 32):
    """A tiny ``CLIPConfig``: the real vocabulary (49408) and context (77) so real token ids work; ``width``-wide
    2-layer towers with 2 heads; vision 224 px in 32-px patches; ``projection_dim == width`` so the text states
    and the image embedding share one width (as 768/768 for ViT-L/14)."""
    from transformers import CLIPConfig

    text = dict(vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=CLIP_L_CONTEXT, bos_token_id=BOS_ID,
                eos_token_id=EOS_ID, pad_token_id=EOS_ID, projection_dim=width)
    vision = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=2,
                  image_size=224, patch_size=32, projection_dim=width)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=width)


def save_tiny_clip_l(path: str | os.PathLike, seed: int = 0, tokenizer_files: bool = False, width: int = 32) -> Path:
    """Write a randomly initialised ``CLIPModel(tiny_clip_l_config(width))`` as a ``from_pretrained`` folder
    (safetensors) at ``path``; ``tokenizer_files`` also writes ``vocab.json``/``merges.txt``
    (``write_tokenizer_files``). The global RNG is left untouched. Returns ``path``."""
    from transformers import CLIPModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(tiny_clip_l_config(width))
    path = Path(path)
    model.save_pretrained(str(path))
    if tokenizer_files:
        write_tokenizer_files(path)
    return path
