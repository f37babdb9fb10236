"""``medgen-train report RUN_DIR [--samples DIR]``: write ``RUN_DIR/report.md`` and
``RUN_DIR/report.html``.

The run's config and data, loss curves (train and validation), the x0-prediction PSNR per
timestep bucket at every evaluation, the last evaluation's images, and, with ``--samples``,
the sample grid, the denoising trajectories and the evaluation of that samples directory (if
``medgen-train evaluate`` ran on it: every metric with its intervals and protocol, error maps,
the worst batch). Figures go to ``RUN_DIR/report/``; ``report.html`` is one self-contained file
(figures embedded, no script, no external URL) to open in any browser or print; with a
TensorBoard directory the figures are logged there too (``images/report/*``). The run
directory is locked while the report is written, so a report never races a running ``fit``.
"""

from __future__ import annotations

import argparse

from medgen.train.commands.verb import add_verb
from medgen.train.reports.run import write_run_report
from medgen.train.rundir import RunDir


def _command(args: argparse.Namespace) -> int:
    with RunDir(args.run_dir, "fit").claim():
        path = write_run_report(args.run_dir, args.samples)
    print(f"report: {path} and {path.with_suffix('.html')}")
    return 0


def register(subparsers) -> None:
    """Add ``report`` to the CLI."""
    help_ = "write RUN_DIR/report.md and report.html (curves, x0 diagnostic, samples, evaluation)"
    p = add_verb(subparsers, "report", _command, help_, __doc__)
    p.add_argument("run_dir", help="a fit run directory")
    p.add_argument("--samples", help="a samples directory of this run to include")
