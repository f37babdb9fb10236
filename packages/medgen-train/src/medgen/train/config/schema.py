"""Typed configuration: YAML mappings validated against frozen dataclass schemas.

A config is a dataclass whose fields are plain values (bool, int, float, str, tuples of them,
``X | None``) or sections (dataclasses). Three markers, given as ``typing.Annotated`` extras
or ``dataclasses.field`` metadata, describe more than a type:

- :func:`setting` attaches a :class:`Rule` (choices, bounds) to a field: every value of every
  section is checked against its rule in one place (:func:`validate`), before anything runs;
- :class:`Kinded` makes a section polymorphic: its ``kind`` key picks the dataclass from a
  registry (``model.kind: unet``, ``task.kind: diffusion``), and ``section.kind=other`` on the
  command line switches to that class's defaults;
- :class:`Preset` lets a string stand for a whole section (``data.recipe: mni152``).

Sections may define ``validate()`` for cross-field rules; it raises :class:`ConfigError` (or
``ValueError``) whose message starts with the key inside the section, and the dotted prefix
is added here. YAML is read with duplicate keys refused. Every error names the dotted key,
the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgen.train.config.yaml_io import dump_yaml, read_yaml
from medgen.train.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """What a field accepts beyond its type: ``choices``, inclusive ``min``/``max``,
    exclusive ``gt``/``lt``. Tuple fields apply the rule to each element."""

    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    gt: float | None = None
    lt: float | None = None

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value``, or None."""
        if value is None:
            return None
        if self.choices is not None and value not in self.choices:
            return f"one of {', '.join(map(str, self.choices))}"
        if isinstance(value, int | float) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                return "a finite number"
            bounds = []
            if self.min is not None:
                bounds.append(f">= {self.min:g}")
            if self.gt is not None:
                bounds.append(f"> {self.gt:g}")
            if self.max is not None:
                bounds.append(f"<= {self.max:g}")
            if self.lt is not None:
                bounds.append(f"< {self.lt:g}")
            ok = (
                (self.min is None or value >= self.min)
                and (self.gt is None or value > self.gt)
                and (self.max is None or value <= self.max)
                and (self.lt is None or value < self.lt)
            )
            if not ok:
                return "a number " + " and ".join(bounds)
        return None


def setting(default: Any, **rule: Any) -> Any:
    """A dataclass field with a default and a :class:`Rule` (``choices=``, ``min=``, ...)."""
    return field(default=default, metadata={"rule": Rule(**rule)})


@dataclass(frozen=True)
class Kinded:
    """``Annotated`` marker: the section's class is ``registry[mapping["kind"]]`` (``default``
    when the key is absent). Every registered class has a ``kind: str`` field."""

    registry: Mapping[str, type]
    default: str


@dataclass(frozen=True)
class Preset:
    """``Annotated`` marker: a string given for this section is ``load(name)``, a mapping."""

    load: Callable[[str], dict]


# -- type introspection ---------------------------------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls, include_extras=True)
    return {k: v for k, v in hints.items() if k in names}


def _split(annotation: Any) -> tuple[Any, tuple]:
    """(bare annotation, Annotated extras)."""
    if typing.get_origin(annotation) is typing.Annotated:
        args = typing.get_args(annotation)
        return args[0], tuple(args[1:])
    return annotation, ()


