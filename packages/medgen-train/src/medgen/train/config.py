"""Typed configuration: YAML files validated against dataclass schemas, dotted overrides.

A config is a dataclass whose fields may themselves be dataclasses (sections).
:func:`load_config` reads YAML into it (:func:`from_mapping`), then :func:`apply_overrides`
applies ``section.key=value`` strings, coercing each value to the field's declared type. An
unknown key or a value of the wrong type raises :class:`ConfigError` naming the dotted key.
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


def _hints(cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in typing.get_type_hints(cls).items() if k in names}


def _unknown(key: str, hints: dict, prefix: str) -> ConfigError:
    where = f" under {prefix.rstrip('.')!r}" if prefix else ""
    known = ", ".join(sorted(hints))
    return ConfigError(f"unknown config key {key!r}; known keys{where}: {known}")


def _set(config: Any, dotted: str, raw: str, prefix: str = "") -> Any:
    head, _, rest = dotted.partition(".")
    hints = _hints(type(config))
    key = prefix + head
    if head not in hints:
        raise _unknown(key, hints, prefix)
    annotation = hints[head]
    if dataclasses.is_dataclass(annotation):
        if not rest:
            raise ConfigError(f"{key}: is a section; override one of its keys ({key}.KEY=...)")
        value = _set(getattr(config, head), rest, raw, key + ".")
    elif rest:
        raise ConfigError(f"unknown config key {key + '.' + rest!r}: {key} is not a section")
    else:
        value = _coerce(key, raw.strip(), annotation)
    return dataclasses.replace(config, **{head: value})


def apply_overrides(config: Any, overrides: list[str]) -> Any:
    """Return a copy of dataclass ``config`` with ``key=value`` (or ``section.key=value``)
    strings applied."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        config = _set(config, key.strip(), raw)
    return config


def _check(key: str, value: Any, annotation: Any) -> Any:
    """A YAML value checked (and lightly converted) against ``annotation``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(key, value, inner[0])
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping (a section), got {value!r}")
        return from_mapping(annotation, value, key + ".")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(key, v, args[0]) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_check(key, v, a) for v, a in zip(value, args, strict=True))
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"{key}: unsupported field type {annotation}")
    name = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"{key}: expected {name}, got {value!r} ({type(value).__name__})")


def from_mapping(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (YAML) mapping; missing keys keep their defaults."""
    hints = _hints(cls)
    values = {}
    for k, v in data.items():
        if k not in hints:
            raise _unknown(prefix + str(k), hints, prefix)
        values[k] = _check(prefix + k, v, hints[k])
    try:
        return cls(**values)
    except TypeError as exc:  # a required field without default
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from None


def load_config(cls: type, path: str | Path, overrides: list[str] = ()) -> Any:
    """Read YAML ``path`` into ``cls``, then apply dotted ``overrides``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        config = from_mapping(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return apply_overrides(config, list(overrides))


def to_dict(config: Any) -> dict:
    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return [plain(x) for x in v] if isinstance(v, tuple | list) else v

    return plain(dataclasses.asdict(config))


def save_yaml(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
