import numpy as np
import pytest
import torch

from medgen.train.metrics import dice, nearest_index, psnr, ssim


def test_psnr_closed_form():
    a = np.zeros((8, 8))
    b = np.full((8, 8), 0.2)
    assert psnr(a, b) == pytest.approx(10 * np.log10(4 / 0.04))
    assert psnr(a, a) == float("inf")


def test_ssim_matches_monai_independent_implementation():
    """scikit-image (ours) vs MONAI's SSIMMetric: both Gaussian 11x11, sigma 1.5."""
    from monai.metrics import SSIMMetric

    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(size=(32, 32)).cumsum(0) / 8, -1, 1)
    y = np.clip(x + rng.normal(scale=0.3, size=x.shape), -1, 1)
    ref = SSIMMetric(
        spatial_dims=2, data_range=2.0, kernel_type="gaussian", win_size=11, kernel_sigma=1.5
    )(torch.from_numpy(y)[None, None], torch.from_numpy(x)[None, None])
    assert ssim(y, x) == pytest.approx(float(ref), abs=2e-3)
    assert ssim(x, x) == pytest.approx(1.0)


def test_dice_closed_forms():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice(a, b) == 1.0
    a[0, :2] = True
    b[0, 1:3] = True
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, ~a) == 0.0


def test_nearest_index():
    cands = np.stack([np.full((3, 3), v) for v in (-1.0, 0.0, 1.0)])
    assert nearest_index(np.full((3, 3), 0.4), cands) == 1
