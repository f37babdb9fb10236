"""The NaN guard.

* An update whose loss or gradient is not finite is skipped, counted and logged; after
  ``limit`` consecutive skips the run stops with :class:`NonFiniteError` and the checkpoints
  already written stay as they are (no weights were touched by a skipped update).
* An optimizer step that leaves a non-finite weight (or EMA value) is *rolled back*: the
  weights, buffers and optimizer state (and the EMA) are restored from the last verified
  in-memory :class:`Snapshot` (taken before a step whose loss and gradient were finite, every
  ``training.snapshot_every`` updates), counted and logged; after ``max_rollbacks`` of them in
  a row the run stops with a one-line error naming ``training.lr``.
* No checkpoint is written from non-finite weights, nor from weights whose loss was not
  finite (a skip streak after a step, what ``lr=1e30`` produces); "last good checkpoint" is
  one whose weights then gave a finite loss.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch

from medgen.train.errors import MedGenError


class NonFiniteError(MedGenError, FloatingPointError):
    """Too many consecutive non-finite updates, or rolled-back steps."""


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every tensor's L2 norm is finite (one host sync): every element finite, and
    no tensor so large that its norm overflows its dtype (float32: elements of ~1e19 and
    more), which only an exploded state has; such a state counts as non-finite."""
    tensors = [t.detach() for t in tensors]
    if not tensors:
        return True
    norms = torch._foreach_norm([t.float() if not t.is_floating_point() else t for t in tensors])
    return bool(torch.isfinite(torch.stack(norms)).all())


