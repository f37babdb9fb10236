"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) with skipped steps.

Each update is :func:`medgen.cuda.ddpm_step` from t to the *previous scheduled* timestep (as
diffusers' ``DDPMScheduler`` since its PR 2076), not to t - 1: MONAI's ``DDPMScheduler.step``
uses alpha_bar[t - 1] and beta[t] whatever the inference schedule, which is right only when
every training timestep is visited.
"""

from __future__ import annotations

import torch

from medgen.cuda import ddpm_step
from medgen.models.samplers.early_stop import EarlyStop
from medgen.models.samplers.loop import (
    Callback,
    Model,
    discrete_loop,
    guided,
    standard_normal,
)
from medgen.models.strategies.ddpm import DDPM
from medgen.models.strategies.timesteps import inference_timesteps


@torch.no_grad()
def ddpm(
    model: Model,
    strategy: DDPM,
    x_T: torch.Tensor,
    steps: int | None = None,
    *,
    cond: torch.Tensor | None = None,
    spacing: str = "trailing",
    clip_x0: float | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool | None = False,
    early_stop: EarlyStop | None = None,
    guidance: float | None = None,
    null_token: int | None = None,
) -> torch.Tensor:
    """Ancestral sampling over ``steps`` scheduled timesteps (default: all T).

    Posterior variance is "fixed_small" (beta_tilde); noise is drawn from ``generator`` in
    float32 for every step but the last, which returns the posterior mean at alpha_bar = 1,
    i.e. x0. Other arguments as :func:`medgen.models.samplers.ddim`.
    """
    if not isinstance(strategy, DDPM):
        raise TypeError(f"DDPM sampling needs a DDPM strategy, got {type(strategy).__name__}")
    T = strategy.num_train_timesteps
    ts = inference_timesteps(T, T if steps is None else steps, spacing)

    def step(x, output, a_t, a_prev, last):
        noise = None if last else standard_normal(x, generator)
        return ddpm_step(
            x, output, a_t, a_prev, prediction=strategy.prediction, noise=noise, clip_x0=clip_x0
        )

    return discrete_loop(
        guided(model, guidance, null_token), strategy, x_T, ts, step, desc="DDPM", cond=cond,
        callback=callback, progress=progress, early_stop=early_stop,
    )  # fmt: skip
