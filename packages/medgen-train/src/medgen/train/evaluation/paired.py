"""Paired scoring: every sample against its OWN reference item (the one whose priors it was
sampled from), beside the interpolation baselines of a thick -> thin task, with means and
bootstrap intervals over subjects.

Metrics (images in [-1, 1], data range 2):

* **PSNR** over the item's valid voxels only (padding never counts), all channels pooled:
  ``10 log10(4 / max(MSE, 1e-10))``. The floor keeps PSNR finite (at most 106 dB) for an exact
  match; every clamped sample is flagged (``psnr_mse_clamped``) and counted.
* **SSIM** per channel, averaged: scikit-image's Gaussian-window SSIM (sigma 1.5, 11 taps,
  population covariance, Wang et al. 2004) in 3D over the item's real extent (its valid
  bounding box: the real thin depth of a padded volume), in 2D for slices. The value is the
  mean of the SSIM map over its interior (where the window fits), which is exactly
  ``skimage.metrics.structural_similarity``'s; every side needs at least 11 voxels.

*Between slab centres* (thick -> thin only): the thin slices whose fractional thick position
``u`` (:func:`medgen.data.thick_positions`) is not an integer and lies strictly between the
first and the last slab centre: where interpolation has to invent content. Their PSNR is over
the valid voxels of those slices; their SSIM the mean of the same 3D SSIM map over those slices
(inside its interior).

Summaries: the mean over samples with percentile and BCa intervals from a bootstrap over
SUBJECTS (:mod:`.bootstrap` with the subjects as units: all items of a drawn subject enter
together), and the paired differences ``model - baseline`` the same way.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.metrics import structural_similarity

from medgen.train.evaluation.bootstrap import bootstrap_ci

DATA_RANGE = 2.0
MSE_FLOOR = 1e-10
SSIM_SIGMA, SSIM_TRUNCATE = 1.5, 3.5
SSIM_WINDOW = 2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1  # 11: scikit-image's taps
INTEGER_TOLERANCE = 1e-6  # |u - round(u)| below this: a thin slice at a slab centre


def masked_psnr(x, ref, valid=None, data_range: float = DATA_RANGE) -> tuple[float, bool]:
    """``(PSNR in dB, clamped)`` of ``x`` against ``ref`` (same shape) over the voxels where
    ``valid`` (broadcast to the shape; None: all) is True; the MSE is clamped to at least
    ``MSE_FLOOR`` so the PSNR is never inf, and ``clamped`` says when that happened."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    if x.shape != ref.shape:
        raise ValueError(f"PSNR of arrays of shapes {x.shape} and {ref.shape}")
    keep = np.ones(x.shape, bool) if valid is None else np.broadcast_to(valid, x.shape)
    if not keep.any():
        raise ValueError("PSNR over no valid voxel")
    mse = float(np.mean((x[keep] - ref[keep]) ** 2))
    return 10.0 * math.log10(data_range**2 / max(mse, MSE_FLOOR)), mse < MSE_FLOOR


