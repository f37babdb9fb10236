"""Optimizers and learning-rate schedules built from :class:`OptimizerSettings`."""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial

import torch

from medgen.train.engine.settings import OptimizerSettings


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_constant(step: int, warmup: int) -> float:
    """LR multiplier: linear warm-up to 1, then 1."""
    return (step + 1) / warmup if step < warmup else 1.0


def build_optimizer(
    params: Iterable[torch.nn.Parameter], s: OptimizerSettings
) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD over the parameters that require gradients."""
    params = [p for p in params if p.requires_grad]
    if s.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, s: OptimizerSettings, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over optimizer updates; its state (last_epoch) round-trips through
    ``weights_only`` loading, the lambda itself is rebuilt from the settings."""
    if s.lr_schedule == "cosine":
        fn = partial(warmup_cosine, total=total_steps, warmup=s.warmup_steps, floor=s.lr_floor)
    else:
        fn = partial(warmup_constant, warmup=s.warmup_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