def _optional(annotation: Any) -> tuple[Any, bool]:
    """(inner annotation, whether None is allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return inner[0], type(None) in args
    return annotation, False


def _marker(extras: tuple, kind: type) -> Any:
    return next((e for e in extras if isinstance(e, kind)), None)


def _section_class(annotation: Any, extras: tuple, mapping: Mapping | None, key: str) -> type:
    kinded = _marker(extras, Kinded)
    if kinded is None:
        return annotation
    kind = (mapping or {}).get("kind", kinded.default)
    if kind not in kinded.registry:
        raise ConfigError(
            f"{key}.kind: expected one of {', '.join(sorted(kinded.registry))}, got {kind!r}"
        )
    return kinded.registry[kind]


def _is_section(annotation: Any, extras: tuple) -> bool:
    return dataclasses.is_dataclass(annotation) or _marker(extras, Kinded) is not None


def _union_pair(annotation: Any) -> tuple[type, Any] | None:
    """``(section class, other type)`` of a ``Section | other`` union (e.g. a recipe's
    ``sources``: a list of paths or a dataset folder), else None."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return None
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    sections = [a for a in args if dataclasses.is_dataclass(a)]
    if len(args) != 2 or len(sections) != 1:
        return None
    return sections[0], next(a for a in args if a is not sections[0])


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation))


# -- YAML values ----------------------------------------------------------------------------


