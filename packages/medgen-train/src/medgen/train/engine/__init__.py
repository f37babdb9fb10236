"""The training engine: settings, objectives, the loop, EMA, NaN guard, DDP, pre-emption."""

from medgen.train.engine.batches import BatchSource, LoaderBatches, ShardedBatches
from medgen.train.engine.distributed import DistContext
from medgen.train.engine.ema import EMA
from medgen.train.engine.evaluators import Evaluation
from medgen.train.engine.loop import FitResult, fit
from medgen.train.engine.nan_guard import NonFiniteError
from medgen.train.engine.objectives import Nets, Objective, TrainingSetup
from medgen.train.engine.preemption import REQUEUE_EXIT_CODE, Preempted, StopFlag
from medgen.train.engine.settings import EngineSettings, OptimizerSettings

__all__ = [
    "EMA",
    "REQUEUE_EXIT_CODE",
    "BatchSource",
    "DistContext",
    "EngineSettings",
    "Evaluation",
    "FitResult",
    "LoaderBatches",
    "Nets",
    "NonFiniteError",
    "Objective",
    "OptimizerSettings",
    "Preempted",
    "ShardedBatches",
    "StopFlag",
    "TrainingSetup",
    "fit",
]
