"""Chunked encode / decode equal the unsplit pass for convolutional networks when the overlap
covers the receptive field (measured by required_overlap, checked by brute force over
overlaps), differ detectably when it does not, and MONAI's sliding window is wired right."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medgen.models.autoencoders import (
    KLAutoencoder,
    chunk_bounds,
    chunked_decode,
    chunked_encode,
    required_overlap,
    sliding_window_decode,
)

torch.set_num_threads(1)


def conv_decoder(dims: int, f_levels: int = 2, seed: int = 0) -> nn.Module:
    """Purely convolutional: conv, then (nearest x2, conv) per level; no normalisation."""
    torch.manual_seed(seed)
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    layers: list[nn.Module] = [conv(2, 6, 3, padding=1), nn.SiLU()]
    for _ in range(f_levels):
        layers += [nn.Upsample(scale_factor=2), conv(6, 6, 3, padding=1), nn.SiLU()]
    layers.append(conv(6, 1, 3, padding=1))
    return nn.Sequential(*layers).eval()


def conv_encoder(dims: int, seed: int = 0) -> nn.Module:
    """Purely convolutional, 4x down: conv, strided conv (k4 s2 p1) twice, conv."""
    torch.manual_seed(seed)
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    return nn.Sequential(
        conv(1, 4, 3, padding=1), nn.SiLU(),
        conv(4, 6, 4, stride=2, padding=1), nn.SiLU(),
        conv(6, 6, 4, stride=2, padding=1), nn.SiLU(),
        conv(6, 2, 3, padding=1),
    ).eval()  # fmt: skip


def test_chunk_bounds_cover_the_axis():
    for n in (1, 5, 13, 32):
        for k in range(1, n + 1):
            b = chunk_bounds(n, k)
            assert b[0][0] == 0 and b[-1][1] == n and len(b) == k
            assert all(b[i][1] == b[i + 1][0] for i in range(k - 1))
            sizes = [hi - lo for lo, hi in b]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    with pytest.raises(ValueError, match=r"num_splits must be in \[1, 4\]"):
        chunk_bounds(4, 5)


@pytest.mark.parametrize("dims", [2, 3])
def test_required_overlap_is_the_smallest_exact_overlap(dims):
    dec = conv_decoder(dims)
    probe = torch.randn(1, 2, 24, *([3] * (dims - 1)))
    r = required_overlap(dec, probe, axis=0, downsample=4)
    assert r is not None and r >= 1
    z = torch.randn(1, 2, 13, *([5] * (dims - 1)))  # odd size: chunks of 4 and 5
    with torch.no_grad():
        full = dec(z)
        errors = {ov: (chunked_decode(dec, z, 0, 3, ov, 4) - full).abs().max().item()
                  for ov in range(0, r + 2)}  # fmt: skip
    assert all(errors[ov] <= 1e-5 for ov in range(r, r + 2)), errors
    assert errors[r - 1] > 1e-4, errors  # one voxel less is detectably wrong


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("axis", [0, -1])
@pytest.mark.parametrize("num_splits,extra", [(2, 0), (3, 1), (5, 0), (13, 2)])
def test_chunked_decode_equals_unsplit(dims, axis, num_splits, extra):
    dec = conv_decoder(dims)
    r = required_overlap(dec, torch.randn(1, 2, 24, *([3] * (dims - 1))), 0, 4)
    z = (
        torch.randn(1, 2, *([13] + [6] * (dims - 1)))
        if axis == 0
        else torch.randn(1, 2, *([6] * (dims - 1) + [13]))
    )
    with torch.no_grad():
        full = dec(z)
        got = chunked_decode(dec, z, axis, num_splits, r + extra, downsample=4)
    assert got.shape == full.shape
    torch.testing.assert_close(got, full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_chunked_encode_equals_unsplit(dims):
    enc = conv_encoder(dims)
    r = required_overlap(enc, torch.randn(1, 1, 96, *([4] * (dims - 1))), 0, 4, "encode")
    assert r is not None and r >= 1
    x = torch.randn(2, 1, 44, *([8] * (dims - 1)))  # 11 latent rows
    with torch.no_grad():
        full = enc(x)
        for num_splits in (2, 3, 11):
            got = chunked_encode(enc, x, 0, num_splits, r, downsample=4)
            torch.testing.assert_close(got, full, rtol=0, atol=1e-5)
        assert (chunked_encode(enc, x, 0, 3, r - 1, downsample=4) - full).abs().max() > 1e-4
    with pytest.raises(ValueError, match="axis 0 has size 42, not divisible by downsample 4"):
        chunked_encode(enc, x[:, :, :42], 0, 2, r, downsample=4)


def test_chunked_decode_keeps_gradients():
    dec = conv_decoder(2)
    r = required_overlap(dec, torch.randn(1, 2, 24, 3), 0, 4)
    z = torch.randn(1, 2, 9, 4, requires_grad=True)
    chunked_decode(dec, z, 0, 3, r, 4).square().sum().backward()
    g_chunk = z.grad.clone()
    z.grad = None
    dec(z).square().sum().backward()
    torch.testing.assert_close(g_chunk, z.grad, rtol=1e-5, atol=1e-5)


def test_groupnorm_decoder_is_not_exact_and_says_so():
    ae = KLAutoencoder(3, 1, latent_channels=2, channels=(8, 8, 8), norm_num_groups=4).eval()
    assert required_overlap(ae.decode, torch.randn(1, 2, 16, 3, 3), 0, ae.downsample) is None
    z = torch.randn(1, 2, 8, 4, 4)
    with torch.no_grad():
        full = ae.decode(z)
        assert torch.equal(chunked_decode(ae.decode, z, 0, 1, 0, ae.downsample), full)
        assert (chunked_decode(ae.decode, z, 0, 2, 2, ae.downsample) - full).abs().max() > 1e-4


def test_sliding_window_decode_through_monai():
    torch.manual_seed(0)
    pointwise = nn.Sequential(nn.Conv3d(2, 3, 1), nn.Upsample(scale_factor=4), nn.Conv3d(3, 1, 1))
    z = torch.randn(1, 2, 10, 6, 6)
    with torch.no_grad():
        full = pointwise(z)
        for mode in ("constant", "gaussian"):
            got = sliding_window_decode(pointwise, z, (4, 4, 4), overlap=0.5, mode=mode)
            assert got.shape == full.shape
            torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)  # no context needed
        dec = conv_decoder(3)
        full = dec(z)
        got = sliding_window_decode(dec, z, (4, 4, 4), overlap=0.5)
        assert got.shape == full.shape and (got - full).abs().max() > 1e-4  # blended, not exact
    with pytest.raises(ValueError, match="roi_size"):
        sliding_window_decode(dec, z, (4, 4))


def test_bad_arguments():
    dec = conv_decoder(2)
    z = torch.randn(1, 2, 6, 6)
    with pytest.raises(ValueError, match="axis must index one of the 2 spatial axes"):
        chunked_decode(dec, z, axis=2, num_splits=2, overlap=1, downsample=4)
    with pytest.raises(ValueError, match="overlap >= 0"):
        chunked_decode(dec, z, 0, 2, -1, 4)
    with pytest.raises(ValueError, match=r"num_splits must be in \[1, 6\]"):
        chunked_decode(dec, z, 0, 7, 1, 4)
    with pytest.raises(ValueError, match="expected .*is downsample right"):
        chunked_decode(dec, z, 0, 2, 1, downsample=2)
    with pytest.raises(ValueError, match="direction"):
        required_overlap(dec, z, 0, 4, "sideways")
