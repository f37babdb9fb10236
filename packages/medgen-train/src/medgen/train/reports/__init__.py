"""Reports: a run's ``report.md`` / ``report.html`` and an evaluation's ``evaluation.md`` /
``report.html``."""

from medgen.train.reports.document import Document
from medgen.train.reports.evaluation import evaluation_markdown, evaluation_table
from medgen.train.reports.evaluation_blocks import evaluation_document
from medgen.train.reports.run import write_run_report

__all__ = [
    "Document",
    "evaluation_document",
    "evaluation_markdown",
    "evaluation_table",
    "write_run_report",
]
