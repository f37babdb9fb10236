"""Typed YAML configs: schemas with rules, polymorphic sections, dotted overrides."""

from medgen.train.config.schema import (
    Kinded,
    Preset,
    Rule,
    apply_overrides,
    differences,
    from_mapping,
    load_config,
    setting,
    to_dict,
    to_yaml,
    validate,
)
from medgen.train.config.yaml_io import read_yaml

__all__ = [
    "Kinded",
    "Preset",
    "Rule",
    "apply_overrides",
    "differences",
    "from_mapping",
    "load_config",
    "read_yaml",
    "setting",
    "to_dict",
    "to_yaml",
    "validate",
]
