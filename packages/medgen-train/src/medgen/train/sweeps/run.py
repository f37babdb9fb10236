"""Running a sweep: every fit config checked first, then each distinct fit trained (or resumed:
a fit run directory resumes, so an interrupted sweep picks up where it stopped), each run
sampled and evaluated (both skip work a complete earlier output already holds), and the table
written last into the sweep directory.

Each run's evaluation goes to ``SAMPLES/evaluation-<hash>``, the hash of its resolved
``evaluate`` section (``@key`` references replaced, defaults filled in): a sweep re-run with
another evaluate section evaluates again into a new directory, reusing fits and samples and
leaving the earlier evaluations as they are; the same section reuses its evaluation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from medgen.train.commands.evaluate import run_evaluate
from medgen.train.commands.fit import run_fit
from medgen.train.commands.sample import run_sample
from medgen.train.config.fit import load_fit_config
from medgen.train.config.schema import to_dict
from medgen.train.errors import ConfigError
from medgen.train.rundir import RunDir, Staging
from medgen.train.sweeps.references import resolve_references
from medgen.train.sweeps.spec import Run, Sweep
from medgen.train.sweeps.table import collect, write_table

KIND = "sweep"


def _check(sweep: Sweep) -> dict[tuple[str, ...], object]:
    """Every run's config, its sample overrides and evaluate references included, validated
    before anything runs; returns fit overrides -> the fit config they give."""
    configs = {}
    for run in sweep.runs:
        sample = [*sweep.sample, *run.sample]
        bad = [k for k in sample if not k.startswith("sample.")]
        if bad:
            raise ConfigError(f"{sweep.path}: run {run.name}: {bad[0]!r} is not a sample.* key")
        fit = [*sweep.overrides, *run.fit]
        try:
            load_fit_config(sweep.config, [*fit, *sample])
            if run.fit not in configs:
                configs[run.fit] = load_fit_config(sweep.config, fit)
        except ConfigError as exc:
            raise ConfigError(f"{sweep.path}: run {run.name}: {exc}") from None
        evaluation(sweep, run, configs[run.fit])
    return configs


def evaluation(sweep: Sweep, run: Run, config) -> dict:
    """The run's evaluate request: ``reference``, ``features``, ``bootstrap``, ``seed`` with
    defaults filled in and every ``@key`` replaced by the run's fit ``config`` value."""
    ev = sweep.evaluate
    where = f"{sweep.path}: run {run.name}: evaluate"
    plain = to_dict(config)
    reference = ev.get("reference")
    return {
        "reference": None if reference is None
        else resolve_references(reference, plain, f"{where}.reference"),
        "features": [resolve_references(f, plain, f"{where}.features")
                     for f in ev.get("features") or []],
        "bootstrap": int(ev.get("bootstrap", 200)),
        "seed": int(ev.get("seed", 0)),
    }  # fmt: skip


def evaluation_dir(samples: Path, request: dict) -> Path:
    """Where a run's evaluation of ``request`` goes: one directory per resolved request."""
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:12]
    return samples / f"evaluation-{digest}"


def run_sweep(sweep: Sweep, *, fresh: bool = False, quiet: bool = False, say=print) -> Path:
    """Train, sample and evaluate every run of ``sweep``; returns the table's path."""
    configs = _check(sweep)
    out = Path(sweep.out)
    fits = sweep.fits()
    with RunDir(out, KIND).claim(fresh) as claimed:
        claimed.mark()
        for i, (overrides, name) in enumerate(fits.items(), 1):
            say(f"sweep: fit {i}/{len(fits)} {name} ({' '.join(overrides) or 'no overrides'})")
            run_fit(configs[overrides], out=out / name, quiet=quiet, say=say)
        results = []
        for i, run in enumerate(sweep.runs, 1):
            fit_dir = out / fits[run.fit]
            say(f"sweep: run {i}/{len(sweep.runs)} {run.name}: sample + evaluate")
            samples = run_sample(
                fit_dir,
                out=fit_dir / f"samples-{run.name}",
                overrides=[*sweep.sample, *run.sample],
                nifti=False,
                quiet=quiet,
                say=say,
            )
            request = evaluation(sweep, run, configs[run.fit])
            evaluated = run_evaluate(
                samples,
                request["reference"],
                evaluation_dir(samples, request),
                quiet=quiet,
                say=say,
                features=request["features"],
                bootstrap=request["bootstrap"],
                seed=request["seed"],
            )
            results.append(collect(run, fit_dir, samples, evaluated, sweep.columns, request))
        stage = Staging(out)
        try:
            write_table(stage, sweep, results)
            stage.commit("manifest.json", {"kind": KIND, "sweep": str(sweep.path)})
        except BaseException:
            stage.abandon()
            raise
    say(f"sweep: {len(results)} runs -> {out / 'sweep.md'}")
    return out / "sweep.md"
