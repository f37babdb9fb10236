"""Pixel space: diffusion directly on the data (identity encode/decode)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medgen.models.spaces.protocol import check_input


class PixelSpace(nn.Module):
    """The identity space. Inputs are returned as they are (no copy, no clamp)."""

    kind = "pixel"

    def __init__(self, spatial_dims: int = 2) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"PixelSpace: spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = int(spatial_dims)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` itself (after the shape check)."""
        check_input(x.shape, self.spatial_dims, "PixelSpace.encode")
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` itself (after the shape check)."""
        check_input(z.shape, self.spatial_dims, "PixelSpace.decode", "z")
        return z

    def latent_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """``input_shape`` unchanged."""
        check_input(input_shape, self.spatial_dims, "PixelSpace.latent_shape", "input_shape")
        return tuple(int(s) for s in input_shape)

    def channel_groups(self, channels: int) -> list[list[int]]:
        """Channel c is channel c."""
        return [[c] for c in range(channels)]

    def config(self) -> dict:
        """Plain, YAML-safe description."""
        return {"kind": self.kind, "spatial_dims": self.spatial_dims}
