"""medgen.train: the training engine, trainers, EMA, checkpoints, metrics and the CLI."""

from medgen.train.checkpoint import load_checkpoint, save_checkpoint
from medgen.train.ema import EMA
from medgen.train.engine import FitResult, fit
from medgen.train.errors import CheckpointError, ConfigError, MedGenError
from medgen.train.nan_guard import NonFiniteError
from medgen.train.preemption import REQUEUE_EXIT_CODE, Preempted
from medgen.train.settings import EngineSettings
from medgen.train.task import BatchSource, Task

__version__ = "0.1.0"

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
    "Preempted",
    "Task",
    "fit",
    "load_checkpoint",
    "save_checkpoint",
]
