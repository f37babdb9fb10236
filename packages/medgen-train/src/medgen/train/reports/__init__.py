"""Reports: a run's ``report.md`` and an evaluation's ``evaluation.md``."""

from medgen.train.reports.evaluation import evaluation_markdown, evaluation_table
from medgen.train.reports.run import write_run_report

__all__ = ["evaluation_markdown", "evaluation_table", "write_run_report"]
