"""What every sampler loop shares: the model signature, progress bars and guidance wiring.

All samplers have one signature (k-diffusion style)::

    sampler(model, strategy, x_T, steps, *, cond=None, generator=None, callback=None,
            progress=False, early_stop=None, guidance=None, null_token=None, ...) -> x_0

``model(x_t, t, cond) -> output`` returns what the strategy's prediction type says; ``t`` is a
(B,) tensor (int64 DDPM timesteps, or float32 ``strategy.model_time(t)`` for flows).
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
