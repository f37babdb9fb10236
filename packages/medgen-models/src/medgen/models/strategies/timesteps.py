"""Inference timesteps: exactly ``n`` decreasing integers in [0, T) for any ``n``."""

from __future__ import annotations

import numpy as np
import torch

SPACINGS = ("trailing", "leading", "linspace")


def inference_timesteps(
    num_train_timesteps: int, n: int, spacing: str = "trailing"
) -> torch.Tensor:
    """Timesteps a sampler visits, from noisiest to cleanest (Lin et al. 2024, table 2).

    - ``trailing``: starts at T-1 (so sampling starts from pure noise), e.g. T=1000, n=100:
      999, 989, ..., 9.
    - ``leading``: multiples of T//n, e.g. 990, 980, ..., 0 (never visits T-1).
    - ``linspace``: round(linspace(0, T-1, n)) reversed.
    """
    T = int(num_train_timesteps)
    if not 1 <= n <= T:
        raise ValueError(f"number of inference steps must be in [1, {T}], got {n}")
    if spacing == "trailing":
        # arange with a float step can overshoot by one element (~-1e-14, e.g. T=1000, n=61):
        # keep exactly the first n, as the intended grid T - k T/n, k = 0..n-1
        ts = np.round(np.arange(T, 0, -T / n)[:n]).astype(np.int64) - 1
    elif spacing == "leading":
        ts = (np.arange(n) * (T // n))[::-1].astype(np.int64)
    elif spacing == "linspace":
        ts = np.round(np.linspace(0, T - 1, n))[::-1].astype(np.int64)
    else:
        raise ValueError(f"unknown spacing {spacing!r}; known: {SPACINGS}")
    ts = np.unique(ts)[::-1]
    if ts.size != n:  # only possible through rounding collisions; never silently return fewer
        raise ValueError(f"{spacing} spacing gives {ts.size} distinct steps for n={n}, T={T}")
    return torch.from_numpy(ts.copy())
