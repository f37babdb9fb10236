"""Schedule arithmetic shared by every backend: per-sample coefficients in float64.

Every DDIM and DDPM update is affine in (x_t, model_output) once the prediction type is fixed, so
the host folds the schedule into five coefficients per sample and the kernels (CPU, CUDA and the
PyTorch reference alike) evaluate

    x0   = a * x_t + b * m
    x0c  = clamp(x0, -clip, clip)                 only when the caller passes clip_x0
    xp   = p * x_t + q * (x0c if clip else m) + s * noise

in float32 (float64 for float64 inputs). Why this never yields NaN/inf for finite inputs:

* The coefficients are computed in float64 from alpha_bar and only then rounded to float32, so
  no schedule quantity under/overflows in half precision (the peers compute
  ``(x - sqrt(1 - a) * eps) / sqrt(a)`` in the sample's dtype, which overflows float16 once
  ``1/sqrt(alpha_bar)`` is large, e.g. the cosine schedule's alpha_bar[999] = 2.4e-9).
* x_prev does NOT go through the (possibly huge) x0: p and q are the algebraically simplified
  products (e.g. epsilon, eta = 0: p = sqrt(a_prev / a_t), q = sqrt(1 - a_prev) -
  sqrt(a_prev (1 - a_t) / a_t)), which stay moderate for any pair of scheduled timesteps, so the
  large terms cancel in float64 instead of in float32/float16.
* Documented floor: alpha_bar is clamped to [ALPHA_BAR_FLOOR, 1] and 1 - alpha_bar is floored at
  ALPHA_BAR_FLOOR where it is a divisor. 1e-12 is far below every standard schedule (the smallest,
  cosine at t = 999, is 2.4e-9) and keeps every coefficient below 1e6, so float32 cannot overflow
  for any finite float16/bfloat16 input. It only matters for degenerate inputs (alpha_bar = 0, as
  in zero-terminal-SNR schedules with epsilon prediction, where x0 is undefined).
* The results are stored back saturating at the finite range of float16/bfloat16 (+-65504 for
  float16). That is overflow protection, not clipping: x0 of a latent is unbounded and is
  never clamped to [-1, 1] unless ``clip_x0`` is given.
"""

from __future__ import annotations

import math

import torch

ALPHA_BAR_FLOOR = 1e-12
PREDICTIONS = ("epsilon", "v", "sample")
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float16/bfloat16/float32 compute in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_tensor(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name} has dtype {t.dtype}; supported: float16, bfloat16, float32, float64"
        )


def match(t: torch.Tensor | None, ref: torch.Tensor, name: str) -> torch.Tensor | None:
    """Check shape/device of a companion tensor and cast it to ref's dtype."""
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.shape != ref.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device}, expected {ref.device}")
    return t.to(ref.dtype)


def per_sample(value, name: str, x: torch.Tensor) -> float | torch.Tensor:
    """A schedule value as a Python float (scalars) or a float64 vector of length B.

    A single-element CPU tensor becomes a float (cheap, no device sync); a single-element tensor on
    an accelerator stays a length-1 tensor so that reading it never synchronizes the device.
    """
    batch = x.shape[0]
    if isinstance(value, torch.Tensor):
        v = value.detach()
        if v.dim() == 0:
            v = v.reshape(1)
        elif v.dim() != 1 or v.shape[0] not in (1, batch):
            raise ValueError(
                f"{name} must be a float, a 0-d tensor or a 1-D tensor of length 1 or "
                f"B={batch}; got shape {tuple(v.shape)}"
            )
        if v.numel() == 1 and v.device.type == "cpu":
            value = v.item()
        else:
            return v.to(device=x.device, dtype=torch.float64)
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}") from None
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {f}")
    return f


def check_alpha_range(value, name: str) -> None:
    if not isinstance(value, torch.Tensor) and not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")


