"""The network protocol: what every denoising network (ConditionedUNet, DiT, HDiT, UViT) is.

``forward(x, t, conditioning)`` with

- ``x``: (B, C, *spatial) noisy sample in the network's dtype, 2D or 3D;
- ``t``: (B,) **float32** time, whatever the network's dtype: what
  ``Strategy.model_time`` returns (DDPM integer timesteps as exact float32, rectified-flow
  times scaled by ``time_scale``). Never round it through float16/bfloat16 before the time
  embedding (bf16 turns 750 into 752, diffusers issue 9405);
- ``conditioning``: a :class:`~medgen.models.conditioning.Conditioning` record, a (B,) integer
  token tensor (shorthand for ``Conditioning(token=...)``), or ``None``;

returning the strategy's prediction target, shaped like ``x``. A network rejects
conditioning fields it was not built for and requires the ones it was. Samplers and trainers
call networks only through this signature (positionally), so any implementation may add
keyword-only inputs of its own (e.g. ControlNet residuals on :class:`ConditionedUNet`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from medgen.models.conditioning import Conditioning


@runtime_checkable
class Network(Protocol):
    """A denoising network ``forward(x, t, conditioning) -> output`` (see the module docstring)."""

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        conditioning: Conditioning | torch.Tensor | None = None,
        /,
    ) -> torch.Tensor:
        """The prediction for ``x`` at float32 time ``t`` under ``conditioning``, shaped like x."""
        ...
