"""Orientation codes and reorientation to a canonical orientation (LPS or RAS), via SimpleITK.

Codes follow DICOM / SimpleITK's ``DICOMOrientImageFilter``: each letter is the direction the
array index *increases toward*, for the axes in SimpleITK order ``(x, y, z)``, i.e. the array
axes ``(x, y, z) = (vol.array axis 2, 1, 0)``. ``"LPS"``: x toward Left, y toward Posterior,
z toward Superior (identity direction, DICOM's patient frame); ``"RAS"``: x toward Right, y
toward Anterior, z toward Superior (NIfTI/RAS+ viewers). Reorienting only permutes and flips
axes (no interpolation): voxel values are unchanged, and a flipped axis moves the origin to
the opposite corner of that axis.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from medgen.data.sitk_image import from_sitk, to_sitk
from medgen.data.volume import Volume

CANONICAL = ("LPS", "RAS")


def orientation_code(vol: Volume) -> str:
    """The 3-letter code of ``vol``'s axes ``(x, y, z)`` (closest axis for oblique volumes)."""
    direction_xyz = np.asarray(vol.direction, dtype=np.float64)[:, ::-1]
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        direction_xyz.flatten().tolist()
    )


def canonical_direction(orientation: str = "LPS") -> np.ndarray:
    """The :class:`Volume` direction (columns: the LPS directions of the array axes
    ``(z, y, x)``) of a volume in canonical ``orientation``: for "LPS" the z axis points to
    Superior, y to Posterior, x to Left; "RAS" flips x and y."""
    if orientation not in CANONICAL:
        raise ValueError(f"orientation must be one of {CANONICAL}, got {orientation!r}")
    flip = -1.0 if orientation == "RAS" else 1.0
    return np.array([[0.0, 0.0, flip], [0.0, flip, 0.0], [1.0, 0.0, 0.0]])


def to_canonical(vol: Volume, orientation: str = "LPS") -> Volume:
    """``vol`` with its array axes permuted/flipped so that its code is ``orientation``.

    Oblique volumes go to the closest canonical axes (their direction stays oblique; the
    voxels are not resampled). ``meta["orientation_from"]`` records the original code.
    """
    if orientation not in CANONICAL:
        raise ValueError(f"orientation must be one of {CANONICAL}, got {orientation!r}")
    before = orientation_code(vol)
    if before == orientation:
        return vol
    out = from_sitk(sitk.DICOMOrient(to_sitk(vol), orientation), vol)
    out.meta.setdefault("orientation_from", before)
    return out
