"""read_volume dispatch, read_dicom(on_irregular="resample"), and atomic NIfTI writing."""

from __future__ import annotations

import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pydicom.data
import pytest
import SimpleITK as sitk

from medgen.data.dicom import list_series, read_dicom, series_key
from medgen.data.dicom.pixels import decode
from medgen.data.dicom.sources import Member
from medgen.data.errors import DataError
from medgen.data.nifti import read_nifti, write_nifti
from medgen.data.read import input_kind, read_volume
from medgen.data.synthetic.dicom import ramp_volume, write_series

UID = "1.2.826.0.1.3680043.8.498.777"
DICOMDIR = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "DICOMDIR"


def same(a, b):
    np.testing.assert_array_equal(a.array, b.array)
    assert a.spacing == pytest.approx(b.spacing) and a.origin == pytest.approx(b.origin)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-12)


@pytest.fixture
def series_dir(tmp_path):
    write_series(tmp_path / "s", series_uid=UID)
    return tmp_path / "s"


# --------------------------------------------------------------------------- dispatch


def test_directory_zip_and_single_files_dispatch_to_read_dicom(series_dir, tmp_path):
    ref = read_dicom(series_dir)
    assert input_kind(series_dir) == "dicom"
    same(read_volume(series_dir), ref)
    for name in ("export.zip", "export.bin"):  # a ZIP is recognised by content, not name
        archive = tmp_path / name
        with zipfile.ZipFile(archive, "w") as zf:
            for f in sorted(series_dir.iterdir()):
                zf.write(f, f"a/{f.name}")
        same(read_volume(archive), ref)
    one = sorted(series_dir.iterdir())[0]
    assert read_volume(one).shape == (1, 16, 16)
    bare = tmp_path / "IM000001"  # DICOM files often have no extension: the preamble decides
    shutil.copy(one, bare)
    assert input_kind(bare) == "dicom"
    same(read_volume(bare), read_dicom(one))


def test_dicomdir_dispatches_to_read_dicom():
    if not DICOMDIR.exists():
        pytest.skip("pydicom's dicomdirtests are not installed")
    key = next(s.key for s in list_series(DICOMDIR) if s.description.startswith("SmartScore"))
    same(read_volume(DICOMDIR, series=key), read_dicom(DICOMDIR, series=key))


@pytest.mark.parametrize("name", ["vol.nii", "vol.nii.gz"])
def test_nifti_dispatches_to_read_nifti(series_dir, tmp_path, name):
    path = write_nifti(read_dicom(series_dir), tmp_path / name)
    assert input_kind(path) == "nifti"
    same(read_volume(path), read_nifti(path))


def test_options_reach_the_reader(series_dir, tmp_path):
    write_series(series_dir / "second", ramp_volume(2, 16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_volume(series_dir, series=UID).id == series_key(UID)
        assert read_volume(series_dir, series=UID, salt="s").id == series_key(UID, "s")
    with pytest.raises(DataError, match="declares .* above the limit of 10"):
        archive = tmp_path / "a.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.write(next(series_dir.glob("*.dcm")), "x.dcm")
        read_volume(archive, max_member_bytes=10)
    nii = write_nifti(read_dicom(series_dir, series=UID), tmp_path / "v.nii")
    with pytest.raises(DataError, match="apply to DICOM input only"):
        read_volume(nii, series=UID)


# --------------------------------------------------------------- on_irregular="resample"


def linear_in_offset(offsets, rows=4, cols=5):
    """Stored values 10 * offset (mm) + in-plane ramp: linear along the normal."""
    plane = np.arange(rows * cols).reshape(rows, cols)
    return np.stack([10 * o + plane for o in offsets]).astype(np.int16)


def test_gap_is_filled_by_linear_interpolation_with_a_warning(tmp_path):
    offsets = [0.0, 2.5, 7.5, 10.0, 12.5]  # the slice at 5.0 is missing
    write_series(tmp_path, linear_in_offset(offsets), offsets=offsets, series_uid=UID)
    with pytest.raises(DataError, match="gap: about 1 missing slice"):
        read_dicom(tmp_path)
    with pytest.warns(UserWarning) as rec:
        vol = read_dicom(tmp_path, on_irregular="resample")
    text = str(rec[0].message)
    assert f"series {series_key(UID)}" in text and "gap" in text
    assert "resampled 5 slices onto 6 uniform slices 2.5 mm apart" in text
    assert vol.shape == (6, 4, 5) and vol.spacing[0] == pytest.approx(2.5)
    full = linear_in_offset([0, 2.5, 5, 7.5, 10, 12.5]).astype(np.float32) - 1024
    np.testing.assert_array_equal(vol.array, full)
    assert vol.meta["resampled_slices"] is True


def test_non_uniform_spacing_goes_onto_the_smallest_step(tmp_path):
    offsets = [0.0, 2.0, 4.0, 7.0, 9.0]
    write_series(tmp_path, linear_in_offset(offsets), offsets=offsets, origin=(1, 2, 3))
    with pytest.warns(UserWarning, match="non-uniform spacing"):
        vol = read_dicom(tmp_path, on_irregular="resample")
    # 9 mm at about 2 mm: 5 steps of 1.8 mm, both end slices kept exactly
    assert vol.shape[0] == 6 and vol.spacing[0] == pytest.approx(1.8)
    stored = linear_in_offset(offsets).astype(np.float64)  # 10 * offset + plane, exact ints
    targets = np.arange(6) * 1.8
    expected = 10 * targets[:, None, None] + stored[0] - 1024  # linear along the normal
    np.testing.assert_allclose(vol.array, expected, atol=1e-3)
    assert vol.origin == pytest.approx((1, 2, 3))


def test_interpolated_values_match_simpleitk_on_the_full_series(tmp_path):
    """Dropping a slice and resampling gives back the full series of a linear ramp."""
    stored = ramp_volume(6, 8, 8)
    write_series(tmp_path / "full", stored, series_uid=UID)
    write_series(tmp_path / "gap", stored, series_uid=UID, edit=lambda k, ds: k != 3)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "full")))
    ref = sitk.GetArrayFromImage(reader.Execute())
    with pytest.warns(UserWarning, match="gap"):
        vol = read_dicom(tmp_path / "gap", on_irregular="resample")
    np.testing.assert_array_equal(vol.array, ref.astype(np.float32))


