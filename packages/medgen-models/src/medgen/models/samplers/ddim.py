"""DDIM sampling and DDIM inversion (Song et al. 2021, "Denoising Diffusion Implicit Models").

Every update is :func:`medgen.cuda.ddim_step`; the step from t goes to the *previous scheduled*
timestep, the last one to alpha_bar = 1 (diffusers' ``set_alpha_to_one``).
"""

from __future__ import annotations

import torch

from medgen.cuda import ddim_step
from medgen.models.samplers.early_stop import EarlyStop
from medgen.models.samplers.loop import (
    Callback,
    Model,
    discrete_loop,
    guided,
    progress_bar,
    standard_normal,
)
from medgen.models.strategies.ddpm import DDPM
from medgen.models.strategies.timesteps import inference_timesteps


def _check(strategy) -> None:
    if not isinstance(strategy, DDPM):
        raise TypeError(f"DDIM needs a DDPM strategy, got {type(strategy).__name__}")


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
    early_stop: EarlyStop | None = None,
    guidance: float | None = None,
    null_token: int | None = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) from ``x_T`` over ``steps`` scheduled timesteps.

    ``clip_x0`` bounds x0 in pixel space (use the data range, e.g. 1.0); leave it ``None`` for
    latents. ``eta > 0`` adds fresh noise drawn from ``generator``; ``eta = 0`` is
    deterministic. ``guidance``/``null_token`` wrap the model in classifier-free guidance.
    ``early_stop`` may end the loop early, returning the current x0 prediction.
    """
    _check(strategy)
    ts = inference_timesteps(strategy.num_train_timesteps, steps, spacing)

    def step(x, output, a_t, a_prev, last):
        noise = standard_normal(x, generator) if eta > 0 else None
        return ddim_step(
            x, output, a_t, a_prev, prediction=strategy.prediction, eta=eta, noise=noise,
            clip_x0=clip_x0,
        )  # fmt: skip

    return discrete_loop(
        guided(model, guidance, null_token), strategy, x_T, ts, step, desc="DDIM", cond=cond,
        callback=callback, progress=progress, early_stop=early_stop,
    )  # fmt: skip


@torch.no_grad()
def ddim_invert(
    model: Model,
    strategy: DDPM,
    x0: torch.Tensor,
    steps: int = 50,
    *,
    cond: torch.Tensor | None = None,
    spacing: str = "trailing",
    fixed_point_iters: int = 0,
    callback: Callback | None = None,
    progress: bool | None = False,
    guidance: float | None = None,
    null_token: int | None = None,
) -> torch.Tensor:
    """DDIM inversion: the deterministic (eta = 0) encoding x0 -> x_T that :func:`ddim` with
    the same ``steps``/``spacing``/``cond`` maps back to x0 (Song et al. 2021, section 4.3;
    Dhariwal & Nichol 2021, appendix F).

    It walks the sampling grid backwards (alpha_bar = 1 -> ts[-1] -> ... -> ts[0]). Sampling
    from level t_k uses the model at (x_{t_k}, t_k), which inversion does not know yet: it
    evaluates the model at the current point instead (the usual approximation), then refines
    x_{t_k} by ``fixed_point_iters`` fixed-point iterations (Pan et al. 2023, "Effective real
    image editing with accelerated iterative diffusion inversion"), which make the round trip
    exact wherever the iteration converges. The model output is converted to eps at the point
    where it was evaluated, so every prediction type inverts.
    """
    _check(strategy)
    model = guided(model, guidance, null_token)
    ts = inference_timesteps(strategy.num_train_timesteps, steps, spacing).flip(0)
    abar = strategy.alphas_cumprod
    x = x0
    a_cur = 1.0
    for i, t in enumerate(progress_bar(ts.tolist(), "DDIM inversion", progress)):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long)
        t_model = strategy.model_time(t_batch).to(x.device)
        a_next = float(abar[t])
        x_eval = x
        for _ in range(1 + fixed_point_iters):
            eps = strategy.predict_x0_eps(x_eval, model(x_eval, t_model, cond), t_batch)[1]
            x_next, x0_hat = ddim_step(x, eps, a_cur, a_next, prediction="epsilon")
            x_eval = x_next
        if callback is not None:
            callback({"i": i, "t": t, "x": x_next, "x0": x0_hat})
        x, a_cur = x_next, a_next
    return x
