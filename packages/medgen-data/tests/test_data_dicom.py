"""DICOM reading, cross-checked against SimpleITK/GDCM on pydicom's shipped test series.

Only files that ship inside the pydicom wheel are used (never ``get_testdata_file``, which may
download); a test skips, naming the file, when one is absent.
"""

import copy
import random
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from medgen.data.dicom import SeriesInfo, list_series, read_dicom, series_key
from medgen.data.errors import DataError

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
DIRTESTS = TEST_FILES / "dicomdirtests"
CT5N = "98892001/CT5N"  # the one regular multi-slice series in dicomdirtests (5 CT slices)


def need(rel: str) -> Path:
    path = TEST_FILES / rel
    if not path.exists():
        pytest.skip(f"pydicom test file {rel} is not installed (not downloading it)")
    return path


def sitk_reference(files: list[str]):
    """SimpleITK's (array, spacing, origin, direction) converted to MedGen's (z, y, x) order."""
    if len(files) == 1:
        image = sitk.ReadImage(files[0])
    else:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        image = reader.Execute()
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    spacing = tuple(reversed(image.GetSpacing()))
    direction = np.asarray(image.GetDirection()).reshape(3, 3)[:, ::-1]
    return array, spacing, image.GetOrigin(), direction


def assert_same_as_sitk(vol, files):
    array, spacing, origin, direction = sitk_reference(files)
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, array)
    np.testing.assert_allclose(vol.spacing, spacing, rtol=0, atol=1e-5)
    np.testing.assert_allclose(vol.origin, origin, rtol=0, atol=1e-5)
    np.testing.assert_allclose(vol.direction, direction, rtol=0, atol=1e-6)


def assert_same_volume(a, b):
    np.testing.assert_array_equal(a.array, b.array)
    assert a.spacing == pytest.approx(b.spacing, abs=1e-9)
    assert a.origin == pytest.approx(b.origin, abs=1e-9)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-12)


def copy_series(src: Path, dst: Path, edit=None, names=None) -> list[Path]:
    """Copy every file of ``src`` into ``dst`` (optionally renamed), editing datasets first.

    ``edit(i, ds)`` gets the slices in *spatial* order (sorted by z) and may return False to
    drop that slice.
    """
    dst.mkdir(parents=True, exist_ok=True)
    datasets = [pydicom.dcmread(p) for p in sorted(src.iterdir())]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    out = []
    for i, ds in enumerate(datasets):
        if edit is not None and edit(i, ds) is False:
            continue
        path = dst / (names[i] if names else f"slice{i:03d}.dcm")
        ds.save_as(path)
        out.append(path)
    return out


@pytest.fixture
def ct5n() -> Path:
    return need(f"dicomdirtests/{CT5N}")


# ---------------------------------------------------------------- SimpleITK cross-checks


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_single_file_matches_simpleitk(name):
    path = need(name)
    vol = read_dicom(path)
    assert vol.shape[0] == 1
    assert_same_as_sitk(vol, [str(path)])


def test_single_slice_spacing_never_from_slice_thickness():
    """MR_small: SliceThickness 0.8 but no SpacingBetweenSlices -> 1.0 mm, as SimpleITK."""
    ds = pydicom.dcmread(need("MR_small.dcm"), stop_before_pixels=True)
    assert float(ds.SliceThickness) == 0.8 and "SpacingBetweenSlices" not in ds
    vol = read_dicom(need("MR_small.dcm"))
    assert vol.spacing[0] == 1.0
    assert vol.meta["slice_spacing_source"] == "default (single slice)"
    ct = read_dicom(need("CT_small.dcm"))
    assert ct.spacing[0] == 5.0 and ct.meta["slice_spacing_source"] == "SpacingBetweenSlices"


# Every series of dicomdirtests: either it reads and equals SimpleITK, or it is an error whose
# message names the problem (SimpleITK reads those too, silently producing a wrong grid).
DIRTEST_EXPECTED = {
    "98892001/CT5N": {None: "ok"},
    "98892001/CT2N": {None: "mixed orientations"},  # two scouts, different planes
    "98892003/MR1": {None: "ok"},  # three single-slice localizers
    "98892003/MR2": {
        "1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.481": "ok",
        "1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.136": "mixed orientations",
        "1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.17": "mixed orientations",
    },
    "98892003/MR700": {None: "mixed orientations"},  # radial angio projections
    "77654033/CT2": {None: "gap: about 161 missing"},  # z = -99.48, then 103.02 ... 105.52
    "77654033/CR1": {None: "no ImagePositionPatient"},
    "77654033/CR2": {None: "no ImagePositionPatient"},
    "77654033/CR3": {None: "no ImagePositionPatient"},
    "TINY_ALPHA/PT000000/ST000000/SE000000": {None: "missing pixel data"},
}


