"""A small real training run (issue 5): a 2D conditioned UNet on 16x16 MNI152 axial slices.

A few hundred CPU steps of epsilon-prediction DDPM with Min-SNR-5 weighting must lower the loss
on a fixed evaluation batch, and DDIM samples from the trained model must lie closer to the
data (PSNR to the nearest real slice) than samples from the untrained model drawn from the
same noise. The MNI152 2009 template ships inside nilearn's package data; it is read with
nibabel (a nilearn dependency) so medgen-models' tests need neither medgen-data nor a download.
"""

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medgen.models import DDPM, ddim, schedules
from medgen.models.losses import diffusion_loss, min_snr_weight
from medgen.models.networks.unet import ConditionedUNet

MNI_T1 = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
N_SLICES, N_BINS, SIZE = 32, 4, 16


def _mni152_slices() -> torch.Tensor:
    nib = pytest.importorskip("nibabel")
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("nilearn (which ships the MNI152 template) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / MNI_T1
    vol = np.asarray(nib.load(path).dataobj, dtype=np.float32)  # (x, y, z) = (197, 233, 189)
    zs = np.linspace(50, 140, N_SLICES).round().astype(int)  # axial slices through the brain
    sl = torch.from_numpy(np.ascontiguousarray(vol[:, :, zs].transpose(2, 1, 0)))[:, None]
    sl = F.adaptive_avg_pool2d(sl, SIZE)
    sl = (sl / torch.quantile(sl, 0.99)).clamp(0, 1)
    return sl * 2 - 1  # (N, 1, 16, 16) in [-1, 1]


@pytest.fixture
def one_thread():
    # Tiny convolutions gain nothing from threads, and on a shared, oversubscribed machine
    # OpenMP spin-waiting makes a step 10-30x slower; run single-threaded, then restore.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _psnr_to_nearest(samples: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    mse = ((samples[:, None] - data[None]) ** 2).mean(dim=(2, 3, 4))  # (S, N)
    return 10 * torch.log10(4.0 / mse.min(dim=1).values)  # data range 2


@pytest.mark.slow
def test_training_lowers_loss_and_samples_approach_the_data(one_thread):
    data = _mni152_slices()
    assert data.shape == (N_SLICES, 1, SIZE, SIZE)
    tokens = torch.arange(N_SLICES) * N_BINS // N_SLICES  # z-bin, one class
    torch.manual_seed(0)
    net = ConditionedUNet(
        2, 1, 1, num_tokens=N_BINS, channels=(16, 32), attention_levels=(False, False),
        norm_num_groups=8,
    )  # fmt: skip
    net.validate_tokens(tokens, n_bins=N_BINS, n_classes=1)
    untrained = copy.deepcopy(net).eval()
    strategy = DDPM(schedules.cosine(1000), "epsilon")
    g = torch.Generator().manual_seed(0)

    def loss_on(idx, t, noise):
        x0 = data[idx]
        out = net(strategy.add_noise(x0, noise, t), t, tokens[idx])
        w = min_snr_weight(strategy.snr(t, x0).reshape(-1), "epsilon", gamma=5.0)
        return diffusion_loss(out, strategy.training_target(x0, noise, t), weight=w)["loss"]

    ev = (
        torch.randint(0, N_SLICES, (64,), generator=g),
        torch.randint(0, 1000, (64,), generator=g),
        torch.randn(64, 1, SIZE, SIZE, generator=g),
    )
    with torch.no_grad():
        before = loss_on(*ev).item()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    for _ in range(200):
        idx = torch.randint(0, N_SLICES, (16,), generator=g)
        t = strategy.sample_timesteps(16, generator=g)
        loss = loss_on(idx, t, torch.randn(16, 1, SIZE, SIZE, generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        after = loss_on(*ev).item()
    assert after < 0.5 * before, (before, after)

    x_T = torch.randn(16, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    cond = torch.arange(16) % N_BINS
    trained_s = ddim(net, strategy, x_T, steps=20, cond=cond, clip_x0=1.0)
    untrained_s = ddim(untrained, strategy, x_T, steps=20, cond=cond, clip_x0=1.0)
    assert torch.isfinite(trained_s).all()
    p_trained = _psnr_to_nearest(trained_s, data).mean().item()
    p_untrained = _psnr_to_nearest(untrained_s, data).mean().item()
    assert p_trained > p_untrained + 5.0, (p_trained, p_untrained)
