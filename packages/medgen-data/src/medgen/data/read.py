"""``read_volume``: one entry point for every supported input, dispatching on what it is.

| input | reader |
|---|---|
| a directory (DICOM files, searched recursively; a DICOMDIR in it is skipped) | read_dicom |
| a ZIP archive (by content, whatever its name) | read_dicom |
| a DICOMDIR, a ``.dcm`` file, or any file starting with the DICOM preamble | read_dicom |
| a name ending in ``.nii`` or ``.nii.gz`` | read_nifti |

Anything else (missing path, other extensions, unreadable files) is a :class:`DataError`
naming the path and listing what is supported.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from medgen.data.dicom import read_dicom
from medgen.data.dicom.sources import MAX_MEMBER_BYTES
from medgen.data.errors import DataError
from medgen.data.nifti import NIFTI_SUFFIXES, read_nifti
from medgen.data.volume import Volume

SUPPORTED = "a DICOM directory, DICOMDIR, ZIP archive, .dcm file, or NIfTI (.nii, .nii.gz)"


def _is_dicom_file(path: Path) -> bool:
    """DICOM Part 10: 128 bytes of preamble, then ``DICM``."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    return len(head) == 132 and head[128:] == b"DICM"


def input_kind(path: str | Path) -> str:
    """``"dicom"`` or ``"nifti"`` for a supported ``path``; a DataError otherwise."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        return "dicom"
    if path.name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if not path.is_file():
        raise DataError(f"{path}: not a regular file; expected {SUPPORTED}")
    suffix = path.suffix.lower()
    if suffix in (".dcm", ".zip") or path.name.upper() == "DICOMDIR":
        return "dicom"
    if zipfile.is_zipfile(path) or _is_dicom_file(path):
        return "dicom"
    raise DataError(f"{path}: unsupported input ({suffix or 'no extension'}); expected {SUPPORTED}")


def read_volume(
    path: str | Path,
    *,
    series: str | None = None,
    volume_index: int | None = None,
    on_irregular: str = "error",
    salt: str | None = None,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> Volume:
    """Read any supported input into a float32 :class:`Volume` (``(z, y, x)``, LPS geometry).

    DICOM options: ``series`` (key or SeriesInstanceUID), ``on_irregular`` ("error" or
    "resample"), ``max_member_bytes`` (see :func:`read_dicom`). NIfTI option: ``volume_index``
    for 4D files. ``salt`` (both): for the pseudonymous ``Volume.id``. An option that does not
    apply to the input is an error.
    """
    path = Path(path)
    kind = input_kind(path)
    if kind == "nifti":
        if series is not None or on_irregular != "error":
            raise DataError(f"{path}: series= and on_irregular= apply to DICOM input only")
        return read_nifti(path, volume_index=volume_index, salt=salt)
    if volume_index is not None:
        raise DataError(f"{path}: volume_index= applies to 4D NIfTI input only")
    return read_dicom(
        path,
        series,
        salt=salt,
        max_member_bytes=max_member_bytes,
        on_irregular=on_irregular,
    )
