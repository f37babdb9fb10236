"""Tasks: the registry and one subpackage per task (importing this registers them)."""

from medgen.train.tasks import controlnet, diffusion
from medgen.train.tasks.registry import TASK_CONFIGS, TASKS, BuildContext, TaskSpec, register

__all__ = [
    "TASKS",
    "TASK_CONFIGS",
    "BuildContext",
    "TaskSpec",
    "controlnet",
    "diffusion",
    "register",
]
