"""YAML in and out for configs: duplicate keys refused on reading, short lists in flow style
on writing."""

from __future__ import annotations

from pathlib import Path

import yaml

from medgen.train.errors import ConfigError


class _NoDuplicates(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys (YAML itself lets the last one win)."""


def _mapping(loader: _NoDuplicates, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_NoDuplicates.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_yaml(path: str | Path) -> dict:
    """The top-level mapping of YAML file ``path`` (empty file: ``{}``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.strerror or exc})") from None
    try:
        data = yaml.load(text, Loader=_NoDuplicates)  # a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


class _Dumper(yaml.SafeDumper):
    """Lists of plain values in flow style (``channels: [32, 64, 64]``)."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(x, list | dict) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def dump_yaml(data: dict) -> str:
    """``data`` (plain dicts and lists) as YAML text, keys in their order."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)
