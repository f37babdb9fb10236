"""Samplers as small functions with one signature (k-diffusion style).

``model(x_t, t, cond) -> output`` is whatever the strategy's prediction type says. Every
update goes through :mod:`medgen.cuda`'s fused, float32-internal step ops.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from medgen.cuda import ddim_step
from medgen.models.ddpm import DDPM
from medgen.models.timesteps import inference_timesteps

Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
Callback = Callable[[dict], None]


@torch.no_grad()
def ddim(
    model: Model,
    strategy: DDPM,
    x_T: torch.Tensor,
    steps: int = 50,
    *,
    cond: torch.Tensor | None = None,
    eta: float = 0.0,
    spacing: str = "trailing",
    clip_x0: float | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool | None = False,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) from ``x_T`` over ``steps`` scheduled timesteps.

    The step from t to the *previous scheduled* timestep uses alpha_bar of that timestep; the
    last step goes to alpha_bar = 1 and so returns the predicted x0. ``clip_x0`` bounds x0 in
    pixel space (use the data range, e.g. 1.0); leave it ``None`` for latents. ``eta > 0``
    adds fresh noise drawn from ``generator``. ``callback`` receives ``{"i", "t", "x",
    "x0"}`` after each step. ``progress=None`` shows a bar only on a TTY.
    """
    ts = inference_timesteps(strategy.num_train_timesteps, steps, spacing)
    abar = strategy.alphas_cumprod
    x = x_T
    for i, t in enumerate(
        tqdm(
            ts.tolist(),
            desc="DDIM",
            disable=None if progress is None else not progress,
            leave=False,
        )
    ):
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        output = model(x, t_batch, cond)
        a_t = float(abar[t])
        a_prev = float(abar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        noise = None
        if eta > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x)
        x, x0 = ddim_step(
            x,
            output,
            a_t,
            a_prev,
            prediction=strategy.prediction,
            eta=eta,
            noise=noise,
            clip_x0=clip_x0,
        )
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x
