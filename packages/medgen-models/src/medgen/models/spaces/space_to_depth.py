"""Space-to-depth: a lossless rearrangement of r^d pixel blocks into channels (no weights).

2D is exactly :func:`torch.nn.functional.pixel_unshuffle` (channel ``c*r*r + i*r + j`` holds
offset (i, j) of input channel ``c``); 3D extends the same order to
``c*r^3 + (i*r + j)*r + k`` for offsets (i, j, k) along (D, H, W).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medgen.models.spaces.protocol import check_input


def space_to_depth(x: torch.Tensor, factor: int, spatial_dims: int) -> torch.Tensor:
    """(B, C, *r*s) -> (B, C * r^d, *s); every spatial size must be divisible by ``factor``."""
    check_input(x.shape, spatial_dims, "space_to_depth")
    b, c, *sizes = x.shape
    _check_divisible(sizes, factor, "space_to_depth")
    d = spatial_dims
    split = [b, c]
    for s in sizes:
        split += [s // factor, factor]
    y = x.reshape(split)
    # (B, C, s0, r, s1, r, ...) -> (B, C, r, r, ..., s0, s1, ...)
    perm = [0, 1, *[3 + 2 * k for k in range(d)], *[2 + 2 * k for k in range(d)]]
    return y.permute(perm).reshape(b, c * factor**d, *[s // factor for s in sizes])


def depth_to_space(z: torch.Tensor, factor: int, spatial_dims: int) -> torch.Tensor:
    """Exact inverse of :func:`space_to_depth`."""
    check_input(z.shape, spatial_dims, "depth_to_space", "z")
    b, cz, *sizes = z.shape
    d = spatial_dims
    if cz % factor**d:
        raise ValueError(
            f"depth_to_space: channels ({cz}) must be a multiple of factor**{d} = {factor**d}"
        )
    c = cz // factor**d
    y = z.reshape(b, c, *([factor] * d), *sizes)
    # (B, C, r0, r1, ..., s0, s1, ...) -> (B, C, s0, r0, s1, r1, ...)
    perm = [0, 1]
    for k in range(d):
        perm += [2 + d + k, 2 + k]
    return y.permute(perm).reshape(b, c, *[s * factor for s in sizes])


def _check_divisible(sizes: Sequence[int], factor: int, name: str) -> None:
    for axis, s in enumerate(sizes):
        if s % factor:
            raise ValueError(
                f"{name}: spatial axis {axis} has size {s}, not divisible by factor {factor}"
            )


class SpaceToDepth(nn.Module):
    """Space-to-depth space with block ``factor`` along every spatial axis (2D and 3D)."""

    kind = "space_to_depth"

    def __init__(self, spatial_dims: int = 2, factor: int = 2) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"SpaceToDepth: spatial_dims must be 2 or 3, got {spatial_dims}")
        if int(factor) != factor or factor < 1:
            raise ValueError(f"SpaceToDepth: factor must be a positive integer, got {factor}")
        self.spatial_dims = int(spatial_dims)
        self.factor = int(factor)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Each factor^d block of voxels folded into channels."""
        return space_to_depth(x, self.factor, self.spatial_dims)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`encode`."""
        return depth_to_space(z, self.factor, self.spatial_dims)

    def latent_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """(B, C * factor^d, *spatial / factor)."""
        check_input(input_shape, self.spatial_dims, "SpaceToDepth.latent_shape", "input_shape")
        b, c, *sizes = (int(s) for s in input_shape)
        _check_divisible(sizes, self.factor, "SpaceToDepth.latent_shape")
        return (b, c * self.factor**self.spatial_dims, *[s // self.factor for s in sizes])

    def channel_groups(self, channels: int) -> list[list[int]]:
        """Channel-major: data channel c is held by channels ``c * r^d .. (c + 1) * r^d - 1``."""
        k = self.factor**self.spatial_dims
        return [list(range(c * k, (c + 1) * k)) for c in range(channels)]

    def config(self) -> dict:
        """Plain, YAML-safe description."""
        return {"kind": self.kind, "spatial_dims": self.spatial_dims, "factor": self.factor}
