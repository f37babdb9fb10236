"""The sweep's table: one row per run, one column per requested number.

A column is a dotted path: ``fit.<column>`` is the last value of that column in the fit run's
``eval.csv`` (validation metrics) or ``metrics.csv`` (training log, e.g. ``fit.elapsed_s``,
the wall time of the last fit process); ``sample.<key>`` a value of the samples' manifest
(e.g. ``sample.seconds_per_sample``); anything else a path into the run's
``evaluation.json`` (``overall.ssim.mean``, ``distribution.0.planes.mean.fid.estimate``; list
items by index). A path a run does not have is an empty cell, said under the table, never a
number made up.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from medgen.train.rundir import Staging


def _last(csv_path: Path, column: str):
    if not csv_path.is_file():
        return None
    value = None
    with csv_path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get(column) not in (None, ""):
                value = row[column]
    try:
        return None if value is None else float(value)
    except ValueError:
        return value


def _path(data, dotted: list[str]):
    for part in dotted:
        if isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return None
    return data


def collect(run, fit_dir: Path, samples: Path, evaluation: Path, columns) -> dict:
    """The numbers of ``columns`` for one run (None where the run has no such value)."""
    result = json.loads((evaluation / "evaluation.json").read_text())
    manifest = json.loads((samples / "manifest.json").read_text())
    values = {}
    for column in columns:
        head, _, rest = column.partition(".")
        if head == "fit":
            v = _last(fit_dir / "eval.csv", rest)
            values[column] = v if v is not None else _last(fit_dir / "metrics.csv", rest)
        elif head == "sample":
            values[column] = _path(manifest, rest.split("."))
        else:
            values[column] = _path(result, column.split("."))
    return {
        "run": run.name,
        "fit": list(run.fit),
        "sample": list(run.sample),
        "fit_dir": str(fit_dir),
        "evaluation": str(evaluation),
        "values": values,
    }


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, dict | list):
        return json.dumps(v)
    return str(v)


def markdown(sweep, results: list[dict]) -> str:
    """The table as Markdown, with what each column means and which cells are empty."""
    head = ["run", *sweep.columns]
    lines = [
        f"# Sweep of `{sweep.config}` ({len(results)} runs)",
        "",
        f"Every run: `{' '.join(sweep.overrides) or '(no overrides)'}`; sampling "
        f"`{' '.join(sweep.sample) or '(the config sample section)'}`; evaluated against "
        f"`{sweep.evaluate.get('reference') or 'the training split'}`.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    empty = []
    for r in results:
        cells = [r["run"]] + [_cell(r["values"][c]) for c in sweep.columns]
        empty += [f"{r['run']}: {c}" for c in sweep.columns if r["values"][c] is None]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Overrides per run:", ""]
    for r in results:
        lines.append(f"- `{r['run']}`: fit `{' '.join(r['fit']) or '-'}`, sample "
                     f"`{' '.join(r['sample']) or '-'}` ({r['fit_dir']})")  # fmt: skip
    if empty:
        lines += ["", "Empty cells (the run has no such value): " + "; ".join(empty) + "."]
    return "\n".join(lines) + "\n"


def write_table(stage: Staging, sweep, results: list[dict]) -> None:
    """``sweep.json`` and ``sweep.md`` staged for the sweep directory."""
    data = {"sweep": str(sweep.path), "config": sweep.config, "columns": list(sweep.columns),
            "runs": results}  # fmt: skip
    stage.path("sweep.json").write_text(json.dumps(data, indent=2))
    stage.path("sweep.md").write_text(markdown(sweep, results))
