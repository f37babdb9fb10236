"""FiLM (Perez et al. 2018): a conditioning vector scales and shifts features per channel.

``FiLM(cond_dim, num_channels)`` maps a (B, cond_dim) vector, e.g. a tumour size-bin histogram
(counts per RANO-BM size bin), through a small MLP to (gamma, beta), each (B, num_channels), and
returns ``h * (1 + gamma) + beta`` for features ``h`` of shape (B, num_channels, *spatial) with
any number of spatial axes (or none: a (B, num_channels) embedding). The last layer is
zero-initialised, so a fresh FiLM is the identity.
"""

from __future__ import annotations

import torch
from torch import nn


class FiLM(nn.Module):
    """Feature-wise linear modulation ``h * (1 + gamma(c)) + beta(c)`` (see the module docstring);
    identity at init."""

    def __init__(self, cond_dim: int, num_channels: int, hidden: int | None = None) -> None:
        super().__init__()
        if cond_dim < 1 or num_channels < 1:
            raise ValueError(
                f"FiLM: cond_dim and num_channels must be >= 1, got {cond_dim}, {num_channels}"
            )
        self.cond_dim = int(cond_dim)
        self.num_channels = int(num_channels)
        hidden = hidden or num_channels
        self.mlp = nn.Sequential(
            nn.Linear(self.cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, 2 * self.num_channels)
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def scale_shift(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma, beta), each (B, num_channels)."""
        if cond.ndim != 2 or cond.shape[1] != self.cond_dim:
            raise ValueError(
                f"FiLM: conditioning vector must be (B, {self.cond_dim}), got {tuple(cond.shape)}"
            )
        gamma, beta = self.mlp(cond.to(self.mlp[0].weight.dtype)).chunk(2, dim=1)
        return gamma, beta

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``h`` (B, num_channels, ...) modulated by ``cond`` (B, cond_dim), in h's dtype."""
        if h.ndim < 2 or h.shape[1] != self.num_channels:
            raise ValueError(
                f"FiLM: features must be (B, {self.num_channels}, ...), got {tuple(h.shape)}"
            )
        if cond.shape[0] != h.shape[0]:
            raise ValueError(
                f"FiLM: batch of the conditioning ({cond.shape[0]}) != batch of the features "
                f"({h.shape[0]})"
            )
        gamma, beta = self.scale_shift(cond)
        shape = (h.shape[0], self.num_channels) + (1,) * (h.ndim - 2)
        return h * (1 + gamma.reshape(shape).to(h.dtype)) + beta.reshape(shape).to(h.dtype)
