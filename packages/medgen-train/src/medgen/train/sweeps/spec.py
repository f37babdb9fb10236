"""The sweep file: which config, which runs (named override sets or a grid), how to sample and
evaluate them, and which numbers go into the table.

```yaml
config: sbldm                   # a fit config: bundled name or path
overrides: [data.cache=cache/x] # applied to every run (fit config keys)
runs:                           # named runs: fit overrides, sample overrides, or both
  baseline: {}
  gamma_0.5: {fit: [task.strategy.schedule.kind=gamma_rebalanced, ...]}
  early_0.05: {sample: [sample.early_stop=0.05]}
grid:                           # or/and: the product of these axes, named key=value,...
  task.freq_loss_weight: [0.01, 0.1]
sample: [sample.steps=20]       # sample section overrides for every run
evaluate:                       # reference null: each run's training split
  reference: CACHE:test
  features: [autoencoder:@task.space.autoencoder]  # @key: the run's config value
  bootstrap: 200
columns: [overall.ssim.mean, FID=distribution.0.planes.2d.fid, fit.val_loss]   # optional
```

Runs with the same fit overrides share one fit (a sampling-only ablation trains once). In
``evaluate``, ``@section.key`` stands for that key's value in each run's fit config (see
:mod:`.references`). A column is a dotted result path, optionally ``LABEL=path`` for the
table's header (see :mod:`.table`). Every problem is one ConfigError naming the file and the
key, before anything runs.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

from medgen.train.config.bundled import find_bundled
from medgen.train.config.yaml_io import read_yaml
from medgen.train.errors import ConfigError

KEYS = {"config", "overrides", "runs", "grid", "sample", "evaluate", "columns", "out"}
EVALUATE_KEYS = {"reference", "features", "bootstrap", "seed"}
DEFAULT_COLUMNS = (
    "overall.ssim.mean",
    "overall.psnr.mean",
    "overall.dice.mean",
    "overall.speckled",
    "distribution.0.planes.mean.fid.estimate",
    "fit.val_loss",
    "fit.elapsed_s",
    "sample.seconds_per_sample",
)
NAME = re.compile(r"^[A-Za-z0-9_.=,+-]+$")


@dataclass(frozen=True)
class Run:
    """One row of the sweep: its name and its fit and sample overrides."""

    name: str
    fit: tuple[str, ...] = ()
    sample: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sweep:
    """A parsed, checked sweep file."""

    path: Path
    config: str
    overrides: tuple[str, ...]
    runs: tuple[Run, ...]
    sample: tuple[str, ...] = ()
    evaluate: dict = field(default_factory=dict)
    columns: tuple[str, ...] = DEFAULT_COLUMNS
    out: str = "runs/sweep"

    def fits(self) -> dict[tuple[str, ...], str]:
        """Fit overrides -> the name of the run directory that trains them (the first run)."""
        out: dict[tuple[str, ...], str] = {}
        for run in self.runs:
            out.setdefault(run.fit, run.name)
        return out


def _strings(value, key: str, path: Path) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise ConfigError(f"{path}: {key}: expected a list of key=value strings, got {value!r}")
    return tuple(value)


def _runs(raw: dict, path: Path) -> list[Run]:
    runs = []
    named = raw.get("runs") or {}
    if not isinstance(named, dict):
        raise ConfigError(f"{path}: runs: expected a mapping of run name -> {{fit, sample}}")
    for name, body in named.items():
        body = body or {}
        if not isinstance(body, dict) or set(body) - {"fit", "sample"}:
            raise ConfigError(f"{path}: runs.{name}: expected a mapping with fit and/or sample")
        runs.append(
            Run(
                str(name),
                _strings(body.get("fit"), f"runs.{name}.fit", path),
                _strings(body.get("sample"), f"runs.{name}.sample", path),
            )
        )
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{path}: grid: expected a mapping of key -> non-empty list of values")
    if grid:
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            pairs = [f"{k}={_plain(v)}" for k, v in zip(keys, values, strict=True)]
            sample = tuple(p for p in pairs if p.startswith("sample."))
            fit = tuple(p for p in pairs if not p.startswith("sample."))
            runs.append(Run(",".join(pairs), fit, sample))
    return runs


def _plain(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(_plain(v) for v in value)
    return "null" if value is None else str(value)


def column_path(column: str) -> str:
    """The result path of a column (``LABEL=path`` or ``path``)."""
    return column.partition("=")[2] if "=" in column else column


def column_label(column: str) -> str:
    """The table header of a column: its label, else its path."""
    return column.partition("=")[0] if "=" in column else column


def _check_evaluate(evaluate: dict, path: Path) -> None:
    """Types of the evaluate section (its @references resolve per run, in the sweep's run)."""
    features = evaluate.get("features") or []
    if not isinstance(features, list) or not all(isinstance(f, str) and f for f in features):
        raise ConfigError(
            f"{path}: evaluate.features: expected a list of extractor specs (e.g. "
            f"autoencoder:@task.space.autoencoder), got {features!r}"
        )
    reference = evaluate.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise ConfigError(f"{path}: evaluate.reference: expected CACHE[:split] or null, "
                          f"got {reference!r}")  # fmt: skip
    for key, least in (("bootstrap", 2), ("seed", 0)):
        value = evaluate.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < least):  # fmt: skip
            raise ConfigError(
                f"{path}: evaluate.{key}: expected an integer >= {least}, got {value!r}"
            )


