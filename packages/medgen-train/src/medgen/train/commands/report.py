"""``medgen-train report RUN_DIR [--samples DIR]``: write ``RUN_DIR/report.md``.

The run's config and data, loss curves (train and validation), the x0-prediction PSNR per
timestep bucket at every evaluation, and, with ``--samples``, the sample grid and the
evaluation of that samples directory (if ``medgen-train evaluate`` ran on it). Figures go to
``RUN_DIR/report/``. The run directory is locked while the report is written, so a report
never races a running ``fit``.
"""

from __future__ import annotations

import argparse

from medgen.train.commands.verb import add_verb
from medgen.train.reports.run import write_run_report
from medgen.train.rundir import RunDir


def _command(args: argparse.Namespace) -> int:
    with RunDir(args.run_dir, "fit").claim():
        path = write_run_report(args.run_dir, args.samples)
    print(f"report: {path}")
    return 0


def register(subparsers) -> None:
    """Add ``report`` to the CLI."""
    help_ = "write RUN_DIR/report.md (curves, x0 diagnostic, samples, evaluation)"
    p = add_verb(subparsers, "report", _command, help_, __doc__)
    p.add_argument("run_dir", help="a fit run directory")
    p.add_argument("--samples", help="a samples directory of this run to include")
