"""NIfTI reading and writing (.nii, .nii.gz) through SimpleITK."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medgen.data.errors import DataError
from medgen.data.sitk_image import geometry_from_sitk, sitk_reason, to_sitk
from medgen.data.volume import Volume, pseudonym

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _pseudonym(path: Path, salt: str | None = None) -> str:
    """A stable id from the file *name* only (no directory, which may carry a patient name),
    salted like DICOM series keys: a name such as ``<MRN>.nii.gz`` is not recoverable."""
    return pseudonym(f"nifti:{path.name}", salt)


_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes FLOAT32, FLOAT64
# datatype code -> bits per voxel (NIfTI-1 nifti1.h)
_BITPIX = {2: 8, 4: 16, 8: 32, 16: 32, 32: 64, 64: 64, 128: 24, 256: 8, 512: 16, 768: 32,
           1024: 64, 1280: 64, 1536: 128, 1792: 128, 2048: 256, 2304: 32}  # fmt: skip
DEFLATE_MAX_RATIO = 1032  # a deflate stream never inflates to more than ~1032x its size
DEFAULT_MAX_BYTES = 16 * 2**30


def max_bytes_default() -> int:
    """The voxel-data budget of a NIfTI file: ``$MEDGEN_MAX_NIFTI_BYTES`` or 16 GiB."""
    return int(os.environ.get("MEDGEN_MAX_NIFTI_BYTES", DEFAULT_MAX_BYTES))


def _header(path: Path, raw: bytes) -> tuple[str, dict] | None:
    """The NIfTI-1 header fields MedGen checks, or None for NIfTI-2 / not NIfTI."""
    if len(raw) < 348:
        raise DataError(f"{path}: {len(raw)} bytes, shorter than a NIfTI header")
    for endian in ("<", ">"):
        if struct.unpack(endian + "i", raw[:4])[0] == 348:
            break
    else:
        return None  # NIfTI-2 or not NIfTI at all: SimpleITK decides below
    u = struct.unpack
    return endian, {
        "dim": u(endian + "8h", raw[40:56]),
        "datatype": u(endian + "h", raw[70:72])[0],
        "bitpix": u(endian + "h", raw[72:74])[0],
        "pixdim": u(endian + "8f", raw[76:108]),
        "vox_offset": u(endian + "f", raw[108:112])[0],
        "scl_slope": u(endian + "f", raw[112:116])[0],
        "scl_inter": u(endian + "f", raw[116:120])[0],
        "qform_code": u(endian + "h", raw[252:254])[0],
        "sform_code": u(endian + "h", raw[254:256])[0],
        "magic": raw[344:348],
    }


def _check_header(path: Path, h: dict) -> int:
    """One-line DataErrors for header fields that make no sense; returns the data's end
    offset (``vox_offset`` + voxel bytes) the header promises."""
    dim = h["dim"]
    if h["magic"] not in (b"n+1\0", b"ni1\0"):
        raise DataError(f"{path}: magic {h['magic']!r} is not NIfTI-1's 'n+1'")
    if not 1 <= dim[0] <= 7 or any(d < 1 for d in dim[1 : 1 + dim[0]]):
        raise DataError(f"{path}: dim {list(dim)}: expected dim[0] in 1..7 and sizes >= 1")
    expected_bits = _BITPIX.get(h["datatype"])
    if expected_bits is None:
        raise DataError(f"{path}: datatype {h['datatype']} is not a NIfTI-1 datatype code")
    if h["bitpix"] != expected_bits:
        raise DataError(
            f"{path}: bitpix {h['bitpix']} does not match datatype {h['datatype']} "
            f"({expected_bits} bits)"
        )
    spatial = h["pixdim"][1 : 1 + min(dim[0], 3)]
    if not all(math.isfinite(p) and p > 0 for p in spatial):
        raise DataError(f"{path}: pixdim {list(spatial)}: voxel sizes must be positive numbers")
    for key in ("vox_offset", "scl_slope", "scl_inter"):
        if not math.isfinite(h[key]):
            raise DataError(f"{path}: {key} = {h[key]}: expected a finite number")
    if h["magic"] == b"n+1\0" and h["vox_offset"] < 352:
        raise DataError(f"{path}: vox_offset {h['vox_offset']}: a .nii file needs >= 352")
    for key in ("qform_code", "sform_code"):
        if not 0 <= h[key] <= 4:
            raise DataError(f"{path}: {key} = {h[key]}: expected 0..4")
    n_voxels = math.prod(dim[1 : 1 + dim[0]])
    return int(h["vox_offset"]) + n_voxels * h["bitpix"] // 8


def _read_limited(path: Path, max_bytes: int) -> tuple[bytes, dict | None, str]:
    """The header and voxel bytes of ``path``, decompressed no further than the header says
    (and refused before inflating when that exceeds ``max_bytes`` or what the compressed
    size can hold)."""
    gz = path.name.endswith(".gz")
    opener = gzip.open if gz else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(348)
            parsed = _header(path, head)
            if parsed is None:
                return head + fh.read(), None, "<"  # NIfTI-2: SimpleITK reads it
            endian, h = parsed
            end = _check_header(path, h)
            limit = min(max_bytes, path.stat().st_size * DEFLATE_MAX_RATIO) if gz else max_bytes
            if end > limit:
                why = (
                    f"more than {max_bytes} bytes (MEDGEN_MAX_NIFTI_BYTES)"
                    if end > max_bytes
                    else f"more than its {path.stat().st_size} compressed bytes can inflate to"
                )
                raise DataError(f"{path}: the header promises {end} bytes of data, {why}")
            return head + fh.read(end - len(head)), h, endian
    except (EOFError, zlib.error) as exc:
        raise DataError(f"{path}: truncated or corrupt gzip stream ({exc})") from exc
    except OSError as exc:
        if gz:
            raise DataError(f"{path}: truncated or corrupt gzip stream ({exc})") from exc
        raise


def check_raw(path: Path, max_bytes: int | None = None) -> None:
    """Fail on a NIfTI-1 header that makes no sense, voxel data shorter than the header says,
    or non-finite float voxels; decompress no more than the header promises.

    SimpleITK zero-fills (or reads garbage past) a truncated file without complaint, which
    would put a half-black volume into a training cache. Its NIfTI reader (ITK < 6) also
    silently replaces NaN and +-Inf voxels with 0 (ITK pull request 6683), so non-finite
    float voxels are looked for here, in the bytes on disk.
    """
    raw, h, endian = _read_limited(path, max_bytes_default() if max_bytes is None else max_bytes)
    if h is None:
        return
    dim = h["dim"]
    n_voxels = math.prod(dim[1 : 1 + dim[0]])
    offset = int(h["vox_offset"])
    expected = offset + n_voxels * h["bitpix"] // 8
    if len(raw) < expected:
        raise DataError(
            f"{path}: truncated: the header promises {expected} bytes of data, found {len(raw)}"
        )
    if h["datatype"] in _FLOAT_TYPES:
        voxels = np.frombuffer(
            raw, dtype=endian + _FLOAT_TYPES[h["datatype"]], count=n_voxels, offset=offset
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
        raise DataError(
            f"{path}: SimpleITK could not read it as NIfTI ({sitk_reason(exc)})"
        ) from exc

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

    The file is written under a temporary name in the same directory, read back with
    :func:`read_nifti` (SimpleITK reports a short write, e.g. on a full disk, only on stderr
    and returns normally) and compared with ``vol``, then renamed: a failed write leaves the
    old ``path`` untouched and raises. Nothing but voxels and geometry is written (no
    description, no identifiers).
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
        try:
            back = read_nifti(tmp)
        except DataError as exc:
            raise DataError(f"{path}: the written file does not read back ({exc})") from None
        expected = np.asarray(vol.array, dtype=np.float32)
        if back.shape != vol.shape or not np.array_equal(back.array, expected):
            raise DataError(f"{path}: the written file reads back different voxels")
        if not np.allclose(back.spacing, vol.spacing, rtol=1e-5):
            raise DataError(f"{path}: the written file reads back spacing {back.spacing}")
        os.replace(tmp, path)
    except (RuntimeError, OSError) as exc:
        reason = sitk_reason(exc) if isinstance(exc, RuntimeError) else str(exc)
        raise DataError(f"{path}: cannot write NIfTI ({reason})") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path
