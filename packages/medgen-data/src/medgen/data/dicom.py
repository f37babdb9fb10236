"""DICOM reading: a directory, DICOMDIR, ZIP archive or single file -> a :class:`Volume`.

Design choices (see also :mod:`medgen.data.dicom_geometry` for the tolerances):

- Files are grouped by SeriesInstanceUID. Files that are not DICOM (no ``DICM`` preamble),
  DICOMDIR files and DICOM objects without a SeriesInstanceUID are skipped and counted.
- Slices are ordered by ImagePositionPatient projected on the slice normal (row x col of
  ImageOrientationPatient), ascending, never by InstanceNumber. The slice spacing comes from
  the positions, never from SliceThickness.
- A series of one slice (e.g. ``CT_small.dcm``) is a 1-slice volume whose z spacing is
  SpacingBetweenSlices when present, else 1.0 mm (SliceThickness is *not* used). This is
  what SimpleITK/GDCM report for a single file, so the two agree.
- Stored values go through RescaleSlope/RescaleIntercept (per slice) to float32, so CT is in
  HU. A Modality LUT Sequence is applied through pydicom when there is no rescale.
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

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from medgen.data.dicom_geometry import GeometryError, stack_geometry
from medgen.data.dicom_sources import DICOMDIR_SOP_CLASS, MAX_MEMBER_BYTES, Member, open_members
from medgen.data.errors import DataError
from medgen.data.volume import Volume

DEFAULT_SALT = "medgen-dicom-v1"
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


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


def _salt(salt: str | None) -> str:
    return salt if salt is not None else os.environ.get("MEDGEN_ID_SALT", DEFAULT_SALT)


def series_key(series_uid: str, salt: str | None = None) -> str:
    """The pseudonymous key of a SeriesInstanceUID (16 hex characters)."""
    return hashlib.sha256(f"{_salt(salt)}\0{series_uid}".encode()).hexdigest()[:16]


def _read_header(member: Member):
    """The header without pixels, or None when the member is not image DICOM."""
    try:
        ds = pydicom.dcmread(member.open(), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError):
        return None
    sop = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", ""))
    if sop == DICOMDIR_SOP_CLASS or "SeriesInstanceUID" not in ds:
        return None
    return ds


def _scan(members: list[Member], salt: str | None):
    """Group headers by series key. Returns ({key: [(member, header)]}, skipped)."""
    groups: dict[str, list] = {}
    skipped = 0
    for member in members:
        ds = _read_header(member)
        if ds is None:
            skipped += 1
            continue
        groups.setdefault(series_key(str(ds.SeriesInstanceUID), salt), []).append((member, ds))
    return groups, skipped


def _info(key: str, items: list) -> SeriesInfo:
    ds = items[0][1]
    frames = _n_frames(ds)
    n = frames if len(items) == 1 else len(items)
    return SeriesInfo(
        key=key,
        modality=str(ds.get("Modality", "OT") or "OT"),
        n_slices=n,
        rows=int(ds.Rows) if "Rows" in ds else None,
        cols=int(ds.Columns) if "Columns" in ds else None,
        description=str(ds.get("SeriesDescription", "") or "")[:64],
    )


def list_series(
    path: str | Path, *, salt: str | None = None, max_member_bytes: int = MAX_MEMBER_BYTES
) -> SeriesList:
    """The image series under ``path`` (directory, recursively; ZIP; DICOMDIR; single file).

    Largest first (then by key). ``result.skipped`` counts files that are not image DICOM.
    """
    path = Path(path)
    with open_members(path, max_member_bytes) as members:
        groups, skipped = _scan(members, salt)
    infos = sorted((_info(k, v) for k, v in groups.items()), key=lambda s: (-s.n_slices, s.key))
    result = SeriesList(infos)
    result.skipped = skipped
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
    infos = sorted((_info(k, v) for k, v in groups.items()), key=lambda s: (-s.n_slices, s.key))
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


def _n_frames(ds, default: int | None = 1) -> int:
    """NumberOfFrames as an int; a malformed value is a DataError (or ``default`` if given)."""
    value = ds.get("NumberOfFrames", 1)
    try:
        return int(value or 1)
    except (TypeError, ValueError):
        if default is not None:
            return default
        raise DataError(f"invalid NumberOfFrames {value!r}") from None


def _decode(member: Member, ds, where: str) -> np.ndarray:
    """The stored pixel values (one frame: (rows, cols); several: (frames, rows, cols))."""
    if not any(t in ds for t in _PIXEL_TAGS):
        raise DataError(f"{where}: missing pixel data in {member.name}")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DataError(
            f"{where}: {member.name} is a colour image (SamplesPerPixel "
            f"{ds.SamplesPerPixel}); only greyscale series are volumes"
        )
    try:
        return ds.pixel_array
    except Exception as exc:  # pydicom raises several types for truncated/compressed data
        raise DataError(
            f"{where}: cannot decode the pixel data of {member.name} (truncated file or "
            f"unsupported compression: {exc})"
        ) from exc


def _rescale(stored: np.ndarray, item, fallback=None) -> tuple[np.ndarray, bool]:
    """Apply RescaleSlope/Intercept from ``item`` (else ``fallback``) to float32."""
    for source in (item, fallback):
        if source is not None and ("RescaleSlope" in source or "RescaleIntercept" in source):
            slope = float(source.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(source.get("RescaleIntercept", 0.0) or 0.0)
            return (stored.astype(np.float64) * slope + intercept).astype(np.float32), True
    if item is not None and "ModalityLUTSequence" in item:
        from pydicom.pixels import apply_modality_lut

        return np.asarray(apply_modality_lut(stored, item), dtype=np.float32), True
    return stored.astype(np.float32), False


def _classic(where: str, datasets: list):
    """One single-frame file per slice -> (array, geometry, pixel spacing, rescaled)."""
    sizes = {(int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)) for _, ds in datasets}
    if len(sizes) > 1:
        raise DataError(f"{where}: mixed rows/columns between slices: {sorted(sizes)}")
    spacings = {tuple(float(v) for v in ds.get("PixelSpacing", []) or []) for _, ds in datasets}
    if len(spacings) > 1:
        raise DataError(f"{where}: mixed PixelSpacing between slices: {sorted(spacings)}")
    for member, ds in datasets:
        if not any(t in ds for t in _PIXEL_TAGS):
            raise DataError(f"{where}: missing pixel data in {member.name}")
        missing = [t for t in ("ImagePositionPatient", "ImageOrientationPatient") if t not in ds]
        if missing:
            raise DataError(
                f"{where}: {member.name} has no {' or '.join(missing)} (not a cross-sectional "
                "image, e.g. a projection radiograph); cannot place it in 3D"
            )
        if "PixelSpacing" not in ds:
            raise DataError(f"{where}: {member.name} has no PixelSpacing")
    try:
        geom = stack_geometry(
            [ds.ImagePositionPatient for _, ds in datasets],
            [ds.ImageOrientationPatient for _, ds in datasets],
        )
    except GeometryError as exc:
        raise DataError(f"{where}: {exc}") from exc
    slices, rescaled = [], False
    for i in geom.order:
        member, ds = datasets[i]
        stored = _decode(member, ds, where)
        if stored.shape != (int(ds.Rows), int(ds.Columns)):
            raise DataError(
                f"{where}: {member.name} pixel data has shape {stored.shape}, header says "
                f"{int(ds.Rows)}x{int(ds.Columns)}"
            )
        values, rescaled = _rescale(stored, ds)
        slices.append(values)
    pixel_spacing = tuple(float(v) for v in datasets[0][1].PixelSpacing)
    return np.stack(slices, axis=0), geom, pixel_spacing, rescaled


def _group_value(item, shared, sequence: str, keyword: str):
    """``keyword`` from the functional group ``sequence`` of a frame, else the shared groups."""
    for container in (item, shared):
        if container is not None and sequence in container and len(container[sequence].value):
            group = container[sequence][0]
            if keyword in group and group[keyword].value not in (None, ""):
                return group[keyword].value, group
    return None, None


def _multiframe(where: str, member: Member, ds):
    """An Enhanced (functional-group) multi-frame file -> (array, geometry, spacing, rescaled).

    Geometry comes from each frame's PlanePositionSequence / PlaneOrientationSequence (per frame
    or shared); a frame without a position is an error: no position is ever invented.
    """
    frames = _n_frames(ds, default=None)
    if "PerFrameFunctionalGroupsSequence" not in ds:
        raise DataError(
            f"{where}: {member.name} is a multi-frame file ({frames} frames) without "
            "PerFrameFunctionalGroupsSequence, so frame positions are unknown; refusing to "
            "invent them"
        )
    per_frame = ds.PerFrameFunctionalGroupsSequence
    if len(per_frame) != frames:
        raise DataError(
            f"{where}: {member.name} has {frames} frames but {len(per_frame)} "
            "PerFrameFunctionalGroupsSequence items"
        )
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    positions, orientations, spacings = [], [], set()
    for f, item in enumerate(per_frame):
        pos, _ = _group_value(item, shared, "PlanePositionSequence", "ImagePositionPatient")
        iop, _ = _group_value(item, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
        px, _ = _group_value(item, shared, "PixelMeasuresSequence", "PixelSpacing")
        for value, what in ((pos, "PlanePositionSequence"), (iop, "PlaneOrientationSequence")):
            if value is None:
                raise DataError(f"{where}: {member.name} frame {f + 1} has no {what} geometry")
        if px is None:
            raise DataError(f"{where}: {member.name} frame {f + 1} has no PixelSpacing")
        positions.append(pos)
        orientations.append(iop)
        spacings.add(tuple(float(v) for v in px))
    if len(spacings) > 1:
        raise DataError(f"{where}: mixed PixelSpacing between frames: {sorted(spacings)}")
    try:
        geom = stack_geometry(positions, orientations)
    except GeometryError as exc:
        raise DataError(f"{where}: {exc} (frames of {member.name})") from exc
    stored = _decode(member, ds, where)
    stored = stored.reshape(frames, int(ds.Rows), int(ds.Columns))
    slices, rescaled = [], False
    for f in geom.order:
        _, group = _group_value(
            per_frame[f], shared, "PixelValueTransformationSequence", "RescaleSlope"
        )
        values, rescaled = _rescale(stored[f], group, fallback=ds)
        slices.append(values)
    return np.stack(slices, axis=0), geom, spacings.pop(), rescaled


def _read_series(path: Path, key: str, items: list) -> Volume:
    where = f"{path}: series {key}"
    datasets = []
    for member, _ in items:
        try:
            ds = pydicom.dcmread(member.open())
        except Exception as exc:
            raise DataError(f"{where}: cannot read {member.name} ({exc})") from exc
        datasets.append((member, ds))
    try:
        multi = [
            (m, ds)
            for m, ds in datasets
            if _n_frames(ds, default=None) > 1 or "PerFrameFunctionalGroupsSequence" in ds
        ]
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from exc
    if multi and len(datasets) > 1:
        raise DataError(
            f"{where}: {len(datasets)} files including multi-frame {multi[0][0].name}; a series "
            "made of several multi-frame files is not supported"
        )
    if multi:
        array, geom, pixel_spacing, rescaled = _multiframe(where, *multi[0])
    else:
        array, geom, pixel_spacing, rescaled = _classic(where, datasets)

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
        "description": str(first.get("SeriesDescription", "") or "")[:64],
    }
    try:
        meta["slice_thickness"] = float(first.SliceThickness)  # informational only
    except (AttributeError, TypeError, ValueError):
        pass
    return Volume(
        array=array,
        spacing=(float(dz), *pixel_spacing),
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
) -> Volume:
    """Read one DICOM series into a float32 :class:`Volume` (``(z, y, x)``, LPS geometry).

    ``path``: a directory (searched recursively), a DICOMDIR, a ZIP archive or a single file.
    ``series``: a key from :func:`list_series` or a raw SeriesInstanceUID; ``None`` reads the
    only series, or the largest one with a warning naming it and the others.
    Raises :class:`DataError` naming the path/series and the problem (no series, unknown
    series, geometry errors, missing or undecodable pixel data).
    """
    path = Path(path)
    with open_members(path, max_member_bytes) as members:
        groups, _ = _scan(members, salt)
        key = _choose(path, groups, series, salt)
        return _read_series(path, key, groups[key])
