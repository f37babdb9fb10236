"""Metric arguments and edges beyond the closed forms of test_evaluation_metrics.py: the
data range, integer inputs, the shape checks (for the survivors of mutation testing,
benchmarks/run_mutants.py train/metrics)."""

from __future__ import annotations

import numpy as np
import pytest

from medgen.train.evaluation.metrics import dice, laplacian_energy, nearest_index, psnr, ssim


def test_psnr_uses_its_data_range():
    a, b = np.zeros((4, 4)), np.full((4, 4), 0.1)  # mse 0.01
    assert psnr(a, b, data_range=1.0) == pytest.approx(20.0)
    assert psnr(a, b) == pytest.approx(10 * np.log10(4 / 0.01))
    ints = np.zeros((4, 4), np.uint8), np.full((4, 4), 255, np.uint8)  # no uint8 wrap-around
    assert psnr(*ints, data_range=255.0) == pytest.approx(0.0)


def test_ssim_uses_its_data_range_and_the_population_covariance():
    """Against closed forms of the same Gaussian-window statistics: constant images."""
    x = np.full((16, 16), 0.5)
    y = np.full((16, 16), -0.5)
    # constant images: ssim = (2 mx my + C1) / (mx^2 + my^2 + C1), C1 = (0.01 L)^2
    for L in (2.0, 1.0):
        c1 = (0.01 * L) ** 2
        assert ssim(x, y, data_range=L) == pytest.approx((2 * -0.25 + c1) / (0.5 + c1))
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (20, 20))
    b = np.clip(a + rng.normal(scale=0.2, size=a.shape), -1, 1)
    from skimage.metrics import structural_similarity

    want = structural_similarity(a, b, data_range=2.0, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)  # fmt: skip
    other = structural_similarity(a, b, data_range=2.0, gaussian_weights=True, sigma=1.5)
    assert ssim(a, b) == pytest.approx(want, abs=1e-12) and abs(want - other) > 1e-7  # 1.7e-6 here


@pytest.mark.parametrize(
    "shapes", [((8, 8), (8, 9)), ((8,), (8,)), ((2, 2, 2, 2), (2, 2, 2, 2))], ids=str
)
def test_ssim_refuses_other_shapes(shapes):
    x, y = (np.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=r"^ssim needs two 2D or 3D arrays of one shape, got \("):
        ssim(x, y)


def test_dice_of_non_bool_masks_and_nearest_of_integer_candidates():
    a = np.array([[0, 2], [0, 0]])  # non-zero counts as foreground
    b = np.array([[0, 1], [3, 0]])
    assert dice(a, b) == pytest.approx(2 / 3)
    cands = np.array([[0, 0], [250, 250], [10, 10]], np.uint8)
    assert nearest_index(np.array([12, 12], np.uint8), cands) == 2  # no uint8 wrap-around
    assert nearest_index(np.array([240.0, 240.0]), cands) == 1


def test_laplacian_energy_of_uint8_images_does_not_wrap():
    x = np.zeros((5, 5), np.uint8)
    x[2, 2] = 200  # Laplacian -800 at the centre, 200 at its 4 neighbours
    assert laplacian_energy(x) == pytest.approx((800**2 + 4 * 200**2) / 25)


def test_ssim_of_float32_images_is_computed_in_float64():
    """scikit-image computes in the first image's float type: float32 inputs are cast first."""
    rng = np.random.default_rng(2)
    a = rng.uniform(-1, 1, (24, 24)).astype(np.float32)
    b = np.clip(a + rng.normal(scale=0.3, size=a.shape), -1, 1).astype(np.float32)
    exact = ssim(a.astype(np.float64), b.astype(np.float64))
    assert ssim(a, b) == pytest.approx(exact, abs=1e-13)
    assert ssim(a.tolist(), b.tolist()) == pytest.approx(exact, abs=1e-13)  # lists too
