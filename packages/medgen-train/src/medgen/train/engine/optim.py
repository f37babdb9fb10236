"""Optimizers and learning-rate schedules built from :class:`OptimizerSettings`, and the
state one objective optimises with."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

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


@dataclass
class ObjectiveOptimizer:
    """One objective's optimizer, LR schedule, grad scaler and settings, saved and restored
    together (a generator and a critic each have one)."""

    objective: Any  # the Objective
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    settings: OptimizerSettings

    @property
    def grad_clip(self) -> float:
        """The objective's max gradient norm (0: no clipping)."""
        return self.settings.grad_clip

    def state_dict(self) -> dict:
        """The optimizer, schedule and scaler states."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the moments, the schedule's position and the scaler; then apply this run's
        lr, weight decay, betas and momentum (a resumed run may lower the lr; unchanged
        settings give back exactly the saved values)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        s = self.settings
        self.scheduler.base_lrs = [s.lr] * len(self.optimizer.param_groups)
        epoch = self.scheduler.last_epoch
        lrs = [s.lr * fn(epoch) for fn in self.scheduler.lr_lambdas]
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group.update(initial_lr=s.lr, lr=lr, weight_decay=s.weight_decay)
            if "betas" in group:
                group["betas"] = tuple(s.betas)
            if "momentum" in group:
                group["momentum"] = s.momentum
        self.scheduler._last_lr = lrs
