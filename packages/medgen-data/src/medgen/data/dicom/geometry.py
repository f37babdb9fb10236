"""Slice-stack geometry for DICOM series: order, spacing and checks, from positions alone.

Pure numpy on ImagePositionPatient / ImageOrientationPatient values; no file access. The
reader (:mod:`medgen.data.dicom`) turns the ``ValueError`` subclasses raised here into
``DataError`` messages that name the series.

Tolerances (one place, documented):

- ``ORIENTATION_ATOL``: two ImageOrientationPatient vectors are "the same" when every
  direction cosine differs by at most 1e-4; row/column cosines must be unit length and
  orthogonal within 1e-3.
- ``POSITION_ATOL_MM`` / ``SPACING_RTOL``: a step between neighbouring slices (distance along
  the slice normal) matches the series step when it differs by at most
  ``max(0.01 mm, 1 % of the smallest step)``. A step of (about) zero is a duplicate position, a
  step that is an integer multiple k >= 2 of the smallest step is a gap of k - 1 missing
  slices, any other mismatch is non-uniform spacing.
- ``TILT_TOL``: the in-plane drift of the slice positions (the part of ``last - first`` that is
  perpendicular to the normal) may be at most ``0.01 mm + 1e-3 x`` the distance along the
  normal (about 0.06 degrees). More than that is a gantry tilt / sheared stack, which a
  ``(z, y, x)`` volume with an orthonormal direction matrix cannot represent.

With ``allow_irregular=True`` a gap or non-uniform spacing is not an error: the geometry then
describes a uniform grid from the first to the last slice whose step is the smallest step
between input slices, shortened so that both end slices are kept (``length / ceil(length /
smallest - 0.05)``), and ``irregular`` says what was wrong;
:mod:`medgen.data.dicom.regrid` interpolates the slices onto it. Duplicate positions, tilt and
mixed orientations stay errors: no interpolation along the normal repairs them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ORIENTATION_ATOL = 1e-4
ORTHONORMAL_ATOL = 1e-3
POSITION_ATOL_MM = 0.01
SPACING_RTOL = 0.01
TILT_TOL = 1e-3
MAX_REGRID_FACTOR = 4  # resampling may create at most 4x as many slices as were read
REGRID_SLACK = 0.05  # a step up to 5 % above the smallest one is kept rather than split


class GeometryError(ValueError):
    """A slice stack that is not a regular 3D grid. The message says what is wrong."""


@dataclass(frozen=True)
class StackGeometry:
    """The result of :func:`stack_geometry`: slice order and the (z, y, x) geometry."""

    order: tuple[int, ...]  # indices into the input, sorted along the slice normal
    slice_spacing: float  # mm between slices, from positions
    origin: tuple[float, float, float]  # LPS position of the first slice in ``order``
    direction: np.ndarray  # 3x3, columns = LPS directions of the (z, y, x) array axes
    irregular: str = ""  # with allow_irregular: the gap / non-uniform spacing that was found
    along: tuple[float, ...] = ()  # with irregular: sorted slice offsets (mm) from the first


def normal_from_orientation(iop) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(row, col, normal)`` unit vectors from a 6-value ImageOrientationPatient.

    ``row`` is the direction of increasing column index (array x), ``col`` the direction of
    increasing row index (array y), ``normal = row x col``.
    """
    values = np.asarray([float(v) for v in iop], dtype=np.float64)
    if values.shape != (6,) or not np.isfinite(values).all():
        raise GeometryError(f"ImageOrientationPatient must be 6 finite numbers, got {list(iop)}")
    row, col = values[:3], values[3:]
    if (
        abs(np.linalg.norm(row) - 1) > ORTHONORMAL_ATOL
        or abs(np.linalg.norm(col) - 1) > ORTHONORMAL_ATOL
        or abs(float(row @ col)) > ORTHONORMAL_ATOL
    ):
        raise GeometryError(
            f"non-orthogonal directions: ImageOrientationPatient {values.tolist()} is not two "
            "orthogonal unit vectors"
        )
    normal = np.cross(row, col)
    return row, col, normal / np.linalg.norm(normal)


