"""Homoscedastic uncertainty weighting of several losses (Kendall, Gal and Cipolla, CVPR 2018).

Each loss ``L_i`` gets a learned log-variance ``s_i = log sigma_i^2`` and the total is
``sum_i exp(-s_i) L_i + s_i``: twice Kendall et al.'s regression form
``1 / (2 sigma^2) L + log sigma``, the same minimiser (``s_i* = log L_i``) and the form
JS-DDPM used for its image and mask losses. ``s`` starts at 0 (every weight 1) and is
clamped to ``clamp_range`` (JS-DDPM's ``[-5, 5]``) in the forward pass, so a loss that goes
to 0 cannot drive its weight to infinity; beyond the range the gradient of ``s_i`` is 0 and
the weight stays at ``exp(-bound)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn


class UncertaintyWeighting(nn.Module):
    """Learned log-variances for the losses ``names``; ``forward(losses) -> (total, logs)``."""

    def __init__(self, names: Sequence[str], clamp_range: tuple[float, float] = (-5.0, 5.0)):
        super().__init__()
        names = tuple(str(n) for n in names)
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(
                f"UncertaintyWeighting: needs two or more distinct losses, got {names}"
            )
        lo, hi = (float(v) for v in clamp_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(
                f"UncertaintyWeighting: clamp_range must be finite lo < hi, got {clamp_range}"
            )
        self.names, self.clamp_range = names, (lo, hi)
        self.log_vars = nn.Parameter(torch.zeros(len(names)))

    def forward(self, losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """``sum_i exp(-s_i) L_i + s_i`` over ``names`` (each must be in ``losses``), and the
        weights ``exp(-s_i)`` by name (``weight_<name>``) for the log."""
        missing = [n for n in self.names if n not in losses]
        if missing:
            raise KeyError(f"UncertaintyWeighting: no loss named {missing}; got {sorted(losses)}")
        s = self.log_vars.float().clamp(*self.clamp_range)
        total = sum(torch.exp(-s[i]) * losses[n].float() + s[i] for i, n in enumerate(self.names))
        logs = {f"weight_{n}": float(torch.exp(-s[i]).detach()) for i, n in enumerate(self.names)}
        return total, logs
