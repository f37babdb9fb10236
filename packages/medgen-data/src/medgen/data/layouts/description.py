"""``dataset.json``, the description file of nnU-Net v2 and Decathlon folders, read once."""

from __future__ import annotations

import json
from pathlib import Path

from medgen.data.errors import DataError

DESCRIPTION = "dataset.json"


def read_description(root: Path) -> dict:
    """The mapping in ``root/dataset.json``; a DataError naming it when absent or not JSON."""
    path = root / DESCRIPTION
    if not path.is_file():
        raise DataError(
            f"{path}: no such file; an nnU-Net or Decathlon folder describes itself in it"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object at the top level")
    return data


def visible_files(folder: Path) -> list[Path]:
    """The files of ``folder`` (sorted), leaving out hidden ones (``.DS_Store``, ``._x``)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
