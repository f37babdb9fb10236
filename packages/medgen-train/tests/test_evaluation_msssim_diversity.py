"""MS-SSIM (MONAI's, with settings that fit small images) against an MS-SSIM assembled from
torchmetrics' own SSIM / contrast maps, 2D and 3D; PSNR 3D against MONAI; diversity as the
mean MS-SSIM over pairs against a brute-force double loop."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medgen.train.evaluation.diversity import diversity, mean_pairwise_msssim, pair_indices
from medgen.train.evaluation.metrics import psnr
from medgen.train.evaluation.msssim import MSSSIMSettings, ms_ssim, msssim_settings

tm_ssim = pytest.importorskip("torchmetrics.functional.image.ssim")


def smooth_pairs(shape, seed=0, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    x = (F.avg_pool2d if len(shape) == 4 else F.avg_pool3d)(x, 3, 1, 1)
    y = (x + noise * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    return x.numpy(), y.numpy()


def torchmetrics_msssim(x, y, settings):
    """MS-SSIM from torchmetrics' SSIM and contrast-sensitivity maps (its Gaussian window of
    sigma 1.5 is 11 wide), each averaged over the valid region (windows inside the image):
    the contrast term at every scale but the last, the SSIM at the last, ReLU'd, raised to the
    weights. (Its public MS-SSIM averages the last scale's SSIM over a reflect-padded border
    instead, so it is not the same number.)"""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    d, k = x.ndim - 2, settings.kernel_size
    assert k == 11
    terms = []
    for s in range(settings.scales):
        if s < settings.scales - 1:
            _, cs = tm_ssim._ssim_update(y, x, True, 1.5, k, 2.0, return_contrast_sensitivity=True)
            terms.append(torch.relu(cs))
        else:
            _, full = tm_ssim._ssim_update(y, x, True, 1.5, k, 2.0, return_full_image=True)
            p = (k - 1) // 2
            terms.append(torch.relu(full[(..., *(slice(p, -p),) * d)].flatten(1).mean(1)))
        pool = F.avg_pool2d if d == 2 else F.avg_pool3d
        x, y = pool(x, 2), pool(y, 2)
    published = torch.tensor([0.0448, 0.2856, 0.3001, 0.2363, 0.1333], dtype=torch.float64)
    w = published[: settings.scales] / published[: settings.scales].sum()  # the stated rule
    w = w.view(-1, 1)
    return torch.prod(torch.stack(terms) ** w, 0).numpy()


@pytest.mark.parametrize(
    ("shape", "scales"),
    [((3, 1, 64, 64), 3), ((2, 2, 48, 48), 3), ((2, 1, 24, 24, 24), 2), ((1, 1, 128, 128), 4)],
)
def test_ms_ssim_equals_an_msssim_built_from_torchmetrics_maps(shape, scales):
    x, y = smooth_pairs(shape)
    settings = MSSSIMSettings(scales, 11)
    if len(shape) == 4:  # what the automatic choice gives these sizes
        assert msssim_settings(shape[2:]) == settings
    ours = ms_ssim(y, x, settings=settings)
    assert ours.shape == (shape[0],)
    assert np.allclose(ours, torchmetrics_msssim(x, y, settings), atol=2e-6)
    assert np.allclose(ms_ssim(x, x), 1.0, atol=1e-6)


def test_settings_for_small_images_and_normalised_weights():
    assert (msssim_settings((32, 32)).scales, msssim_settings((32, 32)).kernel_size) == (3, 7)
    assert (msssim_settings((256, 256)).scales, msssim_settings((256, 256)).kernel_size) == (5, 11)
    assert (msssim_settings((16, 16, 16)).scales, msssim_settings((16, 16)).kernel_size) == (2, 5)
    for s in range(1, 6):
        w = MSSSIMSettings(s, 11).weights
        assert sum(w) == pytest.approx(1.0, abs=1e-12)
        assert np.allclose(
            np.asarray(w) / w[0], np.asarray([0.0448, 0.2856, 0.3001, 0.2363, 0.1333][:s]) / 0.0448
        )
    assert MSSSIMSettings(5, 11).weights == pytest.approx(
        (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), rel=2e-4
    )  # published sum 1.0001
    x, y = smooth_pairs((2, 1, 32, 32))
    v = ms_ssim(y, x)
    assert np.all((v > 0) & (v < 1))
    with pytest.raises(ValueError, match=r"needs every axis >= 44; got \[32, 32\]"):
        ms_ssim(y, x, settings=MSSSIMSettings(3, 11))
    with pytest.raises(ValueError, match="too small"):
        msssim_settings((4, 4))
    with pytest.raises(ValueError, match=r"of one shape, got \[2, 1, 32, 32\] and \[2, 1, 16"):
        ms_ssim(x, x[..., :16, :16])


def test_one_scale_is_ssim_and_identical_images_give_one():
    """One scale, weight 1: MS-SSIM is MONAI's single-scale SSIM; identical images give 1."""
    x, _ = smooth_pairs((2, 1, 32, 32), noise=0.0)
    y = x.copy()
    assert np.allclose(ms_ssim(x, y, settings=MSSSIMSettings(3, 7)), 1.0, atol=1e-6)
    x, y = smooth_pairs((2, 1, 32, 32), seed=1)
    one = ms_ssim(x, y, settings=MSSSIMSettings(1, 7))
    from monai.metrics import SSIMMetric

    ssim = SSIMMetric(2, data_range=2.0, win_size=7, kernel_sigma=1.5, reduction="none")
    assert np.allclose(one, ssim(torch.as_tensor(x), torch.as_tensor(y)).numpy().ravel(), atol=1e-6)


