import numpy as np
import pytest
import torch

from medgen.train.evaluation import (
    bin_mean_reference,
    dice,
    laplacian_energy,
    nearest_index,
    psnr,
    score_samples,
    ssim,
    summarize,
)


def test_psnr_closed_form():
    a = np.zeros((8, 8))
    b = np.full((8, 8), 0.2)
    assert psnr(a, b) == pytest.approx(10 * np.log10(4 / 0.04))
    assert psnr(a, a) == float("inf")


@pytest.mark.parametrize("dims", [2, 3])
def test_ssim_matches_monai_independent_implementation(dims):
    """scikit-image (ours) vs MONAI's SSIMMetric: both Gaussian 11-wide, sigma 1.5."""
    from monai.metrics import SSIMMetric

    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(size=(24,) * dims).cumsum(0) / 8, -1, 1)
    y = np.clip(x + rng.normal(scale=0.3, size=x.shape), -1, 1)
    ref = SSIMMetric(
        spatial_dims=dims, data_range=2.0, kernel_type="gaussian", win_size=11, kernel_sigma=1.5
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


def test_laplacian_energy_is_the_mean_squared_five_point_stencil():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(9, 11))
    p = np.pad(x, 1, mode="symmetric")  # scipy's "reflect" edge rule
    lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * x
    assert laplacian_energy(x) == pytest.approx(float((lap**2).mean()), rel=1e-12)
    assert laplacian_energy(np.ones((5, 5))) == 0.0


def test_nearest_real_stays_in_the_sample_bin_and_class_and_flags_speckle():
    rng = np.random.default_rng(2)
    smooth = np.stack([np.full((1, 16, 16), v) + np.linspace(0, 0.1, 16) for v in (-0.5, 0, 0.5)])
    ref_bins, ref_classes = np.array([0, 1, 1]), np.array([0, 0, 1])
    sample = smooth[0:1] + 0.0  # identical to item 0, which is in bin 0
    noisy = smooth[2:3] + rng.normal(scale=0.5, size=(1, 1, 16, 16))
    scores = score_samples(
        np.concatenate([sample, sample, noisy]), None, np.array([1, 1, 1]), np.array([1, 0, 1]),
        smooth, None, ref_bins, ref_classes,
    )  # fmt: skip
    # item 0 is the closest overall, but not in bin 1: bin 1 / class 1 holds item 2 only
    assert [s.nearest for s in scores] == [2, 1, 2]
    assert [s.matched_on for s in scores] == ["bin+class", "bin+class", "bin+class"]
    assert not scores[0].speckled and scores[2].speckled and scores[2].laplacian_ratio > 100
    lone = score_samples(sample, None, np.array([0]), np.array([1]), smooth, None, ref_bins,
                         ref_classes)  # fmt: skip
    assert lone[0].matched_on == "bin" and lone[0].nearest == 0 and lone[0].psnr == float("inf")
    summary = summarize(scores)
    assert summary["overall"]["speckled"] == 1 and summary["per_class"]["1"]["n"] == 2
    assert summary["overall"]["psnr"]["non_finite"] == 0
    assert [s["nearest"] for s in summary["per_sample"]] == [2, 1, 2]
    with pytest.raises(ValueError, match="differ in channels or size"):
        score_samples(smooth[:, :, :8], None, ref_bins, ref_classes, smooth, None, ref_bins,
                      ref_classes)  # fmt: skip


def test_bin_mean_reference_is_one_for_constant_bins():
    ref = np.stack([np.full((1, 12, 12), v) for v in (0.2, 0.2, -0.3)])
    assert bin_mean_reference(ref, np.array([0, 0, 1])) == pytest.approx(1.0)
