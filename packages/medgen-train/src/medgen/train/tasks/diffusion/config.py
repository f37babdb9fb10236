"""The ``task:`` section of ``task.kind: diffusion``: strategy, schedule, space, channels,
conditioning, loss weighting and evaluation.

``task.strategy.kind`` picks DDPM (``prediction``: epsilon | v | sample; ``schedule`` with
every parameter of its kind, e.g. ``task.strategy.schedule.kind=gamma_rebalanced``,
``...gamma=0.5``, ``...zero_terminal_snr=true``; Min-SNR-gamma) or rectified flow (shift,
t sampling, time scale). ``task.space.kind`` is pixel, Haar wavelet (WDM-style) or
space-to-depth. ``generate`` names the channels the model produces (the cache's modalities,
``image`` for all of them, and ``mask`` for the lesion mask as a channel in [-1, 1]);
``priors`` the channels it is given as conditioning instead.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Annotated, Any

from medgen.models import DDPM, PREDICTIONS, RectifiedFlow, schedules, spaces
from medgen.models.losses import FREQUENCY_WEIGHTINGS
from medgen.models.strategies.flow import T_SAMPLINGS
from medgen.train.config.schema import Kinded, setting
from medgen.train.errors import ConfigError


def _schedule_config(name: str, fn) -> type:
    """A frozen dataclass with a field per keyword of schedule function ``fn``."""
    fields: list[tuple] = [("kind", str, field(default=name))]
    for p in inspect.signature(fn).parameters.values():
        default = p.default
        rule = {"min": 2} if p.name == "num_train_timesteps" else {"gt": 0}
        fields.append((p.name, type(default), setting(default, **rule)))
    fields.append(("zero_terminal_snr", bool, field(default=False)))
    cls = dataclasses.make_dataclass(
        f"{name.title().replace('_', '')}Schedule", fields, frozen=True
    )
    cls.__doc__ = f"Parameters of the {name!r} noise schedule (see medgen.models.schedules)."
    cls.__module__ = __name__
    return cls


SCHEDULES = {name: _schedule_config(name, fn) for name, fn in schedules.SCHEDULES.items()}


def build_schedule(cfg) -> schedules.NoiseSchedule:
    """The schedule a schedule section describes."""
    params = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "kind"}
    return schedules.make(cfg.kind, **params)


@dataclass(frozen=True)
class DDPMConfig:
    """Discrete diffusion (Ho et al. 2020) with Min-SNR-gamma loss weighting."""

    kind: str = "ddpm"
    prediction: str = setting("epsilon", choices=PREDICTIONS)
    schedule: Annotated[Any, Kinded(SCHEDULES, "cosine")] = field(
        default_factory=SCHEDULES["cosine"]
    )
    min_snr_gamma: float | None = setting(5.0, gt=0)  # null: plain MSE on the target

    def validate(self) -> None:
        """The schedule must build, and suit the prediction (epsilon is undefined at zero
        terminal SNR, or wherever the last beta is 1)."""
        if self.prediction == "epsilon" and self.schedule.zero_terminal_snr:
            raise ConfigError(
                "prediction: epsilon cannot recover x0 at zero terminal SNR; use v or sample"
            )
        try:
            self.build()
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(f"schedule: {' '.join(str(exc).split())}") from None

    def build(self) -> DDPM:
        """The strategy."""
        return DDPM(build_schedule(self.schedule), self.prediction)


@dataclass(frozen=True)
class FlowConfig:
    """Rectified flow (t = 0 data, t = 1 noise, v = eps - x0)."""

    kind: str = "rflow"
    shift: float = setting(1.0, gt=0)
    t_sampling: str = setting("logit_normal", choices=T_SAMPLINGS)
    logit_mean: float = 0.0
    logit_std: float = setting(1.0, gt=0)
    time_scale: float = setting(1000.0, gt=0)

    def validate(self) -> None:
        """The strategy must build."""
        try:
            self.build()
        except ValueError as exc:
            raise ConfigError(f"{' '.join(str(exc).split())}") from None

    def build(self) -> RectifiedFlow:
        """The strategy."""
        return RectifiedFlow(
            self.shift, self.t_sampling, self.logit_mean, self.logit_std, self.time_scale
        )


STRATEGIES = {"ddpm": DDPMConfig, "rflow": FlowConfig}


@dataclass(frozen=True)
class PixelSpaceConfig:
    """Diffusion on the data themselves."""

    kind: str = "pixel"

    def build(self, spatial_dims: int):
        """The space."""
        return spaces.PixelSpace(spatial_dims)


@dataclass(frozen=True)
class WaveletSpaceConfig:
    """One level of the orthonormal Haar transform (WDM-3D); the low band scaled."""

    kind: str = "wavelet"
    low_scale: float = setting(1.0 / 3.0, gt=0)

    def build(self, spatial_dims: int):
        """The space."""
        return spaces.WaveletSpace(spatial_dims, self.low_scale)


@dataclass(frozen=True)
class SpaceToDepthConfig:
    """A lossless rearrangement of factor^d pixel blocks into channels."""

    kind: str = "space_to_depth"
    factor: int = setting(2, min=2)

    def build(self, spatial_dims: int):
        """The space."""
        return spaces.SpaceToDepth(spatial_dims, self.factor)


@dataclass(frozen=True)
class LatentSpaceConfig:
    """A frozen autoencoder's latents (a ``task.kind: autoencoder`` run), scaled to unit
    variance over the training split; built by :func:`medgen.train.latents.space.build_space`
    (it needs the run's data), decoded in ``chunks`` pieces with ``overlap`` latent voxels of
    context each when ``chunks`` > 1 (:func:`medgen.models.autoencoders.chunked_decode`)."""

    kind: str = "latent"
    autoencoder: str = ""  # the autoencoder's fit run directory
    checkpoint: str = "best"  # which of its checkpoints: latest | best | step_N
    chunks: int = setting(1, min=1)  # decode in this many pieces along depth (memory)
    overlap: int = setting(2, min=0)  # latent voxels of context each piece decodes with

    def validate(self) -> None:
        """An autoencoder run named."""
        if not self.autoencoder:
            raise ConfigError(
                "autoencoder: name the fit run directory of a task.kind autoencoder run"
            )


SPACES = {"pixel": PixelSpaceConfig, "wavelet": WaveletSpaceConfig}
SPACES["space_to_depth"] = SpaceToDepthConfig
SPACES["latent"] = LatentSpaceConfig


@dataclass(frozen=True)
class DiffusionConfig:
    """A diffusion model of the cache's images (and masks), 2D slices or 3D volumes."""

    kind: str = "diffusion"
    strategy: Annotated[Any, Kinded(STRATEGIES, "ddpm")] = field(default_factory=DDPMConfig)
    space: Annotated[Any, Kinded(SPACES, "pixel")] = field(default_factory=PixelSpaceConfig)
    generate: tuple[str, ...] = ("image", "mask")  # channels the model produces
    priors: tuple[str, ...] = ()  # channels given to the model as conditioning
    # slices: + one prior channel, the training split's foreground fraction of the item's
    # z-bin in [-1, 1] (JS-DDPM's anatomical conditioning; tasks/diffusion/anatomy.py)
    anatomical_prior: bool = False
    # latent space: priors go through the frozen autoencoder like x0 (its scaled latents are
    # the conditioning) instead of being resized to the latent grid
    encode_priors: bool = False
    tokens: bool = True  # condition on the z-bin x class token of each item
    cond_dropout: float = setting(0.0, min=0, lt=1)  # null-token rate (classifier-free guidance)
    loss: str = setting("mse", choices=("mse", "l1"))
    clip_x0: float | None = setting(1.0, gt=0)  # pixel-space x0 bound (x0-PSNR, sampling)
    eval_samples: int = setting(64, min=1)  # held-out items scored at every evaluation
    eval_buckets: int = setting(10, min=2)  # timestep buckets of the x0-PSNR diagnostic
    eval_seed: int = setting(0, min=0)
    # train-vs-validation KID at every N-th evaluation (0: off); medgen.train.evaluation.overfit
    overfit_kid_every: int = setting(0, min=0)
    overfit_kid_samples: int = setting(32, min=4)  # samples, and training / validation items
    overfit_kid_steps: int = setting(10, min=1)  # sampler steps of those samples
    overfit_kid_features: str = "random:0"  # extractor spec (evaluate --features)
    lesion_weight: float = setting(0.0, min=0)  # lesion voxels weigh 1 + this in the loss
    uncertainty_weighting: bool = False  # Kendall et al.: learned log-variance per channel
    uncertainty_clamp: tuple[float, float] = (-5.0, 5.0)  # bounds of the log-variances
    freq_loss_weight: float = setting(0.0, min=0)  # SBLDM: + lambda * MSE(FFT(out), FFT(target))
    freq_weighting: str = setting("none", choices=FREQUENCY_WEIGHTINGS)  # radial: |k| weights
    cutmix_prob: float = setting(0.0, min=0, max=1)  # SBLDM latent CutMix per sample
    # DC-AE 1.5's augmented diffusion training over a structured latent: (min_channels,
    # channel_step); each sample keeps its first c latent channels, c drawn from
    # {min, min + step, ..., all}, the rest zeroed in x0 and noise and left out of the loss
    augmented_channels: tuple[int, ...] = setting((), min=1)

    def validate(self) -> None:
        """Channel names unique, not both generated and given."""
        if not self.generate:
            raise ConfigError("generate: name at least one channel to generate")
        for key in ("generate", "priors"):
            names = getattr(self, key)
            if len(set(names)) != len(names):
                raise ConfigError(f"{key}: duplicate channel names in {list(names)}")
        both = sorted(set(self.generate) & set(self.priors))
        if both:
            raise ConfigError(f"priors: {both} also listed in generate")
        if self.cond_dropout and not self.tokens:
            raise ConfigError(
                f"cond_dropout: {self.cond_dropout} drops tokens, but tokens is false; set "
                "task.tokens=true or task.cond_dropout=0"
            )
        steps = getattr(getattr(self.strategy, "schedule", None), "num_train_timesteps", None)
        if steps is not None and self.eval_buckets > steps:
            raise ConfigError(
                f"eval_buckets: {self.eval_buckets} buckets over {steps} timesteps; expected at "
                "most one bucket per timestep"
            )
        if self.encode_priors and (self.space.kind != "latent" or not self.priors):
            raise ConfigError(
                "encode_priors: encodes prior channels with a latent space's autoencoder; needs "
                "task.space.kind=latent and task.priors (e.g. [thick])"
            )
        if self.augmented_channels and len(self.augmented_channels) != 2:
            raise ConfigError(
                "augmented_channels: expected [min_channels, channel_step] (DC-AE 1.5), got "
                f"{list(self.augmented_channels)}"
            )
        if self.augmented_channels and self.space.kind != "latent":
            raise ConfigError(
                "augmented_channels: masks the channels of a structured latent (DC-AE 1.5); "
                f"the {self.space.kind!r} space has none (set task.space.kind=latent)"
            )
        lo, hi = self.uncertainty_clamp
        if not lo < hi:
            raise ConfigError(
                f"uncertainty_clamp: expected [low, high] with low < high, got {[lo, hi]}"
            )
        if self.space.kind != "pixel" and self.clip_x0 is not None:
            raise ConfigError(
                f"clip_x0: clipping x0 applies to pixel space, not the {self.space.kind!r} "
                "space (set task.clip_x0=null)"
            )
