"""Sampler steps dispatching to the compiled kernels (CPU/CUDA) or the PyTorch reference."""

from __future__ import annotations

import torch

from . import _coeffs, reference
from ._extension import get_extension, record

__all__ = ["ddim_step", "ddpm_step", "euler_step"]


def _backend(*tensors: torch.Tensor | None):
    """The compiled module for these tensors, or None to use the reference.

    Autograd through a step (any input requiring grad while grad mode is on) uses the reference,
    whose plain PyTorch ops are differentiable; the kernels are forward-only.
    """
    present = [t for t in tensors if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in present):
        return None
    return get_extension(present[0].device.type)


def _ran(ext, x: torch.Tensor, result):
    """Record which implementation produced ``result`` (see :func:`medgen.cuda.last_backend`)."""
    record(ext, x.device.type)
    return result


def ddim_step(
    x_t: torch.Tensor,
    model_output: torch.Tensor,
    alpha_bar_t,
    alpha_bar_prev,
    *,
    prediction: str = "epsilon",
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip_x0: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update x_t -> x_prev (Song et al. 2021, eq. 12 and 16). Returns ``(x_prev, x0)``.

    Args:
        x_t: (B, ...) current sample; float16, bfloat16, float32 or float64.
        model_output: network output shaped like x_t (cast to x_t's dtype).
        alpha_bar_t, alpha_bar_prev: cumulative alpha products of the current and of the *previous
            scheduled* timestep (1.0 for the final step with ``set_alpha_to_one``): Python float,
            0-d tensor, or 1-D tensor of length B for per-sample timesteps.
        prediction: ``"epsilon"``, ``"v"`` or ``"sample"`` (x0).
        eta: stochasticity, sigma_t = eta * sqrt((1-a_prev)/(1-a_t)) * sqrt(1 - a_t/a_prev).
        noise: standard normal noise shaped like x_t; required when eta > 0, ignored at eta = 0.
        clip_x0: None never clamps. A number c clamps x0 to [-c, c] and re-derives the noise
            direction from the clipped x0 (diffusers' ``clip_sample=True`` with
            ``use_clipped_model_output=True``).

    Computes in float32 (float64 for float64 input) and returns the input dtype; float16/bfloat16
    results saturate at the type's finite range instead of overflowing (this is not clipping).
    Finite inputs give finite outputs at every timestep of the standard schedules: see
    :mod:`medgen.cuda._coeffs` for the formulation and the documented alpha_bar floor.
    """
    x, m, n, coef, clip = _coeffs.prepare_ddim(
        x_t, model_output, alpha_bar_t, alpha_bar_prev, prediction, eta, noise, clip_x0
    )
    ext = _backend(x, m, n)
    if ext is None:
        return _ran(ext, x, reference.affine_step(x, m, n, coef, clip))
    return _ran(ext, x, tuple(ext.affine_step(x, m, n, coef, clip)))


def ddpm_step(
    x_t: torch.Tensor,
    model_output: torch.Tensor,
    alpha_bar_t,
    alpha_bar_prev,
    *,
    prediction: str = "epsilon",
    noise: torch.Tensor | None,
    clip_x0: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDPM ancestral step (Ho et al. 2020) from t to the previous *scheduled* timestep.

    x_prev = mean + sigma * noise with the posterior q(x_prev | x_t, x0): mean = c_x0 * x0 +
    c_xt * x_t, c_x0 = sqrt(a_prev) (1 - a_t/a_prev) / (1 - a_t), c_xt = sqrt(a_t/a_prev) (1 -
    a_prev) / (1 - a_t), sigma^2 = (1 - a_prev) / (1 - a_t) (1 - a_t/a_prev) ("fixed_small").
    Using alpha_bar of the previous scheduled step makes skipped-step schedules work (as diffusers'
    DDPMScheduler). ``noise=None`` returns the posterior mean (e.g. the last step). ``clip_x0=c``
    clamps x0 to [-c, c] before the posterior mean. Same alpha_bar forms, dtype rules and
    finiteness guarantee as :func:`ddim_step`. Returns ``(x_prev, x0)``.
    """
    x, m, n, coef, clip = _coeffs.prepare_ddpm(
        x_t, model_output, alpha_bar_t, alpha_bar_prev, prediction, noise, clip_x0
    )
    ext = _backend(x, m, n)
    if ext is None:
        return _ran(ext, x, reference.affine_step(x, m, n, coef, clip))
    return _ran(ext, x, tuple(ext.affine_step(x, m, n, coef, clip)))


def euler_step(x: torch.Tensor, v: torch.Tensor, t, t_next) -> torch.Tensor:
    """Rectified-flow Euler step ``x + (t_next - t) * v`` (t = 0 data, t = 1 noise).

    t and t_next are floats, 0-d tensors or per-sample 1-D tensors of length B; computes in
    float32 (float64 for float64) and returns x's dtype (saturating for float16/bfloat16).
    """
    x, v, dt = _coeffs.prepare_euler(x, v, t, t_next)
    ext = _backend(x, v)
    if ext is None:
        return _ran(ext, x, reference.axpy_step(x, v, dt))
    return _ran(ext, x, ext.axpy_step(x, v, dt))
