"""Enhanced (functional-group) multi-frame DICOM: one file holding a whole series.

Each frame's position/orientation comes from Per-frame (or Shared) PlanePosition /
PlaneOrientation sequences, rescale from PixelValueTransformationSequence; frames are sorted
like slices. Files without per-frame geometry are refused rather than given invented positions.
"""

from __future__ import annotations

import numpy as np

from medgen.data.dicom.geometry import GeometryError, stack_geometry
from medgen.data.dicom.header import check_rescale, photometric, series_photometric
from medgen.data.dicom.pixels import decode, n_frames, rescale
from medgen.data.dicom.sources import Member
from medgen.data.errors import DataError


def _group_value(item, shared, sequence: str, keyword: str):
    """``keyword`` from the functional group ``sequence`` of a frame, else the shared groups."""
    for container in (item, shared):
        if container is not None and sequence in container and len(container[sequence].value):
            group = container[sequence][0]
            if keyword in group and group[keyword].value not in (None, ""):
                return group[keyword].value, group
    return None, None


def read_multiframe(where: str, member: Member, ds, allow_irregular: bool = False):
    """An Enhanced (functional-group) multi-frame file -> (array, geometry, spacing, rescaled).

    Geometry comes from each frame's PlanePositionSequence / PlaneOrientationSequence (per frame
    or shared); a frame without a position is an error: no position is ever invented.
    """
    frames = n_frames(ds, default=None)
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
        geom = stack_geometry(positions, orientations, allow_irregular)
    except GeometryError as exc:
        raise DataError(f"{where}: {exc} (frames of {member.name})") from exc
    series_photometric([(member.name, photometric(ds, member.name, where))], where)
    check_rescale(ds, member.name, where)
    stored = decode(member, ds, where)
    stored = stored.reshape(frames, int(ds.Rows), int(ds.Columns))
    slices, rescaled = [], False
    for f in geom.order:
        _, group = _group_value(
            per_frame[f], shared, "PixelValueTransformationSequence", "RescaleSlope"
        )
        check_rescale(group, f"{member.name} frame {f + 1}", where)
        values, rescaled = rescale(stored[f], group, fallback=ds)
        slices.append(values)
    return np.stack(slices, axis=0), geom, spacings.pop(), rescaled
