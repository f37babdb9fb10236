"""Typed YAML configs: schemas with rules, polymorphic sections, dotted overrides."""

from medgen.train.config.schema import (
    Kinded,
    Preset,
    Rule,
    apply_overrides,
    differences,
    from_mapping,
    load_config,
    read_yaml,
    setting,
    to_dict,
    to_yaml,
    validate,
)

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
