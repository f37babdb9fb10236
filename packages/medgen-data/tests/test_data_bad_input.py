"""The bad-input corpus: malformed inputs generated here (no committed binaries), each of which
must raise a DataError whose message names the file or series and the problem.

Every case is a function ``(tmp_path) -> (path, read_kwargs, patterns)``: reading ``path``
with :func:`read_volume` must raise :class:`DataError` matching every regex in ``patterns``.
Some problems are also covered, on pydicom's real CT5N series, by ``test_data_dicom.py``; here
they run on synthetic series so that each message can be checked for the exact file/series.

Decision (documented in :func:`medgen.data.dicom.read_dicom`): files that are not DICOM among
DICOM files (READMEs, viewers) are ignored with a warning naming them; files that start like
DICOM (``DICM`` preamble) but cannot be parsed are an error, since one may be a missing slice.
"""

from __future__ import annotations

import gzip
import re
import warnings
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from medgen.data.dicom import list_series, series_key
from medgen.data.errors import DataError
from medgen.data.read import read_volume
from medgen.data.synthetic.dicom import ramp_volume, write_series

UID = "1.2.826.0.1.3680043.8.498.4242"
KEY = series_key(UID)
SERIES = f"series {KEY}"


def series(tmp_path, **kw):
    out = tmp_path / "series"
    return out, write_series(out, series_uid=UID, **kw)


def on_slice(index, fn):
    def edit(k, ds):
        if k == index:
            return fn(ds)
        return None

    return edit


def nifti(path, array):
    """Write a scalar 2D/3D/4D NIfTI (a 4D array is a series of 3D volumes, not a vector)."""
    if array.ndim == 4:
        image = sitk.JoinSeries([sitk.GetImageFromArray(a) for a in array])
    else:
        image = sitk.GetImageFromArray(array)
    sitk.WriteImage(image, str(path))
    return path


def zip_with(tmp_path, name, data=b"x", ok=True):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        if ok:
            _, files = series(tmp_path)
            for f in files:
                zf.write(f, f"s/{f.name}")
        zf.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return archive


# ------------------------------------------------------------------------- the cases


def truncated_dicom(tmp_path):
    d, files = series(tmp_path)
    raw = files[2].read_bytes()
    files[2].write_bytes(raw[:-200])
    return d, {}, [SERIES, re.escape(files[2].name), "cannot decode the pixel data", "truncated"]


def truncated_dicom_header(tmp_path):
    d, files = series(tmp_path)
    files[3].write_bytes(files[3].read_bytes()[:300])
    return d, {}, [re.escape(files[3].name), "truncated or corrupt DICOM file"]


def missing_pixel_data(tmp_path):
    d, files = series(tmp_path, edit=on_slice(1, lambda ds: delattr(ds, "PixelData")))
    return d, {}, [SERIES, f"missing pixel data in .*{files[1].name}"]


def short_pixel_data(tmp_path):
    def cut(ds):
        ds.PixelData = ds.PixelData[:100]

    d, files = series(tmp_path, edit=on_slice(4, cut))
    return d, {}, [SERIES, re.escape(files[4].name), r"less than expected \(100 vs 512"]


def two_series_unknown_choice(tmp_path):
    d, _ = series(tmp_path)
    write_series(d / "other", ramp_volume(3, 16, 16))
    return d, {"series": "0123456789abcdef"}, ["no series 0123456789abcdef", KEY, "list_series"]


def one_uid_two_stacks(tmp_path):
    """Two acquisitions sharing one SeriesInstanceUID: every position appears twice."""
    d, _ = series(tmp_path)
    write_series(d / "again", series_uid=UID)
    return d, {}, [SERIES, "duplicate positions"]


def duplicate_position(tmp_path):
    return (
        series(tmp_path, offsets=[0, 2.5, 5, 5, 10])[0],
        {},
        [SERIES, "duplicate positions", r"0 mm apart"],
    )


def gap(tmp_path):
    d, _ = series(tmp_path, edit=lambda k, ds: k != 2)
    return d, {}, [SERIES, r"gap: about 1 missing slice", "series step 2.5 mm"]


def non_uniform_spacing(tmp_path):
    d, _ = series(tmp_path, offsets=[0, 2.5, 5, 8, 10.5])
    return d, {}, [SERIES, "non-uniform spacing", "from 2.5 to 3 mm"]


def tilted_direction_one_slice(tmp_path):
    def tilt(ds):
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9950042, 0.0998334]

    return series(tmp_path, edit=on_slice(3, tilt))[0], {}, [SERIES, "mixed orientations: 1 of 5"]


def gantry_tilt(tmp_path):
    def shear(k, ds):
        ds.ImagePositionPatient[1] = float(ds.ImagePositionPatient[1]) + 0.5 * k

    return series(tmp_path, edit=shear)[0], {}, [SERIES, "gantry tilt", "degrees"]


