"""Bootstrap confidence intervals for two-sample statistics (generated vs reference).

Each replicate resamples the generated and the reference set independently, with
replacement, at their own sizes, and recomputes the statistic. Two intervals:

- **percentile**: the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the replicates;
- **BCa** (Efron 1987): the percentile levels shifted by the bias correction
  ``z0 = Phi^-1(#{theta* < theta} + #{theta* = theta} / 2) / B)`` and the acceleration from a
  two-sample jackknife (scipy.stats.bootstrap's multi-sample formula). The jackknife leaves
  out groups: with more than ``jackknife_groups`` samples in a set it deletes one of that many
  random equal groups at a time (the grouped jackknife; exact leave-one-out otherwise).

Samples are *units* (one per generated / reference item; a 2.5D volume's slices stay
together), so the statistic is a function of two index arrays. The sizes, seed, number of
replicates and groups are recorded with every interval.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import norm

Statistic = Callable[[np.ndarray, np.ndarray], float]


def _jackknife(stat: Statistic, n_gen: int, n_ref: int, groups: int, rng) -> list[np.ndarray]:
    full_g, full_r = np.arange(n_gen), np.arange(n_ref)
    out = []
    for which, n in ((0, n_gen), (1, n_ref)):
        parts = np.array_split(rng.permutation(n), min(groups, n))
        values = []
        for part in parts:
            keep = np.setdiff1d(np.arange(n), part, assume_unique=True)
            values.append(stat(keep, full_r) if which == 0 else stat(full_g, keep))
        out.append(np.asarray(values, dtype=np.float64))
    return out


def _acceleration(jack: list[np.ndarray]) -> float:
    nums, dens = 0.0, 0.0
    for theta_i in jack:
        n = len(theta_i)
        if n < 2:
            continue
        u = (n - 1) * (theta_i.mean() - theta_i)
        nums += (u**3).sum() / n**3
        dens += (u**2).sum() / n**2
    return 0.0 if dens == 0 else float(nums / (6.0 * dens**1.5))


def bca_levels(boot: np.ndarray, estimate: float, accel: float, level: float):
    """``(lower, upper, z0)``: the BCa quantile levels of the bootstrap distribution."""
    frac = ((boot < estimate).sum() + 0.5 * (boot == estimate).sum()) / len(boot)
    frac = float(np.clip(frac, 0.5 / len(boot), 1 - 0.5 / len(boot)))
    z0 = norm.ppf(frac)
    out = []
    for alpha in ((1 - level) / 2, (1 + level) / 2):
        z = norm.ppf(alpha)
        out.append(float(norm.cdf(z0 + (z0 + z) / (1 - accel * (z0 + z)))))
    return out[0], out[1], float(z0)


def bootstrap_ci(
    stat: Statistic,
    n_gen: int,
    n_ref: int,
    *,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    jackknife_groups: int = 50,
    estimate: float | None = None,
) -> dict:
    """Percentile and BCa intervals of ``stat(gen_idx, ref_idx)``; ``estimate`` (the
    statistic on the full sets) is computed when not given."""
    if n_boot < 2:
        raise ValueError(f"--bootstrap: expected at least 2 replicates, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    full_g, full_r = np.arange(n_gen), np.arange(n_ref)
    theta = float(stat(full_g, full_r)) if estimate is None else float(estimate)
    boot = np.array(
        [stat(rng.integers(0, n_gen, n_gen), rng.integers(0, n_ref, n_ref)) for _ in range(n_boot)],
        dtype=np.float64,
    )
    finite = np.isfinite(boot)
    boot_ok = boot[finite]
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    result = {
        "estimate": theta,
        "level": level,
        "n_boot": n_boot,
        "n_nonfinite": int((~finite).sum()),
        "seed": seed,
        "n_generated": n_gen,
        "n_reference": n_ref,
        "boot_std": float(boot_ok.std(ddof=1)) if len(boot_ok) > 1 else None,
    }
    if len(boot_ok) < 2:
        return {**result, "percentile": None, "bca": None}
    result["percentile"] = [float(np.quantile(boot_ok, lo_q)), float(np.quantile(boot_ok, hi_q))]
    jack = _jackknife(stat, n_gen, n_ref, jackknife_groups, rng)
    accel = _acceleration(jack)
    a1, a2, z0 = bca_levels(boot_ok, theta, accel, level)
    result["bca"] = [float(np.quantile(boot_ok, a1)), float(np.quantile(boot_ok, a2))]
    result["bca_z0"], result["bca_acceleration"] = z0, accel
    result["jackknife_groups"] = [min(jackknife_groups, n_gen), min(jackknife_groups, n_ref)]
    return result
