"""The interface every diffusion strategy satisfies (DDPM and rectified flow alike).

A strategy owns the forward process, the meaning of the network output and the time the
network sees; samplers own the reverse process. It is a structural :class:`typing.Protocol`,
not a base class: DDPM and RectifiedFlow share no code, only this contract.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from medgen.models.strategies.ddpm import DDPM
from medgen.models.strategies.flow import RectifiedFlow


@runtime_checkable
class Strategy(Protocol):
    """What trainers and samplers may rely on.

    ``kind`` names the strategy in configs (``"ddpm"``, ``"rflow"``); ``prediction`` names the
    network target (``"epsilon"``/``"v"``/``"sample"`` or ``"velocity"``). Timesteps are
    integers in [0, T) for DDPM and floats in [0, 1] (0 = data) for rectified flow; what the
    network receives is always ``model_time(t)``, float32, so a trainer calls
    ``model(strategy.add_noise(x0, noise, t), strategy.model_time(t), cond)`` without asking
    which strategy it holds.
    """

    kind: str
    prediction: str

    def sample_timesteps(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """(B,) training timesteps in the strategy's own convention."""
        ...

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The float32 (B,) time the network receives for timesteps ``t``."""
        ...

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t on the forward path from ``x0`` towards ``noise``, in x0's dtype."""
        ...

    def training_target(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """What the network is trained to output at (x_t, t)."""
        ...

    def predict_x0(self, x_t: torch.Tensor, output: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 implied by the network ``output`` at ``x_t``."""
        ...

    def predict_x0_eps(
        self, x_t: torch.Tensor, output: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) implied by the network ``output`` at ``x_t``."""
        ...

    def snr(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio at ``t``, shaped to broadcast against ``like``."""
        ...

    def config(self) -> dict:
        """Plain, YAML-safe description; :func:`strategy_from_config` rebuilds the strategy."""
        ...


STRATEGIES = {"ddpm": DDPM, "rflow": RectifiedFlow}


def strategy_from_config(config: dict) -> Strategy:
    """Rebuild a strategy from its ``config()`` (e.g. after a YAML round trip)."""
    kind = config.get("strategy")
    if kind not in STRATEGIES:
        raise ValueError(f"unknown strategy {kind!r} in config; known: {sorted(STRATEGIES)}")
    return STRATEGIES[kind].from_config(config)