def non_orthogonal_directions(tmp_path):
    d, _ = series(tmp_path, orientation=(1, 0, 0, 0.1, 0.995, 0))
    return d, {}, [SERIES, "non-orthogonal directions"]


def mixed_rows_columns(tmp_path):
    def smaller(ds):
        ds.Rows = 8
        ds.PixelData = ds.PixelData[: 8 * 16 * 2]

    d, files = series(tmp_path, edit=on_slice(1, smaller))
    return (
        d,
        {},
        [
            SERIES,
            r"mixed rows/columns between slices: \[\(8, 16\), \(16, 16\)\]",
            f"{files[1].name} has \\(8, 16\\)",
        ],
    )


def mixed_pixel_spacing(tmp_path):
    d, _ = series(tmp_path, edit=on_slice(2, lambda ds: setattr(ds, "PixelSpacing", [0.5, 0.5])))
    return d, {}, [SERIES, "mixed PixelSpacing"]


def missing_position(tmp_path):
    d, files = series(tmp_path, edit=on_slice(4, lambda ds: delattr(ds, "ImagePositionPatient")))
    return d, {}, [SERIES, f"{files[4].name} has no ImagePositionPatient", "cannot place it"]


def colour_slice(tmp_path):
    d, files = series(tmp_path, edit=on_slice(0, lambda ds: setattr(ds, "SamplesPerPixel", 3)))
    return d, {}, [SERIES, f"{files[0].name} is a colour image"]


def multiframe_without_geometry(tmp_path):
    def two_frames(ds):
        ds.NumberOfFrames = 2
        ds.PixelData = ds.PixelData * 2

    _, files = series(tmp_path, edit=lambda k, ds: two_frames(ds) if k == 0 else k < 1)
    return files[0], {}, [re.escape(files[0].name), "without PerFrameFunctionalGroupsSequence"]


def nan_voxels_nifti(tmp_path):
    array = np.zeros((4, 5, 6), np.float32)
    array[1, 2, 3] = np.nan
    return nifti(tmp_path / "nan.nii.gz", array), {}, ["nan.nii.gz", "NaN or infinite voxels"]


def four_d_nifti(tmp_path):
    path = nifti(tmp_path / "fmri.nii.gz", np.zeros((3, 4, 5, 6), np.float32))
    return path, {}, ["fmri.nii.gz", "4D NIfTI with 3 volumes", "volume_index"]


def four_d_index_out_of_range(tmp_path):
    path = nifti(tmp_path / "fmri.nii", np.zeros((3, 4, 5, 6), np.float32))
    return path, {"volume_index": 7}, ["fmri.nii", r"volume_index 7 outside \[0, 3\)"]


def two_d_nifti(tmp_path):
    path = nifti(tmp_path / "flat.nii", np.zeros((5, 6), np.float32))
    return path, {}, ["flat.nii", "expected a 3D image, got 2D"]


def zip_dotdot_member(tmp_path):
    return zip_with(tmp_path, "s/../../evil.dcm"), {}, ["bad.zip", "'s/../../evil.dcm'", r"'\.\.'"]


def zip_absolute_member(tmp_path):
    return zip_with(tmp_path, "/etc/evil.dcm"), {}, ["bad.zip", "'/etc/evil.dcm'", "absolute path"]


def zip_bomb_like_member(tmp_path):
    """10 MB of zeros deflates to ~10 kB; the declared size is checked before inflating."""
    archive = zip_with(tmp_path, "s/huge.dcm", b"\0" * 10_000_000)
    assert archive.stat().st_size < 200_000
    return (
        archive,
        {"max_member_bytes": 1_000_000},
        ["bad.zip", "'s/huge.dcm' declares 10000000 bytes", "limit of 1000000"],
    )


def empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty", {}, ["empty", "no DICOM image series found"]