def test_psnr_3d_equals_monai():
    from monai.metrics import PSNRMetric

    x, y = smooth_pairs((1, 1, 8, 8, 8))
    theirs = PSNRMetric(max_val=2.0)(torch.as_tensor(y), torch.as_tensor(x))
    assert psnr(y[0, 0], x[0, 0]) == pytest.approx(float(theirs), rel=1e-6)


def brute_force(images, i_idx, j_idx, settings):
    return [
        float(ms_ssim(images[i : i + 1], images[j : j + 1], settings=settings)[0])
        for i, j in zip(i_idx, j_idx, strict=True)
    ]


def test_diversity_equals_a_brute_force_double_loop_per_group():
    rng = np.random.default_rng(0)
    images = np.tanh(rng.normal(size=(7, 1, 32, 32)).cumsum(-1) / 3)
    z, c = np.array([0, 0, 0, 1, 1, 1, 1]), np.array([0, 0, 0, 0, 0, 1, 1])
    out = diversity(images, z, c, max_pairs=1000, seed=0)
    settings = msssim_settings((32, 32))
    loop = [
        ms_ssim(images[a : a + 1], images[b : b + 1], settings=settings)[0]
        for a in range(7)
        for b in range(7)
        if a < b
    ]
    assert out["overall"]["n_pairs"] == 21 and out["overall"]["all_pairs"]
    assert out["overall"]["mean"] == pytest.approx(float(np.mean(loop)), rel=1e-12)
    g = out["per_group"]
    assert sorted(g) == ["z-bin 0 class 0", "z-bin 1 class 0", "z-bin 1 class 1"]
    members = np.flatnonzero((z == 1) & (c == 0))
    pairs = [(a, b) for a in members for b in members if a < b]
    want = np.mean(brute_force(images, *zip(*pairs, strict=True), settings))
    assert g["z-bin 1 class 0"]["mean"] == pytest.approx(want, rel=1e-12)
    assert g["z-bin 1 class 0"]["n_pairs"] == 1
    assert out["protocol"]["ms_ssim"]["scales"] == 3


def test_identical_samples_give_one_and_a_single_sample_no_pairs():
    x = np.tanh(np.random.default_rng(1).normal(size=(1, 1, 32, 32)))
    same = np.repeat(x, 5, axis=0)
    assert mean_pairwise_msssim(same)["mean"] == pytest.approx(1.0, abs=1e-6)
    one = mean_pairwise_msssim(x)
    assert one["n_pairs"] == 0 and one["mean"] is None


def test_pair_subset_is_seeded_distinct_and_without_self_pairs():
    i, j = pair_indices(50, max_pairs=100, seed=3)
    assert len(i) == 100 and np.all(i < j)
    assert len(set(zip(i.tolist(), j.tolist(), strict=True))) == 100
    i2, j2 = pair_indices(50, max_pairs=100, seed=3)
    assert np.array_equal(i, i2) and np.array_equal(j, j2)
    i, j = pair_indices(5)
    assert len(i) == 10 and np.all(i < j)


def test_volumes_default_to_fewer_pairs():
    vols = np.tanh(np.random.default_rng(2).normal(size=(16, 1, 8, 8, 8)))
    out = diversity(vols)
    assert out["protocol"]["max_pairs"] == 100 and out["overall"]["n_pairs"] == 100
    assert not out["overall"]["all_pairs"]
    assert diversity(vols[:, :, 0])["protocol"]["max_pairs"] == 1000
