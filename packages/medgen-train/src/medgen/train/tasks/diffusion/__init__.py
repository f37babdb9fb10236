"""The ``diffusion`` task (registered as ``task.kind: diffusion``)."""

from medgen.train.tasks.diffusion.config import DiffusionConfig
from medgen.train.tasks.diffusion.sampling import DiffusionGenerator, check_run
from medgen.train.tasks.diffusion.setup import build_setup
from medgen.train.tasks.diffusion.task import DiffusionModel
from medgen.train.tasks.registry import TaskSpec, register

register(TaskSpec("diffusion", DiffusionConfig, build_setup, DiffusionGenerator.load, check_run))

__all__ = ["DiffusionConfig", "DiffusionGenerator", "DiffusionModel", "build_setup"]
