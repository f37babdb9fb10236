"""Multi-scale SSIM (Wang, Simoncelli & Bovik 2003) of pairs of 2D images or 3D volumes,
computed by MONAI's ``MultiScaleSSIMMetric`` (Gaussian window, sigma 1.5, valid convolutions,
the contrast term of every scale but the last and the full SSIM of the last, each ReLU'd,
combined as a weighted geometric mean).

**Scales and window for small images.** Each scale halves the image (2x average pooling), and
the window must fit inside the coarsest scale: with ``S`` scales and window ``k`` every axis
needs ``size // 2^(S-1) >= k`` (roughly ``size > (k - 1) 2^(S-1)``) and, MONAI's own check,
``size // max(1, S - 1)^2 > k - 1``. The standard setting (5 scales, window 11) needs
axes of at least 176. :func:`msssim_settings` picks the first valid of 5/4/3 scales with window
11, then 5/4/3 scales with window 7, then 3/2 scales with window 5, 2 scales with window 3:
32 x 32 gets **3 scales, window 7**; 64 x 64 and 48^3 3 scales, window 11; 128 x 128 4 scales,
window 11; 256 x 256 the standard 5 scales, window 11. The weights are the first ``S`` of
Wang et al.'s ``(0.0448, 0.2856, 0.3001, 0.2363, 0.1333)`` renormalised to sum to 1, so the
value stays a weighted geometric mean in [0, 1] whatever ``S`` is. The settings are recorded
with every number (:meth:`MSSSIMSettings.protocol`): values from different settings do not
compare.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

STANDARD_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, 5 scales
SIGMA = 1.5
CANDIDATES = ((5, 11), (4, 11), (3, 11), (5, 7), (4, 7), (3, 7), (3, 5), (2, 5), (2, 3))


@dataclass(frozen=True)
class MSSSIMSettings:
    """Number of scales and Gaussian window size (sigma 1.5) of an MS-SSIM."""

    scales: int = 5
    kernel_size: int = 11

    def __post_init__(self) -> None:
        if not 1 <= self.scales <= len(STANDARD_WEIGHTS):
            raise ValueError(f"MS-SSIM scales: expected 1..5, got {self.scales}")
        if self.kernel_size < 3 or self.kernel_size % 2 == 0:
            raise ValueError(
                f"MS-SSIM kernel_size: expected an odd size >= 3, got {self.kernel_size}"
            )

    @property
    def weights(self) -> tuple[float, ...]:
        """The first ``scales`` standard weights, renormalised to sum to 1."""
        w = np.asarray(STANDARD_WEIGHTS[: self.scales], np.float64)
        return tuple(float(v) for v in w / w.sum())

    def fits(self, spatial: tuple[int, ...]) -> bool:
        """Whether every axis of ``spatial`` is large enough (see the module docstring)."""
        s, k = self.scales, self.kernel_size
        return all(n // 2 ** (s - 1) >= k and n // max(1, s - 1) ** 2 > k - 1 for n in spatial)

    def protocol(self) -> dict:
        """What an MS-SSIM number depends on, for the evaluation JSON."""
        return {"implementation": "monai.metrics.MultiScaleSSIMMetric", "scales": self.scales,
                "kernel": "gaussian", "kernel_size": self.kernel_size, "sigma": SIGMA,
                "weights": list(self.weights), "k1": 0.01, "k2": 0.03,
                "weights_rule": "the first `scales` of Wang et al. 2003's five, sum 1"}  # fmt: skip


def msssim_settings(spatial: tuple[int, ...]) -> MSSSIMSettings:
    """The most scales (then the widest window) that ``spatial`` (H, W) / (D, H, W) allows."""
    spatial = tuple(int(n) for n in spatial)
    for scales, k in CANDIDATES:
        settings = MSSSIMSettings(scales, k)
        if settings.fits(spatial):
            return settings
    raise ValueError(
        f"MS-SSIM: images of size {list(spatial)} are too small for 2 scales with a 3-wide "
        "window (every axis needs at least 6)"
    )


def ms_ssim(x, y, *, data_range: float = 2.0, settings: MSSSIMSettings | None = None) -> np.ndarray:
    """MS-SSIM of each pair ``(x[i], y[i])`` of (N, C, H, W) or (N, C, D, H, W) arrays (channels
    averaged inside each scale, as MONAI does): (N,) float64. ``settings`` default to
    :func:`msssim_settings` of the spatial size."""
    from monai.metrics import MultiScaleSSIMMetric

    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)  # MONAI's weights are float32
    y = torch.as_tensor(np.asarray(y), dtype=torch.float32)
    if x.shape != y.shape or x.ndim not in (4, 5):
        raise ValueError(
            f"ms_ssim: expected two (N, C, H, W) or (N, C, D, H, W) arrays of one shape, got "
            f"{list(x.shape)} and {list(y.shape)}"
        )
    spatial = tuple(x.shape[2:])
    settings = settings or msssim_settings(spatial)
    if not settings.fits(spatial):
        least = next(n for n in range(3, 1 << 16) if settings.fits((n,)))
        raise ValueError(
            f"MS-SSIM with {settings.scales} scales and window {settings.kernel_size} needs every "
            f"axis >= {least}; got {list(spatial)}"
        )
    metric = MultiScaleSSIMMetric(
        spatial_dims=x.ndim - 2,
        data_range=data_range,
        kernel_type="gaussian",
        kernel_size=settings.kernel_size,
        kernel_sigma=SIGMA,
        weights=settings.weights,
        reduction="none",
    )
    return metric(x, y).reshape(-1).double().numpy()
