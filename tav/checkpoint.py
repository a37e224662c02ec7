"""Checkpoint I/O shared by all stages: safe loading, the ``tav`` format, and stage detection.

Nothing is ever plain-unpickled. ``safe_load`` is
``torch.load(weights_only=True)`` plus a short allow-list: ``argparse.Namespace`` (the upstream
Lightning-1.5 ``hyper_parameters['args']``) and inert stand-ins for Lightning class names that such files
may reference. Any other global is refused with a one-line ``InputError`` naming the file and the global.

Formats read (``read_checkpoint``):
- ``tav``: ``{"stage", "config" (plain dict), "state_dict", "version"}`` written by ``save_checkpoint``;
- ``lightning``: a Lightning 2.x checkpoint of our own training, ``hyper_parameters = {"stage", "config"}``;
- ``legacy-lightning``: an upstream Lightning-1.5 ``.ckpt``, ``hyper_parameters = {"args": Namespace}``;
- ``state_dict``: a bare ``{name: tensor}`` file (guided-diffusion ``.pt``, AudioCLIP, ...), or a dict
  holding one under ``state_dict`` / ``model``.

``strict_from_state_dict`` builds a network and loads weights into it strictly, with one-line errors; the
VQGAN, GPT and diffusion loaders all go through it.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from tav.errors import InputError
from tav.utils.fileio import save_torch_atomic

FORMAT_VERSION = 1
M = TypeVar("M", bound=torch.nn.Module)

# Lightning classes that legacy checkpoints may name (ModelCheckpoint is a callback-state key in
# Lightning <= 1.4-style files). Only the name is ever needed; we never import Lightning 1.x.
_LIGHTNING_NAMES = ("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",)


def _inert_class(qualified: str) -> type:
    module, _, name = qualified.rpartition(".")
    return type(name, (), {"__module__": module, "__qualname__": name,
                           "__doc__": f"Inert stand-in for {qualified}, read from a legacy checkpoint."})


LIGHTNING_STAND_INS: dict[str, type] = {q: _inert_class(q) for q in _LIGHTNING_NAMES}
SAFE_GLOBALS: list[Any] = [argparse.Namespace, *LIGHTNING_STAND_INS.values()]


def _first_line(err: BaseException) -> str:
    """The first sentence of the first line of ``err`` (torch's loader errors go on with generic advice)."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0].split(". ")[0].rstrip(".")[:300]


def safe_load(path: str | os.PathLike) -> Any:
    """``torch.load`` of ``path`` on CPU with ``weights_only=True`` and tav's allow-list.

    Raises ``InputError`` naming the file when it is missing, corrupt, or needs a global outside the
    allow-list (the error names that global; the file is not executed).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise refused_unpickling(path, err) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError) as err:
        raise InputError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                         f"{_first_line(err)}; re-download or re-export it") from None


def refused_unpickling(path: str | os.PathLike, err: BaseException) -> InputError:
    """The one-line error for a file the weights-only unpickler refused: the global it would have run (a file that
    is not safe to load), or the specific reason (a corrupt file). Never torch's advice to retry unsafely."""
    text = str(err)
    found = re.search(r"GLOBAL (\S+?)(?: was not an allowed global| whose module|[\s,;]|$)", text) or re.search(
        r"(unrecognized function \S+|new object for \S+ .*?got \S+|types allowlisted .*?got \S+)", text)
    if found:
        return InputError(f"{path}: refused to unpickle {found.group(1)}: not on tav's checkpoint allow-list "
                          "(loading it would run arbitrary code); do not load this file unless you know where "
                          "it came from, and then convert it with trusted code")
    return InputError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): {_refusal(text)}; "
                      "re-download or re-export it")


def _refusal(text: str) -> str:
    """The specific reason in torch's weights-only refusal, without its generic advice (which suggests
    ``weights_only=False``: never right for a file that failed the safe unpickler)."""
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if detail:
        return detail.group(1)
    generic = ("Weights only load failed", "Check the documentation", "weights_only", "Re-running", "In PyTorch")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(generic)]
    return lines[0] if lines else "refused by the safe unpickler"


def is_torchscript(path: str | os.PathLike) -> bool:
    """True for a TorchScript archive (a zip holding ``code/`` or ``constants.pkl``), not a ``torch.save`` file.

    Such files (OpenAI's CLIP ``ViT-B-32.pt``, StyleGAN-V's ``i3d_torchscript.pt``) are read with
    ``torch.jit.load``: TorchScript deserialisation, which does not unpickle arbitrary Python objects.
    """
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any("/code/" in n or n.endswith("/constants.pkl") for n in names)


