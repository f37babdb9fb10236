"""Simulated thick slices from a thin volume: slab averages with a box or Gaussian profile.

Geometry along the slice axis (array axis 0), in mm relative to the centre of thin slice 0:
thin slice ``i`` has centre ``p_i = i * s`` (``s`` = thin spacing) and covers
``[p_i - s/2, p_i + s/2]``. Thick slice ``k`` has centre ``c_k = c_0 + k * S`` (``S`` = thick
spacing, default = thickness ``T``), with ``c_0 = T/2 - s/2`` so that the first slab starts
where the thin volume starts; there are ``floor((n*s - T) / S) + 1`` thick slices, all inside
the volume. Output spacing is ``(S, sy, sx)`` and origin ``origin + direction[:, 0] * c_0``.

Each thick voxel is ``sum_i w_ki * thin_i`` where the thin volume is taken as constant over
each thin slice's extent and ``w_ki`` is the slice profile integrated over that extent:

* ``"box"``: a rectangle of width ``T`` (``w_ki`` = overlap length / ``T``). When ``T`` and
  the offsets are whole multiples of ``s`` this is the plain mean of ``T/s`` thin slices.
* ``"gaussian"``: a Gaussian with FWHM ``T`` (``sigma = T / (2 sqrt(2 ln 2))``), truncated
  symmetrically at ``+-4 sigma`` or at the nearer volume end (so edge slabs keep their centre
  of mass at ``c_k``), weights renormalised to sum to 1. A constant volume is reproduced
  exactly; a linear ramp too whenever the thin grid is symmetric about every ``c_k``, i.e.
  ``T`` is a multiple of ``s`` and ``S`` of ``s/2`` (e.g. 1 mm -> 5 mm).

Masks use nearest neighbour: thick slice ``k`` takes the thin slice whose centre is nearest
``c_k`` (ties go to the lower index), so they stay binary and no label is invented.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from medgen.data.errors import DataError
from medgen.data.volume import Volume

PROFILES = ("box", "gaussian")
GAUSS_TRUNCATE = 4.0  # sigmas
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def slab_centres(n_thin: int, thin_spacing: float, thickness: float, spacing: float) -> np.ndarray:
    """Centres (mm, relative to thin slice 0) of the thick slices that fit in the volume."""
    length = n_thin * thin_spacing
    if thickness > length + 1e-9:
        raise DataError(
            f"thickness {thickness} mm exceeds the {n_thin} x {thin_spacing} mm = {length} mm "
            "thin volume"
        )
    count = math.floor((length - thickness) / spacing + 1e-9) + 1
    return thickness / 2 - thin_spacing / 2 + spacing * np.arange(count, dtype=np.float64)


def _erf(x: np.ndarray) -> np.ndarray:
    return torch.special.erf(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()


def slab_weights(
    n_thin: int, thin_spacing: float, thickness: float, spacing: float, profile: str = "box"
) -> np.ndarray:
    """The ``(n_thick, n_thin)`` float64 matrix ``w`` of the module docstring; rows sum to 1."""
    if profile not in PROFILES:
        raise DataError(f"unknown slice profile {profile!r}; known: {', '.join(PROFILES)}")
    centres = slab_centres(n_thin, thin_spacing, thickness, spacing)
    pos = thin_spacing * np.arange(n_thin, dtype=np.float64)
    lo, hi = pos - thin_spacing / 2, pos + thin_spacing / 2  # thin slice extents
    c = centres[:, None]
    if profile == "box":
        w = np.clip(np.minimum(hi, c + thickness / 2) - np.maximum(lo, c - thickness / 2), 0, None)
    else:
        sigma = thickness * FWHM_TO_SIGMA
        reach = GAUSS_TRUNCATE * sigma
        # symmetric truncation: shrink the window to the nearer volume end
        half = np.minimum(reach, np.minimum(c - lo[0], hi[-1] - c))
        a = np.clip(lo, c - half, c + half)
        b = np.clip(hi, c - half, c + half)
        scale = 1.0 / (sigma * math.sqrt(2.0))
        w = 0.5 * (_erf((b - c) * scale) - _erf((a - c) * scale))
    w[w < 1e-12] = 0.0
    return w / w.sum(axis=1, keepdims=True)


def nearest_indices(n_thin: int, thin_spacing: float, thickness: float, spacing: float):
    """Index of the thin slice nearest each thick centre (ties -> lower index)."""
    centres = slab_centres(n_thin, thin_spacing, thickness, spacing)
    return np.clip(np.ceil(centres / thin_spacing - 0.5 - 1e-9), 0, n_thin - 1).astype(np.int64)


def _geometry(volume: Volume, thickness: float, spacing: float, c0: float):
    direction = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    origin = tuple(float(o) for o in np.asarray(volume.origin) + direction[:, 0] * c0)
    return (float(spacing), *(float(s) for s in volume.spacing[1:])), origin, direction


def _check(volume: Volume, thickness: float, spacing: float | None) -> float:
    if not (thickness > 0 and math.isfinite(thickness)):
        raise DataError(f"volume {volume.id}: slice thickness must be > 0 mm, got {thickness}")
    spacing = thickness if spacing is None else spacing
    if not (spacing > 0 and math.isfinite(spacing)):
        raise DataError(f"volume {volume.id}: thick slice spacing must be > 0 mm, got {spacing}")
    length = volume.shape[0] * volume.spacing[0]
    if thickness > length + 1e-9:
        raise DataError(
            f"volume {volume.id}: thickness {thickness} mm exceeds its {volume.shape[0]} x "
            f"{volume.spacing[0]} mm = {length} mm of slices"
        )
    if thickness < volume.spacing[0] - 1e-9:
        raise DataError(
            f"volume {volume.id}: thickness {thickness} mm is thinner than its "
            f"{volume.spacing[0]} mm slices"
        )
    return float(spacing)


def simulate_thick(
    volume: Volume, thickness: float, spacing: float | None = None, profile: str = "box"
) -> Volume:
    """Thick-slice version of a thin ``volume`` (see the module docstring for the maths).

    ``thickness`` and ``spacing`` are in mm (``spacing`` defaults to ``thickness``: contiguous
    slabs). The result is float32 with spacing ``(spacing, sy, sx)``, the origin moved to the
    first slab's centre, the same direction, and ``meta`` gaining ``slice_thickness_mm`` and
    ``slice_profile``.
    """
    spacing = _check(volume, thickness, spacing)
    n, s = volume.shape[0], float(volume.spacing[0])
    w = slab_weights(n, s, thickness, spacing, profile)
    out = np.empty((w.shape[0], *volume.shape[1:]), dtype=np.float32)
    for k, row in enumerate(w):
        first, last = np.flatnonzero(row)[[0, -1]]
        slab = np.asarray(volume.array[first : last + 1], dtype=np.float64)
        out[k] = np.tensordot(row[first : last + 1], slab, axes=(0, 0))
    new_spacing, origin, direction = _geometry(volume, thickness, spacing, thickness / 2 - s / 2)
    meta = {**volume.meta, "slice_thickness_mm": float(thickness), "slice_profile": profile}
    return Volume(out, new_spacing, origin, direction, volume.modality, volume.id, meta)


def uint8_labels(mask: Volume) -> np.ndarray:
    """``mask.array`` as uint8; a DataError when a value is not an integer in [0, 255] (a cast
    would silently wrap 256 to 0 or floor a probability of 0.7 to background)."""
    a = np.asarray(mask.array)
    if a.dtype != np.uint8 and a.size:
        ok = np.isfinite(a) & (a >= 0) & (a <= 255) & (a == np.round(a))
        if not ok.all():
            bad = a[~ok].flat[0]
            raise DataError(
                f"label volume {mask.id}: value {bad!r} is not an integer label in [0, 255]"
            )
    return a.astype(np.uint8, copy=False)


def thick_mask(mask: Volume, thickness: float, spacing: float | None = None) -> Volume:
    """Nearest-neighbour thick-slice version of a label ``mask``, on the same grid as
    :func:`simulate_thick` gives the image (dtype kept, values never mixed)."""
    spacing = _check(mask, thickness, spacing)
    n, s = mask.shape[0], float(mask.spacing[0])
    idx = nearest_indices(n, s, thickness, spacing)
    new_spacing, origin, direction = _geometry(mask, thickness, spacing, thickness / 2 - s / 2)
    meta = {**mask.meta, "slice_thickness_mm": float(thickness), "slice_profile": "nearest"}
    return Volume(
        np.ascontiguousarray(mask.array[idx]),
        new_spacing,
        origin,
        direction,
        mask.modality,
        mask.id,
        meta,
    )
