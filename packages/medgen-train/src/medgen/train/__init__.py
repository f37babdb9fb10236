"""medgen.train: the training engine, tasks, evaluation, reports and the ``medgen-train`` CLI."""

from medgen.train.engine import (
    EMA,
    REQUEUE_EXIT_CODE,
    BatchSource,
    EngineSettings,
    FitResult,
    NonFiniteError,
    Objective,
    Preempted,
    TrainingSetup,
    fit,
)
from medgen.train.errors import CheckpointError, ConfigError, MedGenError, RunDirError

__version__ = "0.2.0"

__all__ = [
    "EMA",
    "REQUEUE_EXIT_CODE",
    "BatchSource",
    "CheckpointError",
    "ConfigError",
    "EngineSettings",
    "FitResult",
    "MedGenError",
    "NonFiniteError",
    "Objective",
    "Preempted",
    "RunDirError",
    "TrainingSetup",
    "fit",
]
