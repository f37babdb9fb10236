"""Mode embedding: an integer mode (MR sequence, task) per sample, added to the time embedding.

One model generating several modalities (bravo, flair, t1_pre, t1_gd -> 0..3) learns a vector
per mode that is added to the timestep embedding, so every residual block sees it. The table
is zero-initialised: adding a mode embedding to a trained network leaves its output unchanged
until the embedding learns (gradients still reach every used row).
"""

from __future__ import annotations

import torch
from torch import nn


class ModeEmbedding(nn.Module):
    """(B,) integer modes in [0, num_modes) -> (B, dim)."""

    def __init__(self, num_modes: int, dim: int, zero_init: bool = True) -> None:
        super().__init__()
        if num_modes < 1:
            raise ValueError(f"num_modes must be >= 1, got {num_modes}")
        self.num_modes = int(num_modes)
        self.embedding = nn.Embedding(self.num_modes, dim)
        if zero_init:
            nn.init.zeros_(self.embedding.weight)

    def forward(self, mode: torch.Tensor) -> torch.Tensor:
        """The (B, dim) embedding rows of ``mode``; a ValueError for a mode out of range."""
        mode = torch.as_tensor(mode, device=self.embedding.weight.device).long()
        if mode.ndim != 1:
            raise ValueError(f"mode must be (B,), got shape {tuple(mode.shape)}")
        if mode.numel() and (int(mode.min()) < 0 or int(mode.max()) >= self.num_modes):
            raise ValueError(
                f"mode out of range [0, {self.num_modes}): got {int(mode.min())}..{int(mode.max())}"
            )
        return self.embedding(mode)
