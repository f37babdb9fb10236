"""Image and mask metrics for generated samples (numpy in, floats out), 2D and 3D."""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity


def psnr(x: np.ndarray, ref: np.ndarray, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` when identical."""
    mse = float(np.mean((np.asarray(x, np.float64) - np.asarray(ref, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)


def ssim(x: np.ndarray, ref: np.ndarray, data_range: float = 2.0) -> float:
    """Structural similarity of two 2D images or 3D volumes (scikit-image, Gaussian window,
    sigma 1.5, as Wang et al. 2004) in [-1, 1]."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    if x.shape != ref.shape or x.ndim not in (2, 3):
        raise ValueError(f"ssim needs two 2D or 3D arrays of one shape, got {x.shape}, {ref.shape}")
    return float(
        structural_similarity(
            x,
            ref,
            data_range=data_range,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two binary masks; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def nearest_index(x: np.ndarray, candidates: np.ndarray) -> int:
    """Index of the candidate (N, *shape) closest to ``x`` (*shape) in mean squared error."""
    diff = candidates.astype(np.float64) - x.astype(np.float64)[None]
    return int(np.argmin((diff**2).reshape(len(candidates), -1).mean(axis=1)))


def laplacian_energy(x: np.ndarray) -> float:
    """Mean squared discrete Laplacian (scipy's 2D / 3D stencil, edges reflected): high for
    speckle, low for smooth anatomy."""
    from scipy.ndimage import laplace

    return float(np.mean(laplace(np.asarray(x, np.float64), mode="reflect") ** 2))
