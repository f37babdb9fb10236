"""medgen.train: trainers, EMA, checkpoints, metrics and the medgen-train CLI."""

from medgen.train.checkpoint import load_checkpoint, save_checkpoint
from medgen.train.ema import EMA
from medgen.train.errors import CheckpointError, ConfigError, MedGenError

__version__ = "0.1.0"

__all__ = [
    "EMA",
    "CheckpointError",
    "ConfigError",
    "MedGenError",
    "load_checkpoint",
    "save_checkpoint",
]
