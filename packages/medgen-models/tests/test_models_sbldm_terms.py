"""SBLDM's training terms against closed forms: the frequency-aware loss (Parseval without
weighting, numpy's FFT with radial weights) and latent CutMix (boxes, partners, weights)."""

import numpy as np
import pytest
import torch

from medgen.models.augmentation import latent_cutmix
from medgen.models.losses import frequency_loss


@pytest.mark.parametrize("shape", [(3, 2, 8, 12), (2, 1, 4, 6, 10)])
def test_unweighted_frequency_loss_is_the_mse_by_parseval(shape):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    got = frequency_loss(a, b)
    mse = ((a - b) ** 2).reshape(shape[0], -1).mean(dim=1)
    torch.testing.assert_close(got, mse, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 2, 8, 12), (1, 1, 4, 6, 10)])
def test_radial_weighting_equals_numpy(shape):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    got = frequency_loss(a, b, weighting="radial")
    d = (a - b).double().numpy()
    axes = tuple(range(2, d.ndim))
    power = np.abs(np.fft.fftn(d, axes=axes, norm="ortho")) ** 2
    freqs = np.meshgrid(*[np.fft.fftfreq(d.shape[k]) for k in axes], indexing="ij")
    r = np.sqrt(sum(f**2 for f in freqs))
    hand = (power * r / r.mean()).reshape(shape[0], -1).mean(axis=1)
    np.testing.assert_allclose(got.numpy(), hand, rtol=1e-5)


def test_radial_weighting_counts_edges_more_than_smooth_errors():
    """Two errors of equal MSE: a checkerboard (highest frequency) and a constant (k = 0)."""
    n = 16
    checker = (torch.arange(n)[:, None] + torch.arange(n)[None, :]) % 2 * 2.0 - 1
    flat = torch.ones(n, n)
    zero = torch.zeros(1, 1, n, n)
    high = frequency_loss(checker[None, None], zero, weighting="radial")
    low = frequency_loss(flat[None, None], zero, weighting="radial")
    assert float(low) == 0.0 and float(high) > 1.0
    assert float(frequency_loss(checker[None, None], zero)) == pytest.approx(1.0)


def test_frequency_loss_mask_and_bad_input():
    a = torch.ones(1, 1, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    assert float(frequency_loss(a, torch.zeros_like(a), mask=mask)) == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        frequency_loss(a, torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="unknown frequency weighting"):
        frequency_loss(a, a, weighting="cubic")


@pytest.mark.parametrize("shape", [(6, 3, 8, 8), (5, 2, 4, 6, 6)])
def test_cutmix_pastes_a_partner_box_and_leaves_the_rest(shape):
    b = shape[0]
    x0 = torch.arange(b, dtype=torch.float32).reshape(b, *[1] * (len(shape) - 1)).expand(shape)
    x0 = x0 + 0.01 * torch.randn(shape, generator=torch.Generator().manual_seed(2))
    weights = torch.arange(b, dtype=torch.float32).reshape(b, *[1] * (len(shape) - 1))
    weights = weights.expand(b, 1, *shape[2:])
    out, w, mixed = latent_cutmix(x0, weights, 0.5, torch.Generator().manual_seed(1))
    assert mixed.any() and not mixed.all()
    for i in range(b):
        changed = (out[i] != x0[i]).any(dim=0)
        if not mixed[i]:
            assert torch.equal(out[i], x0[i]) and torch.equal(w[i], weights[i])
            continue
        # the pasted voxels come from one partner, all channels alike, and form one box
        src = out[i].round()[:, changed].unique()
        assert src.numel() == 1 and int(src) != i
        j = int(src)
        assert torch.equal(out[i][:, changed], x0[j][:, changed])
        assert torch.equal(w[i][0][changed], weights[j][0][changed])
        idx = torch.nonzero(changed)
        lo, hi = idx.min(dim=0).values, idx.max(dim=0).values
        box = tuple(slice(int(a), int(z) + 1) for a, z in zip(lo, hi, strict=True))
        assert bool(changed[box].all())  # a full box, nothing outside it
        assert torch.equal(out[i][:, ~changed], x0[i][:, ~changed])


def test_cutmix_is_reproducible_and_off_at_zero():
    x0 = torch.randn(4, 1, 8, 8)
    a = latent_cutmix(x0, None, 1.0, torch.Generator().manual_seed(5))
    b = latent_cutmix(x0, None, 1.0, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and a[1] is None and bool(a[2].all())
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    out, _, mixed = latent_cutmix(x0, None, 0.0, g)
    assert out is x0 and not mixed.any() and torch.equal(g.get_state(), state)
    with pytest.raises(ValueError, match="prob"):
        latent_cutmix(x0, None, 1.5, g)
