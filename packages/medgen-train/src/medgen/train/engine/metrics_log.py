"""``metrics.csv``: one row per log step; columns fixed by the first row."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from medgen.data.cache.atomic import atomic_write_bytes


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a metrics CSV, numbers parsed ([] when the file is absent)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(fh)]


class MetricsLog:
    """Appends rows to a CSV whose header is the first row's keys."""

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
        if self.columns is not None:
            self._rewrite()

    def _rewrite(self) -> None:
        """The whole file from the rows in memory, replaced atomically (never half-written)."""
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=self.columns)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_bytes(self.path, buf.getvalue().encode())

    def log(self, row: dict) -> None:
        """Append ``row``; a key first seen now (an objective that starts later) extends the
        header, and the file is rewritten once with the new column (earlier rows empty)."""
        if self.columns is None:
            self.columns = list(row)
            with self.path.open("w", newline="") as fh:
                csv.writer(fh).writerow(self.columns)
        new = [k for k in row if k not in self.columns]
        self.rows.append(row)
        if new:
            self.columns += new
            self._rewrite()
            return
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.columns).writerow(row)