@pytest.mark.parametrize(
    ("offsets", "message"),
    [([0, 2.5, 2.5, 5, 7.5], "duplicate positions"), ([0, 0.5, 20, 40, 60], "not resampled")],
)
def test_resample_does_not_hide_what_it_cannot_fix(tmp_path, offsets, message):
    write_series(tmp_path, linear_in_offset(offsets), offsets=offsets)
    with pytest.raises(DataError, match=message):
        read_dicom(tmp_path, on_irregular="resample")


def test_tilt_is_still_an_error_when_resampling(tmp_path):
    def shear(k, ds):
        ds.ImagePositionPatient[1] = float(ds.ImagePositionPatient[1]) + 0.5 * k

    write_series(tmp_path, offsets=[0, 2.5, 7.5, 10, 12.5], edit=shear)
    with pytest.raises(DataError, match="gantry tilt"):
        read_dicom(tmp_path, on_irregular="resample")


def test_on_irregular_is_validated(series_dir):
    with pytest.raises(ValueError, match="on_irregular must be"):
        read_dicom(series_dir, on_irregular="fix")


# ------------------------------------------------------------------------ write_nifti


@pytest.mark.parametrize("name", ["out.nii", "out.nii.gz"])
def test_write_nifti_round_trips_geometry_and_leaves_no_temp(series_dir, tmp_path, name):
    vol = read_dicom(series_dir)
    out = write_nifti(vol, tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["s", name])
    back = read_nifti(out)
    same(back, vol)
    image = sitk.ReadImage(str(out))
    assert image.GetSpacing() == pytest.approx(vol.spacing[::-1])
    assert image.GetOrigin() == pytest.approx(vol.origin)


def test_nifti_ids_are_salted_pseudonyms_of_the_name_and_modality_is_not_guessed(
    series_dir, tmp_path, monkeypatch
):
    import hashlib

    path = write_nifti(read_dicom(series_dir), tmp_path / "12345678.nii.gz")  # an MRN as name
    vol = read_volume(path)
    assert vol.id != hashlib.sha256(path.name.encode()).hexdigest()[:16]  # not brute-forcible
    assert read_volume(path, salt="a").id != read_volume(path, salt="b").id
    monkeypatch.setenv("MEDGEN_ID_SALT", "a")
    assert read_volume(path).id == read_volume(path, salt="a").id
    assert vol.modality == "OT" and read_nifti(path, modality="CT").modality == "CT"


def test_write_nifti_errors(series_dir, tmp_path):
    vol = read_dicom(series_dir)
    with pytest.raises(DataError, match=r"out.png: output must end in \.nii or \.nii\.gz"):
        write_nifti(vol, tmp_path / "out.png")
    with pytest.raises(DataError, match="does not exist"):
        write_nifti(vol, tmp_path / "missing" / "out.nii.gz")


# ------------------------------------------------------- pixel decoding (fast path)


