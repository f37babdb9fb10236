"""The ``autoencoder`` task (registered as ``task.kind: autoencoder``): a KL-VAE, VQ-VAE, DC-AE
or MAISI autoencoder of the cache's images or masks, with an optional GAN phase; trained runs
are loaded by :func:`load_autoencoder` (latent caches, latent diffusion, feature extractors)."""

from __future__ import annotations

from medgen.train.engine.objectives import TrainingSetup
from medgen.train.errors import ConfigError
from medgen.train.tasks.autoencoder.config import AutoencoderConfig
from medgen.train.tasks.autoencoder.evaluator import AutoencoderEvaluator
from medgen.train.tasks.autoencoder.load import AutoencoderInfo, load_autoencoder
from medgen.train.tasks.autoencoder.model import AUTOENCODER, AutoencoderModel
from medgen.train.tasks.autoencoder.task import AutoencoderTask
from medgen.train.tasks.registry import TaskSpec, register


def build_setup(ctx) -> TrainingSetup:
    """The autoencoder (+ discriminator, frozen perceptual network), its objectives, EMA of
    the autoencoder alone, and the evaluator on ``data.eval_split``."""
    model = AutoencoderModel.build(ctx.config.task, ctx.description, ctx.device)
    task = AutoencoderTask(model, ctx.device, ctx.config.training.seed + 1 + 1000 * ctx.dist.rank)
    evaluators = []
    if ctx.eval_dataset is not None:
        batch = ctx.config.training.batch_size
        evaluators.append(AutoencoderEvaluator(model, ctx.eval_dataset, batch, ctx.device))
    return TrainingSetup(
        modules=model.modules(),
        objectives=task.objectives(),
        ema_modules=(AUTOENCODER,),
        evaluators=evaluators,
        state=task,
    )


def check_run(config) -> None:
    """The run's ``model:`` section is not used: it must be left at its default."""
    from medgen.train.tasks.networks import UNetConfig

    if config.model != UNetConfig():
        raise ConfigError(
            f"model: an autoencoder run's network is task.network (got a model: section with "
            f"model.kind={config.model.kind}); leave model: out of the config"
        )


register(TaskSpec("autoencoder", AutoencoderConfig, build_setup, None, check_run))

__all__ = [
    "AutoencoderConfig",
    "AutoencoderEvaluator",
    "AutoencoderInfo",
    "AutoencoderModel",
    "AutoencoderTask",
    "load_autoencoder",
]
