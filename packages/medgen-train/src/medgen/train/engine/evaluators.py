"""Evaluators: validation that runs on every rank and returns scalars and images.

An evaluator is any object with ``metric_names()`` (what it will report, so a
``best_metric`` can be checked before training) and ``evaluate(modules, ema, step, ctx)``
returning an :class:`Evaluation`: per-rank ``(sum, count)`` pairs, which the engine sums over
ranks and divides, and images (rank 0's only). An optional ``summarize(means)`` turns the
means into the reported metrics (e.g. a mean squared error into a PSNR). The engine calls
it under ``torch.no_grad`` with every module in eval mode; ``modules`` are the plain trained
and frozen modules, ``ema`` the EMA copies (empty without EMA).

Images are float arrays in [0, 1] of shape (H, W) or (H, W, 3); the engine writes them as
PNG under ``RUN/eval/step_N/`` and to TensorBoard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medgen.train.engine import distributed
from medgen.train.engine.distributed import DistContext


@dataclass
class Evaluation:
    """One evaluator's result on one rank."""

    sums: dict[str, tuple[float, float]] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)


def reduce(evaluation: Evaluation, ctx: DistContext) -> dict[str, float]:
    """Sums and counts over ranks, divided: the mean of every scalar over all ranks' items."""
    sums = {k: float(s) for k, (s, _) in evaluation.sums.items()}
    counts = {k: float(c) for k, (_, c) in evaluation.sums.items()}
    sums = distributed.sum_over_ranks(sums, ctx)
    counts = distributed.sum_over_ranks(counts, ctx)
    return {k: (sums[k] / counts[k] if counts[k] else float("nan")) for k in sums}


def write_images(images: dict[str, np.ndarray], directory: Path) -> list[Path]:
    """Each image as ``directory/<name>.png``; returns the paths."""
    import matplotlib.image as mpimg

    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, image in images.items():
        path = directory / f"{name}.png"
        mpimg.imsave(path, np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1)
        out.append(path)
    return out