def check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def check_clip(clip_x0) -> float | None:
    if clip_x0 is None:
        return None
    c = float(clip_x0)
    if not (math.isfinite(c) and c > 0):
        raise ValueError(f"clip_x0 must be None or a finite positive number, got {clip_x0}")
    return c


# The schedule helpers below work on Python floats (the common scalar case: no tensor ops, so a
# step on a small latent is not dominated by launching a dozen tiny float64 ops) and on float64
# tensors (per-sample alpha_bar) alike.


def _clamp(v, lo=None, hi=None):
    if isinstance(v, torch.Tensor):
        return v.clamp(lo, hi)
    if lo is not None:
        v = max(v, lo)
    return v if hi is None else min(v, hi)


def _sqrt(v):
    return v.sqrt() if isinstance(v, torch.Tensor) else math.sqrt(v)


def _rows(*cols) -> torch.Tensor:
    """Stack per-sample coefficient columns into (R, 5) float64 rows."""
    tensors = [c for c in cols if isinstance(c, torch.Tensor)]
    if not tensors:
        return torch.tensor([cols], dtype=torch.float64)
    ref = torch.broadcast_tensors(*tensors)[0]
    return torch.stack([c.expand_as(ref) if isinstance(c, torch.Tensor) else torch.full_like(ref, c)
                        for c in cols], dim=1)  # fmt: skip


def _x0_eps(at, bt, prediction: str):
    """(a, b, ex, em): x0 = a*x + b*m and eps = ex*x + em*m for the prediction type."""
    sa, sb = _sqrt(at), _sqrt(bt)
    if prediction == "epsilon":  # x0 = (x - sqrt(1-a) eps) / sqrt(a)
        return 1.0 / sa, -sb / sa, 0.0, 1.0
    if prediction == "v":  # x0 = sqrt(a) x - sqrt(1-a) v ; eps = sqrt(1-a) x + sqrt(a) v
        return sa, -sb, sb, sa
    # sample: x0 = m ; eps = (x - sqrt(a) x0) / sqrt(1-a)
    return 0.0, 1.0, 1.0 / sb, -sa / sb


def _floored(alpha_t, alpha_prev):
    at = _clamp(alpha_t, ALPHA_BAR_FLOOR, 1.0)
    ap = _clamp(alpha_prev, ALPHA_BAR_FLOOR, 1.0)
    bt = _clamp(1.0 - at, ALPHA_BAR_FLOOR)  # a divisor below
    bp = _clamp(1.0 - ap, 0.0)
    return at, ap, bt, bp


def ddim_coefficients(alpha_t, alpha_prev, prediction: str, eta: float, clip: bool):
    """(R, 5) float64 rows (a, b, p, q, s) of the DDIM update (Song et al. 2021, eq. 12/16)."""
    at, ap, bt, bp = _floored(alpha_t, alpha_prev)
    a, b, ex, em = _x0_eps(at, bt, prediction)
    # sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
    sigma = eta * _sqrt((bp / bt) * _clamp(1.0 - at / ap, 0.0))
    direction = _sqrt(_clamp(bp - sigma * sigma, 0.0))  # coefficient of eps
    sp = _sqrt(ap)
    if clip:
        # diffusers' use_clipped_model_output=True: eps re-derived from the clipped x0,
        # eps = (x - sqrt(a_t) x0c) / sqrt(1 - a_t), so xp = sp*x0c + direction*eps.
        sa, sb = _sqrt(at), _sqrt(bt)
        p, q = direction / sb, sp - direction * sa / sb
    else:
        p, q = sp * a + direction * ex, sp * b + direction * em
    return _rows(a, b, p, q, sigma)


