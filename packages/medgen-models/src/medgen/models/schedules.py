"""Noise schedules for discrete DDPM-family models.

A schedule is its ``betas`` (float64, length T). Everything derived (``alphas_cumprod``, SNR)
is computed in float64 and handed out as float32 or float64 on request, never in the model's
dtype: storing the table in bf16 shifts alpha_bar by up to 0.4%.
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
        if not bool(((b > 0) & (b < 1)).all()):
            raise ValueError(f"schedule {self.name!r}: betas must lie in (0, 1)")

    @property
    def num_train_timesteps(self) -> int:
        return int(self.betas.numel())

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """alpha_bar_t = prod_{s<=t} (1 - beta_s), float64."""
        return torch.cumprod(1.0 - self.betas, dim=0)

    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar), float64."""
        a = self.alphas_cumprod
        return a / (1.0 - a)

    def config(self) -> dict:
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


SCHEDULES = {"linear": linear, "scaled_linear": scaled_linear, "cosine": cosine}


def make(name: str, num_train_timesteps: int = 1000, **params: float) -> NoiseSchedule:
    """Build a schedule by name (the inverse of ``NoiseSchedule.config``)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known: {sorted(SCHEDULES)}")
    return SCHEDULES[name](num_train_timesteps, **params)
