"""What the data and the task require of a network, whichever ``model.kind`` builds it."""

from __future__ import annotations

from dataclasses import dataclass

from medgen.train.errors import ConfigError


@dataclass(frozen=True)
class NetworkSpec:
    """What the data and the task require of the network."""

    spatial_dims: int
    in_channels: int
    out_channels: int
    shape: tuple[int, ...]  # spatial shape of the network's input
    num_tokens: int | None = None
    null_token: bool = False
    num_modes: int | None = None
    prior_channels: int = 0
    prior_modes: tuple[str, ...] = ()  # resize mode per prior channel (nearest, linear, area)


def check_divisible(key: str, factor: int, why: str, spec: NetworkSpec) -> None:
    """A ConfigError naming ``model.<key>`` unless ``factor`` divides every spatial size."""
    bad = [s for s in spec.shape if s % factor]
    if bad:
        raise ConfigError(
            f"model.{key}: {why}, so every spatial size must be divisible by {factor}; the "
            f"data are {list(spec.shape)}"
        )


def conditioning_kwargs(spec: NetworkSpec) -> dict:
    """The conditioning arguments every MedGen network takes, from ``spec``."""
    return dict(
        num_tokens=spec.num_tokens,
        null_token=spec.null_token,
        num_modes=spec.num_modes,
        prior_channels=spec.prior_channels,
        prior_modes=spec.prior_modes or "nearest",
    )


def sizes(variants: dict, variant: str, **overrides: int | None) -> dict:
    """A variant's sizes with the non-None overrides applied."""
    base = dict(variants[variant])
    base.update({k: v for k, v in overrides.items() if v is not None})
    return base


def check_heads(hidden: int, heads: int) -> None:
    """A ConfigError unless ``heads`` divides ``hidden``."""
    if hidden % heads:
        raise ConfigError(
            f"num_heads: {heads} heads do not divide the hidden size {hidden} (set "
            "model.hidden_size or model.num_heads)"
        )
