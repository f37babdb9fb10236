"""Euler and Heun samplers for rectified flow (Karras et al. 2022, "Elucidating the Design Space
of Diffusion-Based Generative Models", Algorithm 1 with the ODE dx/dt = v).

Time runs over ``strategy.timesteps(steps)`` (shifted, from 1 to 0; see
:mod:`medgen.models.strategies.flow` for the conventions). Every update is :func:`medgen.cuda.euler_step`.
"""

from __future__ import annotations

import torch

from medgen.cuda import euler_step
from medgen.models.samplers.early_stop import EarlyStop
from medgen.models.samplers.loop import Callback, Model, guided, progress_bar
from medgen.models.strategies.flow import RectifiedFlow


def _flow(model, strategy, x_T, steps, cond, callback, progress, early_stop, heun, desc):
    if not isinstance(strategy, RectifiedFlow):
        raise TypeError(f"{desc} needs a RectifiedFlow strategy, got {type(strategy).__name__}")
    if early_stop is not None:
        early_stop.reset()
    grid = strategy.timesteps(steps).tolist()
    x = x_T

    def velocity(x, t):
        tm = strategy.model_time(torch.full((x.shape[0],), t, dtype=torch.float64))
        return model(x, tm.to(x.device), cond)

    for i in progress_bar(range(steps), desc, progress):
        t, t_next = grid[i], grid[i + 1]
        v = velocity(x, t)
        x_next = euler_step(x, v, t, t_next)
        if heun and t_next > 0:  # trapezoidal correction; the last step to t = 0 stays Euler
            v2 = velocity(x_next, t_next)
            v_avg = ((v.float() + v2.float()) / 2).to(v.dtype)
            x_next = euler_step(x, v_avg, t, t_next)
        last = i + 1 == steps
        stop = early_stop is not None and not last and early_stop(i, t, x, x_next)
        x0 = euler_step(x, v, t, 0.0) if (stop or callback is not None) else None
        if callback is not None:
            callback({"i": i, "t": t, "x": x_next, "x0": x0})
        x = x0 if stop else x_next
        if stop:
            break
    return x


@torch.no_grad()
def euler(
    model: Model,
    strategy: RectifiedFlow,
    x_T: torch.Tensor,
    steps: int = 50,
    *,
    cond: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool | None = False,
    early_stop: EarlyStop | None = None,
    guidance: float | None = None,
    null_token: int | None = None,
) -> torch.Tensor:
    """Euler integration of dx = v dt from t = 1 (``x_T``, noise) to t = 0 (data).

    ``generator`` is accepted for the common signature (the ODE is deterministic). On an
    early stop the current x0 prediction x - t v is returned.
    """
    model = guided(model, guidance, null_token)
    return _flow(model, strategy, x_T, steps, cond, callback, progress, early_stop, False, "Euler")


@torch.no_grad()
def heun(
    model: Model,
    strategy: RectifiedFlow,
    x_T: torch.Tensor,
    steps: int = 25,
    *,
    cond: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool | None = False,
    early_stop: EarlyStop | None = None,
    guidance: float | None = None,
    null_token: int | None = None,
) -> torch.Tensor:
    """Heun's 2nd-order method (Karras et al. 2022, Algorithm 1): 2 model calls per step except
    the last (2 steps - 1 in all). Other arguments as :func:`euler`."""
    model = guided(model, guidance, null_token)
    return _flow(model, strategy, x_T, steps, cond, callback, progress, early_stop, True, "Heun")
