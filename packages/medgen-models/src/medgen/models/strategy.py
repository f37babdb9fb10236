"""The interface every diffusion strategy satisfies (DDPM and rectified flow alike).

A strategy owns the forward process and the meaning of the network output; samplers own the
reverse process. It is a structural :class:`typing.Protocol`, not a base class: DDPM and
RectifiedFlow share no code, only this contract.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from medgen.models.ddpm import DDPM
from medgen.models.flow import RectifiedFlow


@runtime_checkable
class Strategy(Protocol):
    """What trainers and samplers may rely on.

    ``kind`` names the strategy in configs (``"ddpm"``, ``"rflow"``); ``prediction`` names the
    network target (``"epsilon"``/``"v"``/``"sample"`` or ``"velocity"``). Timesteps are
    integers in [0, T) for DDPM and floats in [0, 1] (0 = data) for rectified flow.
    """

    kind: str
    prediction: str

    def sample_timesteps(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor: ...

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...

    def training_target(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor: ...

    def predict_x0(
        self, x_t: torch.Tensor, output: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor: ...

    def predict_x0_eps(
        self, x_t: torch.Tensor, output: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def snr(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor: ...

    def config(self) -> dict: ...


STRATEGIES = {"ddpm": DDPM, "rflow": RectifiedFlow}


def strategy_from_config(config: dict) -> Strategy:
    """Rebuild a strategy from its ``config()`` (e.g. after a YAML round trip)."""
    kind = config.get("strategy")
    if kind not in STRATEGIES:
        raise ValueError(f"unknown strategy {kind!r} in config; known: {sorted(STRATEGIES)}")
    return STRATEGIES[kind].from_config(config)
