"""What the registry needs of the ``controlnet`` task: its training setup, its generator for
``medgen-train sample`` and the cross-section rules checked before anything is written."""

from __future__ import annotations

import dataclasses

from medgen.train.engine.objectives import Objective, TrainingSetup
from medgen.train.tasks.controlnet.model import BRANCH, BaseRun, ControlledModel, ControlNetTask
from medgen.train.tasks.diffusion import sampling
from medgen.train.tasks.diffusion.evaluator import DiffusionEvaluator


def build_setup(ctx) -> TrainingSetup:
    """The frozen base, the trained branch, the diffusion objective and its evaluator."""
    model = ControlledModel.from_base(
        ctx.config.task, ctx.config.model, ctx.description, ctx.device
    )
    task = ControlNetTask(model, ctx.device, ctx.config.training.seed + 1 + 1000 * ctx.dist.rank)
    evaluators = []
    if ctx.eval_dataset is not None:
        batch = ctx.config.training.batch_size
        evaluators.append(DiffusionEvaluator(model, ctx.eval_dataset, batch, ctx.device))
    return TrainingSetup(
        modules=model.modules(),
        objectives=[Objective("controlnet", (BRANCH,), task.loss)],
        evaluators=evaluators,
        state=task,
    )


class ControlNetGenerator(sampling.DiffusionGenerator):
    """Sampling a ControlNet run: the base from its run, the branch from the checkpoint, the
    control maps from reference items (``--priors-from``)."""

    @classmethod
    def load(cls, config, description, device) -> ControlNetGenerator:
        """Rebuild the base (weights loaded) and the branch (weights loaded by the caller)."""
        return cls(
            ControlledModel.from_base(config.task, config.model, description, device), device
        )

    def provenance(self) -> dict:
        """The base weights the samples depend on besides this run's checkpoint."""
        return {"base": self.model.base_run.provenance()}


def check_run(config, key: str = "sample") -> None:
    """The base's sampling rules with this run's ``sample`` section, and the model section."""
    base = BaseRun.open(config.task)
    base.check_model(config.model)
    sampling.check_run(dataclasses.replace(config, task=base.config.task), key)