@pytest.mark.parametrize("rel", sorted(DIRTEST_EXPECTED))
def test_dicomdirtests_series_match_simpleitk_or_fail_clearly(rel):
    directory = need(f"dicomdirtests/{rel}")
    # UIDs from pydicom: GDCM does not list TINY_ALPHA (no pixel data) at all
    uids = sorted(
        {
            str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID)
            for p in directory.iterdir()
        }
    )
    assert uids, rel
    expected = DIRTEST_EXPECTED[rel]
    for uid in uids:
        outcome = expected.get(uid, expected.get(None))
        assert outcome is not None, f"unexpected series {uid} in {rel}"
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), uid))
        if outcome == "ok":
            vol = read_dicom(directory, series=uid)
            assert vol.shape[0] == len(files)
            assert_same_as_sitk(vol, files)
        else:
            with pytest.raises(DataError, match=outcome) as err:
                read_dicom(directory, series=uid)
            assert series_key(uid) in str(err.value)  # names the (pseudonymous) series


def _rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


@pytest.mark.parametrize(
    "rotation",
    [
        np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),  # coronal: rows along x, cols along -z
        _rotation([1, 2, 3], 37.0),  # oblique
    ],
    ids=["coronal", "oblique"],
)
def test_non_axial_stack_matches_simpleitk(ct5n, tmp_path, rotation):
    """Rotate CT5N's geometry (orientation and positions together); SimpleITK must agree."""
    origin = np.array([10.0, -20.0, 30.0])

    def edit(i, ds):
        row, col = rotation @ [1.0, 0, 0], rotation @ [0, 1.0, 0]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*row, *col)]
        pos = origin + rotation @ [0, 0, 2.5 * i]
        ds.ImagePositionPatient = [round(float(v), 6) for v in pos]
        ds.InstanceNumber = 5 - i

    files = copy_series(ct5n, tmp_path / "s", edit, names=["c", "a", "e", "b", "d"])
    vol = read_dicom(tmp_path / "s")
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    ref_files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "s"), uid)
    assert_same_as_sitk(vol, list(ref_files))
    np.testing.assert_allclose(vol.direction[:, 0], rotation @ [0, 0, 1.0], atol=1e-6)
    assert vol.spacing[0] == pytest.approx(2.5, abs=1e-5)


# ---------------------------------------------------------------- values and ordering


def test_ct_small_is_in_hounsfield_units():
    path = need("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert float(ds.RescaleIntercept) == -1024.0  # so the test would catch a skipped rescale
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    vol = read_dicom(path)
    np.testing.assert_array_equal(vol.array[0], expected.astype(np.float32))
    assert vol.modality == "CT" and vol.meta["rescaled"] is True


def test_per_slice_rescale(ct5n, tmp_path):
    def edit(i, ds):
        ds.RescaleSlope = 2 if i == 3 else 1
        ds.RescaleIntercept = -1000 - i

    copy_series(ct5n, tmp_path / "s", edit)
    vol = read_dicom(tmp_path / "s")
    raw = [pydicom.dcmread(p).pixel_array for p in sorted((tmp_path / "s").iterdir())]
    for i in range(5):
        slope = 2 if i == 3 else 1
        np.testing.assert_array_equal(vol.array[i], raw[i] * slope - 1000.0 - i)


def test_order_from_positions_not_names_or_instance_numbers(ct5n, tmp_path):
    reference = read_dicom(ct5n)
    rng = random.Random(0)
    numbers = list(range(1, 6))
    rng.shuffle(numbers)
    names = ["q.dcm", "b.dcm", "z.dcm", "a.dcm", "m.dcm"]  # name order != spatial order

    def edit(i, ds):
        ds.InstanceNumber = numbers[i]

    copy_series(ct5n, tmp_path / "s", edit, names=names)
    assert numbers != sorted(numbers)
    assert_same_volume(read_dicom(tmp_path / "s"), reference)
    # the slices really differ, so a wrong order would be visible
    assert not np.array_equal(reference.array[0], reference.array[-1])
    z = [
        float(pydicom.dcmread(ct5n / n).ImagePositionPatient[2])
        for n in sorted(p.name for p in ct5n.iterdir())
    ]
    assert reference.origin[2] == pytest.approx(min(z))


# ---------------------------------------------------------------- geometry errors


def _drop_middle(i, ds):
    return i != 2


def _shift_one(i, ds):
    if i == 2:
        ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 0.7


def _rows(i, ds):
    if i == 1:
        ds.Rows = 8
        ds.PixelData = ds.PixelData[: 8 * 16 * 2]


def _tilt_one(i, ds):
    if i == 3:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9950042, 0.0998334]


