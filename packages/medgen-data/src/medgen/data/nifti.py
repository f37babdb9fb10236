"""NIfTI reading and writing (.nii, .nii.gz) through SimpleITK."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medgen.data.errors import DataError
from medgen.data.sitk_image import geometry_from_sitk, to_sitk
from medgen.data.volume import Volume, pseudonym

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _pseudonym(path: Path, salt: str | None = None) -> str:
    """A stable id from the file *name* only (no directory, which may carry a patient name),
    salted like DICOM series keys: a name such as ``<MRN>.nii.gz`` is not recoverable."""
    return pseudonym(f"nifti:{path.name}", salt)


def _raw_bytes(path: Path) -> bytes:
    """The uncompressed file content; a truncated or corrupt gzip stream is a DataError."""
    if not path.name.endswith(".gz"):
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: truncated or corrupt gzip stream ({exc})") from exc


_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes FLOAT32, FLOAT64


def check_raw(path: Path) -> None:
    """Fail when the voxel data is shorter than the NIfTI-1 header says, or not finite.

    SimpleITK zero-fills (or reads garbage past) a truncated file without complaint, which
    would put a half-black volume into a training cache. Its NIfTI reader (ITK < 6) also
    silently replaces NaN and +-Inf voxels with 0 (ITK pull request 6683), so non-finite
    float voxels are looked for here, in the bytes on disk.
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
    datatype, bitpix = struct.unpack(endian + "2h", raw[70:74])
    vox_offset = int(struct.unpack(endian + "f", raw[108:112])[0])
    n_voxels = 1
    for d in dims[1 : 1 + max(0, min(dims[0], 7))]:
        n_voxels *= max(1, d)
    expected = max(vox_offset, 348) + n_voxels * bitpix // 8
    if len(raw) < expected:
        raise DataError(
            f"{path}: truncated: the header promises {expected} bytes of data, found {len(raw)}"
        )
    if datatype in _FLOAT_TYPES:
        voxels = np.frombuffer(
            raw, dtype=endian + _FLOAT_TYPES[datatype], count=n_voxels, offset=max(vox_offset, 348)
        )
        bad = int(np.count_nonzero(~np.isfinite(voxels)))
        if bad:
            raise DataError(f"{path}: contains {bad} NaN or infinite voxels (of {n_voxels})")


def read_nifti(
    path: str | Path,
    volume_index: int | None = None,
    *,
    salt: str | None = None,
    modality: str = "OT",
) -> Volume:
    """Read a 3D NIfTI file (or one volume of a 4D file) into a float32 :class:`Volume`.

    Raises :class:`DataError` naming the file when it is missing, not NIfTI, unreadable, 4D
    without ``volume_index``, or 3D with one. NIfTI records no modality: ``modality`` is what
    the caller knows ("OT", other, by default; nothing is guessed). ``salt``: see
    :func:`medgen.data.volume.pseudonym`.
    """
    path = Path(path)
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise DataError(f"{path}: not a NIfTI file (expected a name ending in .nii or .nii.gz)")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    check_raw(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown reason"
        raise DataError(f"{path}: SimpleITK could not read it as NIfTI ({first})") from exc

    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise DataError(
            f"{path}: {components} components per voxel (vector or RGB image); expected a "
            "scalar volume"
        )
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
    elif volume_index is not None:
        raise DataError(f"{path}: volume_index={volume_index} given, but the image is 3D")

    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise DataError(f"{path}: contains NaN or infinite voxels")
    # SimpleITK reports (x, y, z); MedGen keeps geometry in array-axis order (z, y, x).
    return Volume(
        array=array,
        **geometry_from_sitk(image),
        modality=modality,
        id=_pseudonym(path, salt),
        meta={"source_format": "nifti", "dtype_on_disk": image.GetPixelIDTypeAsString()},
    )


def write_nifti(vol: Volume, path: str | Path) -> Path:
    """Write ``vol`` (float32 voxels, its geometry) to ``path`` (.nii or .nii.gz) atomically.

    The file is written under a temporary name in the same directory, then renamed, so a
    crash never leaves a partial file under ``path``. Nothing but voxels and geometry is
    written (no description, no identifiers).
    """
    path = Path(path)
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise DataError(f"{path}: output must end in .nii or .nii.gz")
    if not path.parent.is_dir():
        raise DataError(f"{path}: the directory {path.parent} does not exist")
    suffix = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        sitk.WriteImage(to_sitk(vol), str(tmp), useCompression=suffix == ".nii.gz")
        os.replace(tmp, path)
    except (RuntimeError, OSError) as exc:
        raise DataError(f"{path}: cannot write NIfTI ({str(exc).strip().splitlines()[0]})") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path