def ssim_map(x, ref, data_range: float = DATA_RANGE) -> np.ndarray:
    """The SSIM map of two 2D images or 3D volumes (scikit-image, Gaussian window sigma 1.5,
    population covariance), cropped to its interior (every side loses 5 voxels)."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    if x.shape != ref.shape or x.ndim not in (2, 3):
        raise ValueError(f"SSIM needs two 2D or 3D arrays of one shape, got {x.shape}, {ref.shape}")
    if min(x.shape) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM's {SSIM_WINDOW}-voxel Gaussian window needs every side >= {SSIM_WINDOW}; "
            f"the real extent is {list(x.shape)}"
        )
    _, full = structural_similarity(
        x, ref, data_range=data_range, gaussian_weights=True, sigma=SSIM_SIGMA,
        use_sample_covariance=False, full=True,
    )  # fmt: skip
    pad = (SSIM_WINDOW - 1) // 2
    return full[tuple(slice(pad, n - pad) for n in full.shape)]


def between_slices(positions, n_thick: int) -> np.ndarray:
    """Bool per thin slice: its fractional thick position ``u`` is not an integer and lies
    strictly between the first (0) and the last (``n_thick - 1``) slab centre."""
    u = np.asarray(positions, np.float64)
    off_centre = np.abs(u - np.round(u)) > INTEGER_TOLERANCE
    return off_centre & (u > 0) & (u < n_thick - 1)


def _box(valid: np.ndarray) -> tuple[slice, ...]:
    where = np.nonzero(valid)
    if not where[0].size:
        raise ValueError("the reference item has no valid voxel")
    return tuple(slice(int(w.min()), int(w.max()) + 1) for w in where)


def score_pair(x, ref, valid=None, between=None) -> dict:
    """``x`` against ``ref`` (C, *spatial): ``psnr`` (valid voxels), ``psnr_mse_clamped``,
    ``ssim`` (per channel over the valid bounding box, averaged) and, with ``between`` (bool
    per slice of axis 1), the same two over those slices (``between``: None when the SSIM
    interior holds none of them)."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    valid = np.ones((1, *x.shape[1:]), bool) if valid is None else np.asarray(valid, bool)
    value, clamped = masked_psnr(x, ref, valid)
    box = (slice(None), *_box(valid[0]))
    maps = [ssim_map(a, b) for a, b in zip(x[box], ref[box], strict=True)]
    out = {"psnr": value, "psnr_mse_clamped": clamped, "ssim": float(np.mean(maps))}
    if between is None:
        return out
    between = np.asarray(between, bool)
    keep = valid & between.reshape(1, -1, *[1] * (x.ndim - 2))
    if not keep.any():
        out["between"] = {"psnr": None, "psnr_mse_clamped": False, "ssim": None}
        return out
    b_psnr, b_clamped = masked_psnr(x, ref, keep)
    pad = (SSIM_WINDOW - 1) // 2
    inner = between[box[1]][pad : pad + maps[0].shape[0]]
    b_ssim = float(np.mean([m[inner].mean() for m in maps])) if inner.any() else None
    out["between"] = {"psnr": b_psnr, "psnr_mse_clamped": b_clamped, "ssim": b_ssim}
    return out


def subject_bootstrap(values, subjects, *, n_boot: int = 200, seed: int = 0,
                      level: float = 0.95) -> dict | None:  # fmt: skip
    """Mean of ``values`` (one per item; None / NaN left out) with percentile and BCa intervals
    from resampling SUBJECTS with replacement: a drawn subject brings all its items, and the
    statistic is the mean over the items drawn. None when no value is left."""
    v = np.array([np.nan if a is None else a for a in values], dtype=np.float64)
    s = np.asarray(subjects)
    keep = np.isfinite(v)
    if not keep.any():
        return None
    names, inverse = np.unique(s[keep], return_inverse=True)
    sums = np.bincount(inverse, weights=v[keep], minlength=len(names))
    counts = np.bincount(inverse, minlength=len(names)).astype(np.float64)

    def mean(idx, _ref):
        return float(sums[idx].sum() / counts[idx].sum())

    about = {"n_subjects": len(names), "n_items": int(keep.sum()),
             "resampling": "subjects, with replacement (each with all its items)"}  # fmt: skip
    if len(names) < 2:  # one subject: resampling it changes nothing, no interval to give
        estimate = mean(np.arange(1), None)
        return {"estimate": estimate, "level": level, "percentile": None, "bca": None, **about}
    out = bootstrap_ci(mean, len(names), 1, n_boot=n_boot, level=level, seed=seed)
    for key in ("n_generated", "n_reference", "jackknife_groups"):
        out.pop(key, None)
    return {**out, **about}


def _column(per_sample: list[dict], method: str, metric: str, region: str) -> list:
    def get(rec):
        block = rec[method] if region == "all" else rec[method].get("between", {})
        return block.get(metric)

    return [get(r) for r in per_sample]


def paired_tables(per_sample: list[dict], subjects, methods: list[str], *, n_boot: int = 200,
                  seed: int = 0, regions=("all",)) -> dict:  # fmt: skip
    """``{region: {row: {metric: interval dict}}}``: each method's mean PSNR / SSIM and, beside
    ``model``, each baseline's paired difference ``model - baseline`` (per item, then
    bootstrapped over subjects like the means)."""
    tables = {}
    for region in regions:
        rows = {}
        for method in methods:
            rows[method] = {m: subject_bootstrap(_column(per_sample, method, m, region), subjects,
                                                 n_boot=n_boot, seed=seed)
                            for m in ("psnr", "ssim")}  # fmt: skip
        for base in methods[1:]:
            rows[f"{methods[0]} - {base}"] = {
                m: subject_bootstrap(
                    [None if a is None or b is None else a - b for a, b in zip(
                        _column(per_sample, methods[0], m, region),
                        _column(per_sample, base, m, region), strict=True)],
                    subjects, n_boot=n_boot, seed=seed)
                for m in ("psnr", "ssim")
            }  # fmt: skip
        tables[region] = rows
    return tables
