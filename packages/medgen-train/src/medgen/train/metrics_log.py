"""``metrics.csv``: one row per log step; columns fixed by the first row."""

from __future__ import annotations

import csv
from pathlib import Path


class MetricsLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.columns: list[str] | None = None
        self.rows: list[dict] = []

    def log(self, row: dict) -> None:
        if self.columns is None:
            self.columns = list(row)
            with self.path.open("w", newline="") as fh:
                csv.writer(fh).writerow(self.columns)
        unknown = set(row) - set(self.columns)
        if unknown:
            raise KeyError(f"{self.path}: columns {sorted(unknown)} not in the header")
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.columns).writerow(row)
        self.rows.append(row)