def _gantry(i, ds):
    ds.ImagePositionPatient[1] = float(ds.ImagePositionPatient[1]) + 0.3 * 2.5 * i


def _non_orthogonal(i, ds):
    ds.ImageOrientationPatient = [1, 0, 0, 0.1, 0.995, 0]


def _no_pixels(i, ds):
    if i == 2:
        del ds.PixelData


def _no_position(i, ds):
    if i == 4:
        del ds.ImagePositionPatient


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_drop_middle, r"gap: about 1 missing slice"),
        (_shift_one, r"non-uniform spacing"),
        (_rows, r"mixed rows/columns"),
        (_tilt_one, r"mixed orientations: 1 of 5"),
        (_gantry, r"gantry tilt"),
        (_non_orthogonal, r"non-orthogonal directions"),
        (_no_pixels, r"missing pixel data in .*slice002"),
        (_no_position, r"slice004.* has no ImagePositionPatient"),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_geometry_errors_name_series_and_problem(ct5n, tmp_path, edit, message):
    copy_series(ct5n, tmp_path / "s", edit)
    uid = pydicom.dcmread(next(ct5n.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    with pytest.raises(DataError, match=message) as err:
        read_dicom(tmp_path / "s")
    assert f"series {series_key(uid)}" in str(err.value)


def test_duplicate_position(ct5n, tmp_path):
    files = copy_series(ct5n, tmp_path / "s")
    ds = pydicom.dcmread(files[2])
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "s" / "copy.dcm")
    with pytest.raises(DataError, match="duplicate positions"):
        read_dicom(tmp_path / "s")


def test_rounding_jitter_within_tolerance_is_accepted(ct5n, tmp_path):
    """Positions off by 0.005 mm (below the documented 0.01 mm) still read, spacing ~2.5."""

    def edit(i, ds):
        ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + (0.005 if i % 2 else 0)

    copy_series(ct5n, tmp_path / "s", edit)
    vol = read_dicom(tmp_path / "s")
    assert vol.spacing[0] == pytest.approx(2.5, abs=1e-6)


def test_truncated_pixel_data():
    with pytest.raises(DataError, match=r"series .*cannot decode the pixel data of .*MR_truncated"):
        read_dicom(need("MR_truncated.dcm"))


def test_empty_missing_and_non_dicom(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_dicom(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no DICOM image series"):
        read_dicom(tmp_path / "empty")
    junk = tmp_path / "notes.txt"
    junk.write_text("not dicom")
    with pytest.raises(DataError, match="notes.txt: not a DICOM file"):
        read_dicom(junk)


# ---------------------------------------------------------------- several series, listing


def test_list_series_groups_and_counts_skipped(ct5n, tmp_path):
    copy_series(ct5n, tmp_path / "study" / "a")
    copy_series(need("dicomdirtests/98892003/MR1"), tmp_path / "study" / "b" / "c")
    (tmp_path / "study" / "README").write_text("hello")
    (tmp_path / "study" / "b" / "x.bin").write_bytes(b"\0" * 300)
    infos = list_series(tmp_path / "study")
    assert infos.skipped == 2
    assert [s.n_slices for s in infos] == [5, 1, 1, 1]
    top = infos[0]
    assert (top.modality, top.rows, top.cols) == ("CT", 16, 16)
    assert top.description == "SmartScore - Gated 0.5 sec"
    assert len({s.key for s in infos}) == 4


def test_largest_series_chosen_with_warning(ct5n, tmp_path):
    copy_series(ct5n, tmp_path / "a")
    copy_series(need("dicomdirtests/98892003/MR1"), tmp_path / "b")
    infos = list_series(tmp_path)
    with pytest.warns(UserWarning, match="4 series found") as record:
        vol = read_dicom(tmp_path)
    text = str(record[0].message)
    assert f"the largest (ties: lowest key), {infos[0].key}" in text
    assert all(s.key in text for s in infos[1:])
    assert vol.shape == (5, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = read_dicom(tmp_path, series=infos[-1].key)
    assert small.shape == (1, 16, 16) and small.id == infos[-1].key
    with pytest.raises(DataError, match="no series nope; available series keys"):
        read_dicom(tmp_path, series="nope")
    unknown_uid = "1.2.3.4.5.6.7.8.9.10"
    with pytest.raises(DataError, match=f"with key {series_key(unknown_uid)}") as err:
        read_dicom(tmp_path, series=unknown_uid)
    assert unknown_uid not in str(err.value)


def test_dicomdir_lists_the_referenced_series():
    dicomdir = need("dicomdirtests/DICOMDIR")
    via_dicomdir = list_series(dicomdir)
    via_walk = list_series(DIRTESTS)
    # the DICOMDIR references the three patient folders, not TINY_ALPHA (its own file-set)
    tiny = list_series(DIRTESTS / "TINY_ALPHA")
    assert {s.key for s in via_dicomdir} == {s.key for s in via_walk} - {s.key for s in tiny}
    assert via_dicomdir.skipped == 0
    key = next(s.key for s in via_dicomdir if s.description.startswith("SmartScore"))
    assert_same_volume(read_dicom(dicomdir, series=key), read_dicom(DIRTESTS / CT5N))


def test_salt_changes_ids(ct5n, monkeypatch):
    a = read_dicom(ct5n, salt="one")
    b = read_dicom(ct5n, salt="two")
    assert a.id != b.id and len(a.id) == 16
    monkeypatch.setenv("MEDGEN_ID_SALT", "one")
    assert read_dicom(ct5n).id == a.id
    assert list_series(ct5n)[0].key == a.id


# ---------------------------------------------------------------- ZIP


def test_zip_reads_like_directory(ct5n, tmp_path):
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(ct5n.iterdir(), reverse=True):
            zf.write(p, f"export/{p.name}")
        zf.writestr("export/README.txt", "not dicom")
    with pytest.warns(UserWarning, match=r"ignored 1 file\(s\) .*export/README.txt"):
        from_zip = read_dicom(archive)
    assert_same_volume(from_zip, read_dicom(ct5n))
    infos = list_series(archive)
    assert infos.skipped == 1 and infos[0].n_slices == 5
    assert not (tmp_path / "export").exists()  # nothing extracted next to the archive


@pytest.mark.parametrize("member", ["../evil.dcm", "a/../../evil.dcm", "/abs/evil.dcm"])
def test_zip_rejects_escaping_members(tmp_path, member):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(need("CT_small.dcm"), "ok.dcm")
        zf.writestr(zipfile.ZipInfo(member), b"x")
    with pytest.raises(DataError, match=f"member '{member}'"):
        read_dicom(archive)
    with pytest.raises(DataError, match="refusing"):
        list_series(archive)


def test_zip_member_size_limit(tmp_path):
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.dcm", b"\0" * 100_000)
        zf.write(need("CT_small.dcm"), "ct.dcm")
    with pytest.raises(DataError, match=r"member 'zeros.dcm' declares 100000 bytes"):
        read_dicom(archive, max_member_bytes=50_000)
    with pytest.warns(UserWarning, match=r"not image DICOM: zeros.dcm"):  # 100 kB of zeros
        assert read_dicom(archive, max_member_bytes=200_000).shape == (1, 128, 128)


# ---------------------------------------------------------------- no patient data

FORBIDDEN_KEYS = {
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "BirthDate",
    "AccessionNumber",
    "InstitutionName",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
}


def _strings(obj) -> list[str]:
    if isinstance(obj, dict):
        return [*map(str, obj.keys()), *(s for v in obj.values() for s in _strings(v))]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in _strings(v)]
    return [str(obj)]


@pytest.mark.parametrize("rel", ["CT_small.dcm", "MR_small.dcm", f"dicomdirtests/{CT5N}"])
def test_no_patient_data_in_meta_or_series_info(rel):
    path = need(rel)
    first = path if path.is_file() else sorted(path.iterdir())[0]
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    secrets = [
        str(ds.get(k))
        for k in (
            "PatientName",
            "PatientID",
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "StudyDate",
            "PatientBirthDate",
            "InstitutionName",
            "AccessionNumber",
        )
        if ds.get(k) not in (None, "")
    ]
    assert str(ds.PatientName) and str(ds.PatientID)  # the test has something to find
    vol = read_dicom(path)
    info = list_series(path)[0]
    assert isinstance(info, SeriesInfo)
    texts = [*_strings(vol.meta), vol.id, *_strings(vars(info))]
    assert not FORBIDDEN_KEYS & set(vol.meta), vol.meta
    assert not FORBIDDEN_KEYS & set(vars(info))
    for secret in secrets:
        # substring match, except very short values ("2" would hit "2.5"): exact match there
        assert all((secret not in t) if len(secret) >= 4 else secret != t for t in texts), secret


# ---------------------------------------------------------------- enhanced multi-frame


def make_enhanced(src: Path, out: Path, frame_order, per_frame_rescale=False, edit=None) -> Path:
    """An Enhanced CT file holding ``src``'s slices (spatial order index) in ``frame_order``.

    Geometry goes into functional groups only (none at the top level), as in real Enhanced
    CT/MR: orientation and pixel spacing shared, position per frame.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedCTImageStorage

    slices = sorted(
        (pydicom.dcmread(p) for p in src.iterdir()),
        key=lambda ds: float(ds.ImagePositionPatient[2]),
    )
    ds = copy.deepcopy(slices[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.NumberOfFrames = len(frame_order)
    ds.PixelData = b"".join(slices[i].PixelData for i in frame_order)
    for keyword in (
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "SliceThickness",
        "RescaleSlope",
        "RescaleIntercept",
        "InstanceNumber",
    ):
        if keyword in ds:
            delattr(ds, keyword)

    def item(**kw):
        d = Dataset()
        for k, v in kw.items():
            setattr(d, k, v)
        return d

    shared = item(
        PlaneOrientationSequence=Sequence(
            [item(ImageOrientationPatient=slices[0].ImageOrientationPatient)]
        ),
        PixelMeasuresSequence=Sequence(
            [item(PixelSpacing=slices[0].PixelSpacing, SliceThickness=2.5)]
        ),
    )
    if not per_frame_rescale:
        shared.PixelValueTransformationSequence = Sequence(
            [item(RescaleSlope=1, RescaleIntercept=-1024, RescaleType="HU")]
        )
    frames = []
    for n, i in enumerate(frame_order):
        f = item(
            PlanePositionSequence=Sequence(
                [item(ImagePositionPatient=slices[i].ImagePositionPatient)]
            ),
            FrameContentSequence=Sequence([item(InStackPositionNumber=n + 1)]),
        )
        if per_frame_rescale:
            f.PixelValueTransformationSequence = Sequence(
                [item(RescaleSlope=1 + i, RescaleIntercept=-1000 - i, RescaleType="US")]
            )
        if edit is not None:
            edit(n, f)
        frames.append(f)
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.save_as(out, enforce_file_format=True)
    return out


def test_enhanced_multiframe_equals_classic_series(ct5n, tmp_path):
    """Frames stored out of spatial order come back sorted by position, same as CT5N."""
    classic = read_dicom(ct5n)
    assert all(float(pydicom.dcmread(p).RescaleIntercept) == -1024 for p in ct5n.iterdir())
    path = make_enhanced(ct5n, tmp_path / "enh.dcm", [3, 0, 4, 1, 2])
    vol = read_dicom(path)
    assert_same_volume(vol, classic)
    assert vol.meta["source_format"] == "dicom-multiframe"
    assert list_series(path)[0].n_slices == 5


def test_enhanced_multiframe_in_spatial_order_matches_simpleitk(ct5n, tmp_path):
    path = make_enhanced(ct5n, tmp_path / "enh.dcm", [0, 1, 2, 3, 4])
    assert_same_as_sitk(read_dicom(path), [str(path)])


def test_enhanced_per_frame_rescale(ct5n, tmp_path):
    classic = read_dicom(ct5n)  # HU = stored - 1024 in every CT5N slice
    path = make_enhanced(ct5n, tmp_path / "enh.dcm", [4, 2, 0, 1, 3], per_frame_rescale=True)
    vol = read_dicom(path)
    for i in range(5):
        stored = classic.array[i] + 1024
        np.testing.assert_array_equal(vol.array[i], stored * (1 + i) - 1000 - i)


def _drop_position(n, frame):
    if n == 2:
        del frame.PlanePositionSequence


def _same_position(n, frame):
    if n == 1:
        frame.PlanePositionSequence[0].ImagePositionPatient = [-72.199997, -143.0, -1.2375]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_drop_position, r"frame 3 has no PlanePositionSequence"),
        (_same_position, r"duplicate positions"),
    ],
    ids=["no-position", "duplicate"],
)
def test_enhanced_geometry_errors(ct5n, tmp_path, edit, message):
    path = make_enhanced(ct5n, tmp_path / "enh.dcm", [0, 1, 2, 3, 4], edit=edit)
    with pytest.raises(DataError, match=message):
        read_dicom(path)


def test_multiframe_without_per_frame_geometry_is_refused():
    with pytest.raises(DataError, match="15 frames.*refusing to invent"):
        read_dicom(need("rtdose.dcm"))


def test_enhanced_out_of_order_frames_documented_simpleitk_difference(ct5n, tmp_path):
    """Justified difference: SimpleITK 2.5 keeps an Enhanced file's frames in *file* order
    (and reports origin = first stored frame, spacing 1.0), MedGen sorts them by position."""
    order = [3, 0, 4, 1, 2]
    path = make_enhanced(ct5n, tmp_path / "enh.dcm", order)
    ours = read_dicom(path)
    theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    classic = read_dicom(ct5n)
    np.testing.assert_array_equal(ours.array, classic.array)
    np.testing.assert_array_equal(theirs, classic.array[order])


def _twelve_bit_series(tmp_path, values: np.ndarray, signed: bool, sign_extend: bool):
    """A 5-slice series whose 16-bit words hold ``values`` as 12-bit numbers."""
    from medgen.data.synthetic.dicom import write_series

    words = values.astype(np.int64) & (0xFFFF if sign_extend else 0x0FFF)

    def edit(k, ds):
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, int(signed)
        ds.PixelData = words[k].astype("<u2").tobytes()

    out = tmp_path / f"twelve_{signed}_{sign_extend}"
    return out, write_series(out, np.zeros(values.shape, np.int16), edit=edit)


@pytest.mark.parametrize(("signed", "sign_extend"), [(False, False), (True, False), (True, True)])
def test_values_of_fewer_bits_than_allocated_read_as_pydicom_does(tmp_path, signed, sign_extend):
    """BitsStored 12 in 16-bit words: unsigned 0..4095, signed -2048..2047 with the unused
    high bits zero (legal; pydicom sign-extends) or sign-extended. The direct read must give
    pydicom's values, i.e. what the two's complement in 12 bits means."""
    rng = np.random.default_rng(0)
    lo, hi = (-2048, 2048) if signed else (0, 4096)
    values = rng.integers(lo, hi, (5, 16, 16))
    values[0, 0, :2] = lo, hi - 1  # both ends of the range
    d, paths = _twelve_bit_series(tmp_path, values, signed, sign_extend)
    vol = read_dicom(d)
    for k, path in enumerate(paths):  # in spatial order, as write_series numbers the slices
        ds = pydicom.dcmread(path)
        np.testing.assert_array_equal(ds.pixel_array, values[k])  # the reference reads them
        expected = values[k] * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(vol.array[k], expected.astype(np.float32))


def test_overlay_example_with_twelve_stored_bits_matches_simpleitk():
    path = need("examples_overlay.dcm")
    assert pydicom.dcmread(path, stop_before_pixels=True).BitsStored == 12
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    np.testing.assert_array_equal(read_dicom(path).array, expected)


def test_monochrome1_is_read_as_stored_with_a_warning(ct5n, tmp_path):
    def mono1(i, ds):
        ds.PhotometricInterpretation = "MONOCHROME1"

    copy_series(ct5n, tmp_path / "m1", mono1)
    with pytest.warns(UserWarning, match="MONOCHROME1 .*not inverted"):
        vol = read_dicom(tmp_path / "m1")
    np.testing.assert_array_equal(vol.array, read_dicom(ct5n).array)


def test_missing_photometric_interpretation_is_monochrome2_with_a_warning(ct5n, tmp_path):
    def drop(i, ds):
        if i == 1:
            del ds.PhotometricInterpretation

    copy_series(ct5n, tmp_path / "np", drop)
    with pytest.warns(UserWarning, match=r"1 file\(s\) without PhotometricInterpretation"):
        vol = read_dicom(tmp_path / "np")
    np.testing.assert_array_equal(vol.array, read_dicom(ct5n).array)
