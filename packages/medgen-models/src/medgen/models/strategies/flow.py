"""The rectified-flow strategy (Liu et al. 2023; Esser et al. 2024, "Scaling Rectified Flow
Transformers", SD3).

Sign conventions, stated once for the whole package:

- time: continuous t in [0, 1], **t = 0 is data, t = 1 is noise** (DESIGN.md section 3);
- path: x_t = (1 - t) x0 + t eps;
- velocity: **v = dx_t/dt = eps - x0** (points from data to noise, as diffusers'
  ``FlowMatchEulerDiscreteScheduler``); sampling integrates dx = v dt from t = 1 down to
  t = 0, so an Euler step is x_next = x + (t_next - t) v with t_next < t.
  MONAI's ``RFlowScheduler`` (and the seed-003 code) train on the opposite sign, x0 - eps.
- conversions: x0 = x_t - t v, eps = x_t + (1 - t) v.

t is never quantised: it is drawn and shifted in float64 and handed to the network as float32
(``model_time``), never float16/bfloat16 (bf16 rounds the time 750 to 752, diffusers issue 9405;
MONAI's RFlowScheduler stores its inference times as float16). The resolution shift (SD3
eq. 23; diffusers' ``shift``; MONAI's ``timestep_transform``) t' = s t / (1 + (s - 1) t) is
applied both to training times and to the sampling grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

T_SAMPLINGS = ("uniform", "logit_normal")


def shift_time(t: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """Resolution-dependent time shift t' = s t / (1 + (s - 1) t) (SD3, Esser et al. 2024).

    s > 1 moves time towards noise (needed at higher resolution); s = 1 is the identity;
    0 and 1 are fixed points.
    """
    return shift * t / (1 + (shift - 1) * t)


def resolution_shift(
    spatial_shape: Sequence[int], base_numel: int = 32 * 32 * 32, scale: float = 1.0
) -> float:
    """The shift for a resolution: s = scale * (numel / base_numel)^(1 / spatial_dims).

    The same ratio as MONAI's ``timestep_transform`` (which applies :func:`shift_time` to times
    in [0, T]), but ``scale`` is honoured here (MONAI's scheduler ignores its
    ``transform_scale``).
    """
    numel = math.prod(int(n) for n in spatial_shape)
    return float(scale) * (numel / base_numel) ** (1.0 / len(spatial_shape))


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    cd = torch.float64 if like.dtype == torch.float64 else torch.float32
    t = torch.as_tensor(t, dtype=torch.float64, device=like.device)
    if t.ndim == 0:
        t = t.expand(like.shape[0])
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"t must be a scalar or shaped (B,) = ({like.shape[0]},)")
    if bool(((t < 0) | (t > 1)).any()):
        raise ValueError("rectified-flow t must lie in [0, 1]")
    return t.to(cd).reshape(-1, *([1] * (like.ndim - 1)))


class RectifiedFlow:
    """Rectified flow with velocity prediction (see the module docstring for conventions).

    Args:
        shift: resolution shift s (>0) applied to training times and to the sampling grid.
        t_sampling: ``"uniform"`` or ``"logit_normal"`` (t = sigmoid(N(logit_mean,
            logit_std^2)), SD3 section 3.1), drawn before the shift.
        time_scale: the network receives t * time_scale (1000 matches the integer-time range
            that sinusoidal embeddings such as MONAI's are tuned for), as float32.
    """

    kind = "rflow"
    prediction = "velocity"

    def __init__(
        self,
        shift: float = 1.0,
        t_sampling: str = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        time_scale: float = 1000.0,
    ) -> None:
        if not (math.isfinite(shift) and shift > 0):
            raise ValueError(f"shift must be a finite number > 0, got {shift}")
        if t_sampling not in T_SAMPLINGS:
            raise ValueError(f"unknown t_sampling {t_sampling!r}; known: {T_SAMPLINGS}")
        if not logit_std > 0:
            raise ValueError(f"logit_std must be > 0, got {logit_std}")
        self.shift = float(shift)
        self.t_sampling = t_sampling
        self.logit_mean = float(logit_mean)
        self.logit_std = float(logit_std)
        self.time_scale = float(time_scale)

    def sample_timesteps(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Training times in [0, 1]: uniform or logit-normal, then shifted; float32, (B,)."""
        if self.t_sampling == "uniform":
            t = torch.rand((batch,), generator=generator, dtype=torch.float64)
        else:
            n = torch.randn((batch,), generator=generator, dtype=torch.float64)
            t = torch.sigmoid(self.logit_mean + self.logit_std * n)
        return shift_time(t, self.shift).to(device=device, dtype=torch.float32)

    def timesteps(self, n: int) -> torch.Tensor:
        """The sampling grid: n + 1 float64 times from 1 to 0, shift(linspace(1, 0, n + 1))."""
        if n < 1:
            raise ValueError(f"number of sampling steps must be >= 1, got {n}")
        return shift_time(torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64), self.shift)

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """What the network gets for time t: float32 t * time_scale (never half precision)."""
        return (torch.as_tensor(t, dtype=torch.float64) * self.time_scale).to(torch.float32)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - t) x0 + t eps, in float32 (float64 stays), returned in x0's dtype."""
        tt = _bcast(t, x0)
        x_t = (1 - tt) * x0.to(tt.dtype) + tt * noise.to(tt.dtype)
        return x_t.to(x0.dtype)

    def training_target(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The velocity v = eps - x0 (independent of t)."""
        cd = torch.float64 if x0.dtype == torch.float64 else torch.float32
        return (noise.to(cd) - x0.to(cd)).to(x0.dtype)

    def predict_x0_eps(
        self, x_t: torch.Tensor, output: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) = (x_t - t v, x_t + (1 - t) v) for a velocity ``output``."""
        tt = _bcast(t, x_t)
        xt, v = x_t.to(tt.dtype), output.to(tt.dtype)
        return (xt - tt * v).to(x_t.dtype), (xt + (1 - tt) * v).to(x_t.dtype)

    def predict_x0(self, x_t: torch.Tensor, output: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 = x_t - t v (see :meth:`predict_x0_eps`)."""
        return self.predict_x0_eps(x_t, output, t)[0]

    def snr(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ((1 - t) / t)^2, float32/float64, shaped to broadcast."""
        tt = _bcast(t, like)
        return ((1 - tt) / tt) ** 2

    def config(self) -> dict:
        """Plain, YAML-safe scalars that :meth:`from_config` turns back into this flow."""
        return {
            "strategy": "rflow",
            "shift": self.shift,
            "t_sampling": self.t_sampling,
            "logit_mean": self.logit_mean,
            "logit_std": self.logit_std,
            "time_scale": self.time_scale,
        }

    @classmethod
    def from_config(cls, config: dict) -> RectifiedFlow:
        """The inverse of :meth:`config`."""
        cfg = dict(config)
        if cfg.pop("strategy", "rflow") != "rflow":
            raise ValueError(f"not a rectified-flow config: {config}")
        return cls(**cfg)