def ddpm_coefficients(alpha_t, alpha_prev, prediction: str, clip: bool):
    """(R, 5) rows of the DDPM ancestral step (posterior q(x_prev | x_t, x0), Ho et al. 2020).

    Uses the *previous scheduled* alpha_bar (alpha_t / alpha_prev is the effective per-step
    alpha), as diffusers' DDPMScheduler does, so skipped-step schedules work. Variance is the
    "fixed_small" posterior variance beta_tilde = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev).
    """
    at, ap, bt, bp = _floored(alpha_t, alpha_prev)
    a, b, _, _ = _x0_eps(at, bt, prediction)
    alpha = _clamp(at / ap, None, 1.0)
    beta = 1.0 - alpha
    c_x0 = _sqrt(ap) * beta / bt
    c_xt = _sqrt(alpha) * bp / bt
    sigma = _sqrt(_clamp(bp / bt * beta, 0.0))
    if clip:  # posterior mean from the clipped x0 and x_t (diffusers' clip_sample semantics)
        p, q = c_xt, c_x0
    else:
        p, q = c_xt + c_x0 * a, c_x0 * b
    return _rows(a, b, p, q, sigma)


def prepare_ddim(x_t, model_output, alpha_bar_t, alpha_bar_prev, prediction, eta, noise, clip_x0):
    """Validate ddim_step's arguments; returns (x_t, model_output, noise|None, coef, clip|None)."""
    check_tensor(x_t, "x_t")
    if x_t.dim() < 1:
        raise ValueError("x_t must have a leading batch dimension")
    m = match(model_output, x_t, "model_output")
    check_prediction(prediction)
    eta = float(eta)
    if not (math.isfinite(eta) and eta >= 0.0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    if eta > 0.0 and noise is None:
        raise ValueError("eta > 0 needs `noise` (a tensor shaped like x_t, e.g. torch.randn_like)")
    noise = match(noise, x_t, "noise") if eta > 0.0 else None
    clip = check_clip(clip_x0)
    check_alpha_range(alpha_bar_t, "alpha_bar_t")
    check_alpha_range(alpha_bar_prev, "alpha_bar_prev")
    at = per_sample(alpha_bar_t, "alpha_bar_t", x_t)
    ap = per_sample(alpha_bar_prev, "alpha_bar_prev", x_t)
    coef = ddim_coefficients(at, ap, prediction, eta, clip is not None)
    return x_t, m, noise, coef.to(device=x_t.device, dtype=compute_dtype(x_t.dtype)), clip


def prepare_ddpm(x_t, model_output, alpha_bar_t, alpha_bar_prev, prediction, noise, clip_x0):
    """Validate ddpm_step's arguments; returns (x_t, model_output, noise|None, coef, clip|None)."""
    check_tensor(x_t, "x_t")
    if x_t.dim() < 1:
        raise ValueError("x_t must have a leading batch dimension")
    m = match(model_output, x_t, "model_output")
    check_prediction(prediction)
    noise = match(noise, x_t, "noise")
    clip = check_clip(clip_x0)
    check_alpha_range(alpha_bar_t, "alpha_bar_t")
    check_alpha_range(alpha_bar_prev, "alpha_bar_prev")
    at = per_sample(alpha_bar_t, "alpha_bar_t", x_t)
    ap = per_sample(alpha_bar_prev, "alpha_bar_prev", x_t)
    coef = ddpm_coefficients(at, ap, prediction, clip is not None)
    return x_t, m, noise, coef.to(device=x_t.device, dtype=compute_dtype(x_t.dtype)), clip


def prepare_euler(x, v, t, t_next):
    """Validate euler_step's arguments; returns (x, v, dt) with dt = t_next - t per sample."""
    check_tensor(x, "x")
    if x.dim() < 1:
        raise ValueError("x must have a leading batch dimension")
    v = match(v, x, "v")
    tt = per_sample(t, "t", x)
    tn = per_sample(t_next, "t_next", x)
    dt = tn - tt
    if not isinstance(dt, torch.Tensor):
        dt = torch.tensor([dt], dtype=torch.float64)
    return x, v, dt.to(compute_dtype(x.dtype))
