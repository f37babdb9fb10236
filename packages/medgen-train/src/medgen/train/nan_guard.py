"""The NaN guard: an update whose loss or gradient is not finite is skipped, counted and
logged; after ``limit`` consecutive skips the run stops with :class:`NonFiniteError` and the
checkpoints already written stay as they are (no weights were touched by a skipped update)."""

from __future__ import annotations

import math

from medgen.train.errors import MedGenError


class NonFiniteError(MedGenError, FloatingPointError):
    """Too many consecutive non-finite updates."""


class NanGuard:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.skipped = 0  # total over the run (restored on resume)
        self.consecutive = 0

    @staticmethod
    def finite(loss: float, grad_norm: float) -> bool:
        return math.isfinite(loss) and math.isfinite(grad_norm)

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
                f"good checkpoint: {where}. Lower training.lr, enable grad_clip, check the "
                f"data, or raise training.max_consecutive_skips."
            )

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = int(state.get("skipped", 0))
        self.consecutive = int(state.get("consecutive", 0))
