import numpy as np
import pytest

from medgen.data import DataError, Volume, axial_slices, quantize_z
from medgen.data.slicing.slices import center_pad_crop, resize_labels


def synthetic_volume(depth=30, side=24):
    """A ball whose radius varies with z, background -1."""
    z, y, x = np.mgrid[:depth, :side, :side].astype(np.float32)
    r = np.sqrt((y - side / 2) ** 2 + (x - side / 2) ** 2)
    radius = 3 + 6 * np.sin(np.pi * z / depth)
    img = np.where(r < radius, 0.5, -1.0).astype(np.float32)
    prob = np.clip((radius - r) / 3, 0, 1).astype(np.float32)
    geom = dict(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    return Volume(img, id="synthetic", **geom), Volume(prob, id="synthetic", **geom)


def test_axial_slices_filter_then_bin():
    img, prob = synthetic_volume()
    s = axial_slices(img, (5, 24), 4, 16, mask_probability=prob, class_id=1)
    assert len(s) == 20
    np.testing.assert_array_equal(s.z_index, np.arange(5, 25))
    np.testing.assert_array_equal(s.z_bin, [quantize_z(z, (5, 24), 4) for z in range(5, 25)])
    np.testing.assert_array_equal(s.token, s.z_bin + 4)
    assert s.images.shape == (20, 1, 16, 16) and s.images.dtype == np.float32
    assert s.masks.shape == (20, 1, 16, 16) and set(np.unique(s.masks)) <= {0, 1}
    assert s.images.min() >= -1 and s.images.max() <= 1
    assert s.counts_per_bin(4) == [5, 5, 5, 5]
    # the mask follows the ball: larger in the middle slices than at the ends
    area = s.masks.sum(axis=(1, 2, 3))
    assert area[10] > area[0] and area[10] > area[-1]


def test_axial_slices_errors():
    img, prob = synthetic_volume()
    with pytest.raises(DataError, match="z_range"):
        axial_slices(img, (5, 40), 4, 16)
    bad = Volume(prob.array * 2, prob.spacing, prob.origin, prob.direction, id="x")
    with pytest.raises(DataError, match=r"outside \[0, 1\]"):
        axial_slices(img, (5, 24), 4, 16, mask_probability=bad)


@pytest.mark.parametrize("n,s", [(7, 4), (8, 4), (4, 7), (3, 8), (5, 5)])
def test_center_pad_crop_matches_closed_form_offsets(n, s):
    a = np.arange(2 * n * n, dtype=np.float32).reshape(2, n, n)
    out, box = center_pad_crop(a, (s, s), -1.0)
    assert out.shape == (2, s, s)
    if n >= s:  # crop: start (n - s) // 2, the whole output is data
        k = (n - s) // 2
        np.testing.assert_array_equal(out, a[:, k : k + s, k : k + s])
        assert box == [0, s, 0, s]
    else:  # pad: data at (s - n) // 2, -1 elsewhere
        k = (s - n) // 2
        np.testing.assert_array_equal(out[:, k : k + n, k : k + n], a)
        assert (out == -1).sum() == 2 * (s * s - n * n)
        assert box == [k, k + n, k, k + n]


def test_resize_labels_keeps_label_values_and_matches_index_formula():
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([0, 1, 3, 250], dtype=np.uint8), size=(2, 12, 12))
    out = resize_labels(labels, 8)
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1, 3, 250}
    # nearest-exact: output pixel i takes input floor((i + 0.5) * 12 / 8)
    src = np.floor((np.arange(8) + 0.5) * 12 / 8).astype(int)
    np.testing.assert_array_equal(out, labels[:, src][:, :, src])
