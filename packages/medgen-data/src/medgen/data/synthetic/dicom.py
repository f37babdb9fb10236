"""Writing synthetic single-frame DICOM series with pydicom (tests, benchmarks, demos).

Nothing here is read by the pipeline; it makes series of known geometry and content so that
readers can be checked against closed forms and SimpleITK, and so that malformed variants can
be made by editing one field. File names and InstanceNumbers are deliberately *not* in spatial
order (InstanceNumber runs backwards) so that readers that sort by them are caught.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

# Identifying fields the tests look for in outputs that must never show them.
FAKE_PATIENT = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-98765",
    "PatientBirthDate": "19610203",
    "StudyDate": "20240506",
    "SeriesDate": "20240506",
    "AccessionNumber": "ACC-112233",
    "InstitutionName": "St Example Hospital",
}


def ramp_volume(n: int, rows: int, cols: int) -> np.ndarray:
    """A stored-value volume (int16) that differs along every axis: 100 z + 3 y + x."""
    z, y, x = np.meshgrid(np.arange(n), np.arange(rows), np.arange(cols), indexing="ij")
    return (100 * z + 3 * y + x).astype(np.int16)


def write_series(
    out_dir: str | Path,
    stored: np.ndarray | None = None,
    *,
    offsets=None,
    spacing=(2.5, 0.7, 0.8),
    origin=(-20.0, -30.0, 40.0),
    orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    slope: float = 1.0,
    intercept: float = -1024.0,
    modality: str = "CT",
    series_uid: str | None = None,
    patient: dict | None = None,
    edit: Callable[[int, FileDataset], object] | None = None,
) -> list[Path]:
    """Write ``stored`` (``(n, rows, cols)`` int16, default a 5x16x16 ramp) as n files.

    Slice k sits at ``origin + offsets[k] * normal`` (default ``offsets = k * spacing[0]``);
    ``spacing[1:]`` is PixelSpacing (row, column). ``edit(k, ds)`` may change slice k's
    dataset before it is written, or return False to skip writing it. Returns the paths, in
    spatial order (files not written are left out).
    """
    stored = ramp_volume(5, 16, 16) if stored is None else np.asarray(stored)
    n, rows, cols = stored.shape
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    offsets = [k * spacing[0] for k in range(n)] if offsets is None else list(offsets)
    iop = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    paths = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = out / f"img_{(k * 7919) % 10007:05d}.dcm"  # names out of spatial order
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.SeriesDescription = "synthetic"
        ds.InstanceNumber = n - k  # backwards on purpose
        for key, value in (patient or {}).items():
            setattr(ds, key, value)
        position = np.asarray(origin, dtype=np.float64) + offsets[k] * normal
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[2]:g}"]
        ds.SliceThickness = "9.0"  # deliberately wrong: spacing comes from positions
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        ds.PixelData = np.ascontiguousarray(stored[k], dtype="<i2").tobytes()
        if edit is not None and edit(k, ds) is False:
            continue
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
