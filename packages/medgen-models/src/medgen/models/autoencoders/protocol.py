"""The autoencoder protocol: what every MedGen autoencoder (KL-VAE, VQ-VAE, DC-AE, MAISI) is.

Every autoencoder is an ``nn.Module``, ``spatial_dims``-generic (2 or 3), with

- ``spatial_dims``, ``in_channels``, ``latent_channels`` and ``downsample`` (the total spatial
  reduction per axis, e.g. 4 for MAISI, 32 for DC-AE f32c32) as attributes;
- ``encode(x) -> z``: the *deterministic* latent (a KL-VAE's posterior mean, a VQ-VAE's
  quantized latent, a DC-AE's latent), what diffusion models are trained on and what
  :class:`medgen.models.LatentSpace` scales;
- ``decode(z) -> x_hat``;
- ``forward(x) -> AutoencoderOutput``: the training pass (a KL-VAE samples its posterior
  there; ``encode`` never does), with the regularisation terms the loss adds (``kl`` for a
  KL-VAE, ``vq`` for a VQ-VAE: commitment + codebook terms) and the statistics to log
  (codebook perplexity, usage, dead codes);
- ``check_shape(shape)``: raises ``ValueError`` naming the axis, its size and ``downsample``
  when a spatial size is not divisible (the seed-002 "24 slices" bug: 24 depth slices through
  a 4x-per-level encoder), and ``latent_shape(shape)`` the shape ``encode`` returns;
- ``decoder_head()``: the parameters of the last decoder stage (DC-AE's phase 3 fine-tunes only
  these under a GAN loss, encoder frozen); the whole decoder where the network has no head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@dataclass
class AutoencoderOutput:
    """A training pass: reconstruction, latent, regularisation terms and statistics."""

    reconstruction: torch.Tensor
    latent: torch.Tensor  # the (sampled or quantized) latent the decoder saw
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. {"kl": ..., "vq": ...}
    stats: dict[str, float] = field(default_factory=dict)  # e.g. {"perplexity": ...}


@runtime_checkable
class Autoencoder(Protocol):
    """encode / decode / forward between data and a latent (see the module docstring)."""

    spatial_dims: int
    in_channels: int
    latent_channels: int
    downsample: int

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Data (B, C, *spatial) -> deterministic latent (B, latent_channels, *spatial/f)."""
        ...

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> data."""
        ...

    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        """The training pass."""
        ...

    def check_shape(self, shape: Sequence[int]) -> None:
        """ValueError naming the axis and ``downsample`` when a spatial size does not divide."""
        ...

    def latent_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The shape ``encode`` returns for an input of ``shape`` (batch, channels included)."""
        ...

    def decoder_head(self) -> list[nn.Parameter]:
        """Parameters of the last decoder stage (phase-3 GAN fine-tuning)."""
        ...


def check_divisible(
    shape: Sequence[int], spatial_dims: int, downsample: int | Sequence[int], who: str
) -> None:
    """ValueError naming the first spatial axis of ``shape`` not divisible by ``downsample``
    (one factor for every axis, or one per spatial axis, e.g. DC-AE 3D's (4, 32, 32))."""
    if len(shape) != spatial_dims + 2:
        raise ValueError(
            f"{who}: expected a (B, C, {'D, ' if spatial_dims == 3 else ''}H, W) shape, "
            f"got {tuple(shape)}"
        )
    names = ("D", "H", "W")[3 - spatial_dims :]
    factors = (
        tuple(downsample) if isinstance(downsample, Sequence) else (downsample,) * spatial_dims
    )
    for name, size, factor in zip(names, shape[2:], factors, strict=True):
        if int(size) % factor:
            lo = int(size) // factor * factor
            raise ValueError(
                f"{who}: spatial axis {name} has size {int(size)}, not divisible by the "
                f"autoencoder's downsample factor {factor} (crop or pad to "
                f"{lo or factor} or {lo + factor})"
            )