def only_non_dicom_files(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "README.txt").write_text("hello")
    (d / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    return d, {}, ["docs", "no DICOM image series found"]


def unsupported_extension(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    return path, {}, ["scan.png", r"unsupported input \(\.png\)", "NIfTI"]


def nonexistent_path(tmp_path):
    return tmp_path / "nowhere" / "scan.nii.gz", {}, ["nowhere/scan.nii.gz", "no such file"]


def corrupted_gzip(tmp_path):
    path = nifti(tmp_path / "ok.nii.gz", np.ones((4, 5, 6), np.float32))
    raw = bytearray(path.read_bytes())
    raw[30:60] = b"\xff" * 30
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(bytes(raw))
    return bad, {}, ["corrupt.nii.gz", "corrupt gzip"]


def truncated_gzip(tmp_path):
    path = tmp_path / "cut.nii.gz"
    raw = gzip.compress(nifti(tmp_path / "ok.nii", np.ones((4, 5, 6), np.float32)).read_bytes())
    path.write_bytes(raw[: len(raw) // 2])
    return path, {}, ["cut.nii.gz", "truncated or corrupt gzip"]


def truncated_nifti(tmp_path):
    path = nifti(tmp_path / "short.nii", np.ones((8, 8, 8), np.float32))
    path.write_bytes(path.read_bytes()[:1000])
    return path, {}, ["short.nii", "truncated: the header promises"]


def garbage_nifti(tmp_path):
    path = tmp_path / "noise.nii"
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    return path, {}, ["noise.nii", "could not read it as NIfTI"]


def garbage_named_zip(tmp_path):
    path = tmp_path / "export.zip"
    path.write_bytes(b"PK\x03\x04 not really a zip" + b"\0" * 200)
    return path, {}, ["export.zip", "not a DICOM file, directory or ZIP archive"]


def vector_nifti(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.float32), isVector=True)
    path = tmp_path / "rgb.nii.gz"
    sitk.WriteImage(image, str(path))
    return path, {}, ["rgb.nii.gz", "3 components per voxel", "scalar"]


def truncated_inside_series_uid(tmp_path):
    """Cut inside the SeriesInstanceUID value: pydicom reads the short UID without complaint,
    which used to make the file a 1-slice series of its own and the rest a shorter volume."""
    d, files = series(tmp_path)
    raw = files[0].read_bytes()
    cut = raw.index(UID.encode()) + 4
    files[0].write_bytes(raw[:cut])
    return d, {}, [re.escape(files[0].name), "truncated inside SeriesInstanceUID"]


def zip_damaged_member(tmp_path):
    """A member whose deflate stream is damaged: a DataError naming it, not a zlib.error."""
    archive = tmp_path / "damaged.zip"
    _, files = series(tmp_path)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f"s/{f.name}")
    raw = bytearray(archive.read_bytes())
    info = zipfile.ZipFile(archive).infolist()[0]
    start = info.header_offset + 30 + len(info.filename)
    raw[start : start + 40] = b"\0" * 40
    archive.write_bytes(bytes(raw))
    return archive, {}, ["damaged.zip", f"member 's/{files[0].name}' cannot be read"]


def zero_pixel_spacing(tmp_path):
    d, _ = series(tmp_path, edit=lambda k, ds: setattr(ds, "PixelSpacing", [0, 0.8]))
    return d, {}, [SERIES, r"PixelSpacing \[0.0, 0.8\] is not two positive numbers"]


def volume_index_on_3d_nifti(tmp_path):
    path = nifti(tmp_path / "three.nii.gz", np.zeros((4, 5, 6), np.float32))
    return path, {"volume_index": 0}, ["three.nii.gz", "volume_index=0 given, but the image is 3D"]


def option_for_other_format(tmp_path):
    d, _ = series(tmp_path)
    return d, {"volume_index": 0}, ["series", "volume_index= applies to 4D NIfTI input only"]


def palette_colour_slice(tmp_path):
    edit = on_slice(2, lambda ds: setattr(ds, "PhotometricInterpretation", "PALETTE COLOR"))
    d, files = series(tmp_path, edit=edit)
    return d, {}, [SERIES, f"{files[2].name} has PhotometricInterpretation PALETTE COLOR"]


def rgb_photometric_one_sample(tmp_path):
    d, _ = series(tmp_path, edit=lambda k, ds: setattr(ds, "PhotometricInterpretation", "RGB"))
    return d, {}, [SERIES, "PhotometricInterpretation RGB", "only MONOCHROME1/MONOCHROME2"]


def mixed_monochrome(tmp_path):
    edit = on_slice(3, lambda ds: setattr(ds, "PhotometricInterpretation", "MONOCHROME1"))
    d, files = series(tmp_path, edit=edit)
    return d, {}, [SERIES, "mixed PhotometricInterpretation", f"{files[3].name} is MONOCHROME1"]


def bits_stored_above_allocated(tmp_path):
    d, files = series(tmp_path, edit=on_slice(1, lambda ds: setattr(ds, "BitsStored", 20)))
    return d, {}, [SERIES, f"{files[1].name} has BitsStored 20 with BitsAllocated 16"]


def high_bit_shifted(tmp_path):
    d, files = series(tmp_path, edit=on_slice(0, lambda ds: setattr(ds, "HighBit", 12)))
    return d, {}, [SERIES, f"{files[0].name} has HighBit 12 with BitsStored 16"]


def pixel_representation_two(tmp_path):
    edit = on_slice(4, lambda ds: setattr(ds, "PixelRepresentation", 2))
    d, files = series(tmp_path, edit=edit)
    return d, {}, [SERIES, f"{files[4].name} has PixelRepresentation 2"]


def values_beyond_bits_stored(tmp_path):
    """BitsStored 12 but a stored 5000 (13 bits): pydicom masks it to 904 without a word."""

    def twelve_bits(ds):
        ds.BitsStored, ds.HighBit = 12, 11
        ds.PixelData = np.full((16, 16), 5000, "<i2").tobytes()

    d, files = series(tmp_path, edit=on_slice(2, twelve_bits))
    return d, {}, [SERIES, f"{files[2].name} has BitsStored 12 but 256 stored value", "5000"]


def rescale_slope_zero(tmp_path):
    d, files = series(tmp_path, edit=on_slice(3, lambda ds: setattr(ds, "RescaleSlope", 0)))
    return d, {}, [SERIES, f"{files[3].name} has RescaleSlope 0", "constant"]


def rescale_intercept_not_finite(tmp_path):
    edit = on_slice(0, lambda ds: setattr(ds, "RescaleIntercept", "NaN"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that NaN is not a valid DS
        d, files = series(tmp_path, edit=edit)
    return d, {}, [SERIES, f"{files[0].name} has RescaleIntercept nan", "non-finite"]


CASES = [
    truncated_dicom,
    truncated_dicom_header,
    missing_pixel_data,
    short_pixel_data,
    two_series_unknown_choice,
    one_uid_two_stacks,
    duplicate_position,
    gap,
    non_uniform_spacing,
    tilted_direction_one_slice,
    gantry_tilt,
    non_orthogonal_directions,
    mixed_rows_columns,
    mixed_pixel_spacing,
    missing_position,
    colour_slice,
    multiframe_without_geometry,
    nan_voxels_nifti,
    four_d_nifti,
    four_d_index_out_of_range,
    two_d_nifti,
    zip_dotdot_member,
    zip_absolute_member,
    zip_bomb_like_member,
    empty_directory,
    only_non_dicom_files,
    unsupported_extension,
    nonexistent_path,
    corrupted_gzip,
    truncated_gzip,
    truncated_nifti,
    garbage_nifti,
    garbage_named_zip,
    vector_nifti,
    option_for_other_format,
    truncated_inside_series_uid,
    zip_damaged_member,
    volume_index_on_3d_nifti,
    zero_pixel_spacing,
    palette_colour_slice,
    rgb_photometric_one_sample,
    mixed_monochrome,
    bits_stored_above_allocated,
    high_bit_shifted,
    pixel_representation_two,
    values_beyond_bits_stored,
    rescale_slope_zero,
    rescale_intercept_not_finite,
]


def test_corpus_is_large_enough():
    assert len(CASES) >= 20 and len({c.__name__ for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_bad_input_raises_specific_data_error(tmp_path, case):
    path, kwargs, patterns = case(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError) as err:
            read_volume(path, **kwargs)
    message = str(err.value)
    assert "\n" not in message.strip(), "one line, so the CLI can print it as is"
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"


def test_a_file_cut_anywhere_in_its_header_is_an_error_naming_it(tmp_path):
    """Every truncation point, not only the convenient ones: never a bare exception, never a
    volume read with the slice silently missing."""
    d, files = series(tmp_path)
    raw = files[0].read_bytes()
    header_end = raw.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010) PixelData
    for cut in range(132, header_end + 12, 3):
        files[0].write_bytes(raw[:cut])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(DataError) as err:
                read_volume(d)
        assert files[0].name in str(err.value), (cut, str(err.value))


# ------------------------------------------------------------- warnings, not errors


def test_non_dicom_files_among_dicom_are_ignored_with_a_warning(tmp_path):
    d, _ = series(tmp_path)
    (d / "README.txt").write_text("exported by a viewer")
    (d / "viewer").mkdir()
    (d / "viewer" / "run.exe").write_bytes(b"MZ" + b"\0" * 400)
    with pytest.warns(UserWarning, match=r"ignored 2 file\(s\) that are not image DICOM") as rec:
        vol = read_volume(d)
    assert "README.txt" in str(rec[0].message) and "run.exe" in str(rec[0].message)
    assert vol.shape == (5, 16, 16)
    assert list_series(d).skipped == 2


def test_two_series_mixed_reads_the_largest_and_says_how_to_choose(tmp_path):
    d, _ = series(tmp_path)
    other_uid = generate_uid()
    write_series(d / "other", ramp_volume(3, 16, 16), series_uid=other_uid)
    with pytest.warns(UserWarning, match="2 series found; reading the largest") as rec:
        vol = read_volume(d)
    text = str(rec[0].message)
    assert KEY in text and series_key(other_uid) in text and "Pass series=KEY" in text
    assert vol.shape[0] == 5 and vol.id == KEY
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_volume(d, series=other_uid).shape[0] == 3  # by raw UID
        assert read_volume(d, series=series_key(other_uid)).shape[0] == 3  # by key
