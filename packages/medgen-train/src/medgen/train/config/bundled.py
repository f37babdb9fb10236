"""Bundled YAML files by name: a path that exists, else ``<folder>/<name>.yaml`` of the
package's ``configs/`` (run configs, downstream configs, sweeps)."""

from __future__ import annotations

from pathlib import Path

from medgen.train.errors import ConfigError


def find_bundled(name: str | Path, folder: Path, what: str) -> Path:
    """``name`` as a path, or ``folder/<name>.yaml``; a ConfigError listing the bundled names
    (``what``: e.g. "config", "sweep") when neither exists."""
    for path in (Path(name), Path(folder) / f"{name}.yaml"):
        if path.is_file():
            return path
    known = ", ".join(sorted(p.stem for p in Path(folder).glob("*.yaml")))
    raise ConfigError(f"{name}: no such {what} file, nor a bundled {what} (bundled: {known})")
