"""Fixed sin-cos position embeddings on a 2D or 3D patch grid (MAE / DiT), and the sinusoidal
timestep features.

:func:`sincos_position_embedding` gives each grid axis ``2 * (dim // (2 n))`` features,
``[sin(p w_k), cos(p w_k)]`` with ``w_k = 10000^(-k / (d / 2))``, the last axis first (as
MAE's and diffusers' ``get_2d_sincos_pos_embed`` order width before height), any remainder
zero. In 2D it equals diffusers' ``get_2d_sincos_pos_embed`` (tested). Computed in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.reshape(-1, 1).to(torch.float64) * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_position_embedding(dim: int, grid: Sequence[int]) -> torch.Tensor:
    """(prod(grid), dim) float32 embedding of the row-major flattened ``grid``."""
    n = len(grid)
    per_axis = 2 * (dim // (2 * n))
    if per_axis < 2:
        raise ValueError(f"position embedding: dim {dim} too small for a {n}D grid")
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid], indexing="ij")
    parts = [_sincos_1d(per_axis, coords[axis]) for axis in reversed(range(n))]
    emb = torch.cat(parts, dim=1)
    if emb.shape[1] < dim:
        emb = torch.nn.functional.pad(emb, (0, dim - emb.shape[1]))
    return emb.to(torch.float32)


def timestep_features(
    t: torch.Tensor, dim: int, *, freq_shift: float = 1.0, max_period: float = 10000.0
) -> torch.Tensor:
    """(B,) float32 times -> (B, dim) ``[cos(t f_k), sin(t f_k)]`` with
    ``f_k = max_period^(-k / (dim / 2 - freq_shift))``, in float32.

    ``freq_shift=1`` is diffusers' ``Timesteps(flip_sin_to_cos=True, downscale_freq_shift=1)``
    (its ``DiTTransformer2DModel``); ``freq_shift=0`` is the original DiT / ADM / U-ViT
    ``timestep_embedding``.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = t.to(torch.float32).reshape(-1, 1) * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb
