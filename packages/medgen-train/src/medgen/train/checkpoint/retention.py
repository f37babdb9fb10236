"""Which checkpoints a run keeps: the last N, plus the best by a metric (``checkpoints/best``).

``checkpoints/best`` is a symlink like ``latest``; the metric it was chosen by is read back
from that checkpoint's ``state.json``, so the choice survives restarts.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from medgen.train.checkpoint.store import INFO_FILE, link, step_dirs


def remove_stale_temporaries(run_dir: str | Path) -> list[str]:
    """Delete half-written ``.tmp-*`` checkpoint directories a killed process of this run
    left behind (the run directory is locked, so no live writer owns them)."""
    root = Path(run_dir) / "checkpoints"
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-") and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    return removed


def _metric_of(ckpt: Path, metric: str) -> float | None:
    try:
        value = json.loads((ckpt / INFO_FILE).read_text())["metrics"][metric]
    except (OSError, KeyError, ValueError, TypeError):
        return None
    return float(value) if value is not None and math.isfinite(float(value)) else None


def update_best(run_dir: str | Path, ckpt: Path, metric: str, mode: str) -> bool:
    """Point ``checkpoints/best`` at ``ckpt`` if its ``metric`` beats the current best."""
    root = Path(run_dir) / "checkpoints"
    new = _metric_of(ckpt, metric)
    if new is None:
        return False
    best = root / "best"
    old = _metric_of(best.resolve(), metric) if best.exists() else None
    if old is not None and not (new > old if mode == "max" else new < old):
        return False
    link(root, "best", ckpt)
    return True


def prune(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` step directories; never ``latest`` or
    ``best``. Returns what was deleted."""
    if keep_last <= 0:
        return []
    root = Path(run_dir) / "checkpoints"
    protected = {(root / n).resolve() for n in ("latest", "best") if (root / n).exists()}
    removed = []
    for p in step_dirs(run_dir)[:-keep_last]:
        if p.resolve() not in protected:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
