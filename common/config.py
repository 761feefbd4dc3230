"""Typed configuration plumbing shared by the roles.

Each role defines its own dataclass (actors/config.py, learner/config.py) with a
docstring per field and a ``validate()`` that refuses bad values and invalid
combinations by naming the field. This module fills such a dataclass from a
TOML file and ``--set key=value`` style overrides, refusing unknown keys and
values of the wrong type, so that bad config fails at start, not mid-run.
"""
from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """Bad configuration; the message names the field."""


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` as a field of type ``hint``: the scalars and nested config tables the roles'
    configs are made of (a field of another type is refused, so it needs adding here first)."""
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
            raise ConfigError(f"{name}: expected {hint.__name__}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a table, got {value!r}")
        return build(hint, value, prefix=f"{name}.")
    raise ConfigError(f"{name}: cannot use {value!r} as {hint}")


def build(cls: type[T], data: dict, prefix: str = "") -> T:
    """Instantiate dataclass ``cls`` from a dict, checking names and types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - fields
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(prefix + k for k in sorted(unknown))}")
    kwargs = {k: _coerce(prefix + k, v, hints[k]) for k, v in data.items()}
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=3' -> (['a', 'b'], 3); the value is read as TOML, bare words as strings."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"x = {raw}")["x"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def load(cls: type[T], path: str | None, overrides: dict[str, Any] | None = None) -> T:
    """TOML file (optional) + overrides ({"a.b": v}) -> validated ``cls``."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = tomllib.loads(p.read_text())
    for key, value in (overrides or {}).items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    cfg = build(cls, data)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg


def require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{field}: {message}")
