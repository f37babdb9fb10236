"""Nearest-real scoring: each generated sample against the closest real item of its own z-bin
and class (by mean squared error over its image channels), with PSNR, SSIM, mask Dice and a
speckle test, plus the bin-mean reference (what memorising per-bin averages would score).

*Speckled*: a sample whose mean squared Laplacian exceeds ``SPECKLE_RATIO`` (2) times its
nearest real item's (averaged over image channels): high-frequency noise the real anatomy
does not have.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from medgen.train.evaluation.metrics import dice, laplacian_energy, nearest_index, psnr, ssim

SPECKLE_RATIO = 2.0


@dataclass
class SampleScore:
    """One sample's scores against its nearest real item."""

    index: int
    z_bin: int
    class_id: int
    nearest: int  # index of the reference item
    matched_on: str  # "bin+class", "bin" (no real item of that class in the bin) or "all"
    psnr: float
    ssim: float
    dice: float | None
    laplacian_ratio: float

    @property
    def speckled(self) -> bool:
        """Much more high-frequency energy than the nearest real item."""
        return self.laplacian_ratio > SPECKLE_RATIO


def _candidates(b: int, c: int, ref_bins, ref_classes, pool) -> tuple[np.ndarray, str]:
    same = np.flatnonzero((ref_bins == b) & (ref_classes == c) & pool)
    if same.size:
        return same, "bin+class"
    same = np.flatnonzero((ref_bins == b) & pool)
    if same.size:
        return same, "bin"
    return np.flatnonzero(pool), "all"


def _valid_box(valid: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of a validity mask (the real data inside a padded volume)."""
    where = np.nonzero(valid)
    if not where[0].size:
        return tuple(slice(None) for _ in valid.shape)
    return tuple(slice(int(w.min()), int(w.max()) + 1) for w in where)


def score_samples(
    images: np.ndarray,
    masks: np.ndarray | None,
    bins: np.ndarray,
    classes: np.ndarray,
    ref_images: np.ndarray,
    ref_masks: np.ndarray | None,
    ref_bins: np.ndarray,
    ref_classes: np.ndarray,
    modes: np.ndarray | None = None,
    ref_modes: np.ndarray | None = None,
    ref_valid: np.ndarray | None = None,
) -> list[SampleScore]:
    """Score samples (N, C, *spatial) against reference items (M, C, *spatial) in [-1, 1];
    masks (N, *spatial) / (M, *spatial) are boolean (or None). With ``modes`` a sample is
    compared only with items of its own mode (modality); with ``ref_valid`` (M, *spatial) the
    scores are taken inside the nearest item's valid box (padded volumes)."""
    if images.shape[1:] != ref_images.shape[1:]:
        raise ValueError(
            f"samples {images.shape[1:]} and reference items {ref_images.shape[1:]} differ in "
            "channels or size"
        )
    out = []
    everything = np.ones(len(ref_bins), dtype=bool)
    for i in range(len(images)):
        pool = everything if modes is None else ref_modes == modes[i]
        if not pool.any():
            raise ValueError(f"no reference item of mode {int(modes[i])} to compare with")
        members, matched = _candidates(int(bins[i]), int(classes[i]), ref_bins, ref_classes, pool)
        j = int(members[nearest_index(images[i], ref_images[members])])
        x, r = images[i], ref_images[j]
        m, rm = (
            (masks[i] if masks is not None else None),
            (ref_masks[j] if ref_masks is not None else None),
        )
        if ref_valid is not None:
            box = _valid_box(ref_valid[j])
            x, r = x[(slice(None), *box)], r[(slice(None), *box)]
            m = m[box] if m is not None else None
            rm = rm[box] if rm is not None else None
        channels = range(x.shape[0])
        ratios = [laplacian_energy(x[c]) / max(laplacian_energy(r[c]), 1e-12) for c in channels]
        out.append(
            SampleScore(
                index=i,
                z_bin=int(bins[i]),
                class_id=int(classes[i]),
                nearest=j,
                matched_on=matched,
                psnr=float(np.mean([psnr(x[c], r[c]) for c in channels])),
                ssim=float(np.mean([ssim(x[c], r[c]) for c in channels])),
                dice=dice(m, rm) if m is not None and rm is not None else None,
                laplacian_ratio=float(np.mean(ratios)),
            )
        )
    return out


def bin_mean_reference(ref_images: np.ndarray, ref_bins: np.ndarray) -> float:
    """Mean SSIM of each bin's mean item against the nearest real item of that bin."""
    values = []
    for b in np.unique(ref_bins):
        members = ref_images[ref_bins == b]
        mean = members.mean(0)
        near = members[nearest_index(mean, members)]
        values.append(np.mean([ssim(mean[c], near[c]) for c in range(mean.shape[0])]))
    return float(np.mean(values))


def _stats(values: list[float]) -> dict:
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    finite = a[np.isfinite(a)]
    return {
        "mean": float(finite.mean()) if finite.size else None,
        "std": float(finite.std()) if finite.size else None,
        "n": int(finite.size),
        "non_finite": int(a.size - finite.size),
    }


def summarize(scores: list[SampleScore]) -> dict:
    """Means and spreads overall, per z-bin and per class; the speckled count."""

    def block(subset: list[SampleScore]) -> dict:
        out = {
            "n": len(subset),
            "psnr": _stats([s.psnr for s in subset]),
            "ssim": _stats([s.ssim for s in subset]),
            "speckled": int(sum(s.speckled for s in subset)),
        }
        if any(s.dice is not None for s in subset):
            out["dice"] = _stats([s.dice for s in subset])
        return out

    return {
        "overall": block(scores),
        "per_bin": {
            str(b): block([s for s in scores if s.z_bin == b])
            for b in sorted({s.z_bin for s in scores})
        },
        "per_class": {
            str(c): block([s for s in scores if s.class_id == c])
            for c in sorted({s.class_id for s in scores})
        },
        "speckle_rule": f"mean squared Laplacian > {SPECKLE_RATIO:g} x the nearest real item's",
        "per_sample": [asdict(s) | {"speckled": s.speckled} for s in scores],
    }
