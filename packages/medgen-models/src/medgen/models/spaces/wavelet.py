"""Wavelet space: one level of the orthonormal Haar DWT from :mod:`medgen.cuda` (WDM-3D).

``encode`` returns :func:`medgen.cuda.haar_dwt` (B, C * 2^d, *spatial/2) in medgen-cuda's
subband-major order (``LL, LH, HL, HH`` in 2D, ``LLL, ..., HHH`` in 3D; channel ``s*C + c``
holds subband ``s`` of input channel ``c``), with the low band (the first C channels)
multiplied by ``low_scale``. The orthonormal low band of data in [-1, 1] spans
[-2^(d/2), 2^(d/2)] (2.83 in 3D); WDM-3D (Friedrich et al. 2024) divides LLL by 3 to bring it
back to about [-1, 1], which is the default here in 2D and 3D. ``decode`` divides the low band
by ``low_scale`` and applies :func:`medgen.cuda.haar_idwt`, so decode(encode(x)) == x up to
float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medgen.cuda import haar_dwt, haar_idwt
from medgen.models.spaces.protocol import check_input


class WaveletSpace(nn.Module):
    """Single-level Haar wavelet space with a configurable low-band scale (default 1/3)."""

    kind = "wavelet"

    def __init__(self, spatial_dims: int = 3, low_scale: float = 1.0 / 3.0) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"WaveletSpace: spatial_dims must be 2 or 3, got {spatial_dims}")
        if not low_scale > 0:
            raise ValueError(f"WaveletSpace: low_scale must be > 0, got {low_scale}")
        self.spatial_dims = int(spatial_dims)
        self.low_scale = float(low_scale)

    @property
    def subbands(self) -> int:
        """2^spatial_dims Haar subbands per input channel."""
        return 2**self.spatial_dims

    def _scale_low(self, w: torch.Tensor, factor: float) -> torch.Tensor:
        c = w.shape[1] // self.subbands
        return torch.cat((w[:, :c] * factor, w[:, c:]), dim=1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Orthonormal Haar DWT of ``x``, low band scaled by ``low_scale``."""
        check_input(x.shape, self.spatial_dims, "WaveletSpace.encode")
        return self._scale_low(haar_dwt(x), self.low_scale)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The exact inverse of :meth:`encode`."""
        check_input(z.shape, self.spatial_dims, "WaveletSpace.decode", "z")
        if z.shape[1] % self.subbands:
            raise ValueError(
                f"WaveletSpace.decode: channels ({z.shape[1]}) must be a multiple of "
                f"{self.subbands} subbands"
            )
        return haar_idwt(self._scale_low(z, 1.0 / self.low_scale))

    def latent_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """(B, C * 2^d, *spatial / 2); every spatial size must be even."""
        check_input(input_shape, self.spatial_dims, "WaveletSpace.latent_shape", "input_shape")
        b, c, *sizes = (int(s) for s in input_shape)
        for axis, s in enumerate(sizes):
            if s % 2:
                raise ValueError(
                    f"WaveletSpace.latent_shape: spatial axis {axis} has odd size {s}; the Haar "
                    "transform needs even sizes"
                )
        return (b, c * self.subbands, *[s // 2 for s in sizes])

    def channel_groups(self, channels: int) -> list[list[int]]:
        """Subband-major: data channel c is held by encoded channels ``s * channels + c``."""
        return [[s * channels + c for s in range(self.subbands)] for c in range(channels)]

    def config(self) -> dict:
        """Plain, YAML-safe description."""
        return {"kind": self.kind, "spatial_dims": self.spatial_dims, "low_scale": self.low_scale}
