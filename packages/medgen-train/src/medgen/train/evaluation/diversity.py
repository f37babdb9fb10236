"""Sample diversity as the mean MS-SSIM over pairs of generated samples (the protocol of
WDM, Friedrich et al. 2024, after Dorjsembe et al.): lower is more diverse, 1 means every
sample of the group is the same image.

Pairs are unordered and of two *different* samples (``i < j``, no self-pairs): all of them
when there are at most ``max_pairs``, else ``max_pairs`` distinct pairs drawn without
replacement with a seeded generator (recorded; by default 1000 per group for 2D slices, 100
for 3D volumes). Reported overall (pairs across the whole set)
and per z-bin x class group (pairs within the group), with the MS-SSIM settings
(:mod:`medgen.train.evaluation.msssim`) used for all of them.
"""

from __future__ import annotations

import numpy as np

from medgen.train.evaluation.msssim import MSSSIMSettings, ms_ssim, msssim_settings

MAX_PAIRS = 1000  # per group, 2D slices
MAX_PAIRS_3D = 100  # per group, volumes (a 64^3 pair takes ~0.5 s on one CPU thread)
BATCH = 64


def pair_indices(n: int, max_pairs: int = MAX_PAIRS, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``(i, j)`` index arrays of unordered pairs of distinct samples out of ``n``: every pair
    when there are at most ``max_pairs``, else a seeded sample of ``max_pairs`` of them."""
    i, j = np.triu_indices(n, k=1)
    if len(i) > max_pairs:
        keep = np.sort(np.random.default_rng(seed).choice(len(i), max_pairs, replace=False))
        i, j = i[keep], j[keep]
    return i, j


def mean_pairwise_msssim(
    images,
    *,
    max_pairs: int = MAX_PAIRS,
    seed: int = 0,
    data_range: float = 2.0,
    settings: MSSSIMSettings | None = None,
) -> dict:
    """Mean, std and number of the pairwise MS-SSIMs of (N, C, *spatial) ``images``."""
    images = np.asarray(images)
    i, j = pair_indices(len(images), max_pairs, seed)
    if len(i) == 0:
        return {"mean": None, "std": None, "n_pairs": 0, "n_samples": len(images)}
    values = np.concatenate(
        [
            ms_ssim(
                images[i[s : s + BATCH]],
                images[j[s : s + BATCH]],
                data_range=data_range,
                settings=settings,
            )
            for s in range(0, len(i), BATCH)
        ]
    )
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "n_pairs": len(i),
        "n_samples": len(images),
        "all_pairs": bool(len(i) == len(images) * (len(images) - 1) // 2),
    }


def diversity(
    images,
    z_bin=None,
    class_id=None,
    *,
    max_pairs: int | None = None,
    seed: int = 0,
    data_range: float = 2.0,
) -> dict:
    """Mean pairwise MS-SSIM overall and per ``z-bin b class c`` group (groups only when
    ``z_bin`` / ``class_id`` are given), with the settings and pair rule used; ``max_pairs``
    per group defaults to ``MAX_PAIRS`` (2D) or ``MAX_PAIRS_3D`` (volumes)."""
    images = np.asarray(images)
    if max_pairs is None:
        max_pairs = MAX_PAIRS if images.ndim == 4 else MAX_PAIRS_3D
    settings = msssim_settings(images.shape[2:])
    kw = dict(max_pairs=max_pairs, seed=seed, data_range=data_range, settings=settings)
    out = {"overall": mean_pairwise_msssim(images, **kw)}
    if z_bin is not None and class_id is not None:
        z_bin, class_id = np.asarray(z_bin), np.asarray(class_id)
        groups = sorted({(int(b), int(c)) for b, c in zip(z_bin, class_id, strict=True)})
        out["per_group"] = {
            f"z-bin {b} class {c}": mean_pairwise_msssim(
                images[(z_bin == b) & (class_id == c)], **kw
            )
            for b, c in groups
        }
    out["protocol"] = {
        "statistic": "mean MS-SSIM over unordered pairs of distinct generated samples "
        "(lower: more diverse)",
        "max_pairs": max_pairs,
        "seed": seed,
        "data_range": data_range,
        "ms_ssim": settings.protocol(),
    }
    return out
