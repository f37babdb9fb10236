"""Intensity normalisation to the diffusion range [-1, 1]. Pure functions, float32 out."""

from __future__ import annotations

import numpy as np

# CT window presets as (center, width) in HU.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (40.0, 40.0),
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}


def to_signed_unit(unit: np.ndarray) -> np.ndarray:
    """Map [0, 1] to [-1, 1]."""
    return (np.asarray(unit, dtype=np.float32) * 2.0 - 1.0).astype(np.float32, copy=False)


def window(
    hu: np.ndarray,
    preset: str | None = None,
    center: float | None = None,
    width: float | None = None,
) -> np.ndarray:
    """Clip HU to a window (preset name or center/width) and map it to [-1, 1]."""
    if preset is not None:
        if preset not in WINDOW_PRESETS:
            raise ValueError(f"unknown window preset {preset!r}; known: {sorted(WINDOW_PRESETS)}")
        center, width = WINDOW_PRESETS[preset]
    if center is None or width is None:
        raise ValueError("window needs a preset or both center and width")
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    low = center - width / 2.0
    unit = (np.asarray(hu, dtype=np.float32) - low) / np.float32(width)
    return to_signed_unit(np.clip(unit, 0.0, 1.0))


def percentile_scale(
    image: np.ndarray,
    lower: float = 0.5,
    upper: float = 99.5,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """MR normalisation: clip to the [lower, upper] percentiles (within ``mask`` if given),
    then map linearly to [-1, 1]."""
    image = np.asarray(image, dtype=np.float32)
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"need 0 <= lower < upper <= 100, got {lower}, {upper}")
    values = image[mask.astype(bool)] if mask is not None else image.ravel()
    if values.size == 0:
        raise ValueError("percentile_scale: the mask selects no voxel")
    lo, hi = np.percentile(values, [lower, upper]).astype(np.float32)
    if hi <= lo:
        raise ValueError(f"percentile_scale: constant image (p{lower}={lo}, p{upper}={hi})")
    return to_signed_unit(np.clip((image - lo) / (hi - lo), 0.0, 1.0))


def zscore(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """MR normalisation: (image - mean) / std with the statistics taken within ``mask`` (e.g. a
    brain mask, so that background air does not set the scale). Voxels outside the mask are
    transformed with the same affine map. float32 in, float32 out; statistics in float64."""
    image = np.asarray(image, dtype=np.float32)
    if mask is not None and np.shape(mask) != image.shape:
        raise ValueError(f"zscore: mask shape {np.shape(mask)} != image shape {image.shape}")
    values = image[np.asarray(mask, dtype=bool)] if mask is not None else image.ravel()
    if values.size == 0:
        raise ValueError("zscore: the mask selects no voxel")
    mean, std = values.mean(dtype=np.float64), values.std(dtype=np.float64)
    if not std > 0:
        raise ValueError(f"zscore: constant intensities within the mask (value {mean:g})")
    return ((image - mean) / std).astype(np.float32)
