import math

import numpy as np
import pytest

from medgen.data import DataError, Volume
from medgen.data.slicing.thick import (
    nearest_indices,
    simulate_thick,
    slab_centres,
    slab_weights,
    thick_mask,
)


def vol(array, spacing=(1.0, 0.5, 0.7), origin=(10.0, 20.0, 30.0), direction=None, **kw):
    d = np.eye(3) if direction is None else direction
    array = np.asarray(array)
    array = array if array.dtype == np.uint8 else array.astype(np.float32)
    return Volume(array, spacing, origin, d, **kw)


def random_volume(n=23, seed=0, spacing=(1.0, 0.5, 0.7)):
    rng = np.random.default_rng(seed)
    return vol(rng.normal(size=(n, 4, 3)), spacing=spacing)


def test_box_1mm_to_5mm_is_the_block_mean():
    v = random_volume(23)
    t = simulate_thick(v, 5.0)
    assert t.shape == (4, 4, 3) and t.array.dtype == np.float32  # floor((23 - 5) / 5) + 1
    for k in range(4):
        expected = v.array[5 * k : 5 * k + 5].astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(t.array[k], expected, rtol=0, atol=1e-6)


def test_box_fractional_overlap_by_hand():
    # s=1, T=2.5: slab 0 centred at 0.75 covers [-0.5, 2.0]: slices 0 and 1 fully, half of 2
    v = random_volume(10, seed=1)
    t = simulate_thick(v, 2.5)
    x = v.array.astype(np.float64)
    np.testing.assert_allclose(t.array[0], (x[0] + x[1] + 0.5 * x[2]) / 2.5, atol=1e-6)
    # slab 1 centred at 3.25 covers [2.0, 4.5]: half of 2, 3 fully, 4 fully... 2 is [1.5, 2.5]
    np.testing.assert_allclose(t.array[1], (0.5 * x[2] + x[3] + x[4]) / 2.5, atol=1e-6)


def test_box_overlapping_slabs_with_spacing_smaller_than_thickness():
    # s=0.5, T=2, S=1.5: slab k covers [-0.25 + 1.5k, 1.75 + 1.5k] = thin slices 3k .. 3k+3
    v = random_volume(12, seed=2, spacing=(0.5, 1.0, 1.0))
    t = simulate_thick(v, 2.0, spacing=1.5)
    assert t.shape[0] == math.floor((6.0 - 2.0) / 1.5) + 1 == 3
    x = v.array.astype(np.float64)
    for k in range(3):
        np.testing.assert_allclose(t.array[k], x[3 * k : 3 * k + 4].mean(axis=0), atol=1e-6)
    assert t.spacing == (1.5, 1.0, 1.0)


def test_spacing_and_origin_by_hand():
    v = random_volume(23)
    t = simulate_thick(v, 5.0)
    # first slab centre = T/2 - s/2 = 2 mm along the slice axis (= thin slice 2's centre)
    assert t.spacing == (5.0, 0.5, 0.7)
    assert t.origin == (12.0, 20.0, 30.0)
    np.testing.assert_array_equal(t.direction, np.eye(3))
    # a direction whose slice axis points along -S (third LPS axis, negative)
    d = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])
    t = simulate_thick(vol(v.array, direction=d), 4.0, spacing=3.0)
    # c0 = 2 - 0.5 = 1.5 mm along column 0 = (0, 0, -1)
    assert t.origin == (10.0, 20.0, 28.5)
    assert t.spacing == (3.0, 0.5, 0.7)
    np.testing.assert_allclose(slab_centres(23, 1.0, 4.0, 3.0), 1.5 + 3.0 * np.arange(7))
    assert t.meta["slice_thickness_mm"] == 4.0 and t.meta["slice_profile"] == "box"


@pytest.mark.parametrize("thickness,spacing", [(5.0, 5.0), (4.0, 4.0), (3.0, 1.5), (5.0, 2.5)])
def test_gaussian_weights_sum_to_one_and_reproduce_constant_and_ramp(thickness, spacing):
    n = 40
    w = slab_weights(n, 1.0, thickness, spacing, "gaussian")
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    assert (w >= 0).all()
    const = simulate_thick(vol(np.full((n, 2, 2), 0.37)), thickness, spacing, "gaussian")
    np.testing.assert_allclose(const.array, 0.37, atol=1e-6)
    z = np.arange(n, dtype=np.float64)
    ramp = vol(np.broadcast_to((3.0 - 0.1 * z)[:, None, None], (n, 2, 2)))
    t = simulate_thick(ramp, thickness, spacing, "gaussian")
    centres = slab_centres(n, 1.0, thickness, spacing)
    np.testing.assert_allclose(t.array[:, 0, 0], 3.0 - 0.1 * centres, atol=1e-6)


def test_gaussian_profile_has_the_requested_fwhm():
    s, thickness = 0.05, 5.0
    n = 400  # 20 mm of very thin slices approximate the continuous profile
    w = slab_weights(n, s, thickness, thickness, "gaussian")[1] / s
    above = np.flatnonzero(w >= w.max() / 2)
    assert (above[-1] - above[0] + 1) * s == pytest.approx(thickness, abs=2 * s)
    sigma = thickness / (2 * math.sqrt(2 * math.log(2)))
    assert w.max() == pytest.approx(1 / (sigma * math.sqrt(2 * math.pi)), rel=1e-3)


def test_gaussian_differs_from_box_and_is_smoother():
    v = random_volume(30, seed=3)
    box = simulate_thick(v, 5.0, profile="box").array
    gauss = simulate_thick(v, 5.0, profile="gaussian").array
    assert box.shape == gauss.shape
    assert not np.allclose(box, gauss)


def test_masks_nearest_neighbour_stay_binary_and_align():
    labels = np.zeros((23, 4, 3), dtype=np.uint8)
    labels[2] = 1
    labels[12, 1, 1] = 3
    m = thick_mask(vol(labels), 5.0)
    np.testing.assert_array_equal(nearest_indices(23, 1.0, 5.0, 5.0), [2, 7, 12, 17])
    assert m.array.dtype == np.uint8 and m.shape == (4, 4, 3)
    np.testing.assert_array_equal(m.array[0], 1)
    assert m.array[2, 1, 1] == 3 and m.array[1].sum() == 0
    img = simulate_thick(vol(labels.astype(np.float32)), 5.0)
    assert (m.spacing, m.origin) == (img.spacing, img.origin)
    # ties (centre exactly between two thin slices) go to the lower index
    np.testing.assert_array_equal(nearest_indices(8, 1.0, 4.0, 4.0), [1, 5])


def test_bad_requests_are_data_errors():
    v = random_volume(10)
    with pytest.raises(DataError, match="thinner than"):
        simulate_thick(v, 0.5)
    with pytest.raises(DataError, match="exceeds"):
        simulate_thick(v, 12.0)
    with pytest.raises(DataError, match="unknown slice profile"):
        simulate_thick(v, 5.0, profile="triangle")
    with pytest.raises(DataError, match="spacing must be > 0"):
        simulate_thick(v, 5.0, spacing=0.0)
    with pytest.raises(DataError, match="thickness must be > 0"):
        thick_mask(v, float("nan"))
