"""``@section.key`` in a sweep's ``evaluate`` section: a value of each run's own fit config.

A sweep's evaluation may need something only known when the sweep is started, such as the
autoencoder run given on the sweep's command line (``task.space.autoencoder=runs/vae``).
Writing ``autoencoder:@task.space.autoencoder`` in the sweep file names that value without
hard-coding a path: every ``@`` followed by a dotted key (at least one dot) is replaced by that
key's value in the run's resolved fit config (the config, the sweep's ``overrides``, the
command line and the run's ``fit`` overrides). A key the config does not have, a section, or
an empty value is one ConfigError naming the key, before anything runs.
"""

from __future__ import annotations

import re

from medgen.train.errors import ConfigError

REFERENCE = re.compile(r"@([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)")


def _value(config: dict, key: str, where: str):
    node, done = config, []
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            known = ", ".join(sorted(node)) if isinstance(node, dict) else "no keys"
            at = ".".join(done) or "the config"
            raise ConfigError(
                f"{where}: @{key}: the run's config has no key {'.'.join([*done, part])!r} "
                f"(keys under {at}: {known})"
            )
        node, done = node[part], [*done, part]
    if isinstance(node, dict):
        raise ConfigError(f"{where}: @{key} is a section of the run's config, not a value")
    if node is None or node in ("", []):
        raise ConfigError(
            f"{where}: @{key} is empty in the run's config; set it for the sweep, e.g. "
            f"{key}=... on the command line"
        )
    if isinstance(node, list):
        return ",".join(str(v) for v in node)
    return str(node).lower() if isinstance(node, bool) else str(node)


def resolve_references(text: str, config: dict, where: str) -> str:
    """``text`` with every ``@dotted.key`` replaced by its value in ``config`` (a resolved fit
    config as plain dicts, :func:`medgen.train.config.schema.to_dict`); ``where`` names the
    sweep file and key in errors."""
    return REFERENCE.sub(lambda m: _value(config, m.group(1), where), text)
