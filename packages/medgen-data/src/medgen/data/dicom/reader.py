"""DICOM reading: a directory, DICOMDIR, ZIP archive or single file -> a :class:`Volume`.

Design choices (see also :mod:`medgen.data.dicom.geometry` for the tolerances):

- Files are grouped by SeriesInstanceUID. Files that are not DICOM (READMEs, viewers, ...)
  are ignored, counted by :func:`list_series` and named in a warning by :func:`read_dicom`;
  DICOMDIR files are skipped silently. A file that starts like DICOM (``DICM`` preamble) but
  cannot be parsed, or lacks its SeriesInstanceUID, is an error in :func:`read_dicom`: it
  may be a slice of the series, and dropping it silently would make a gap.
- Geometry problems (duplicate positions, gaps, non-uniform spacing, tilt, mixed
  orientations or sizes) are errors naming the series; ``on_irregular="resample"`` resamples
  gaps and non-uniform spacing onto uniform spacing instead (:mod:`.regrid`).
- Slices are ordered by ImagePositionPatient projected on the slice normal (row x col of
  ImageOrientationPatient), ascending, never by InstanceNumber. The slice spacing comes from
  the positions, never from SliceThickness.
- A series of one slice (e.g. ``CT_small.dcm``) is a 1-slice volume whose z spacing is
  SpacingBetweenSlices when present, else 1.0 mm (SliceThickness is *not* used). This is
  what SimpleITK/GDCM report for a single file, so the two agree.
- Stored values go through RescaleSlope/RescaleIntercept (per slice) to float32, so CT is in
  HU. A Modality LUT Sequence is applied through pydicom when there is no rescale.
- Header fields that say how to read the pixels (PhotometricInterpretation, bits, rescale)
  are checked for sense first, and stored values for fitting BitsStored
  (:mod:`medgen.data.dicom.header`): a header that lies is an error naming the file.
- Ids are pseudonyms: the SeriesInstanceUID hashed with a salt (``salt`` argument, else the
  ``MEDGEN_ID_SALT`` environment variable, else a fixed public default, which keeps ids stable
  but is only a pseudonym if the salt is kept secret). ``Volume.meta`` and
  :class:`SeriesInfo` never hold patient names/ids, dates, accession numbers, institutions or
  raw UIDs.
- Enhanced (functional-group) multi-frame files: one file is one series; each frame's
  position/orientation comes from Per-frame (or Shared) PlanePosition/PlaneOrientation
  sequences, rescale from PixelValueTransformationSequence, frames are sorted like slices.
  Multi-frame files without per-frame geometry (RT dose, ultrasound, secondary capture) are
  refused rather than given invented positions.
- ZIP archives are read in memory (nothing is extracted). Members with absolute paths or
  ``..`` components, and members whose declared size exceeds ``max_member_bytes``, are
  rejected with a :class:`DataError` naming the member.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from medgen.data.dicom.geometry import GeometryError, stack_geometry
from medgen.data.dicom.header import check_rescale, photometric, series_photometric
from medgen.data.dicom.multiframe import read_multiframe
from medgen.data.dicom.pixels import PIXEL_TAGS, decode, n_frames, rescale
from medgen.data.dicom.regrid import regrid_slices
from medgen.data.dicom.sources import (
    DICOMDIR_SOP_CLASS,
    MAX_MEMBER_BYTES,
    Member,
    has_preamble,
    open_members,
    truncated_element,
)
from medgen.data.errors import DataError
from medgen.data.volume import Volume, pseudonym

# The scan reads each file once; values longer than this (pixel data) are read only when the
# series is decoded, straight from the file. ZIP members are scanned without pixels and read
# again when their series is decoded, so that only one series is inflated at a time.
DEFER_BYTES = 64 * 1024


@dataclass(frozen=True)
class SeriesInfo:
    """One series found by :func:`list_series`. No patient field, no raw UID."""

    key: str  # salted hash of the SeriesInstanceUID; pass it to read_dicom(series=...)
    modality: str
    n_slices: int  # files in the series (frames for a single multi-frame file)
    rows: int | None
    cols: int | None
    description: str  # SeriesDescription, at most 64 characters


class SeriesList(list):
    """``list[SeriesInfo]`` plus ``skipped``: how many files were not image DICOM."""

    skipped: int = 0


def series_key(series_uid: str, salt: str | None = None) -> str:
    """The pseudonymous key of a SeriesInstanceUID (16 hex characters)."""
    return pseudonym(series_uid, salt)


def _read_header(member: Member):
    """``(header without pixels, "")``, or ``(None, reason)`` when not image DICOM."""
    source = member.open()  # a ZIP member that cannot be inflated is a DataError here
    try:
        if member.in_memory:  # do not keep every inflated ZIP member alive
            ds = pydicom.dcmread(source, stop_before_pixels=True)
        else:
            ds = pydicom.dcmread(source, defer_size=DEFER_BYTES)
    except DataError:
        raise
    except Exception as exc:  # pydicom raises struct.error, KeyError, ... on junk, not only these
        if not has_preamble(member):
            return None, "not DICOM"
        return None, f"corrupt DICOM ({type(exc).__name__}: {exc})"
    sop = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", ""))
    if sop == DICOMDIR_SOP_CLASS:
        return None, "DICOMDIR"
    cut = truncated_element(ds, source, skip=PIXEL_TAGS)
    if cut:
        return None, f"corrupt DICOM (truncated inside {cut})"
    if "SeriesInstanceUID" not in ds:
        # Type 1 in every composite IOD: a Part 10 file without it is truncated or broken
        return None, "corrupt DICOM (no SeriesInstanceUID)" if has_preamble(member) else ""
    return ds, ""


def _scan(members: list[Member], salt: str | None):
    """Group headers by series key. Returns ({key: [(member, header)]}, [(name, reason)])."""
    groups: dict[str, list] = {}
    skipped = []
    for member in members:
        ds, reason = _read_header(member)
        if ds is None:
            skipped.append((member.name, reason))
            continue
        groups.setdefault(series_key(str(ds.SeriesInstanceUID), salt), []).append((member, ds))
    return groups, skipped


def _check_skipped(path: Path, skipped: list) -> None:
    """Ignore files that are not DICOM (exports carry READMEs, viewers, ...) with a warning;
    refuse corrupt DICOM files: one of them may be a slice of the series being read."""
    for name, reason in skipped:
        if reason.startswith("corrupt"):
            raise DataError(
                f"{path}: {name} is a truncated or corrupt DICOM file: {reason}; a slice may "
                "be missing, so the series is not read (remove or replace the file)"
            )
    prefix = str(path)
    names = [
        name.removeprefix(prefix).lstrip("/:") or name
        for name, reason in skipped
        if reason != "DICOMDIR"
    ]
    if names:
        shown = ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")
        warnings.warn(
            f"{path}: ignored {len(names)} file(s) that are not image DICOM: {shown}",
            stacklevel=3,
        )


def _info(key: str, items: list) -> SeriesInfo:
    ds = items[0][1]
    frames = n_frames(ds)
    n = frames if len(items) == 1 else len(items)
    return SeriesInfo(
        key=key,
        modality=str(ds.get("Modality", "OT") or "OT"),
        n_slices=n,
        rows=int(ds.Rows) if "Rows" in ds else None,
        cols=int(ds.Columns) if "Columns" in ds else None,
        description=str(ds.get("SeriesDescription", "") or "")[:64],
    )


def _infos(groups: dict) -> list[SeriesInfo]:
    """The series of ``groups``, largest first, ties by key."""
    return sorted((_info(k, v) for k, v in groups.items()), key=lambda s: (-s.n_slices, s.key))


def list_series(
    path: str | Path, *, salt: str | None = None, max_member_bytes: int = MAX_MEMBER_BYTES
) -> SeriesList:
    """The image series under ``path`` (directory, recursively; ZIP; DICOMDIR; single file).

    Largest first (then by key). ``result.skipped`` counts files that are not image DICOM.
    """
    path = Path(path)
    with open_members(path, max_member_bytes) as members:
        groups, skipped = _scan(members, salt)
    infos = _infos(groups)
    result = SeriesList(infos)
    result.skipped = len(skipped)
    return result


# --------------------------------------------------------------------------- reading


def _choose(path: Path, groups: dict, series: str | None, salt: str | None) -> str:
    if not groups:
        raise DataError(f"{path}: no DICOM image series found")
    if series is not None:
        for key in (series, series_key(series, salt)):
            if key in groups:
                return key
        # a raw SeriesInstanceUID is not echoed, only its key
        shown = series if len(series) <= 16 else f"with key {series_key(series, salt)}"
        raise DataError(
            f"{path}: no series {shown}; available series keys: {sorted(groups)} (see list_series)"
        )
    infos = _infos(groups)
    chosen = infos[0]
    if len(infos) > 1:
        others = ", ".join(f"{s.key} ({s.n_slices} slices, {s.description!r})" for s in infos[1:])
        warnings.warn(
            f"{path}: {len(infos)} series found; reading the largest (ties: lowest key), "
            f"{chosen.key} ({chosen.n_slices} slices, {chosen.modality}, {chosen.description!r}). "
            f"Others: {others}. Pass series=KEY to choose.",
            stacklevel=3,
        )
    return chosen.key


def _size(ds) -> tuple[int, int]:
    return int(ds.Rows or 0), int(ds.Columns or 0)


def _pixel_spacing(ds) -> tuple[float, ...]:
    return tuple(float(v) for v in ds.PixelSpacing or [])


def _classic(where: str, datasets: list, allow_irregular: bool):
    """One single-frame file per slice -> (array, geometry, pixel spacing, rescaled)."""
    for member, ds in datasets:  # per-file checks first, so that messages name the file
        if not any(t in ds for t in PIXEL_TAGS):
            raise DataError(f"{where}: missing pixel data in {member.name}")
        missing = [t for t in ("ImagePositionPatient", "ImageOrientationPatient") if t not in ds]
        if missing:
            raise DataError(
                f"{where}: {member.name} has no {' or '.join(missing)} (not a cross-sectional "
                "image, e.g. a projection radiograph); cannot place it in 3D"
            )
        for tag in ("PixelSpacing", "Rows", "Columns"):
            if tag not in ds:
                raise DataError(f"{where}: {member.name} has no {tag}")
    for what, value in (("rows/columns", _size), ("PixelSpacing", _pixel_spacing)):
        values = {value(ds) for _, ds in datasets}
        if len(values) > 1:
            (first, ref), (odd, ds) = (
                datasets[0],
                next((m, ds) for m, ds in datasets if value(ds) != value(datasets[0][1])),
            )
            raise DataError(
                f"{where}: mixed {what} between slices: {sorted(values)} ({odd.name} has "
                f"{value(ds)}, {first.name} has {value(ref)})"
            )
    try:
        geom = stack_geometry(
            [ds.ImagePositionPatient for _, ds in datasets],
            [ds.ImageOrientationPatient for _, ds in datasets],
            allow_irregular,
        )
    except GeometryError as exc:
        raise DataError(f"{where}: {exc}") from exc
    rows, cols = _size(datasets[0][1])
    series_photometric([(m.name, photometric(ds, m.name, where)) for m, ds in datasets], where)
    volume, rescaled = np.empty((len(datasets), rows, cols), np.float32), False
    for k, i in enumerate(geom.order):
        member, ds = datasets[i]
        check_rescale(ds, member.name, where)
        stored = decode(member, ds, where)
        if stored.shape != (rows, cols):
            raise DataError(
                f"{where}: {member.name} pixel data has shape {stored.shape}, header says "
                f"{rows}x{cols}"
            )
        _, rescaled = rescale(stored, ds, out=volume[k])
    pixel_spacing = tuple(float(v) for v in datasets[0][1].PixelSpacing)
    return volume, geom, pixel_spacing, rescaled


def _read_series(path: Path, key: str, items: list, on_irregular: str) -> Volume:
    where = f"{path}: series {key}"
    allow_irregular = on_irregular == "resample"
    datasets = []  # headers from the scan; pixel data is read on first access
    for member, ds in items:
        if member.in_memory:
            try:
                ds = pydicom.dcmread(member.open())
            except Exception as exc:
                raise DataError(f"{where}: cannot read {member.name} ({exc})") from exc
        datasets.append((member, ds))
    try:
        multi = [
            (m, ds)
            for m, ds in datasets
            if n_frames(ds, default=None) > 1 or "PerFrameFunctionalGroupsSequence" in ds
        ]
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from exc
    if multi and len(datasets) > 1:
        raise DataError(
            f"{where}: {len(datasets)} files including multi-frame {multi[0][0].name}; a series "
            "made of several multi-frame files is not supported"
        )
    if multi:
        array, geom, pixel_spacing, rescaled = read_multiframe(where, *multi[0], allow_irregular)
    else:
        array, geom, pixel_spacing, rescaled = _classic(where, datasets, allow_irregular)
    if geom.irregular:
        n_read = array.shape[0]
        array = regrid_slices(array, geom.along, geom.slice_spacing)
        warnings.warn(
            f"{where}: {geom.irregular}; resampled {n_read} slices onto {array.shape[0]} "
            f"uniform slices {geom.slice_spacing:.4g} mm apart by linear interpolation along "
            "the slice normal (on_irregular='resample')",
            stacklevel=3,
        )

    first = datasets[0][1]
    if array.shape[0] > 1:
        dz, dz_source = geom.slice_spacing, "positions"
    elif float(first.get("SpacingBetweenSlices", 0) or 0) > 0:
        dz, dz_source = float(first.SpacingBetweenSlices), "SpacingBetweenSlices"
    else:
        dz, dz_source = 1.0, "default (single slice)"
    meta = {
        "source_format": "dicom-multiframe" if multi else "dicom",
        "series_key": key,
        "n_slices": int(array.shape[0]),
        "slice_spacing_source": dz_source,
        "rescaled": rescaled,
        "resampled_slices": bool(geom.irregular),
        "description": str(first.get("SeriesDescription", "") or "")[:64],
    }
    try:
        meta["slice_thickness"] = float(first.SliceThickness)  # informational only
    except (AttributeError, TypeError, ValueError):
        pass
    spacing = (float(dz), *pixel_spacing)
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise DataError(
            f"{where}: PixelSpacing {list(pixel_spacing)} is not two positive numbers (mm)"
        )
    return Volume(
        array=array,
        spacing=spacing,
        origin=geom.origin,
        direction=geom.direction,
        modality=str(first.get("Modality", "OT") or "OT"),
        id=key,
        meta=meta,
    )


def read_dicom(
    path: str | Path,
    series: str | None = None,
    *,
    salt: str | None = None,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    on_irregular: str = "error",
) -> Volume:
    """Read one DICOM series into a float32 :class:`Volume` (``(z, y, x)``, LPS geometry).

    ``path``: a directory (searched recursively), a DICOMDIR, a ZIP archive or a single file.
    ``series``: a key from :func:`list_series` or a raw SeriesInstanceUID; ``None`` reads the
    only series, or the largest one with a warning naming it and the others.
    Raises :class:`DataError` naming the path/series and the problem (no series, unknown
    series, geometry errors, missing or undecodable pixel data).
    ``on_irregular``: ``"error"`` (default) or ``"resample"``: a gap or non-uniform slice
    spacing is then resampled onto uniform spacing by linear interpolation along the slice
    normal, with a warning naming the series (:mod:`medgen.data.dicom.regrid`). Files that are
    not image DICOM are ignored with a warning naming them.
    """
    if on_irregular not in ("error", "resample"):
        raise ValueError(f"on_irregular must be 'error' or 'resample', got {on_irregular!r}")
    path = Path(path)
    with open_members(path, max_member_bytes) as members:
        groups, skipped = _scan(members, salt)
        _check_skipped(path, skipped)
        key = _choose(path, groups, series, salt)
        return _read_series(path, key, groups[key], on_irregular)