def _copy(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    if dst:
        torch._foreach_copy_(dst, src)


class Snapshot:
    """An in-memory copy of some tensors and an optimizer's state, to roll back to.

    ``tensors`` are copied in place (weights, buffers, EMA copies); ``optimizer`` is copied
    state by state (moments, step counts; the hyperparameters stay the schedule's). After the
    first :meth:`take` the copies are reused while the state keeps its layout, so a snapshot
    is one batched device copy (``_foreach_copy_``) and no allocation.
    """

    def __init__(self, tensors: list[torch.Tensor], optimizer: torch.optim.Optimizer | None):
        self.tensors = tensors
        self.optimizer = optimizer
        self.step = -1  # the update index it was taken at (-1: never)
        self._copies: list[torch.Tensor] = []
        self._layout: list[tuple] = []  # (param index, key, shape, dtype, device) per entry
        self._state: list = []  # the copied values, in the order of the layout

    def _entries(self) -> list[tuple[int, str, object]]:
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        return [
            (i, k, v)
            for i, p in enumerate(params)
            for k, v in self.optimizer.state.get(p, {}).items()
        ]

    @staticmethod
    def _layout_of(entries) -> list[tuple]:
        return [
            (i, k, *((v.shape, v.dtype, v.device) if isinstance(v, torch.Tensor) else ()))
            for i, k, v in entries
        ]

    @torch.no_grad()
    def take(self, step: int) -> None:
        """Copy the tensors and the optimizer state now (their values are verified good)."""
        if not self._copies:
            self._copies = [t.detach().clone() for t in self.tensors]
        else:
            _copy(self._copies, [t.detach() for t in self.tensors])
        if self.optimizer is not None:
            entries = self._entries()
            layout = self._layout_of(entries)
            if layout == self._layout:
                pairs = [
                    (d, v) for d, (_, _, v) in zip(self._state, entries, strict=True)
                    if isinstance(v, torch.Tensor)
                ]  # fmt: skip
                _copy([d for d, _ in pairs], [v for _, v in pairs])
                for j, (_, _, v) in enumerate(entries):
                    if not isinstance(v, torch.Tensor):
                        self._state[j] = copy.deepcopy(v)
            else:
                self._layout = layout
                self._state = [
                    v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                    for _, _, v in entries
                ]
        self.step = step

    @torch.no_grad()
    def restore(self) -> None:
        """Put the copied values back (the optimizer's state as it was, entries it did not
        have then removed)."""
        _copy([t.detach() for t in self.tensors], self._copies)
        if self.optimizer is None:
            return
        entries = self._entries()
        if self._layout_of(entries) == self._layout:
            pairs = [
                (v, d) for d, (_, _, v) in zip(self._state, entries, strict=True)
                if isinstance(v, torch.Tensor)
            ]  # fmt: skip
            _copy([v for v, _ in pairs], [d for _, d in pairs])
            for j, (i, k, v) in enumerate(entries):
                if not isinstance(v, torch.Tensor):
                    self._params_state(i)[k] = copy.deepcopy(self._state[j])
            return
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for p in params:
            self.optimizer.state.pop(p, None)
        for (i, k, *_), v in zip(self._layout, self._state, strict=True):
            value = v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
            self.optimizer.state[params[i]][k] = value

    def _params_state(self, i: int) -> dict:
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        return self.optimizer.state[params[i]]


class NanGuard:
    """Counts skipped updates (raises after ``limit`` of them in a row) and rolled-back steps
    (raises after ``max_rollbacks`` in a row)."""

    def __init__(self, limit: int, max_rollbacks: int = 3) -> None:
        self.limit = limit
        self.max_rollbacks = max_rollbacks
        self.skipped = 0  # total over the run (restored on resume)
        self.consecutive = 0
        self.rollbacks = 0  # total over the run (restored on resume)
        self.consecutive_rollbacks = 0

    @staticmethod
    def finite(*values: float) -> bool:
        """Whether every loss / gradient-norm value is finite."""
        return all(math.isfinite(v) for v in values)

    def record(
        self, ok: bool, step: int, last_good: str | None, unverified_since: int | None = None
    ) -> None:
        """Count an update; raise after ``limit`` non-finite ones in a row.

        ``unverified_since``: the update whose step produced the current weights, when no
        finite loss has been seen on them since (they are then the likely cause)."""
        if ok:
            self.consecutive = 0
            return
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.limit:
            where = last_good or "none verified yet"
            if unverified_since is not None:
                cause = (
                    f"no finite loss since update {unverified_since + 1} changed the weights, "
                    "so the weights are rolled back to the last verified state and not saved "
                    "(training.lr too large?); "
                )
            else:
                cause = "the weights were not updated by them; "
            raise NonFiniteError(
                f"{self.consecutive} consecutive updates with a non-finite loss or gradient "
                f"(up to step {step + 1}); stopped. {cause}last good checkpoint: {where}. "
                "Lower training.lr, enable training.grad_clip, check the data, or raise "
                "training.max_consecutive_skips."
            )

    def stepped(self) -> None:
        """An optimizer step left every weight finite: the rollback streak ends."""
        self.consecutive_rollbacks = 0

    def rolled_back(
        self, step: int, objective: str, what: str, lr: float, snapshot_step: int,
        last_good: str | None,
    ) -> None:  # fmt: skip
        """Count a rolled-back step; raise after ``max_rollbacks`` in a row."""
        self.rollbacks += 1
        self.consecutive_rollbacks += 1
        if self.consecutive_rollbacks >= self.max_rollbacks:
            where = last_good or "none verified yet"
            raise NonFiniteError(
                f"{self.consecutive_rollbacks} consecutive updates (up to step {step + 1}, "
                f"{objective}) made {what} non-finite although loss and gradient were finite, "
                f"each rolled back to the verified state of update {snapshot_step + 1}; "
                f"stopped without saving them. Lower training.lr (now {lr:g}) or enable "
                f"training.grad_clip. Last good checkpoint: {where}."
            )

    def state_dict(self) -> dict:
        """Counters for the checkpoint."""
        return {
            "skipped": self.skipped,
            "consecutive": self.consecutive,
            "rollbacks": self.rollbacks,
            "consecutive_rollbacks": self.consecutive_rollbacks,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the counters."""
        self.skipped = int(state.get("skipped", 0))
        self.consecutive = int(state.get("consecutive", 0))
        self.rollbacks = int(state.get("rollbacks", 0))
        self.consecutive_rollbacks = int(state.get("consecutive_rollbacks", 0))
