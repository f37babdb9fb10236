"""Adaptive early stopping of a sampler (seed 004: stop on a small update norm)."""

from __future__ import annotations

import torch


class EarlyStop:
    """Stop sampling once the relative update ||x_next - x|| / ||x|| falls below ``threshold``.

    The norm is taken per sample (float32) and the worst sample decides, so a batch stops only
    when every sample has converged. It triggers only while the updates are shrinking (this
    step's ratio below the previous one): starting from pure noise the first updates are small
    too (DDIM moves x_T by ~1% per step at first), which is not convergence. ``min_steps``
    steps always run. When a sampler stops it
    returns its last x0 prediction (the jump to the clean end: DDIM/DDPM to alpha_bar = 1, Euler
    to t = 0), and this object records ``stopped_at`` (the step index i, 0-based, after which
    it stopped), ``stopped_t`` (that step's timestep) and the ``ratios`` seen. ``stopped_at`` is
    None when the sampler ran to the end. Reused objects are reset at the start of each run.
    """

    def __init__(self, threshold: float = 0.01, min_steps: int = 1) -> None:
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        self.threshold = float(threshold)
        self.min_steps = int(min_steps)
        self.reset()

    def reset(self) -> None:
        """Forget the previous run (done by every sampler at its start)."""
        self.stopped_at: int | None = None
        self.stopped_t: float | None = None
        self.ratios: list[float] = []

    def __call__(self, i: int, t, x: torch.Tensor, x_next: torch.Tensor) -> bool:
        """Record step ``i`` (x -> x_next at timestep t); True means stop now."""
        dx = (x_next.float() - x.float()).flatten(1).norm(dim=1)
        ref = x.float().flatten(1).norm(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
        ratio = float((dx / ref).max())
        shrinking = bool(self.ratios) and ratio < self.ratios[-1]
        self.ratios.append(ratio)
        if i + 1 >= self.min_steps and shrinking and ratio < self.threshold:
            self.stopped_at, self.stopped_t = i, float(t)
            return True
        return False
