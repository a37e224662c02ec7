"""Config plumbing: YAML presets -> typed dataclasses, dotted overrides, and the preset registry.

Every model and dataset takes its own small dataclass. YAML files in ``configs/`` are presets; scripts
merge ``--config FILE`` then ``--set a.b=v`` overrides, and unknown keys or wrong types raise.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tav.errors import InputError

T = TypeVar("T")



def _config_dir() -> Path:
    """The presets: the repository's ``configs/``, installed as the package ``tav_configs`` (so a plain
    ``pip install .`` carries them too)."""
    import importlib.resources

    return Path(str(importlib.resources.files("tav_configs")))


CONFIG_DIR = _config_dir()


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; lists become tuples where a tuple is declared."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except InputError:
                continue
        raise InputError(f"{where}: {value!r} does not match {tp}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, where) for v in value)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise InputError(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(tp, type) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise InputError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and type mismatches raise ``InputError``."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise InputError(f"{where}: unknown key(s) {sorted(unknown)} for {cls.__name__}; "
                         f"known: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict view of a dataclass config (tuples become lists: YAML- and checkpoint-safe)."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping gives a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        presets = list_presets(path.parent.name) if path.parent.parent == CONFIG_DIR else []
        hint = f"; the presets here: {', '.join(presets)}" if presets else ""
        raise InputError(f"{path}: config file not found{hint}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config file must hold a mapping of keys to values")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``["a.b=v", ...]`` to a nested dict; values are parsed as YAML scalars/lists."""
    out = dict(data)
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node[p] = dict(node.get(p) or {})
            node = node[p]
        node[leaf] = _scalar(raw)
    return out


def _scalar(raw: str) -> Any:
    """A ``--set`` value: YAML (lists, booleans, null), with numbers YAML 1.1 reads as strings (``1e-4``) as
    numbers."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        for number in (int, float):
            try:
                return number(value)
            except ValueError:
                continue
    return value


def preset_path(kind: str, name: str) -> Path:
    """The preset ``configs/<kind>/<name>.yaml``, or ``name`` itself if it is a file path."""
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        return Path(name)
    return CONFIG_DIR / kind / f"{name}.yaml"


def list_presets(kind: str) -> list[str]:
    """Names of the presets under ``configs/<kind>/``."""
    return sorted(p.stem for p in (CONFIG_DIR / kind).glob("*.yaml"))
