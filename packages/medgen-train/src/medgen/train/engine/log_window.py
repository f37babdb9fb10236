"""Averages of log values over a log window (the updates between two metrics rows)."""

from __future__ import annotations

import math


class LogWindow:
    """Accumulates floats (averaged per update) and ``(sum, count)`` pairs (summed, then
    divided: a pair whose count stays 0 over the window reads as NaN)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}
        self.images = 0
        self.seconds = 0.0

    def add(self, logs: dict) -> None:
        """Add one update's (or micro-batch's) log values."""
        for key, value in logs.items():
            if isinstance(value, tuple):
                total, count = float(value[0]), float(value[1])
            else:
                total, count = float(value), 1.0
            self.sums[key] = self.sums.get(key, 0.0) + total
            self.counts[key] = self.counts.get(key, 0.0) + count

    def means(self) -> dict[str, float]:
        """Each key's mean over the window (NaN for a pair whose count stayed 0)."""
        return {
            k: (s / self.counts[k] if self.counts[k] else math.nan) for k, s in self.sums.items()
        }

    def reset(self) -> None:
        """Start a new window."""
        self.sums.clear()
        self.counts.clear()
        self.images = 0
        self.seconds = 0.0
