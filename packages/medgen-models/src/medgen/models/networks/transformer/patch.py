"""Patch embedding and its inverse for 2D and 3D inputs, and the input checks every
transformer makes before it patches.

``PatchEmbed`` is a strided convolution (kernel = stride = ``patch_size``, as in ViT and DiT)
followed by flattening the grid row-major into tokens (B, N, D); :func:`unpatchify` maps
(B, N, prod(patch) * C) tokens whose features are ordered (patch axes..., channel) back to
(B, C, *spatial), which is diffusers' ``einsum("nhwpqc->nchpwq")`` in 2D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

CONV = {2: nn.Conv2d, 3: nn.Conv3d}


def check_input(
    name: str,
    x: torch.Tensor,
    spatial_dims: int,
    in_channels: int,
    multiple: int,
    why: str = "the patch size",
) -> tuple[int, ...]:
    """The spatial shape of ``x`` after checking its dims, channels and divisibility by
    ``multiple`` (the patch size times any downsampling); a ValueError naming the mismatch."""
    if x.ndim != spatial_dims + 2:
        raise ValueError(
            f"{name} was built for {spatial_dims}D inputs (B, C{', D' * (spatial_dims == 3)}, "
            f"H, W), got a {x.ndim}-dim input of shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{name} expects {in_channels} input channels (including priors), got "
            f"{x.shape[1]} (shape {tuple(x.shape)})"
        )
    spatial = tuple(int(s) for s in x.shape[2:])
    bad = [s for s in spatial if s % multiple]
    if bad:
        raise ValueError(
            f"{name}: every spatial size must be divisible by {multiple} ({why}), got "
            f"spatial shape {spatial}"
        )
    return spatial


class PatchEmbed(nn.Module):
    """(B, C, *spatial) -> (B, N, dim) tokens by a ``patch_size``-strided convolution."""

    def __init__(self, spatial_dims: int, in_channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        if spatial_dims not in CONV:
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        self.spatial_dims, self.patch_size = int(spatial_dims), int(patch_size)
        self.proj = CONV[spatial_dims](in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """(tokens (B, N, dim), patch grid shape)."""
        h = self.proj(x)
        grid = tuple(h.shape[2:])
        return h.flatten(2).transpose(1, 2), grid


def unpatchify(
    tokens: torch.Tensor, grid: Sequence[int], patch_size: int, channels: int
) -> torch.Tensor:
    """(B, N, patch_size^n * channels) tokens on ``grid`` -> (B, channels, *grid * patch_size)."""
    n = len(grid)
    b = tokens.shape[0]
    h = tokens.reshape(b, *grid, *([patch_size] * n), channels)
    # (B, g0..gn, p0..pn, C) -> (B, C, g0, p0, g1, p1, ...)
    order = [0, 2 * n + 1] + [i for k in range(n) for i in (1 + k, 1 + n + k)]
    h = h.permute(*order)
    return h.reshape(b, channels, *(g * patch_size for g in grid))


def merge_tokens(tokens: torch.Tensor, grid: Sequence[int]) -> tuple[torch.Tensor, tuple]:
    """(B, N, D) on ``grid`` -> (B, N / 2^n, 2^n * D): each 2x2 (2x2x2) block of neighbours
    concatenated (features ordered (offset axes..., D)), on the halved grid."""
    n = len(grid)
    b, _, d = tokens.shape
    h = tokens.reshape(b, *[s for g in grid for s in (g // 2, 2)], d)
    # (B, g0/2, 2, g1/2, 2, ..., D) -> (B, g0/2, g1/2, ..., 2, 2, ..., D)
    order = [0] + [1 + 2 * k for k in range(n)] + [2 + 2 * k for k in range(n)] + [2 * n + 1]
    half = tuple(g // 2 for g in grid)
    return h.permute(*order).reshape(b, -1, (2**n) * d), half


def split_tokens(tokens: torch.Tensor, half_grid: Sequence[int]) -> tuple[torch.Tensor, tuple]:
    """The inverse of :func:`merge_tokens`: (B, N, 2^n * D) on ``half_grid`` -> (B, 2^n N, D)."""
    n = len(half_grid)
    b, _, f = tokens.shape
    d = f // (2**n)
    h = tokens.reshape(b, *half_grid, *([2] * n), d)
    order = [0] + [i for k in range(n) for i in (1 + k, 1 + n + k)] + [2 * n + 1]
    grid = tuple(g * 2 for g in half_grid)
    return h.permute(*order).reshape(b, -1, d), grid
