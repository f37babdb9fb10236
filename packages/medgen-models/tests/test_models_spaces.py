"""Spaces: exact inverses, shapes, YAML round-trips, and independent references
(torch.nn.functional.pixel_unshuffle, PyWavelets, a hand-made autoencoder)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from medgen.models.spaces import (
    LatentSpace,
    PixelSpace,
    Space,
    SpaceToDepth,
    WaveletSpace,
    measure_scale_factor,
    space_from_config,
)

pywt = pytest.importorskip("pywt")


def _x(spatial_dims, b=2, c=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    sizes = (4, 6, 8) if spatial_dims == 3 else (6, 8)
    return torch.randn((b, c, *sizes), generator=g, dtype=dtype)


def _yaml_round_trip(cfg):
    return yaml.safe_load(yaml.safe_dump(cfg))


# --- pixel -------------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_pixel_space_is_identity(spatial_dims):
    s = PixelSpace(spatial_dims)
    x = _x(spatial_dims) * 10  # far outside [-1, 1]: nothing may clamp
    assert s.encode(x) is x and s.decode(x) is x
    assert s.latent_shape(x.shape) == tuple(x.shape)
    assert isinstance(s, Space)
    with pytest.raises(ValueError, match=f"for spatial_dims={spatial_dims}, got shape"):
        s.encode(torch.zeros(1, 1, *([4] * (spatial_dims + 1))))


# --- space-to-depth -------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [2, 3])
def test_space_to_depth_2d_equals_pixel_unshuffle(factor):
    x = torch.randn(2, 3, 3 * factor, 4 * factor)
    s = SpaceToDepth(2, factor)
    torch.testing.assert_close(s.encode(x), F.pixel_unshuffle(x, factor), rtol=0, atol=0)
    torch.testing.assert_close(s.decode(s.encode(x)), x, rtol=0, atol=0)
    torch.testing.assert_close(s.decode(x.repeat(1, factor**2, 1, 1)), F.pixel_shuffle(
        x.repeat(1, factor**2, 1, 1), factor), rtol=0, atol=0)  # fmt: skip


def test_space_to_depth_3d_channel_order_by_hand():
    # channel c*8 + (i*2 + j)*2 + k holds x[..., i::2, j::2, k::2] of input channel c
    x = _x(3, c=2)
    z = SpaceToDepth(3, 2).encode(x)
    assert z.shape == (2, 16, 2, 3, 4)
    for c in range(2):
        for i in range(2):
            for j in range(2):
                for k in range(2):
                    ch = c * 8 + (i * 2 + j) * 2 + k
                    torch.testing.assert_close(z[:, ch], x[:, c, i::2, j::2, k::2], rtol=0, atol=0)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_space_to_depth_exact_inverse_and_shape(spatial_dims):
    s = SpaceToDepth(spatial_dims, 2)
    x = _x(spatial_dims)
    z = s.encode(x)
    assert z.shape == s.latent_shape(x.shape)
    assert torch.equal(s.decode(z), x)
    with pytest.raises(ValueError, match="not divisible by factor 2"):
        s.encode(x[..., :-1])


# --- wavelet -----------------------------------------------------------------------------


def _pywt_subbands(x: np.ndarray, spatial_dims: int) -> list[np.ndarray]:
    """Per-channel PyWavelets haar/periodization subbands in LL.., LH.., ... order."""
    keys = ["aa", "ad", "da", "dd"] if spatial_dims == 2 else [
        a + b + c for a in "ad" for b in "ad" for c in "ad"]  # fmt: skip
    axes = tuple(range(2, 2 + spatial_dims))
    coeffs = pywt.dwtn(x, "haar", mode="periodization", axes=axes)
    return [coeffs[k] for k in keys]


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("low_scale", [1 / 3, 1.0, 0.5])
def test_wavelet_space_matches_pywavelets(spatial_dims, low_scale):
    x = _x(spatial_dims, dtype=torch.float64)
    s = WaveletSpace(spatial_dims, low_scale=low_scale)
    z = s.encode(x)
    c = x.shape[1]
    bands = _pywt_subbands(x.numpy(), spatial_dims)
    assert z.shape == s.latent_shape(x.shape) == (2, c * 2**spatial_dims, *bands[0].shape[2:])
    for band, ref in enumerate(bands):
        expected = ref * (low_scale if band == 0 else 1.0)
        np.testing.assert_allclose(z[:, band * c : (band + 1) * c].numpy(), expected, atol=1e-12)


def test_wavelet_default_low_scale_is_wdm_third():
    s = WaveletSpace(3)
    assert s.low_scale == pytest.approx(1 / 3)
    # a constant volume of ones: orthonormal LLL = 2^(3/2); WDM's /3 brings it below 1
    z = s.encode(torch.ones(1, 1, 2, 2, 2))
    assert z[0, 0].item() == pytest.approx(2**1.5 / 3)
    torch.testing.assert_close(z[0, 1:], torch.zeros(7, 1, 1, 1))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_wavelet_round_trip_and_odd_sizes(spatial_dims):
    s = WaveletSpace(spatial_dims)
    x = _x(spatial_dims)
    assert (s.decode(s.encode(x)) - x).abs().max() < 1e-6
    with pytest.raises(ValueError, match="odd size"):
        s.latent_shape((1, 1, *([5] * spatial_dims)))


# --- latent ------------------------------------------------------------------------------


class _AvgPoolAE(nn.Module):
    """A fixed, invertible-on-its-range toy autoencoder with a known latent distribution."""

    def __init__(self, spatial_dims=2, gain=7.0, offset=3.0):
        super().__init__()
        self.spatial_dims, self.gain, self.offset = spatial_dims, gain, offset
        self.dummy = nn.Parameter(torch.zeros(()))
        self.decoded = []

    def encode(self, x):
        pool = F.avg_pool2d if self.spatial_dims == 2 else F.avg_pool3d
        z = pool(x, 2) * self.gain + self.offset
        return z, torch.ones_like(z)  # (mu, sigma) like MONAI's AutoencoderKL

    def decode(self, z):
        self.decoded.append(z)
        up = (z - self.offset) / self.gain
        return F.interpolate(up, scale_factor=2, mode="nearest")


def test_scale_factor_is_one_over_std_of_all_latents():
    ae = _AvgPoolAE()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(3, 1, 8, 8, generator=g) + 5 for _ in range(4)]  # offset mean
    lat = torch.cat([ae.encode(b)[0] for b in batches])
    expected = 1.0 / lat.double().std().item()
    assert measure_scale_factor(ae, iter(batches)) == pytest.approx(expected, rel=1e-10)
    first = 1.0 / ae.encode(batches[0])[0].double().std().item()
    assert measure_scale_factor(ae, batches, max_batches=1) == pytest.approx(first, rel=1e-10)
    scaled = LatentSpace(ae, 2, scale_factor=0.5)  # a space is measured on its raw latents
    assert measure_scale_factor(scaled, batches) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="at least 2"):
        measure_scale_factor(ae, [])


def test_latent_scale_factor_is_applied_symmetrically():
    """GenerativeModels issue 212: decode must divide by the factor encode multiplied by."""
    ae = _AvgPoolAE()
    space = LatentSpace(ae, 2, latent_channels=1, downsample=2)
    x = F.interpolate(torch.randn(2, 1, 4, 4), scale_factor=2, mode="nearest")  # AE-exact input
    sf = space.calibrate([x])
    raw = ae.encode(x)[0]
    z = space.encode(x)
    torch.testing.assert_close(z, raw * sf)  # multiply after encode
    assert z.std().item() == pytest.approx(1.0, rel=1e-5)
    out = space.decode(z)
    torch.testing.assert_close(ae.decoded[-1], raw)  # divide before decode: AE sees raw latent
    torch.testing.assert_close(out, x, atol=1e-5, rtol=1e-5)
    # the asymmetric (buggy) variant would hand the decoder raw * sf, far from raw
    assert not torch.allclose(raw * sf, raw, atol=1e-2)


def test_latent_space_stores_factor_in_state_and_config():
    ae = _AvgPoolAE()
    space = LatentSpace(ae, 2, scale_factor=0.18215)
    assert space.state_dict()["scale_factor"].dtype == torch.float64
    space.half()  # a dtype cast of the module must not round the factor
    assert float(space.scale_factor) == 0.18215
    cfg = _yaml_round_trip(space.config())
    assert cfg["scale_factor"] == 0.18215
    again = space_from_config(cfg, autoencoder=_AvgPoolAE())
    assert float(again.scale_factor) == 0.18215
    fresh = LatentSpace(_AvgPoolAE(), 2)
    fresh.load_state_dict(space.state_dict())
    assert float(fresh.scale_factor) == 0.18215
    with pytest.raises(ValueError, match="pass the autoencoder"):
        space_from_config(cfg)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_latent_shape_probe_and_arithmetic_agree(spatial_dims):
    ae = _AvgPoolAE(spatial_dims)
    shape = (5, 1, *([8] * spatial_dims))
    probed = LatentSpace(ae, spatial_dims).latent_shape(shape)
    arith = LatentSpace(ae, spatial_dims, latent_channels=1, downsample=2).latent_shape(shape)
    assert probed == arith == (5, 1, *([4] * spatial_dims))


def test_latent_space_with_monai_autoencoder_kl():
    from monai.networks.nets import AutoencoderKL

    torch.manual_seed(0)
    ae = AutoencoderKL(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=(8, 8),
        latent_channels=3,
        num_res_blocks=1,
        norm_num_groups=4,
        attention_levels=(False, False),
    ).eval()
    space = LatentSpace(ae, 2)
    x = torch.randn(2, 1, 16, 16)
    sf = space.calibrate([x])
    z = space.encode(x)
    assert z.shape == space.latent_shape(x.shape) == (2, 3, 8, 8)
    torch.testing.assert_close(z, ae.encode(x)[0] * sf)
    torch.testing.assert_close(space.decode(z), ae.decode(ae.encode(x)[0]), atol=1e-5, rtol=1e-4)


# --- config round-trips ------------------------------------------------------------------


@pytest.mark.parametrize(
    "space",
    [PixelSpace(3), SpaceToDepth(2, 4), WaveletSpace(2, low_scale=0.25), WaveletSpace(3)],
    ids=lambda s: s.kind,
)
def test_config_yaml_round_trip_gives_identical_space(space):
    again = space_from_config(_yaml_round_trip(space.config()))
    assert type(again) is type(space) and again.config() == space.config()
    x = _x(space.spatial_dims, c=1) if space.kind != "space_to_depth" else torch.randn(1, 1, 8, 8)
    assert torch.equal(again.encode(x), space.encode(x))


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="unknown kind 'fourier'"):
        space_from_config({"kind": "fourier"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lowscale'\]"):
        space_from_config({"kind": "wavelet", "spatial_dims": 3, "lowscale": 0.5})


@pytest.mark.parametrize(
    "space",
    [PixelSpace(2), WaveletSpace(2), WaveletSpace(3), SpaceToDepth(2, 2), SpaceToDepth(3, 2)],
    ids=["pixel", "wavelet-2d", "wavelet-3d", "s2d-2d", "s2d-3d"],
)
def test_channel_groups_hold_exactly_their_data_channel(space):
    """Encode data where only channel c is non-zero: exactly its group is non-zero."""
    c_total = 3
    spatial = (4,) * space.spatial_dims
    groups = space.channel_groups(c_total)
    assert sorted(i for g in groups for i in g) == list(
        range(space.latent_shape((1, c_total, *spatial))[1])
    )
    for c in range(c_total):
        x = torch.zeros((1, c_total, *spatial))
        x[:, c] = torch.randn(spatial) + 2.0
        z = space.encode(x)
        nonzero = {int(i) for i in torch.nonzero(z.flatten(2).abs().sum(-1)[0]).flatten()}
        assert nonzero == set(groups[c]), (c, nonzero, groups[c])