def save_checkpoint(path: str | os.PathLike, stage: str, config: Mapping[str, Any],
                    state_dict: Mapping[str, Tensor], **extra: Any) -> Path:
    """Write a ``tav`` checkpoint atomically: ``{"stage", "config", "state_dict", "version", **extra}``.

    ``config`` must be a plain dict (``tav.config.to_dict``) so the file reloads with ``weights_only``.
    Tensors are saved detached on CPU.
    """
    obj = {"stage": stage, "config": dict(config), "version": FORMAT_VERSION,
           "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, **extra}
    path = Path(path)
    save_torch_atomic(obj, path)
    return path


# ------------------------------------------------------------------------------------------- detection
# (stage, description, predicate on the key set) for files that do not record their stage.
_KEY_RULES: list[tuple[str, str, Any]] = [
    ("gpt", "a TA2V GPT checkpoint (transformer_text.*, first_stage_model.*)",
     lambda ks: any(k.startswith(("transformer_text.", "first_stage_model.")) for k in ks)),
    ("vqgan", "a video VQGAN checkpoint (encoder.*, decoder.*, codebook.*)",
     lambda ks: "codebook.embeddings" in ks or any(k.startswith("encoder.conv_first.") for k in ks)),
    ("unet", "a diffusion U-Net state dict (input_blocks.*, time_embed.*)",
     lambda ks: any(k.startswith("input_blocks.") for k in ks) and any(k.startswith("time_embed.") for k in ks)),
    ("beats", "a BEATs checkpoint", lambda ks: "post_extract_proj.weight" in ks),
    ("wav2clip", "a wav2clip checkpoint", lambda ks: any(k.startswith(("audio_encoder.", "transform.")) for k in ks)),
    ("audioclip", "an AudioCLIP checkpoint",
     lambda ks: any(k.startswith("audio.") for k in ks) and any(k.startswith("visual.") for k in ks)),
]
STAGE_DESCRIPTIONS = {**{stage: text for stage, text, _ in _KEY_RULES},
                      "joint": "a joint audio-video-text encoder (scripts/train_joint_encoder.py)"}


def state_dict_of(obj: Any) -> dict[str, Tensor] | None:
    """The tensor mapping inside a loaded checkpoint (``state_dict``, ``model``, or the object itself)."""
    if not isinstance(obj, Mapping):
        return None
    for key in ("state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
            return dict(inner)
    if obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        return dict(obj)
    return None


def _recorded_stage(obj: Mapping) -> str | None:
    if isinstance(obj.get("stage"), str):
        return obj["stage"]
    hp = obj.get("hyper_parameters")
    if isinstance(hp, Mapping) and isinstance(hp.get("stage"), str):
        return hp["stage"]
    return None


def detect_stage(obj: Any) -> str | None:
    """Which model a loaded checkpoint holds.

    The recorded stage of ``tav`` and our Lightning checkpoints (``"vqgan"``, ``"gpt"``, ...); for files
    that record none, the family guessed from the keys: ``"vqgan"``, ``"gpt"``, ``"unet"`` (any
    guided-diffusion U-Net: TA2V diffusion or a TIA2V U-Net), ``"beats"``, ``"wav2clip"``,
    ``"audioclip"``. ``None`` when unknown.
    """
    if not isinstance(obj, Mapping):
        return None
    recorded = _recorded_stage(obj)
    if recorded is not None:
        return recorded
    sd = state_dict_of(obj)
    keys = set(sd) if sd else set()
    for stage, _, rule in _KEY_RULES:
        if rule(keys):
            return stage
    return None


@dataclass
class Checkpoint:
    """A checkpoint read by ``read_checkpoint``.

    ``config`` is the plain-dict config of ``tav``/``lightning`` files; ``legacy_args`` the upstream
    Namespace as a dict (``legacy-lightning``); ``raw`` the whole loaded object (optimizer states etc.).
    """

    path: Path
    stage: str | None
    format: str  # "tav" | "lightning" | "legacy-lightning" | "state_dict"
    state_dict: dict[str, Tensor]
    config: dict[str, Any] | None
    legacy_args: dict[str, Any] | None
    raw: Any


def _format_of(obj: Mapping) -> tuple[str, dict | None, dict | None]:
    hp = obj.get("hyper_parameters")
    if "stage" in obj and "config" in obj:
        version = obj.get("version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise InputError(f"checkpoint format version {version!r} is newer than this tav ({FORMAT_VERSION})")
        return "tav", dict(obj["config"]), None
    if isinstance(hp, Mapping) and "config" in hp and "stage" in hp:
        return "lightning", dict(hp["config"]), None
    if isinstance(hp, Mapping) and "args" in hp:
        args = hp["args"]
        args = vars(args) if isinstance(args, argparse.Namespace) else args
        if isinstance(args, Mapping):
            return "legacy-lightning", None, dict(args)
    return "state_dict", None, None


def read_checkpoint(path: str | os.PathLike, expect: str) -> Checkpoint:
    """``safe_load`` a checkpoint and check that it holds stage ``expect`` (e.g. ``"vqgan"``).

    A file of another stage, or one without tensors, raises a one-line ``InputError`` that names the
    file, what it holds and what was expected.
    """
    path = Path(path)
    obj = safe_load(path)
    stage = detect_stage(obj)
    sd = state_dict_of(obj)
    wanted = STAGE_DESCRIPTIONS.get(expect, f"a {expect} checkpoint")
    if stage != expect:
        if stage is None:
            got = "no recognisable model"
        elif isinstance(obj, Mapping) and _recorded_stage(obj) is not None:
            got = f"a tav {stage!r} checkpoint"
        else:
            got = STAGE_DESCRIPTIONS.get(stage, f"a {stage} checkpoint")
        raise InputError(f"{path}: holds {got}, but {wanted} was expected")
    if sd is None:
        raise InputError(f"{path}: has no state dict of tensors; expected {wanted}")
    try:
        fmt, config, legacy = _format_of(obj)
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
    return Checkpoint(path, stage, fmt, sd, config, legacy, obj)


def recorded_data(path: str | os.PathLike) -> dict | None:
    """The training-data record a checkpoint carries (``{"name", "fps", "sample_rate"}``, written by our
    trainers), or None for files that have none (upstream releases, older files)."""
    obj = safe_load(path)
    if not isinstance(obj, Mapping):
        return None
    data = obj.get("data")
    hp = obj.get("hyper_parameters")
    if data is None and isinstance(hp, Mapping):
        data = hp.get("data")
    return dict(data) if isinstance(data, Mapping) else None


# ------------------------------------------------------------------------------------------- strict loading
def _mismatch(want: Mapping[str, tuple[int, ...]], sd: Mapping[str, Tensor],
              optional: Collection[str] = ()) -> tuple[str, str | None]:
    """What keeps ``sd`` from loading strictly into a module whose tensors have shapes ``want``.

    Returns ``(summary, first mis-shaped key)``; the summary is ``""`` when ``sd`` fits, else e.g.
    ``"1 missing (first a.weight), 1 of another shape (first b.bias has shape (3,) but the config builds
    (4,))"``. Keys in ``optional`` may be absent.
    """
    missing = [k for k in want if k not in sd and k not in optional]
    unexpected = [k for k in sd if k not in want]
    shaped = [k for k in want if k in sd and tuple(sd[k].shape) != want[k]]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (first {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]})")
    if shaped:
        k = shaped[0]
        parts.append(f"{len(shaped)} of another shape (first {k} has shape {tuple(sd[k].shape)} but the config "
                     f"builds {want[k]})")
    return ", ".join(parts), shaped[0] if shaped else None


def weights_misfit(obj: Any, net: nn.Module, sd: Mapping[str, Tensor]) -> str:
    """Why ``sd`` (from the loaded file ``obj``) does not load strictly into ``net``: ``""`` when it fits, else the
    key counts of ``_mismatch``, led by the model the file holds when it records or shows one (``"it holds a tav
    joint checkpoint; "``), for the one-line errors of loaders that take a single known layout."""
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    bn_counters = [k for k in want if k.endswith("num_batches_tracked")]  # BatchNorm fills a missing one
    summary, _ = _mismatch(want, sd, bn_counters)
    if not summary:
        return ""
    stage = detect_stage(obj)
    return (f"it holds a tav {stage} checkpoint; " if stage else "") + summary


def check_finite(sd: Mapping[str, Tensor], where: str) -> None:
    """Raise a one-line ``InputError`` naming ``where`` and the first floating tensor of ``sd`` that holds NaN or
    infinite values (a damaged file, or weights saved from a diverged run)."""
    for key, value in sd.items():
        if isinstance(value, Tensor) and value.is_floating_point() and value.device.type != "meta":
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise InputError(f"{where}: tensor {key} holds {bad} non-finite value(s) (NaN or inf): the weights "
                                 "are damaged or come from a diverged run; use an earlier checkpoint")


def strict_from_state_dict(build: Callable[[], M], sd: Mapping[str, Tensor], where: str, what: str,
                           hint: str = "", *, optional: Collection[str] = (),
                           shape_hints: Mapping[str, str] | None = None) -> M:
    """``build()`` on CPU with ``sd`` loaded strictly: the one strict loader of every model family.

    The network is first built on the meta device (no memory, no init) to compare key sets and shapes;
    missing, unexpected or mis-shaped keys are one ``InputError`` line ``"<where>: weights do not fit the
    <what> config: <counts, each with its first key><hint>"``. ``shape_hints[key]`` is appended instead of
    ``hint`` when ``key`` is the first mis-shaped one; keys in ``optional`` may be absent (the module's
    ``load_state_dict`` hooks must fill them). Only then are CPU tensors allocated and ``sd`` copied in.
    ``build`` must keep all its tensors as parameters or buffers (plain tensor attributes stay on meta).
    Non-finite weights are refused (:func:`check_finite`).
    """
    with torch.device("meta"):
        net = build()
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    summary, shaped = _mismatch(want, sd, optional)
    if summary:
        extra = (shape_hints or {}).get(shaped, hint) if shaped is not None else hint
        raise InputError(f"{where}: weights do not fit the {what} config: {summary}{extra}")
    check_finite(sd, where)
    net = net.to_empty(device="cpu")
    net.load_state_dict(dict(sd), strict=True)
    return net
