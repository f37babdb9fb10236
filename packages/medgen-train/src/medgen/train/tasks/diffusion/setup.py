"""What the registry needs of the ``diffusion`` task: its training setup."""

from __future__ import annotations

import dataclasses

from medgen.train.engine.objectives import Objective, TrainingSetup
from medgen.train.evaluation.overfit import diffusion_overfit_kid
from medgen.train.latents.space import calibrate
from medgen.train.tasks.diffusion.anatomy import anatomical_maps
from medgen.train.tasks.diffusion.evaluator import DiffusionEvaluator
from medgen.train.tasks.diffusion.sampling import DiffusionGenerator
from medgen.train.tasks.diffusion.task import DiffusionModel, DiffusionTask


def sampler_of(model: DiffusionModel, device):
    """``(network, n, settings) -> (n, C, *spatial)`` samples of ``model`` with ``network`` in
    place of its own (the overfit KID's sampler)."""

    def sample(network, n: int, settings):
        gen = DiffusionGenerator(dataclasses.replace(model, network=network), device)
        return gen.generate(gen.plan(n, 1), settings, model.cfg.clip_x0)

    return sample


def build_setup(ctx) -> TrainingSetup:
    """The training setup of a ``diffusion`` task for a build context."""
    cfg = ctx.config.task
    model = DiffusionModel.build(cfg, ctx.config.model, ctx.description, ctx.device)
    if cfg.space.kind == "latent":  # the scale factor, recorded in data.json
        calibrate(model, ctx)
    if model.anatomy is not None:  # from the training split; a resumed run loads its own
        d = ctx.description
        model.anatomy.fill(anatomical_maps(d.cache, ctx.config.data.train_split, d.n_bins))
    seed = ctx.config.training.seed + 1 + 1000 * ctx.dist.rank  # own noise per rank
    task = DiffusionTask(model, ctx.device, seed)
    evaluators = []
    if ctx.eval_dataset is not None:
        evaluators.append(
            DiffusionEvaluator(model, ctx.eval_dataset, ctx.config.training.batch_size, ctx.device)
        )
    overfit = diffusion_overfit_kid(ctx, model, sampler_of(model, ctx.device))  # 0: None
    if overfit is not None:
        evaluators.append(overfit)
    setup = TrainingSetup(
        modules=model.modules(),
        objectives=[Objective("diffusion", tuple(model.checkpointed()), task.loss)],
        evaluators=evaluators,
        state=task,
    )
    return setup
