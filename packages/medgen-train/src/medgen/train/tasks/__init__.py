"""Tasks: the registry and one subpackage per task (importing this registers them)."""

from medgen.train.tasks import autoencoder, controlnet, diffusion
from medgen.train.tasks.registry import TASK_CONFIGS, TASKS, BuildContext, TaskSpec, register

__all__ = [
    "TASKS",
    "TASK_CONFIGS",
    "BuildContext",
    "TaskSpec",
    "autoencoder",
    "controlnet",
    "diffusion",
    "register",
]
