"""What every sampler loop shares: the model signature, progress bars, guidance wiring and the
loop over discrete DDPM timesteps.

All samplers have one signature (k-diffusion style)::

    sampler(model, strategy, x_T, steps, *, cond=None, generator=None, callback=None,
            progress=False, early_stop=None, guidance=None, null_token=None, ...) -> x_0

``model(x_t, t, cond) -> output`` returns what the strategy's prediction type says; ``t`` is
the (B,) float32 tensor ``strategy.model_time(t)`` for every strategy (DDPM timesteps as exact
float32 integers, flow times scaled), so the network never learns which strategy drives it.
``callback`` receives ``{"i", "t", "x", "x0"}`` after each step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from tqdm.auto import tqdm

from medgen.models.samplers.guidance import ClassifierFreeGuidance

Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
Callback = Callable[[dict], None]


def progress_bar(items: Iterable, desc: str, progress: bool | None) -> Iterable:
    """tqdm over ``items``; ``progress=None`` shows a bar only on a TTY."""
    return tqdm(items, desc=desc, disable=None if progress is None else not progress, leave=False)


def guided(model: Model, guidance: float | None, null_token: int | None) -> Model:
    """``model`` wrapped in classifier-free guidance when ``guidance`` is given."""
    if guidance is None:
        return model
    if null_token is None:
        raise ValueError("guidance needs null_token: the index of the learned null token")
    return ClassifierFreeGuidance(model, guidance, null_token)


def standard_normal(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Fresh N(0, 1) noise like ``x``, drawn in float32 on the generator's device."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, dtype=torch.float32, device=device).to(x)


# step(x_t, model_output, alpha_bar_t, alpha_bar_prev, last) -> (x_prev, x0)
Step = Callable[[torch.Tensor, torch.Tensor, float, float, bool], tuple[torch.Tensor, torch.Tensor]]


def discrete_loop(model: Model, strategy, x_T: torch.Tensor, ts: torch.Tensor, step: Step, *,
                  desc: str, cond, callback, progress, early_stop) -> torch.Tensor:  # fmt: skip
    """Run ``step`` from ``x_T`` over the scheduled timesteps ``ts`` (descending).

    Each step goes from ``ts[i]`` to the previous *scheduled* timestep ``ts[i + 1]``, the last
    one to alpha_bar = 1 (so it returns x0). ``early_stop`` may end the loop before the last
    step, returning the current x0 prediction.
    """
    if early_stop is not None:
        early_stop.reset()
    abar = strategy.alphas_cumprod
    x = x_T
    for i, t in enumerate(progress_bar(ts.tolist(), desc, progress)):
        t_model = strategy.model_time(torch.full((x.shape[0],), t, dtype=torch.long))
        output = model(x, t_model.to(x.device), cond)
        last = i + 1 == len(ts)
        a_prev = 1.0 if last else float(abar[ts[i + 1]])
        x_next, x0 = step(x, output, float(abar[t]), a_prev, last)
        if callback is not None:
            callback({"i": i, "t": t, "x": x_next, "x0": x0})
        stop = early_stop is not None and not last and early_stop(i, t, x, x_next)
        x = x0 if stop else x_next
        if stop:
            break
    return x
