"""``medgen-train quickstart``: the bundled ``quickstart`` config through the general path.

Nothing here is special to the demo: it is ``fit quickstart`` (whose ``data.recipe: mni152``
builds the MNI152 slice cache from the template that ships with nilearn), then ``sample``
with the config's ``sample`` section, ``evaluate`` against the training slices, and
``report``, into one run directory. Overrides work as for ``fit`` (``training.steps=2000``);
``--size``, ``--steps``, ``--seed``, ``--device`` and ``--batch-size`` are shortcuts. Running
it again resumes an interrupted run and reuses finished samples and evaluations.
"""

from __future__ import annotations

import argparse
import json
import time

from medgen.train.commands.evaluate import run_evaluate
from medgen.train.commands.fit import run_fit
from medgen.train.commands.sample import run_sample
from medgen.train.commands.verb import add_fresh, add_overrides, add_quiet, add_verb, printer
from medgen.train.config.fit import load_fit_config
from medgen.train.reports.run import write_run_report
from medgen.train.rundir import RunDir

SHORTCUTS = {
    "size": "data.recipe.size",
    "steps": "training.steps",
    "seed": "training.seed",
    "device": "run.device",
    "batch_size": "training.batch_size",
}


def run_quickstart(out: str, overrides: list[str], *, fresh: bool = False, quiet: bool = False):
    """cache + fit -> sample -> evaluate -> report; returns the evaluation result."""
    say = printer(quiet)
    cfg = load_fit_config("quickstart", overrides)
    timings = {}
    t0 = time.perf_counter()
    run_fit(cfg, out, fresh=fresh, quiet=quiet, say=say)
    timings["fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    samples = run_sample(out, quiet=quiet, say=say)
    timings["sample"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluation = run_evaluate(samples, quiet=quiet, say=say)
    timings["evaluate"] = time.perf_counter() - t0
    with RunDir(out, "fit").claim():
        report = write_run_report(out, samples, timings, title="MedGen quickstart report")
    result = json.loads((evaluation / "evaluation.json").read_text())
    say(f"quickstart: report {report}")
    return result


def _command(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    for flag, key in SHORTCUTS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    run_quickstart(args.out, overrides, fresh=args.fresh, quiet=args.quiet)
    return 0


def register(subparsers) -> None:
    """Add ``quickstart`` to the CLI."""
    help_ = "cache, train, sample, evaluate and report on MNI152 slices (~7 CPU-minutes)"
    p = add_verb(subparsers, "quickstart", _command, help_, __doc__)
    p.add_argument("--out", default="runs/quickstart", help="run directory (default: %(default)s)")
    p.add_argument("--size", type=int, help="slice size in pixels (data.recipe.size)")
    p.add_argument("--steps", type=int, help="training steps (training.steps)")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    add_fresh(p, "run")
    add_quiet(p)
    add_overrides(p)
