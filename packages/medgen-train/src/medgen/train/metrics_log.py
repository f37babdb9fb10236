"""``metrics.csv``: one row per log step; columns fixed by the first row."""

from __future__ import annotations

import csv
from pathlib import Path


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


class MetricsLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.columns: list[str] | None = None
        self.rows: list[dict] = []

    def resume_at(self, step: int) -> None:
        """Keep the rows of an earlier run up to ``step`` (those after it will be logged
        again by the resumed run) and append after them."""
        if not self.path.is_file():
            return
        with self.path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            rows = [{k: _number(v) for k, v in r.items()} for r in reader]
            columns = reader.fieldnames
        self.rows = [r for r in rows if isinstance(r.get("step"), int) and r["step"] <= step]
        self.columns = list(columns) if columns else None
        if self.columns is None:
            return
        with self.path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)

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