@pytest.mark.parametrize(
    ("dtype", "bits_stored", "syntax"),
    [
        ("<i2", 16, "1.2.840.10008.1.2.1"),  # native fast path
        ("<u2", 16, "1.2.840.10008.1.2"),  # implicit VR: fast path
        ("<u1", 8, "1.2.840.10008.1.2.1"),
        ("<i4", 32, "1.2.840.10008.1.2.1"),
        ("<u2", 12, "1.2.840.10008.1.2.1"),  # BitsStored < BitsAllocated: pydicom
        ("<i2", 12, "1.2.840.10008.1.2.1"),  # signed 12 bit: pydicom sign-extends
    ],
)
def test_decode_equals_pydicom_pixel_array(tmp_path, dtype, bits_stored, syntax):
    rng = np.random.default_rng(1)
    dt = np.dtype(dtype)
    lo, hi = (
        (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1))
        if dt.kind == "i"
        else (0, 2**bits_stored)
    )
    plane = rng.integers(lo, hi, size=(6, 7)).astype(dt)

    def edit(k, ds):
        ds.file_meta.TransferSyntaxUID = syntax
        ds.BitsAllocated, ds.BitsStored = dt.itemsize * 8, bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = int(dt.kind == "i")
        ds.Rows, ds.Columns = plane.shape
        ds.PixelData = plane.tobytes()

    (path,) = write_series(tmp_path, np.zeros((1, 6, 7), np.int16), edit=edit)
    ds = pydicom.dcmread(path)
    ours = decode(Member(str(path), lambda: path), ds, "here")
    np.testing.assert_array_equal(ours, ds.pixel_array)
    assert ours.dtype.kind == ds.pixel_array.dtype.kind
    np.testing.assert_array_equal(ours, plane)


def test_regrid_slices_closed_form_and_arguments():
    from medgen.data.dicom.regrid import regrid_slices

    along = [0.0, 1.0, 4.0]
    array = np.stack([np.full((2, 2), v, np.float32) for v in (0.0, 10.0, 40.0)])
    out = regrid_slices(array, along, 1.0)
    np.testing.assert_array_equal(out[:, 0, 0], [0, 10, 20, 30, 40])
    with pytest.raises(ValueError, match="one offset per slice"):
        regrid_slices(array, along[:2], 1.0)
    with pytest.raises(ValueError, match="increase strictly"):
        regrid_slices(array, [0.0, 2.0, 1.0], 1.0)


def test_stack_geometry_irregular_grid():
    from medgen.data.dicom.geometry import GeometryError, stack_geometry

    iop = [(1, 0, 0, 0, 1, 0)] * 4
    positions = [(0, 0, z) for z in (0.0, 2.5, 1.0, 6.0)]  # input order is not spatial
    with pytest.raises(GeometryError, match="non-uniform spacing"):
        stack_geometry(positions, iop)
    geom = stack_geometry(positions, iop, allow_irregular=True)
    assert geom.order == (0, 2, 1, 3) and geom.along == (0.0, 1.0, 2.5, 6.0)
    assert geom.slice_spacing == pytest.approx(1.0) and "non-uniform" in geom.irregular
    regular = stack_geometry([(0, 0, z) for z in (0.0, 2.0, 4.0)], iop[:3], allow_irregular=True)
    assert regular.irregular == "" and regular.along == ()


def enhanced_from(tmp_path, stored, offsets):
    """One Enhanced-style multi-frame file: frame k at z = offsets[k], geometry per frame."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def item(**groups):
        ds = Dataset()
        for seq, (keyword, value) in groups.items():
            inner = Dataset()
            setattr(inner, keyword, value)
            setattr(ds, seq, Sequence([inner]))
        return ds

    def to_multiframe(k, ds):
        if k:
            return False
        ds.NumberOfFrames = len(offsets)
        ds.PixelData = np.ascontiguousarray(stored, dtype="<i2").tobytes()
        shared = item(
            PlaneOrientationSequence=("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]),
            PixelMeasuresSequence=("PixelSpacing", [0.7, 0.8]),
        )
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        ds.PerFrameFunctionalGroupsSequence = Sequence(
            [item(PlanePositionSequence=("ImagePositionPatient", [0, 0, z])) for z in offsets]
        )
        del ds.ImagePositionPatient, ds.ImageOrientationPatient
        return None

    (path,) = write_series(tmp_path, stored, offsets=offsets, series_uid=UID, edit=to_multiframe)
    return path


def test_enhanced_multiframe_gap_is_resampled_too(tmp_path):
    offsets = [0.0, 2.5, 7.5, 10.0]
    path = enhanced_from(tmp_path, linear_in_offset(offsets), offsets)
    with pytest.raises(DataError, match=r"gap: about 1 missing slice.*frames of"):
        read_dicom(path)
    with pytest.warns(UserWarning, match=f"series {series_key(UID)}: gap"):
        vol = read_dicom(path, on_irregular="resample")
    assert vol.meta["source_format"] == "dicom-multiframe" and vol.shape == (5, 4, 5)
    full = linear_in_offset([0, 2.5, 5, 7.5, 10]).astype(np.float32) - 1024
    np.testing.assert_array_equal(vol.array, full)
