"""Pure-PyTorch reference implementations of every medgen.cuda op (same names, same results).

These run wherever the compiled extension cannot (missing build, other devices, autograd through
the sampler steps) and define the semantics the CPU and CUDA kernels are tested against. They
perform the same arithmetic in the same order as the kernels: float32 for float16/bfloat16/float32
inputs, float64 for float64, and a saturating cast back to the input dtype.
"""

from __future__ import annotations

import torch

from . import _coeffs

__all__ = ["ddim_step", "ddpm_step", "euler_step", "haar_dwt", "haar_idwt"]

_HAAR_SCALE = {2: 0.5, 3: 0.35355339059327373}  # 2 ** (-nd / 2)


def saturate_cast(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast to dtype, saturating at its finite range for float16/bfloat16 (NaN propagates).

    This is overflow protection only (float16: +-65504), not clipping of values to [-1, 1].
    """
    if dtype in (torch.float16, torch.bfloat16) and y.dtype != dtype:
        lim = torch.finfo(dtype).max
        y = y.clamp(-lim, lim)
    return y.to(dtype)


def _coef_view(coef: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
    return coef[:, k].reshape((coef.shape[0],) + (1,) * (x.dim() - 1))


def affine_step(x, m, noise, coef, clip):
    """x0 = a x + b m; xp = p x + q (clamp(x0) if clip else m) + s noise (see _coeffs)."""
    ct = _coeffs.compute_dtype(x.dtype)
    coef = coef.to(device=x.device, dtype=ct)
    a, b, p, q, s = (_coef_view(coef, x, k) for k in range(5))
    xf, mf = x.to(ct), m.to(ct)
    x0 = a * xf + b * mf
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
        xp = p * xf + q * x0
    else:
        xp = p * xf + q * mf
    if noise is not None:
        xp = xp + s * noise.to(ct)
    return saturate_cast(xp, x.dtype), saturate_cast(x0, x.dtype)


def axpy_step(x, v, dt):
    ct = _coeffs.compute_dtype(x.dtype)
    c = dt.to(device=x.device, dtype=ct).reshape((dt.shape[0],) + (1,) * (x.dim() - 1))
    return saturate_cast(x.to(ct) + c * v.to(ct), x.dtype)


def ddim_step(
    x_t,
    model_output,
    alpha_bar_t,
    alpha_bar_prev,
    *,
    prediction="epsilon",
    eta=0.0,
    noise=None,
    clip_x0=None,
):
    """Reference DDIM step; see :func:`medgen.cuda.ddim_step`."""
    x, m, n, coef, clip = _coeffs.prepare_ddim(
        x_t, model_output, alpha_bar_t, alpha_bar_prev, prediction, eta, noise, clip_x0
    )
    return affine_step(x, m, n, coef, clip)


def ddpm_step(
    x_t, model_output, alpha_bar_t, alpha_bar_prev, *, prediction="epsilon", noise, clip_x0=None
):
    """Reference DDPM ancestral step; see :func:`medgen.cuda.ddpm_step`."""
    x, m, n, coef, clip = _coeffs.prepare_ddpm(
        x_t, model_output, alpha_bar_t, alpha_bar_prev, prediction, noise, clip_x0
    )
    return affine_step(x, m, n, coef, clip)


def euler_step(x, v, t, t_next):
    """Reference rectified-flow Euler step x + (t_next - t) v; see :func:`medgen.cuda.euler_step`."""
    x, v, dt = _coeffs.prepare_euler(x, v, t, t_next)
    return axpy_step(x, v, dt)


# ----------------------------------------------------------------------------------- Haar


def check_haar_input(x: torch.Tensor, name: str, inverse: bool) -> int:
    """Validate a Haar input; returns the number of transformed axes (2 or 3)."""
    _coeffs.check_tensor(x, name)
    if x.dim() not in (4, 5):
        raise ValueError(
            f"{name} must be 4-D (B, C, H, W) for the 2D transform or 5-D (B, C, D, H, W) for the "
            f"3D transform, got shape {tuple(x.shape)}"
        )
    nd = x.dim() - 2
    if inverse:
        if x.shape[1] % (1 << nd):
            raise ValueError(
                f"{name} must have {1 << nd}*C channels (subband-major), got {x.shape[1]}"
            )
    else:
        axes = ("D", "H", "W")[3 - nd :]
        for i, (axis, size) in enumerate(zip(axes, x.shape[2:], strict=True)):
            if size % 2:
                raise ValueError(
                    f"haar_dwt: spatial axis {axis} (dim {i + 2}) has odd size {size}; every "
                    f"spatial size must be even, got shape {tuple(x.shape)} (pad or crop first)"
                )
    return nd


def _haar_butterflies(y: torch.Tensor, nd: int) -> torch.Tensor:
    """Butterflies (e, o) -> (e + o, e - o) on the leading nd size-2 axes, last axis first."""
    for ax in reversed(range(nd)):
        e, o = y.select(ax, 0), y.select(ax, 1)
        y = torch.stack((e + o, e - o), dim=ax)
    return y * _HAAR_SCALE[nd]


def haar_dwt_impl(x: torch.Tensor) -> torch.Tensor:
    nd = check_haar_input(x, "x", inverse=False)
    ct = _coeffs.compute_dtype(x.dtype)
    B, C = x.shape[:2]
    half = [s // 2 for s in x.shape[2:]]
    y = x.to(ct).reshape(B, C, *[v for h in half for v in (h, 2)])
    pairs = [3 + 2 * i for i in range(nd)]
    blocks = [0, 1] + [2 + 2 * i for i in range(nd)]
    y = _haar_butterflies(y.permute(*pairs, *blocks), nd)  # (2,)*nd + (B, C, *half)
    y = y.reshape(1 << nd, B, C, *half).transpose(0, 1).reshape(B, (1 << nd) * C, *half)
    return saturate_cast(y, x.dtype)


def haar_idwt_impl(w: torch.Tensor) -> torch.Tensor:
    nd = check_haar_input(w, "w", inverse=True)
    ct = _coeffs.compute_dtype(w.dtype)
    B, SC = w.shape[:2]
    C = SC >> nd
    half = list(w.shape[2:])
    y = w.to(ct).reshape(B, 1 << nd, C, *half).transpose(0, 1)
    y = _haar_butterflies(y.reshape(*([2] * nd), B, C, *half), nd)  # (dz,dy,dx, B, C, *half)
    order = [nd, nd + 1]
    for i in range(nd):
        order += [nd + 2 + i, i]  # (B, C, D2, dz, H2, dy, W2, dx)
    y = y.permute(*order).reshape(B, C, *[2 * h for h in half])
    return saturate_cast(y, w.dtype)


def haar_dwt(x: torch.Tensor) -> torch.Tensor:
    """Reference single-level orthonormal Haar DWT; see :func:`medgen.cuda.haar_dwt`.

    Differentiable through plain PyTorch autograd.
    """
    return haar_dwt_impl(x)


def haar_idwt(w: torch.Tensor) -> torch.Tensor:
    """Reference inverse of :func:`haar_dwt`; see :func:`medgen.cuda.haar_idwt`."""
    return haar_idwt_impl(w)
