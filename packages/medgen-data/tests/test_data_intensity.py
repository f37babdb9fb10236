import numpy as np
import pytest

from medgen.data import WINDOW_PRESETS, percentile_scale, window, zscore


def test_soft_tissue_window_known_values():
    hu = np.array([-1000, -160, 40, 240, 3000], dtype=np.int16)
    out = window(hu, "soft_tissue")
    np.testing.assert_allclose(out, [-1, -1, 0, 1, 1], atol=1e-6)
    assert out.dtype == np.float32


def test_custom_window_linear_inside():
    hu = np.linspace(-50, 50, 11)
    np.testing.assert_allclose(window(hu, center=0, width=100), hu / 50, atol=1e-6)


def test_window_errors():
    with pytest.raises(ValueError, match="unknown window preset"):
        window(np.zeros(3), "liver-ish")
    with pytest.raises(ValueError):
        window(np.zeros(3), center=0, width=0)
    assert {"brain", "subdural", "stroke", "soft_tissue", "lung", "bone"} <= set(WINDOW_PRESETS)


def test_percentile_scale_range_and_order():
    rng = np.random.default_rng(0)
    img = rng.gamma(2.0, 50.0, size=(8, 16, 16))
    out = percentile_scale(img, 1, 99)
    assert out.min() == -1.0 and out.max() == 1.0
    lo, hi = np.percentile(img, [1, 99])
    inside = (img > lo) & (img < hi)
    np.testing.assert_allclose(out[inside], ((img[inside] - lo) / (hi - lo)) * 2 - 1, atol=1e-5)


def test_percentile_scale_constant_raises():
    with pytest.raises(ValueError, match="constant"):
        percentile_scale(np.ones((4, 4)))


def test_zscore_uses_statistics_within_the_mask_only():
    img = np.zeros((4, 6), dtype=np.float32)
    img[1:3, 1:5] = np.arange(8, dtype=np.float32).reshape(2, 4)  # 0..7 inside the mask
    mask = np.zeros_like(img, dtype=bool)
    mask[1:3, 1:5] = True
    out = zscore(img, mask)
    inside = np.arange(8.0)
    mu, sd = inside.mean(), inside.std()  # 3.5, sqrt(5.25)
    np.testing.assert_allclose(out[mask], (inside - mu) / sd, rtol=1e-6)
    np.testing.assert_allclose(out[~mask], (0.0 - mu) / sd, rtol=1e-6)  # same affine map outside
    assert out.dtype == np.float32
    np.testing.assert_allclose([out[mask].mean(), out[mask].std()], [0.0, 1.0], atol=1e-6)


def test_zscore_rejects_empty_or_constant_masks():
    img = np.ones((3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="selects no voxel"):
        zscore(img, np.zeros((3, 3), dtype=bool))
    with pytest.raises(ValueError, match="constant"):
        zscore(img)
    with pytest.raises(ValueError, match="mask shape"):
        zscore(img, np.ones((2, 2), dtype=bool))
