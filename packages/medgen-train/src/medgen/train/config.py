"""Typed configuration with dotted ``key=value`` overrides.

A config is a dataclass; :func:`apply_overrides` coerces each value to the field's declared
type and raises :class:`ConfigError` naming the key for unknown keys or values of the wrong
type.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from medgen.train.errors import ConfigError


def _coerce(key: str, raw: str, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, raw, inner[0])
    if origin is tuple:
        parts = [p for p in raw.strip("()[] ").split(",") if p.strip()]
        item = args[0]
        if len(args) != 2 or args[1] is not Ellipsis:
            if len(parts) != len(args):
                raise ConfigError(
                    f"{key}: expected {len(args)} comma-separated values, got {raw!r}"
                )
            return tuple(_coerce(key, p.strip(), a) for p, a in zip(parts, args, strict=True))
        return tuple(_coerce(key, p.strip(), item) for p in parts)
    if annotation is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected a boolean (true/false), got {raw!r}")
    if annotation in (int, float, str):
        try:
            return annotation(raw)
        except ValueError:
            raise ConfigError(f"{key}: expected {annotation.__name__}, got {raw!r}") from None
    raise ConfigError(f"{key}: cannot override a field of type {annotation}")


def apply_overrides(config: Any, overrides: list[str]) -> Any:
    """Return a copy of dataclass ``config`` with ``key=value`` strings applied."""
    hints = typing.get_type_hints(type(config))
    changes = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"unknown config key {key!r}; known keys: {known}")
        changes[key] = _coerce(key, raw.strip(), hints[key])
    return dataclasses.replace(config, **changes)


def to_dict(config: Any) -> dict:
    def plain(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}


def save_yaml(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
