"""The hooks a trainer gives the engine: a :class:`Task` and a :class:`BatchSource`.

A trainer is not a subclass of the engine: it is a small object with a ``loss`` method (and
optionally ``evaluate``, ``state_dict`` / ``load_state_dict``), and a batch source that knows
its position in the data. The engine owns everything else: optimizer, schedule, AMP,
accumulation, clipping, the NaN guard, EMA, DDP gradient averaging, checkpoints, logging,
signals.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

# A log value is a float (averaged over the log window) or a (sum, count) pair (summed, then
# divided: e.g. a loss per timestep bucket that only some samples of a batch fall into).
LogValue = float | tuple[float, float]


@runtime_checkable
class Task(Protocol):
    def loss(self, model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict]:
        """Scalar loss of ``batch`` (to minimise) and a dict of log values.

        ``model`` is the network to call (possibly compiled); ``step`` counts optimizer
        updates done so far (0-based). Must not call ``backward``.
        """
        ...


class Evaluates(Protocol):
    def evaluate(self, model: nn.Module, ema_model: nn.Module | None, step: int) -> dict:
        """Metrics (floats) at 1-based ``step``; runs on rank 0 under ``torch.no_grad``."""
        ...


class BatchSource(Protocol):
    """Yields batches and can say and restore exactly where it is in the data."""

    batch_size: int  # samples per batch on this rank (for images/s)

    def next_batch(self) -> Any: ...

    def position(self) -> dict:
        """JSON-able data position for ``state.json`` (e.g. epoch and offset)."""
        ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def task_state(task: object) -> dict:
    fn = getattr(task, "state_dict", None)
    return fn() if callable(fn) else {}


def load_task_state(task: object, state: dict | None) -> None:
    fn = getattr(task, "load_state_dict", None)
    if callable(fn) and state:
        fn(state)
