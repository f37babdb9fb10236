"""Where DICOM files come from: a directory, a DICOMDIR, a ZIP archive or a single file.

ZIP archives are read in memory (nothing is extracted). Members with absolute paths or ``..``
components, and members whose declared size exceeds ``max_member_bytes``, are rejected with a
:class:`DataError` naming the member, and so are members that cannot be inflated.
:func:`has_preamble` and :func:`truncated_element` are the byte-level checks the scan makes.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from medgen.data.errors import DataError

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
MAX_MEMBER_BYTES = 1 << 30  # 1 GiB per ZIP member, declared (uncompressed) size


@dataclass(frozen=True)
class Member:
    """One DICOM file to read: from a directory, a DICOMDIR, a ZIP archive or a path."""

    name: str  # shown in error messages: a path, or "archive.zip:member"
    open: Callable[[], object]  # returns a path or a binary file object for dcmread
    in_memory: bool = False  # opening it inflates a ZIP member into memory


def _check_member_name(archive: Path, info: zipfile.ZipInfo, max_bytes: int) -> None:
    name = info.filename
    pure = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or pure.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{archive}: member {name!r} has an absolute path; refusing to read it")
    if ".." in pure.parts:
        raise DataError(f"{archive}: member {name!r} contains '..'; refusing to read it")
    if info.file_size > max_bytes:
        raise DataError(
            f"{archive}: member {name!r} declares {info.file_size} bytes, above the limit of "
            f"{max_bytes} (max_member_bytes)"
        )


def _inflate(archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> io.BytesIO:
    """A member's bytes; damaged, encrypted or oddly compressed members are a DataError."""
    try:
        return io.BytesIO(zf.read(info))
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        RuntimeError,
        NotImplementedError,
    ) as exc:
        raise DataError(
            f"{archive}: member {info.filename!r} cannot be read ({type(exc).__name__}: {exc})"
        ) from exc


def _dicomdir_members(path: Path) -> list[Member]:
    from pydicom.fileset import FileSet

    try:
        fs = FileSet(pydicom.dcmread(path))
    except Exception as exc:
        raise DataError(f"{path}: unreadable DICOMDIR ({exc})") from exc
    members = []
    for instance in fs:
        p = Path(instance.path)
        members.append(Member(str(p), lambda p=p: p))
    return members


@contextmanager
def open_members(path: Path, max_member_bytes: int) -> Iterator[list[Member]]:
    """The candidate DICOM members of ``path`` (directory files, ZIP members read in memory,
    DICOMDIR references, or the file itself), as a context manager."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        yield [Member(str(p), lambda p=p: p) for p in files]
        return
    if zipfile.is_zipfile(path):
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{path}: unreadable ZIP archive ({exc})") from exc
        with zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            for info in infos:
                _check_member_name(path, info, max_member_bytes)
            yield [
                Member(f"{path}:{i.filename}", lambda i=i: _inflate(path, zf, i), True)
                for i in infos
            ]
        return
    try:
        head = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a DICOM file, directory or ZIP archive ({exc})") from exc
    sop = str(getattr(head, "file_meta", {}).get("MediaStorageSOPClassUID", ""))
    if sop == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in head:
        yield _dicomdir_members(path)
        return
    yield [Member(str(path), lambda: path)]


def has_preamble(member: Member) -> bool:
    """Whether the member starts like a DICOM Part 10 file (``DICM`` at byte 128)."""
    source = member.open()
    try:
        if isinstance(source, str | Path):
            with open(source, "rb") as fh:
                return fh.read(132)[128:] == b"DICM"
        return source.read(132)[128:] == b"DICM"
    except OSError:
        return False


def truncated_element(ds, source, skip=()) -> str:
    """The keyword of the last header element when its value runs past the end of the file.

    pydicom reads a value cut short by the end of the file without complaint, so a file
    truncated inside its header would otherwise pass (e.g. as a series of its own, with a cut
    SeriesInstanceUID). Elements in ``skip`` (pixel data) are left to the decoder.
    """
    tags = list(ds.keys())
    if not tags:
        return ""
    elem = ds.get_item(max(tags))
    if not isinstance(elem, RawDataElement) or elem.length == 0xFFFFFFFF:
        return ""
    if elem.tag in {Tag(t) for t in skip}:
        return ""
    if isinstance(source, str | Path):
        size = os.path.getsize(source)
    else:
        size = len(source.getbuffer())
    if elem.value_tell + elem.length <= size:
        return ""
    return keyword_for_tag(elem.tag) or str(elem.tag)
