"""Reorientation to LPS / RAS: against SimpleITK's DICOMOrient and against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medgen.data.dicom import read_dicom
from medgen.data.orientation import orientation_code, to_canonical
from medgen.data.sitk_image import from_sitk, to_sitk
from medgen.data.synthetic.dicom import write_series
from medgen.data.volume import Volume

ORIENTATIONS = {
    "axial": (1, 0, 0, 0, 1, 0),
    "sagittal": (0, 1, 0, 0, 0, -1),
    "coronal": (1, 0, 0, 0, 0, -1),
    "axial_flipped": (-1, 0, 0, 0, -1, 0),
    "oblique": (0.9659258, 0.2588190, 0, -0.2588190, 0.9659258, 0),
}


def unique_values(shape=(5, 6, 7)):
    return np.arange(np.prod(shape), dtype=np.int16).reshape(shape)


@pytest.fixture(params=sorted(ORIENTATIONS))
def series_dir(request, tmp_path):
    d = tmp_path / request.param
    write_series(d, unique_values(), orientation=ORIENTATIONS[request.param], intercept=0)
    return d


def sitk_series(directory):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory)))
    return reader.Execute()


def physical_points(vol):
    """(N, 3) LPS positions of every voxel, in array (C) order."""
    idx = np.stack(np.meshgrid(*map(np.arange, vol.shape), indexing="ij"), -1).reshape(-1, 3)
    return np.asarray(vol.origin) + (idx * np.asarray(vol.spacing)) @ vol.direction.T


@pytest.mark.parametrize("target", ["LPS", "RAS"])
def test_matches_simpleitk_dicomorient(series_dir, target):
    ours = to_canonical(read_dicom(series_dir), target)
    ref = sitk.DICOMOrient(sitk_series(series_dir), target)
    np.testing.assert_array_equal(ours.array, sitk.GetArrayFromImage(ref).astype(np.float32))
    np.testing.assert_allclose(ours.spacing, ref.GetSpacing()[::-1], atol=1e-6)
    np.testing.assert_allclose(ours.origin, ref.GetOrigin(), atol=1e-4)
    ref_dir = np.asarray(ref.GetDirection()).reshape(3, 3)[:, ::-1]
    np.testing.assert_allclose(ours.direction, ref_dir, atol=1e-6)
    if not series_dir.name.startswith("oblique"):
        assert orientation_code(ours) == target


@pytest.mark.parametrize("target", ["LPS", "RAS"])
def test_every_voxel_keeps_its_value_at_its_physical_position(series_dir, target):
    vol = read_dicom(series_dir)
    out = to_canonical(vol, target)
    assert sorted(out.shape) == sorted(vol.shape)
    order_in, order_out = np.argsort(vol.array.ravel()), np.argsort(out.array.ravel())
    np.testing.assert_array_equal(vol.array.ravel()[order_in], out.array.ravel()[order_out])
    np.testing.assert_allclose(
        physical_points(vol)[order_in], physical_points(out)[order_out], atol=1e-4
    )


def test_ras_of_an_lps_volume_flips_x_and_y_and_moves_the_origin(tmp_path):
    write_series(tmp_path, unique_values(), spacing=(2.5, 0.7, 0.8), origin=(-20, -30, 40))
    vol = read_dicom(tmp_path)
    assert orientation_code(vol) == "LPS"
    assert to_canonical(vol, "LPS") is vol
    ras = to_canonical(vol, "RAS")
    np.testing.assert_array_equal(ras.array, vol.array[:, ::-1, ::-1])
    # the first voxel of RAS is the last of LPS along x and y: the opposite corner
    assert ras.origin == pytest.approx((-20 + 6 * 0.8, -30 + 5 * 0.7, 40), abs=1e-9)
    np.testing.assert_array_equal(ras.direction, np.array([[0, 0, -1], [0, -1, 0], [1, 0, 0]]))
    assert ras.spacing == vol.spacing and orientation_code(ras) == "RAS"
    assert ras.meta["orientation_from"] == "LPS" and "orientation_from" not in vol.meta
    back = to_canonical(ras, "LPS")
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.origin == pytest.approx(vol.origin, abs=1e-9)


def test_sagittal_becomes_a_transpose(tmp_path):
    """Sagittal slices: x toward P (IOP row), y toward I (IOP col), z = row x col toward R."""
    write_series(tmp_path, unique_values(), orientation=ORIENTATIONS["sagittal"], intercept=0)
    vol = read_dicom(tmp_path)
    assert orientation_code(vol) == "PIR"
    lps = to_canonical(vol, "LPS")
    # LPS array axes (z toward S, y toward P, x toward L) = input (y reversed, x, z reversed)
    np.testing.assert_array_equal(lps.array, np.transpose(vol.array, (1, 2, 0))[::-1, :, ::-1])
    assert lps.spacing == (vol.spacing[1], vol.spacing[2], vol.spacing[0])


def test_sitk_bridge_round_trip(tmp_path):
    write_series(tmp_path, unique_values(), orientation=ORIENTATIONS["oblique"])
    vol = read_dicom(tmp_path)
    back = from_sitk(to_sitk(vol), vol)
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.spacing == pytest.approx(vol.spacing) and back.origin == pytest.approx(vol.origin)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-12)
    assert (back.id, back.modality, back.meta) == (vol.id, vol.modality, vol.meta)


def test_unknown_orientation_is_an_error(tmp_path):
    write_series(tmp_path)
    with pytest.raises(ValueError, match="orientation must be one of"):
        to_canonical(read_dicom(tmp_path), "RAI")


@pytest.mark.parametrize("code", ["LPS", "RAS"])
def test_canonical_direction_has_its_code_and_survives_to_canonical(code):
    from medgen.data import canonical_direction

    vol = Volume(np.zeros((2, 3, 4), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                 canonical_direction(code))  # fmt: skip
    assert orientation_code(vol) == code
    assert to_canonical(vol, code) is vol  # already canonical: nothing to do
