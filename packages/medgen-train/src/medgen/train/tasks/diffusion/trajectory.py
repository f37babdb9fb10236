"""Denoising trajectories: the sampler's x0 prediction of the first few samples at a few
evenly spaced steps, captured from the per-step callback and decoded to data space."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def trajectory_steps(steps: int, frames: int) -> np.ndarray:
    """``frames`` step indices evenly spaced over ``range(steps)``, first and last included."""
    if steps < 1 or frames < 1:
        raise ValueError(f"trajectory of {frames} frames over {steps} steps")
    return np.unique(np.round(np.linspace(0, steps - 1, min(frames, steps))).astype(np.int64))


class TrajectoryRecorder:
    """Keeps the x0 predictions of plan samples ``0..k-1`` after the steps of
    :func:`trajectory_steps`; pass it as ``on_step`` to ``DiffusionGenerator.generate``.
    ``decode`` maps the model's space to data space (a latent space's decoder)."""

    def __init__(self, k: int, steps: int, decode: Callable, frames: int = 6) -> None:
        self.k, self.decode = k, decode
        self.steps = trajectory_steps(steps, frames)
        self.times = np.full(len(self.steps), np.nan)
        self.frames: dict[tuple[int, int], np.ndarray] = {}

    def __call__(self, info: dict, indices: list[int]) -> None:
        """Record ``info["x0"]`` of the batch's samples below ``k`` at a chosen step."""
        hit = np.flatnonzero(self.steps == info["i"])
        rows = [r for r, i in enumerate(indices) if i < self.k]
        if not hit.size or not rows or info.get("x0") is None:
            return
        f = int(hit[0])
        self.times[f] = float(info["t"])
        x0 = self.decode(info["x0"][rows]).float().clamp(-1, 1).cpu().numpy()
        for r, x in zip(rows, x0, strict=True):
            self.frames[(indices[r], f)] = x

    def arrays(self) -> dict[str, np.ndarray]:
        """``x0`` (K, F, C, *spatial), ``steps`` and ``t`` (F,), ``index`` (K,) of the
        samples recorded; empty when none was. Only the frames every recorded sample reached
        are kept: a batch ended by ``sample.early_stop`` has none after its last step."""
        index = sorted({i for i, _ in self.frames})
        kept = [f for f in range(len(self.steps)) if all((i, f) in self.frames for i in index)]
        if not index or not kept:
            return {}
        x0 = np.stack([np.stack([self.frames[(i, f)] for f in kept]) for i in index])
        return {"x0": x0.astype(np.float32), "steps": self.steps[kept], "t": self.times[kept],
                "index": np.asarray(index, dtype=np.int64)}  # fmt: skip
