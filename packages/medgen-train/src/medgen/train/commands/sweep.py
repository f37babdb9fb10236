"""``medgen-train sweep SWEEP.yaml``: an ablation as one command: several fit -> sample ->
evaluate runs of one config that differ by overrides (named runs or a grid), and one table
(``sweep.md`` / ``sweep.json``) of the numbers asked for. Runs with the same fit overrides
share one training; an interrupted sweep resumes (fits resume their run directories, complete
samples and evaluations are reused). See :mod:`medgen.train.sweeps.spec` for the file."""

from __future__ import annotations

import argparse

from medgen.train.commands.verb import add_fresh, add_overrides, add_quiet, add_verb, printer
from medgen.train.sweeps.spec import read_sweep


def _command(args: argparse.Namespace) -> int:
    from medgen.train.sweeps.run import run_sweep  # it runs the other verbs: import on use

    sweep = read_sweep(args.sweep, out=args.out, overrides=args.overrides)
    run_sweep(sweep, fresh=args.fresh, quiet=args.quiet, say=printer(args.quiet))
    return 0


def register(subparsers) -> None:
    """Add the ``sweep`` verb."""
    p = add_verb(subparsers, "sweep", _command, "run an ablation grid into one table", __doc__)
    p.add_argument("sweep", help="a sweep YAML file or a bundled sweep (sbldm_ablation)")
    p.add_argument("--out", help="sweep directory (default: the file's out, else runs/sweep)")
    add_fresh(p, "sweep directory")
    add_overrides(p, "key=value for every run")
    add_quiet(p)
