"""What a layout checks without building anything: geometry from image headers, label values.

:func:`grid` reads only a file's header (SimpleITK ``ReadImageInformation``): shape, spacing,
origin and direction in MedGen's array-axis order ``(z, y, x)`` and the number of volumes
(1 for a 3D file, N for a 4D one). :func:`grid_mismatch` uses the tolerances of the cache
loader (spacing within 1e-4 relative, origin within 1e-3 mm x the largest spacing, direction
within 1e-4). :func:`label_values` reads a label file and returns its distinct values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medgen.data.errors import DataError


@dataclass(frozen=True)
class Grid:
    """Header geometry of one image file (``(z, y, x)`` order) and its volume count."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    volumes: int = 1


def grid(path: Path) -> Grid:
    """The header geometry of NIfTI ``path`` (a DataError naming it when unreadable)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())[-160:]
        raise DataError(f"{path}: cannot read the image header ({reason})") from None
    dim = reader.GetDimension()
    if dim not in (3, 4):
        raise DataError(f"{path}: a {dim}D image; expected 3D (or 4D with one volume per channel)")
    size, spacing, origin = reader.GetSize(), reader.GetSpacing(), reader.GetOrigin()
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    # SimpleITK: (x, y, z); MedGen: (z, y, x), direction columns follow the array axes
    return Grid(
        shape=tuple(int(s) for s in size[:3][::-1]),
        spacing=tuple(float(s) for s in spacing[:3][::-1]),
        origin=tuple(float(o) for o in origin[:3]),
        direction=tuple(direction[:, ::-1].ravel().tolist()),
        volumes=int(size[3]) if dim == 4 else 1,
    )


def grid_mismatch(a: Grid, b: Grid) -> str:
    """ "" when ``a`` and ``b`` describe one grid, else what differs."""
    if a.shape != b.shape:
        return f"shape {list(b.shape)} vs {list(a.shape)}"
    sa, sb = np.asarray(a.spacing), np.asarray(b.spacing)
    if not np.allclose(sa, sb, rtol=1e-4, atol=0):
        return f"spacing {sb.round(6).tolist()} vs {sa.round(6).tolist()} mm"
    if np.abs(np.subtract(a.origin, b.origin)).max() > 1e-3 * float(max(sa.max(), sb.max())):
        return f"origin {np.round(b.origin, 4).tolist()} vs {np.round(a.origin, 4).tolist()} mm"
    if np.abs(np.subtract(a.direction, b.direction)).max() > 1e-4:
        return "direction cosines differ"
    return ""


def label_values(path: Path) -> np.ndarray:
    """The distinct voxel values of label file ``path`` (float64, sorted)."""
    try:
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())[-160:]
        raise DataError(f"{path}: cannot read the label file ({reason})") from None
    return np.unique(np.asarray(array)).astype(np.float64)