def _check(key: str, value: Any, annotation: Any) -> Any:
    """A YAML value checked (and lightly converted) against ``annotation``."""
    annotation, extras = _split(annotation)
    inner, nullable = _optional(annotation)
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"{key}: expected {_type_name(inner)}, got null")
    preset = _marker(extras, Preset)
    if preset is not None and isinstance(value, str):
        value = preset.load(value)
    if _is_section(inner, extras):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping (a section), got {value!r}")
        return from_mapping(_section_class(inner, extras, value, key), value, key + ".")
    pair = _union_pair(inner)
    if pair is not None:  # a mapping is the section, anything else the other type
        return _check(key, value, pair[0] if isinstance(value, dict) else pair[1])
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(
            _check(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if inner is bool and isinstance(value, bool):
        return value
    if inner is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if inner is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    if inner is str and isinstance(value, str):
        return value
    if inner not in (bool, int, float, str):
        raise ConfigError(f"{key}: unsupported field type {inner}")
    raise ConfigError(f"{key}: expected {_type_name(inner)}, got {value!r}")


def _unknown(key: str, hints: Mapping, prefix: str) -> ConfigError:
    where = f" under {prefix.rstrip('.')!r}" if prefix else ""
    return ConfigError(f"unknown config key {key!r}; known keys{where}: {', '.join(sorted(hints))}")


def from_mapping(cls: type, data: Mapping, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (YAML) mapping; missing keys keep their defaults.

    Types are checked here; rules and ``validate()`` by :func:`validate`."""
    hints = _hints(cls)
    values = {}
    for k, v in data.items():
        if k not in hints:
            raise _unknown(prefix + str(k), hints, prefix)
        values[k] = _check(prefix + k, v, hints[k])
    try:
        return cls(**values)
    except TypeError as exc:  # a required field without a default
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from None


# -- command-line overrides -----------------------------------------------------------------


def _coerce(key: str, raw: str, annotation: Any) -> Any:
    inner, nullable = _optional(_split(annotation)[0])
    if nullable and raw.lower() in ("none", "null", "~"):
        return None
    pair = _union_pair(inner)
    if pair is not None:  # key=a,b sets the other type; the section's keys go key.sub=...
        return _coerce(key, raw, pair[1])
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if origin is tuple:
        parts = [p.strip() for p in raw.strip("()[] ").split(",") if p.strip()]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(key, p, args[0]) for p in parts)
        if len(parts) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} comma-separated values, got {raw!r}")
        return tuple(_coerce(key, p, a) for p, a in zip(parts, args, strict=True))
    if inner is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected a boolean (true/false), got {raw!r}")
    if inner in (int, float, str):
        try:
            return inner(raw)
        except ValueError:
            raise ConfigError(f"{key}: expected {inner.__name__}, got {raw!r}") from None
    raise ConfigError(f"{key}: cannot override a field of type {inner}")


def _set(config: Any, dotted: str, raw: str, prefix: str = "") -> Any:
    head, _, rest = dotted.partition(".")
    hints = _hints(type(config))
    key = prefix + head
    if head not in hints:
        raise _unknown(key, hints, prefix)
    annotation, extras = _split(hints[head])
    inner, nullable = _optional(annotation)
    pair = _union_pair(inner)
    current = getattr(config, head)
    if pair is not None and rest:  # key.sub=...: into the section (started from defaults)
        section = current if isinstance(current, pair[0]) else pair[0]()
        return dataclasses.replace(config, **{head: _set(section, rest, raw, key + ".")})
    if not _is_section(inner, extras):
        if rest:
            raise ConfigError(f"unknown config key {key + '.' + rest!r}: {key} is not a section")
        value = _coerce(key, raw.strip(), hints[head])
        return dataclasses.replace(config, **{head: value})
    if not rest:  # the whole section: a preset name or null
        if nullable and raw.strip().lower() in ("none", "null", "~"):
            return dataclasses.replace(config, **{head: None})
        preset = _marker(extras, Preset)
        if preset is None:
            raise ConfigError(f"{key}: is a section; override one of its keys ({key}.KEY=...)")
        section = _check(key, preset.load(raw.strip()), hints[head])
        return dataclasses.replace(config, **{head: section})
    kinded = _marker(extras, Kinded)
    if rest == "kind" and kinded is not None:
        cls = _section_class(inner, extras, {"kind": raw.strip()}, key)
        if current is None or type(current) is not cls:
            current = cls()
        return dataclasses.replace(config, **{head: current})
    if current is None:  # an optional section not set yet: start from its defaults
        current = _section_class(inner, extras, None, key)()
    return dataclasses.replace(config, **{head: _set(current, rest, raw, key + ".")})


def apply_overrides(config: Any, overrides: list[str]) -> Any:
    """A copy of dataclass ``config`` with ``section.key=value`` strings applied; ``*.kind``
    switches come first, so ``model.kind=x`` never discards the keys given beside it."""
    items = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        items.append((key.strip(), raw))
    items.sort(key=lambda kv: not kv[0].endswith(".kind"))  # stable: kinds first
    for key, raw in items:
        config = _set(config, key, raw)
    return config


# -- validation -----------------------------------------------------------------------------


def validate(config: Any, prefix: str = "") -> Any:
    """Check every field's :class:`Rule` and every section's ``validate()``, depth first;
    the first problem is a :class:`ConfigError` naming the dotted key. Returns ``config``."""
    hints = _hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = prefix + f.name
        annotation, extras = _split(hints[f.name])
        inner, _ = _optional(annotation)
        if value is not None and _is_section(inner, extras):
            validate(value, key + ".")
            continue
        rule = f.metadata.get("rule") or Rule()
        for v in value if isinstance(value, tuple) else (value,):
            problem = rule.problem(v)
            if problem:
                raise ConfigError(f"{key}: expected {problem}, got {value!r}")
    check = getattr(config, "validate", None) or getattr(config, "check", None)
    if callable(check):
        try:
            check()
        except ConfigError as exc:
            raise ConfigError(f"{prefix}{exc}") from None
        except ValueError as exc:  # DataError and friends: the section's own message
            raise ConfigError(f"{prefix}{' '.join(str(exc).split())}") from None
    return config


def load_config(cls: type, path: str | Path, overrides: list[str] = ()) -> Any:
    """Read YAML ``path`` into ``cls``, apply dotted ``overrides``, validate everything."""
    data = read_yaml(path)
    try:
        config = from_mapping(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return validate(apply_overrides(config, list(overrides)))


# -- output ---------------------------------------------------------------------------------


def to_dict(config: Any) -> dict:
    """Plain nested dicts and lists (YAML- and JSON-safe)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return [plain(x) for x in v] if isinstance(v, tuple | list) else v

    return plain(config)


def to_yaml(config: Any) -> str:
    """The resolved config as YAML text (section order as declared)."""
    return dump_yaml(to_dict(config))


def differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` for every leaf that differs between two plain
    nested mappings (as :func:`to_dict` returns)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in list(old) + [k for k in new if k not in old]:
            out += differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    if old != new:
        return [(prefix.rstrip("."), old, new)]
    return []
