"""The ``controlnet`` task (registered as ``task.kind: controlnet``): a ControlNet branch
trained over a frozen diffusion run, conditioned on a label map, mask or prior image."""

from medgen.train.tasks.controlnet.config import ControlNetConfig
from medgen.train.tasks.controlnet.model import ControlledModel, ControlNetTask
from medgen.train.tasks.controlnet.setup import ControlNetGenerator, build_setup, check_run
from medgen.train.tasks.registry import TaskSpec, register

register(TaskSpec("controlnet", ControlNetConfig, build_setup, ControlNetGenerator.load, check_run))

__all__ = ["ControlNetConfig", "ControlNetGenerator", "ControlNetTask", "ControlledModel"]
