"""Resampling to a target spacing: against SimpleITK's ResampleImageFilter and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medgen.data.resample import resample, resampled_shape
from medgen.data.sitk_image import to_sitk
from medgen.data.volume import Volume

OBLIQUE = np.array(  # columns: z, y, x axes; a proper rotation (about z, then about x)
    [[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]
) @ np.array([[1.0, 0.0, 0.0], [0.0, 0.6, -0.8], [0.0, 0.8, 0.6]])


def test_oblique_direction_is_a_rotation():
    np.testing.assert_allclose(OBLIQUE @ OBLIQUE.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(OBLIQUE) == pytest.approx(1.0)


def ramp(shape=(7, 9, 11), spacing=(2.5, 0.9, 0.7), direction=None, coef=(3.0, -2.0, 0.5)):
    """A volume whose value is linear in the physical offset along each array axis (mm)."""
    k, j, i = np.meshgrid(*map(np.arange, shape), indexing="ij")
    mm = [k * spacing[0], j * spacing[1], i * spacing[2]]
    array = (coef[0] * mm[0] + coef[1] * mm[1] + coef[2] * mm[2] + 10.0).astype(np.float32)
    return Volume(
        array=array,
        spacing=spacing,
        origin=(-12.0, 4.5, 33.0),
        direction=np.eye(3)[:, ::-1].copy() if direction is None else direction,
        modality="CT",
        id="ramp",
    )


def expected_ramp(shape, spacing, coef=(3.0, -2.0, 0.5)):
    k, j, i = np.meshgrid(*map(np.arange, shape), indexing="ij")
    return coef[0] * k * spacing[0] + coef[1] * j * spacing[1] + coef[2] * i * spacing[2] + 10.0


@pytest.mark.parametrize("direction", [None, OBLIQUE], ids=["identity", "oblique"])
@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
@pytest.mark.parametrize("target", [(1.0, 1.0, 1.0), (5.0, 0.45, 1.3), (0.8, 2.0, 0.35)])
def test_matches_simpleitk_resample_image_filter(direction, interpolation, target):
    vol = ramp(direction=direction)
    ours = resample(vol, target, interpolation)
    image = to_sitk(vol)
    f = sitk.ResampleImageFilter()
    f.SetOutputSpacing(target[::-1])
    f.SetSize([int(n) for n in resampled_shape(vol.shape, vol.spacing, target)[::-1]])
    f.SetOutputOrigin(image.GetOrigin())
    f.SetOutputDirection(image.GetDirection())
    f.SetInterpolator(sitk.sitkLinear if interpolation == "linear" else sitk.sitkNearestNeighbor)
    f.SetDefaultPixelValue(0.0)
    ref = f.Execute(image)
    np.testing.assert_array_equal(ours.array, sitk.GetArrayFromImage(ref))
    assert ours.spacing == pytest.approx(target)
    assert ours.origin == pytest.approx(vol.origin)
    np.testing.assert_allclose(ours.direction, vol.direction, atol=1e-12)


@pytest.mark.parametrize("direction", [None, OBLIQUE], ids=["identity", "oblique"])
@pytest.mark.parametrize("target", [(1.0, 1.0, 1.0), (5.0, 0.45, 1.3), (0.8, 2.0, 0.35)])
def test_linear_interpolation_of_a_linear_ramp_is_exact(direction, target):
    out = resample(ramp(direction=direction), target, "linear")
    np.testing.assert_allclose(out.array, expected_ramp(out.shape, target), rtol=0, atol=2e-4)


def test_shape_keeps_voxel_centres_inside_the_input_span():
    assert resampled_shape((10, 10, 10), (1, 1, 1), (2, 0.5, 1)) == (5, 19, 10)
    assert resampled_shape((7, 9, 11), (2.5, 0.9, 0.7), (1, 1, 1)) == (16, 8, 8)
    # last output centre never beyond the last input centre
    for n, s, t in [(7, 2.5, 1.0), (9, 0.9, 0.45), (11, 0.7, 1.3)]:
        m = resampled_shape((n, n, n), (s, s, s), (t, t, t))[0]
        assert (m - 1) * t <= (n - 1) * s + 1e-9 < m * t


def test_same_spacing_returns_the_same_voxels():
    vol = ramp(direction=OBLIQUE)
    for interpolation in ("linear", "nearest"):
        out = resample(vol, vol.spacing, interpolation)
        np.testing.assert_array_equal(out.array, vol.array)


def test_nearest_keeps_label_values():
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([0, 1, 2, 7], np.float32), size=(6, 10, 12))
    vol = Volume(labels, (3.0, 0.8, 0.8), (0.0, 0.0, 0.0), np.eye(3), modality="SEG")
    for target in [(1.0, 1.0, 1.0), (1.5, 0.4, 0.4), (6.0, 1.6, 2.4)]:
        out = resample(vol, target, "nearest")
        assert set(np.unique(out.array)) <= {0.0, 1.0, 2.0, 7.0}
    # an exact 2x downsample by nearest neighbour picks every other voxel
    out = resample(vol, (6.0, 1.6, 1.6), "nearest")
    np.testing.assert_array_equal(out.array, labels[::2, ::2, ::2])
    # linear would invent in-between values: nearest is the one for masks
    assert len(np.unique(resample(vol, (1.5, 0.4, 0.4), "linear").array)) > 4


def test_scalar_spacing_means_isotropic_and_meta_records_the_source():
    vol = ramp()
    out = resample(vol, 1.5)
    assert out.spacing == (1.5, 1.5, 1.5)
    assert out.meta["resampled_from_spacing"] == list(vol.spacing)
    assert (out.id, out.modality) == (vol.id, vol.modality) and out.array.dtype == np.float32


@pytest.mark.parametrize(
    ("spacing", "interpolation", "message"),
    [
        ((1, 1), "linear", "spacing must be 3 positive"),
        ((1, 0, 1), "linear", "spacing must be 3 positive"),
        ((1, float("nan"), 1), "linear", "spacing must be 3 positive"),
        ((1, 1, 1), "cubic", "interpolation must be one of"),
    ],
)
def test_bad_arguments(spacing, interpolation, message):
    with pytest.raises(ValueError, match=message):
        resample(ramp(), spacing, interpolation)
