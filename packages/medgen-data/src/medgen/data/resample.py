"""Resampling a :class:`Volume` to a target voxel spacing, via SimpleITK.

``interpolation="linear"`` for images, ``"nearest"`` for label masks (values are kept exactly).
The output grid keeps the origin (the centre of the first voxel) and direction; along each axis
it holds the voxel centres ``origin + k * new_spacing`` that lie inside the input's first-to-last
voxel-centre span, ``n_new = floor((n - 1) * spacing / new_spacing + 1e-6) + 1``. So every output
voxel is interpolated between input voxels, never extrapolated past the edge, and resampling to
the same spacing returns the same voxels. Geometry is in array-axis order ``(z, y, x)``.
"""

from __future__ import annotations

import math

import SimpleITK as sitk

from medgen.data.sitk_image import from_sitk, to_sitk
from medgen.data.volume import Volume

INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}


def resampled_shape(shape, spacing, new_spacing) -> tuple[int, int, int]:
    """The output shape :func:`resample` produces (see the module docstring)."""
    return tuple(
        math.floor((n - 1) * s / t + 1e-6) + 1
        for n, s, t in zip(shape, spacing, new_spacing, strict=True)
    )


def resample(vol: Volume, spacing, interpolation: str = "linear") -> Volume:
    """``vol`` on a grid with voxel ``spacing`` (mm, ``(z, y, x)``; a number means isotropic)."""
    if interpolation not in INTERPOLATORS:
        raise ValueError(
            f"interpolation must be one of {sorted(INTERPOLATORS)}, got {interpolation!r}"
        )
    new_spacing = (float(spacing),) * 3 if isinstance(spacing, int | float) else spacing
    new_spacing = tuple(float(s) for s in new_spacing)
    if len(new_spacing) != 3 or not all(s > 0 and math.isfinite(s) for s in new_spacing):
        raise ValueError(f"spacing must be 3 positive numbers (z, y, x), got {spacing!r}")
    shape = resampled_shape(vol.shape, vol.spacing, new_spacing)
    image = to_sitk(vol)
    out = sitk.Resample(
        image,
        [int(n) for n in reversed(shape)],
        sitk.Transform(),
        INTERPOLATORS[interpolation],
        image.GetOrigin(),
        list(reversed(new_spacing)),
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )
    result = from_sitk(out, vol)
    result.meta["resampled_from_spacing"] = [float(s) for s in vol.spacing]
    return result
