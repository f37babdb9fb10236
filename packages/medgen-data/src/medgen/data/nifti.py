"""NIfTI reading (.nii, .nii.gz) through SimpleITK."""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medgen.data.errors import DataError
from medgen.data.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _pseudonym(path: Path) -> str:
    """A stable id from the file *name* only: no directory (which may carry a patient name)."""
    return hashlib.sha256(path.name.encode()).hexdigest()[:16]


def _raw_bytes(path: Path) -> bytes:
    """The uncompressed file content; a truncated or corrupt gzip stream is a DataError."""
    if not path.name.endswith(".gz"):
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: truncated or corrupt gzip stream ({exc})") from exc


def check_complete(path: Path) -> None:
    """Fail when the voxel data is shorter than the NIfTI-1 header says.

    SimpleITK zero-fills (or reads garbage past) a truncated file without complaint, which
    would put a half-black volume into a training cache.
    """
    raw = _raw_bytes(path)
    if len(raw) < 348:
        raise DataError(f"{path}: {len(raw)} bytes, shorter than a NIfTI header")
    for endian in ("<", ">"):
        if struct.unpack(endian + "i", raw[:4])[0] == 348:
            break
    else:
        return  # NIfTI-2 or not NIfTI at all: SimpleITK decides below
    dims = struct.unpack(endian + "8h", raw[40:56])
    bitpix = struct.unpack(endian + "h", raw[72:74])[0]
    vox_offset = int(struct.unpack(endian + "f", raw[108:112])[0])
    n_voxels = 1
    for d in dims[1 : 1 + max(0, min(dims[0], 7))]:
        n_voxels *= max(1, d)
    expected = max(vox_offset, 348) + n_voxels * bitpix // 8
    if len(raw) < expected:
        raise DataError(
            f"{path}: truncated: the header promises {expected} bytes of data, found {len(raw)}"
        )


def read_nifti(path: str | Path, volume_index: int | None = None) -> Volume:
    """Read a 3D NIfTI file (or one volume of a 4D file) into a float32 :class:`Volume`.

    Raises :class:`DataError` naming the file when it is missing, not NIfTI, unreadable, or 4D
    without ``volume_index``.
    """
    path = Path(path)
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise DataError(f"{path}: not a NIfTI file (expected a name ending in .nii or .nii.gz)")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    check_complete(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown reason"
        raise DataError(f"{path}: SimpleITK could not read it as NIfTI ({first})") from exc

    dim = image.GetDimension()
    if dim == 4:
        size = image.GetSize()
        if volume_index is None:
            raise DataError(
                f"{path}: 4D NIfTI with {size[3]} volumes; pass volume_index to choose one"
            )
        if not 0 <= volume_index < size[3]:
            raise DataError(f"{path}: volume_index {volume_index} outside [0, {size[3]})")
        image = sitk.Extract(image, [*size[:3], 0], [0, 0, 0, volume_index])
    elif dim != 3:
        raise DataError(f"{path}: expected a 3D image, got {dim}D")

    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise DataError(f"{path}: contains NaN or infinite voxels")
    # SimpleITK reports (x, y, z); MedGen keeps geometry in array-axis order (z, y, x).
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    direction_xyz = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    direction = direction_xyz[:, ::-1].copy()  # columns reordered to (z, y, x) axes
    return Volume(
        array=array,
        spacing=spacing,
        origin=tuple(float(o) for o in image.GetOrigin()),
        direction=direction,
        modality="MR",
        id=_pseudonym(path),
        meta={"source_format": "nifti", "dtype_on_disk": image.GetPixelIDTypeAsString()},
    )