BUNDLED = Path(__file__).resolve().parents[1] / "configs" / "sweeps"


def resolve(name: str | Path) -> Path:
    """A sweep file at ``name``, or the bundled ``configs/sweeps/<name>.yaml``."""
    return find_bundled(name, BUNDLED, "sweep")


def read_sweep(path: str | Path, out: str | None = None, overrides: list[str] = ()) -> Sweep:
    """Read and check a sweep file (a path or a bundled name; see the module docstring);
    ``overrides`` are appended to its ``overrides`` (every run)."""
    path = resolve(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with config and runs/grid")
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; known: {', '.join(sorted(KEYS))}")
    if not isinstance(raw.get("config"), str) or not raw["config"]:
        raise ConfigError(f"{path}: config: name the fit config to sweep (bundled name or path)")
    runs = _runs(raw, path)
    if not runs:
        raise ConfigError(f"{path}: runs/grid: no run to make")
    names = [r.name for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{path}: run {dup[0]!r} is named twice")
    bad = [n for n in names if not NAME.match(n)]
    if bad:
        raise ConfigError(f"{path}: run name {bad[0]!r}: use letters, digits and _.=,+- only")
    evaluate = raw.get("evaluate") or {}
    if not isinstance(evaluate, dict) or set(evaluate) - EVALUATE_KEYS:
        extra = sorted(set(evaluate) - EVALUATE_KEYS) if isinstance(evaluate, dict) else evaluate
        raise ConfigError(
            f"{path}: evaluate: unknown {extra}; known: {', '.join(sorted(EVALUATE_KEYS))}"
        )
    _check_evaluate(evaluate, path)
    columns = raw.get("columns", list(DEFAULT_COLUMNS))
    if not isinstance(columns, list) or not all(isinstance(c, str) and c for c in columns):
        raise ConfigError(f"{path}: columns: expected a list of dotted result paths")
    for c in columns:
        label, result = column_label(c), column_path(c)
        if not result or not result[0].isalpha() or "|" in label:
            raise ConfigError(
                f"{path}: columns: {c!r} is not a dotted result path (or LABEL=path, the "
                "label without '|')"
            )
    return Sweep(
        path=path,
        config=raw["config"],
        overrides=(*_strings(raw.get("overrides"), "overrides", path), *overrides),
        runs=tuple(runs),
        sample=_strings(raw.get("sample"), "sample", path),
        evaluate=dict(evaluate),
        columns=tuple(columns),
        out=out or str(raw.get("out") or "runs/sweep"),
    )
