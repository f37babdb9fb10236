"""Non-finite samples: found, counted per z-bin x class group, listed by index and excluded
from every metric, never silently.

A sample is *non-finite* when any value of any of its floating-point arrays (image channels,
soft masks) is NaN or infinite. :func:`screen_samples` splits a samples directory's arrays
into the finite samples (what the metrics see) and a report that the evaluation JSON and
Markdown carry and ``evaluate`` warns about; a directory where every sample is non-finite is
an error.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np


class NonFiniteSamplesError(ValueError):
    """Every sample holds NaN or infinite values: nothing to evaluate."""


def finite_samples(arrays: dict, n: int) -> np.ndarray:
    """(n,) bool: the samples whose floating-point arrays (leading axis n) are all finite."""
    ok = np.ones(n, dtype=bool)
    for value in arrays.values():
        a = np.asarray(value)
        if a.ndim and a.shape[0] == n and np.issubdtype(a.dtype, np.floating):
            ok &= np.isfinite(a.reshape(n, -1)).all(axis=1)
    return ok


def screen_samples(arrays: dict, where: str = "samples") -> tuple[dict, dict]:
    """``(finite_arrays, report)``: every per-sample array (leading axis N = len(images))
    restricted to the finite samples, and ``report``: ``n_samples``, ``n_nonfinite``,
    ``indices`` (of the non-finite samples, in the original order), ``per_group``
    (``z-bin b class c`` -> samples, non-finite) and a one-line ``warning`` (None when all
    are finite). Raises :class:`NonFiniteSamplesError`
    naming ``where`` when none is finite."""
    n = len(arrays["images"])
    ok = finite_samples(arrays, n)
    bad = np.flatnonzero(~ok)
    if n and not ok.any():
        raise NonFiniteSamplesError(
            f"{where}: all {n} samples hold NaN or infinite values; nothing to evaluate "
            "(re-sample, e.g. with fewer or other sampler steps)"
        )
    per_group: dict[str, dict] = {}
    if "z_bin" in arrays and "class_id" in arrays:
        for b, c, good in zip(arrays["z_bin"], arrays["class_id"], ok, strict=True):
            g = per_group.setdefault(
                f"z-bin {int(b)} class {int(c)}", {"samples": 0, "non_finite": 0}
            )
            g["samples"] += 1
            g["non_finite"] += int(not good)
    report = {
        "n_samples": n,
        "n_nonfinite": len(bad),
        "indices": bad.tolist(),
        "per_group": per_group,
        "warning": None,
    }
    if len(bad):
        shown = ", ".join(map(str, bad[:20])) + (", ..." if len(bad) > 20 else "")
        report["warning"] = (
            f"{len(bad)} of {n} samples hold NaN or infinite values and are excluded from every "
            f"metric (indices {shown}); the metrics are over the other {n - len(bad)}"
        )
    kept = {k: (np.asarray(v)[ok] if np.ndim(v) and len(v) == n else v) for k, v in arrays.items()}
    return kept, report


def original_index(i: int, report: dict) -> int:
    """The original index of the ``i``-th finite sample."""
    return int(np.setdiff1d(np.arange(report["n_samples"]), report["indices"])[i])


def with_original_indices(scores: list, report: dict) -> list:
    """Per-sample scores (``.index`` into the finite samples) re-indexed to the samples'
    original order."""
    kept = np.setdiff1d(np.arange(report["n_samples"]), report["indices"])
    return [replace(s, index=int(kept[s.index])) for s in scores]
