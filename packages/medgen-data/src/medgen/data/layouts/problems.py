"""Collect every problem a dataset folder has, then raise them together.

A reader calls :meth:`Problems.add` with the file a problem is about and what is wrong, goes
on reading, and at the end :meth:`Problems.raise_if_any` raises one
:class:`~medgen.data.errors.DatasetError`: ``"N problems in ROOT/dataset.json (nnU-Net v2
layout)"`` then one line per problem, ``FILE: what``.
"""

from __future__ import annotations

from pathlib import Path

from medgen.data.errors import DatasetError


class Problems:
    """The problems found in one dataset (``where``: its description file or folder)."""

    def __init__(self, where: Path | str, layout: str) -> None:
        self.where = str(where)
        self.layout = layout
        self.lines: list[str] = []

    def add(self, path: Path | str, message: str) -> None:
        """Record that ``path`` has the problem ``message``."""
        self.lines.append(f"{path}: {message}")

    def __len__(self) -> int:
        return len(self.lines)

    def raise_if_any(self) -> None:
        """Raise a DatasetError listing every problem recorded (none: return)."""
        n = len(self.lines)
        if n:
            noun = "problem" if n == 1 else "problems"
            raise DatasetError(f"{n} {noun} in {self.where} ({self.layout} layout)", self.lines)
