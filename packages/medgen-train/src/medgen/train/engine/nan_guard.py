"""The NaN guard: an update whose loss or gradient is not finite is skipped, counted and
logged; after ``limit`` consecutive skips the run stops with :class:`NonFiniteError` and the
checkpoints already written stay as they are (no weights were touched by a skipped update).
An optimizer step that leaves a non-finite weight (``training.lr=inf``) stops the run at
once: no checkpoint is written from such weights, so "last good" is always finite."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from medgen.train.errors import MedGenError


class NonFiniteError(MedGenError, FloatingPointError):
    """Too many consecutive non-finite updates, or an update that made a weight non-finite."""


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite (one host sync)."""
    tensors = [t.detach() for t in tensors]
    if not tensors:
        return True
    norms = torch._foreach_norm([t.float() if not t.is_floating_point() else t for t in tensors])
    return bool(torch.isfinite(torch.stack(norms)).all())


class NanGuard:
    """Counts skipped updates; raises after ``limit`` of them in a row."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.skipped = 0  # total over the run (restored on resume)
        self.consecutive = 0

    @staticmethod
    def finite(*values: float) -> bool:
        """Whether every loss / gradient-norm value is finite."""
        return all(math.isfinite(v) for v in values)

    def record(self, ok: bool, step: int, last_checkpoint: str | None) -> None:
        """Count an update; raise after ``limit`` non-finite ones in a row."""
        if ok:
            self.consecutive = 0
            return
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.limit:
            where = last_checkpoint or "none written yet"
            raise NonFiniteError(
                f"{self.consecutive} consecutive updates with a non-finite loss or gradient "
                f"(up to step {step + 1}); stopped. The weights were not updated by them; last "
                f"good checkpoint: {where}. Lower training.lr, enable training.grad_clip, check "
                "the data, or raise training.max_consecutive_skips."
            )

    @staticmethod
    def weights_failed(step: int, objective: str, last_checkpoint: str | None) -> NonFiniteError:
        """The error for an optimizer step that produced non-finite weights."""
        where = last_checkpoint or "none written yet"
        return NonFiniteError(
            f"update {step + 1} ({objective}) made weights non-finite although its loss and "
            f"gradient were finite (training.lr too large?); stopped without saving them. Last "
            f"good checkpoint: {where}."
        )

    def state_dict(self) -> dict:
        """Counters for the checkpoint."""
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        """Restore the counters."""
        self.skipped = int(state.get("skipped", 0))
        self.consecutive = int(state.get("consecutive", 0))