def stack_geometry(positions, orientations, allow_irregular: bool = False) -> StackGeometry:
    """Order slices along the normal and derive spacing/origin/direction; check regularity.

    ``positions``: N ImagePositionPatient triples; ``orientations``: N ImageOrientationPatient
    6-tuples. Slices are sorted by position projected on the normal (ascending, as ITK/GDCM
    do), never by InstanceNumber. Raises :class:`GeometryError` for mixed orientations,
    non-orthogonal directions, duplicate positions, gaps, non-uniform spacing and gantry tilt.
    A single slice gets ``slice_spacing = 0.0``; the caller chooses a value.
    ``allow_irregular``: return a uniform target grid for gaps / non-uniform spacing instead
    of raising (see the module docstring).
    """
    pos = np.asarray([[float(v) for v in p] for p in positions], dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3 or not np.isfinite(pos).all():
        raise GeometryError("ImagePositionPatient must be 3 finite numbers per slice")
    iops = np.asarray([[float(v) for v in o] for o in orientations], dtype=np.float64)
    if len(iops) != len(pos) or len(pos) == 0:
        raise GeometryError("need one ImageOrientationPatient per ImagePositionPatient")
    differs = np.abs(iops - iops[0]).max(axis=1) > ORIENTATION_ATOL
    if differs.any():
        n_kinds = len({tuple(np.round(o, 4)) for o in iops})
        raise GeometryError(
            f"mixed orientations: {int(differs.sum())} of {len(iops)} slices differ from the "
            f"first slice's ImageOrientationPatient ({n_kinds} distinct orientations; "
            "localizer or multi-planar series?)"
        )
    row, col, normal = normal_from_orientation(iops[0])
    direction = np.stack([normal, col, row], axis=1)  # columns: z, y, x

    along = pos @ normal
    order = np.argsort(along, kind="stable")
    along = along[order]
    if len(pos) == 1:
        return StackGeometry((0,), 0.0, tuple(float(v) for v in pos[0]), direction)

    steps = np.diff(along)
    base = float(steps.min())
    if base <= POSITION_ATOL_MM:
        dup = int(np.argmin(steps))
        raise GeometryError(
            f"duplicate positions: slices {int(order[dup])} and {int(order[dup + 1])} (input "
            f"order) lie {base:.4g} mm apart along the normal (position "
            f"{pos[order[dup]].round(3).tolist()})"
        )
    problem = _irregularity(steps, along, base)
    if problem and not allow_irregular:
        raise GeometryError(problem)

    first, last = pos[order[0]], pos[order[-1]]
    delta = last - first
    length = float(delta @ normal)
    drift = float(np.linalg.norm(delta - length * normal))
    if drift > POSITION_ATOL_MM + TILT_TOL * length:
        angle = float(np.degrees(np.arctan2(drift, length)))
        raise GeometryError(
            f"gantry tilt: slice positions drift {drift:.3g} mm in-plane over {length:.3g} mm "
            f"(about {angle:.2f} degrees between the slice normal and the stacking direction)"
        )
    n_out = len(pos)
    if problem:
        n_out = int(np.ceil(length / base - REGRID_SLACK)) + 1
        if n_out > MAX_REGRID_FACTOR * len(pos):
            raise GeometryError(
                f"{problem}; not resampled: a uniform {base:.4g} mm grid would need {n_out} "
                f"slices for {len(pos)} read (more than {MAX_REGRID_FACTOR}x)"
            )
    spacing = length / (n_out - 1)
    return StackGeometry(
        tuple(int(i) for i in order),
        spacing,
        tuple(float(v) for v in first),
        direction,
        irregular=problem,
        along=tuple(float(a - along[0]) for a in along) if problem else (),
    )


def _irregularity(steps: np.ndarray, along: np.ndarray, base: float) -> str:
    """'' for uniform steps, else a message naming the gap or the non-uniform spacing."""
    tol = max(POSITION_ATOL_MM, SPACING_RTOL * base)
    bad = np.abs(steps - base) > tol
    if not bad.any():
        return ""
    i = int(np.argmax(np.abs(steps - base)))
    k = round(steps[i] / base)
    if k >= 2 and _multiples(steps, base, tol).all():
        return (
            f"gap: about {k - 1} missing slice(s) between positions {along[i]:.3f} and "
            f"{along[i + 1]:.3f} mm along the normal (step {steps[i]:.4g} mm, series step "
            f"{base:.4g} mm)"
        )
    return (
        f"non-uniform spacing: steps between slices range from {base:.4g} to "
        f"{float(steps.max()):.4g} mm (tolerance {tol:.3g} mm)"
    )


def _multiples(steps: np.ndarray, base: float, tol: float) -> np.ndarray:
    k = np.maximum(np.round(steps / base), 1)
    return np.abs(steps - k * base) <= tol * k
