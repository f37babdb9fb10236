"""The DDPM strategy: forward noising, training targets and prediction conversions.

Conventions: integer timesteps t in [0, T); x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps with
a_t = alpha_bar_t. The network predicts one of

- ``"epsilon"``: eps
- ``"v"``:       v = sqrt(a_t) eps - sqrt(1 - a_t) x0   (Salimans & Ho, 2022)
- ``"sample"``:  x0

Timesteps are integers; the network receives them as float32 (:meth:`DDPM.model_time`, exact).
The schedule table stays float64 (see :mod:`medgen.models.strategies.schedules`).
Arithmetic runs in float32 (float64 inputs stay float64) whatever the input dtype; results
are returned in the input dtype. The per-sample coefficients sqrt(a), sqrt(1 - a) and the SNR
are computed in float64 from the table and only then rounded: near t = 0, a = 0.99996 and
``1 - a`` in float32 keeps ~3 significant digits (relative error up to ~1e-3), in float64
~1e-12 (:meth:`DDPM.coefficients`).
"""

from __future__ import annotations

import torch

from medgen.models.strategies.schedules import NoiseSchedule, from_config

PREDICTIONS = ("epsilon", "v", "sample")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class DDPM:
    """Discrete diffusion with a :class:`NoiseSchedule` and a prediction type (Ho et al. 2020)."""

    kind = "ddpm"

    def __init__(self, schedule: NoiseSchedule, prediction: str = "epsilon") -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; known: {PREDICTIONS}")
        if prediction == "epsilon" and float(schedule.alphas_cumprod[-1]) == 0.0:
            # x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) is undefined at a = 0 (Lin et al. 2024, 3.2)
            raise ValueError(
                "a zero-terminal-SNR schedule (alpha_bar[T-1] = 0) needs prediction 'v' or "
                "'sample': epsilon prediction cannot recover x0 at the last timestep"
            )
        self.schedule = schedule
        self.prediction = prediction
        self.alphas_cumprod = schedule.alphas_cumprod  # float64, stays float64

    @property
    def num_train_timesteps(self) -> int:
        """T, the number of training timesteps of the schedule."""
        return self.schedule.num_train_timesteps

    def alpha_bar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar at integer timesteps ``t`` (B,), shaped to broadcast against ``like``."""
        t = torch.as_tensor(t, device=self.alphas_cumprod.device).long()
        if t.min() < 0 or t.max() >= self.num_train_timesteps:
            raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps})")
        a = self.alphas_cumprod[t.cpu()].to(device=like.device, dtype=_compute_dtype(like))
        return a.reshape(-1, *([1] * (like.ndim - 1)))

    def coefficients(
        self, t: torch.Tensor, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sqrt(a_t), sqrt(1 - a_t), a_t / (1 - a_t)) computed in float64, then cast to the
        compute dtype of ``like`` and shaped to broadcast against it."""
        t = torch.as_tensor(t, device=self.alphas_cumprod.device).long()
        if t.min() < 0 or t.max() >= self.num_train_timesteps:
            raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps})")
        a = self.alphas_cumprod[t.cpu()].to(torch.float64)
        shape = (-1, *([1] * (like.ndim - 1)))
        cd = _compute_dtype(like)
        return tuple(
            c.to(device=like.device, dtype=cd).reshape(shape)
            for c in (a.sqrt(), (1 - a).sqrt(), a / (1 - a))
        )

    def sample_timesteps(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Uniform integer timesteps in [0, T)."""
        t = torch.randint(0, self.num_train_timesteps, (batch,), generator=generator)
        return t.to(device)

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """What the network gets for timesteps ``t``: the integers as float32, exactly.

        Every integer in [0, 2^24) is a float32, so no timestep is rounded (bf16 would round
        750 to 752, diffusers issue 9405). The device of ``t`` is kept.
        """
        t = torch.as_tensor(t)
        if t.is_floating_point() and not bool((t == t.round()).all()):
            raise ValueError("DDPM timesteps must be integers")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps})")
        return t.to(torch.float32)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise, computed in float32, in x0's dtype."""
        sa, s1a, _ = self.coefficients(t, x0)
        cd = sa.dtype
        x_t = sa * x0.to(cd) + s1a * noise.to(cd)
        return x_t.to(x0.dtype)

    def training_target(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """The network's target: ``noise``, ``x0`` or v = sqrt(a_t) noise - sqrt(1 - a_t) x0."""
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "sample":
            return x0
        sa, s1a, _ = self.coefficients(t, x0)
        cd = sa.dtype
        return (sa * noise.to(cd) - s1a * x0.to(cd)).to(x0.dtype)

    def predict_x0_eps(
        self, x_t: torch.Tensor, output: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) implied by the network ``output`` at ``x_t``; float32 math, input dtype out.

        For epsilon prediction x0 = (x_t - sqrt(1-a) eps) / sqrt(a), exact when eps is the
        true noise (up to float32 rounding amplified by 1/sqrt(a) at the largest t).
        """
        sa, s1a, _ = self.coefficients(t, x_t)
        cd = sa.dtype
        xt, out = x_t.to(cd), output.to(cd)
        if self.prediction == "epsilon":
            eps = out
            x0 = (xt - s1a * eps) / sa
        elif self.prediction == "sample":
            x0 = out
            eps = (xt - sa * x0) / s1a
        else:  # v
            x0 = sa * xt - s1a * out
            eps = s1a * xt + sa * out
        return x0.to(x_t.dtype), eps.to(x_t.dtype)

    def predict_x0(self, x_t: torch.Tensor, output: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 implied by the network ``output`` at ``x_t`` (see :meth:`predict_x0_eps`)."""
        return self.predict_x0_eps(x_t, output, t)[0]

    def snr(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """a_t / (1 - a_t) computed in float64, returned in float32 (float64 for float64
        ``like``), shaped to broadcast."""
        return self.coefficients(t, like)[2]

    def config(self) -> dict:
        """Plain, YAML-safe scalars: the prediction and the schedule's own ``config()``."""
        return {
            "strategy": "ddpm",
            "prediction": self.prediction,
            "schedule": self.schedule.config(),
        }

    @classmethod
    def from_config(cls, config: dict) -> DDPM:
        """The inverse of :meth:`config`."""
        if config.get("strategy", "ddpm") != "ddpm":
            raise ValueError(f"not a DDPM config: strategy={config.get('strategy')!r}")
        return cls(from_config(config["schedule"]), config.get("prediction", "epsilon"))
