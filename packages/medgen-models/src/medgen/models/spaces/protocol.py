"""The space protocol: where diffusion runs, and the exact way in and out of it.

A space maps data ``x`` (B, C, *spatial) to the tensor the diffusion model sees and back.
Every space is ``spatial_dims``-generic (2D and 3D), reports the shape it produces for an
input shape without running, and describes itself with a plain ``config()`` dict that
:func:`medgen.models.spaces.space_from_config` turns back into an equal space (YAML-safe: only
str/int/float/bool/list values).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Space(Protocol):
    """encode/decode between data space and diffusion space."""

    spatial_dims: int

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Data (B, C, *spatial) -> diffusion space."""
        ...

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion space -> data; ``decode(encode(x))`` reconstructs ``x``."""
        ...

    def latent_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of ``encode(x)`` for ``x.shape == input_shape`` (batch and channels included)."""
        ...

    def channel_groups(self, channels: int) -> list[list[int]] | None:
        """For data of ``channels`` channels: the encoded channels that hold each data channel
        (for per-channel losses), or None when encoding mixes the channels (a latent space)."""
        ...

    def config(self) -> dict:
        """Plain, YAML-safe description; ``space_from_config(config())`` rebuilds the space."""
        ...


def check_input(x_shape: Sequence[int], spatial_dims: int, name: str, what: str = "x") -> None:
    """Raise ValueError unless ``x_shape`` is (B, C, *spatial) for ``spatial_dims``."""
    if len(x_shape) != spatial_dims + 2:
        raise ValueError(
            f"{name}: {what} must be (B, C, {'D, H, W' if spatial_dims == 3 else 'H, W'}) for "
            f"spatial_dims={spatial_dims}, got shape {tuple(x_shape)}"
        )
