"""The sweep's table: one row per run, one column per requested number.

A column is a dotted path: ``fit.<column>`` is the last value of that column in the fit run's
``eval.csv`` (validation metrics) or ``metrics.csv`` (training log, e.g. ``fit.elapsed_s``,
the wall time of the last fit process); ``sample.<key>`` a value of the samples' manifest
(e.g. ``sample.seconds_per_sample``); anything else a path into the run's
``evaluation.json`` (``overall.ssim.mean``, ``distribution.0.planes.mean.fid.estimate``; list
items by index). A path a run does not have is an empty cell, said under the table, never a
number made up. A path to a bootstrap result (a mapping with ``estimate`` and intervals, such as
``distribution.0.planes.2d.fid``) is one cell ``estimate [low, high]``, the 95% BCa interval
(the percentile one where BCa is missing); ``sweep.json`` keeps the estimate, both intervals and
the sample counts. ``LABEL=path`` puts LABEL in the header instead of the path.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from medgen.train.rundir import Staging
from medgen.train.sweeps.spec import column_label, column_path

CI_KEYS = ("estimate", "bca", "percentile", "level", "n_boot", "n_generated", "n_reference")


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


def _interval(value):
    """A bootstrap result trimmed to its estimate, intervals and counts; other values as
    they are."""
    if isinstance(value, dict) and "estimate" in value and ("bca" in value
                                                            or "percentile" in value):  # fmt: skip
        return {k: value[k] for k in CI_KEYS if k in value}
    return value


def collect(run, fit_dir: Path, samples: Path, evaluation: Path, columns,
            request: dict | None = None) -> dict:  # fmt: skip
    """The numbers of ``columns`` for one run (None where the run has no such value);
    ``request`` is the run's resolved evaluate section, kept beside them."""
    result = json.loads((evaluation / "evaluation.json").read_text())
    manifest = json.loads((samples / "manifest.json").read_text())
    values = {}
    for column in columns:
        head, _, rest = column_path(column).partition(".")
        if head == "fit":
            v = _last(fit_dir / "eval.csv", rest)
            values[column] = v if v is not None else _last(fit_dir / "metrics.csv", rest)
        elif head == "sample":
            values[column] = _path(manifest, rest.split("."))
        else:
            values[column] = _interval(_path(result, column_path(column).split(".")))
    return {
        "run": run.name,
        "fit": list(run.fit),
        "sample": list(run.sample),
        "fit_dir": str(fit_dir),
        "evaluation": str(evaluation),
        "evaluate": request,
        "values": values,
    }


def _number(v) -> str:
    if v is None:
        return "?"
    return "nan" if math.isnan(v) else f"{v:.4g}"


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return _number(v)
    if isinstance(v, dict) and "estimate" in v:
        ci = v.get("bca") or v.get("percentile")
        return _number(v["estimate"]) + (f" [{_number(ci[0])}, {_number(ci[1])}]" if ci else "")
    if isinstance(v, dict | list):
        return json.dumps(v)
    return str(v)


def markdown(sweep, results: list[dict]) -> str:
    """The table as Markdown, with what each column means and which cells are empty."""
    head = ["run", *map(column_label, sweep.columns)]
    features = sweep.evaluate.get("features") or []
    lines = [
        f"# Sweep of `{sweep.config}` ({len(results)} runs)",
        "",
        f"Every run: `{' '.join(sweep.overrides) or '(no overrides)'}`; sampling "
        f"`{' '.join(sweep.sample) or '(the config sample section)'}`; evaluated against "
        f"`{sweep.evaluate.get('reference') or 'the training split'}`"
        + (f" with features `{' '.join(features)}`" if features else "")
        + ".",
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
        used = (r.get("evaluate") or {}).get("features") or []
        lines.append(f"- `{r['run']}`: fit `{' '.join(r['fit']) or '-'}`, sample "
                     f"`{' '.join(r['sample']) or '-'}` ({r['fit_dir']})"
                     + (f", features `{' '.join(used)}`" if used else ""))  # fmt: skip
    labelled = [c for c in sweep.columns if column_label(c) != column_path(c)]
    if labelled:
        lines += ["", "Columns: " + "; ".join(f"{column_label(c)} = `{column_path(c)}`"
                                              for c in labelled) + "."]  # fmt: skip
    cells = [v for r in results for v in r["values"].values()]
    if any(isinstance(v, dict) and "estimate" in v for v in cells):
        lines += ["", "`estimate [low, high]`: the statistic and its 95% BCa bootstrap "
                  "interval (percentile where BCa is undefined; `sweep.json` keeps both)."]  # fmt: skip
    if empty:
        lines += ["", "Empty cells (the run has no such value): " + "; ".join(empty) + "."]
    return "\n".join(lines) + "\n"


def write_table(stage: Staging, sweep, results: list[dict]) -> None:
    """``sweep.json`` and ``sweep.md`` staged for the sweep directory."""
    data = {"sweep": str(sweep.path), "config": sweep.config, "columns": list(sweep.columns),
            "runs": results}  # fmt: skip
    stage.path("sweep.json").write_text(json.dumps(data, indent=2))
    stage.path("sweep.md").write_text(markdown(sweep, results))
