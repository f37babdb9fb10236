"""Noise schedules for discrete DDPM-family models.

A schedule is its ``betas`` (float64, length T). Everything derived (``alphas_cumprod``, SNR)
is computed in float64 and handed out as float32 or float64 on request, never in the model's
dtype: storing the table in bf16 shifts alpha_bar by up to 0.4%.

Every schedule serialises with :meth:`NoiseSchedule.config` (plain YAML-safe scalars) and is
rebuilt by :func:`from_config` (= :func:`make`), giving a bit-identical table. Any schedule can
be rescaled to zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample
Steps are Flawed", Algorithm 1) with ``zero_terminal_snr=True``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete variance schedule. ``name`` and ``params`` recreate it (see :func:`make`)."""

    name: str
    betas: torch.Tensor  # float64, (T,)
    params: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        b = self.betas
        if b.ndim != 1 or b.numel() < 2:
            raise ValueError(f"betas must be 1-D with >= 2 entries, got shape {tuple(b.shape)}")
        # beta = 1 (alpha_bar = 0, SNR = 0) is allowed only as the last entry: zero terminal SNR
        if not bool(((b > 0) & (b < 1)).all()) and not (
            bool(((b[:-1] > 0) & (b[:-1] < 1)).all()) and float(b[-1]) == 1.0
        ):
            raise ValueError(f"schedule {self.name!r}: betas must lie in (0, 1) (last may be 1)")

    @property
    def num_train_timesteps(self) -> int:
        """T, the length of the table."""
        return int(self.betas.numel())

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """alpha_bar_t = prod_{s<=t} (1 - beta_s), float64."""
        return torch.cumprod(1.0 - self.betas, dim=0)

    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar), float64."""
        a = self.alphas_cumprod
        return a / (1.0 - a)

    @property
    def zero_terminal_snr(self) -> bool:
        """Whether the schedule was rescaled to alpha_bar[T-1] = 0."""
        return bool(dict(self.params).get("zero_terminal_snr", False))

    def config(self) -> dict:
        """Plain scalars that :func:`from_config` turns back into the identical table."""
        return {
            "name": self.name,
            "num_train_timesteps": self.num_train_timesteps,
            **dict(self.params),
        }


def linear(
    num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> NoiseSchedule:
    """Ho et al. (2020): betas linear in t."""
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    return NoiseSchedule("linear", betas, (("beta_start", beta_start), ("beta_end", beta_end)))


def scaled_linear(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> NoiseSchedule:
    """Latent-diffusion schedule: sqrt(beta) linear in t."""
    betas = (
        torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64)
        ** 2
    )
    return NoiseSchedule(
        "scaled_linear", betas, (("beta_start", beta_start), ("beta_end", beta_end))
    )


def cosine(
    num_train_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999
) -> NoiseSchedule:
    """Nichol & Dhariwal (2021): alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) pi/2), betas capped.

    betas_t = 1 - alpha_bar((t+1)/T) / alpha_bar(t/T), capped at ``max_beta`` (0.999), which
    is what diffusers' ``squaredcos_cap_v2`` computes.
    """

    def f(u: torch.Tensor) -> torch.Tensor:
        return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    t = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    betas = (1 - f(t[1:]) / f(t[:-1])).clamp(max=max_beta)
    return NoiseSchedule("cosine", betas, (("s", s), ("max_beta", max_beta)))


def sigmoid(
    num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> NoiseSchedule:
    """GeoDiff (Xu et al. 2022) sigmoid schedule, as diffusers' ``beta_schedule="sigmoid"``:
    betas = sigmoid(linspace(-6, 6, T)) (beta_end - beta_start) + beta_start."""
    u = torch.linspace(-6.0, 6.0, num_train_timesteps, dtype=torch.float64)
    betas = torch.sigmoid(u) * (beta_end - beta_start) + beta_start
    return NoiseSchedule("sigmoid", betas, (("beta_start", beta_start), ("beta_end", beta_end)))


def gamma_rebalanced(
    num_train_timesteps: int = 1000,
    beta_min: float = 1e-4,
    beta_max: float = 0.02,
    gamma: float = 1.0,
) -> NoiseSchedule:
    """Noise-rebalanced schedule (seed 004): beta(t) = beta_min + (beta_max - beta_min) (t/T)^gamma.

    Discretised at t/T = i / (T - 1), i = 0..T-1, so that ``gamma = 1`` is exactly
    :func:`linear`; gamma < 1 adds noise earlier, gamma > 1 later.
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    u = torch.linspace(0.0, 1.0, num_train_timesteps, dtype=torch.float64)
    betas = beta_min + (beta_max - beta_min) * u**gamma
    return NoiseSchedule(
        "gamma_rebalanced",
        betas,
        (("beta_min", beta_min), ("beta_max", beta_max), ("gamma", gamma)),
    )


def rescale_zero_terminal_snr(schedule: NoiseSchedule) -> NoiseSchedule:
    """Lin et al. (2024), Algorithm 1: shift and scale sqrt(alpha_bar) so that alpha_bar[T-1] = 0
    (zero terminal SNR) while alpha_bar[0] is unchanged; float64 throughout.

    The last beta becomes exactly 1: epsilon prediction is then undefined at t = T-1, so pair
    this with ``v`` (or ``sample``) prediction and trailing timesteps, as the paper does.
    """
    if schedule.zero_terminal_snr:
        return schedule
    s = schedule.alphas_cumprod.sqrt()
    s0, sT = s[0].clone(), s[-1].clone()
    s = (s - sT) * (s0 / (s0 - sT))
    abar = s**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    params = (*schedule.params, ("zero_terminal_snr", True))
    return NoiseSchedule(schedule.name, 1.0 - alphas, params)


SCHEDULES = {
    "linear": linear,
    "scaled_linear": scaled_linear,
    "cosine": cosine,
    "sigmoid": sigmoid,
    "gamma_rebalanced": gamma_rebalanced,
}


def make(
    name: str,
    num_train_timesteps: int = 1000,
    zero_terminal_snr: bool = False,
    **params: float,
) -> NoiseSchedule:
    """Build a schedule by name, optionally rescaled to zero terminal SNR."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known: {sorted(SCHEDULES)}")
    schedule = SCHEDULES[name](num_train_timesteps, **params)
    return rescale_zero_terminal_snr(schedule) if zero_terminal_snr else schedule


def from_config(config: dict) -> NoiseSchedule:
    """The inverse of :meth:`NoiseSchedule.config` (e.g. after a YAML round trip)."""
    return make(**config)
