"""Property tests (Hypothesis): the mask codec and reorientation round-trip for every input.

Skipped where hypothesis is not installed (``pip install hypothesis``)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from medgen.data.orientation import orientation_code, to_canonical  # noqa: E402
from medgen.data.slicing.codec import MAX_INT_BITS, decode_mask, encode_mask  # noqa: E402
from medgen.data.volume import Volume  # noqa: E402

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)


@st.composite
def mask_and_latent(draw, scheme: str):
    """A random binary (batch..., H, W) mask and a latent shape the scheme can hold it in."""
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    limit = MAX_INT_BITS if scheme == "int" else 32
    need = -(-h * w // limit)  # the fewest values that hold h*w bits
    n = draw(st.integers(need, max(need, h * w) + 3))  # up to more values than bits
    # factor n into a latent shape of 1-3 dims
    dims = [n]
    for _ in range(draw(st.integers(0, 2))):
        divisors = [d for d in range(1, dims[-1] + 1) if dims[-1] % d == 0]
        d = draw(st.sampled_from(divisors))
        dims[-1] //= d
        dims.append(d)
    seed = draw(st.integers(0, 2**31 - 1))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    rng = np.random.default_rng(seed)
    mask = rng.random((*batch, h, w)) < density
    return mask, tuple(dims)


@pytest.mark.parametrize("scheme", ["int", "raw32"])
@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.float32])
def test_data_codec_round_trip_property(scheme, dtype):
    @SETTINGS
    @given(mask_and_latent(scheme))
    def check(case):
        mask, latent_shape = case
        m = torch.from_numpy(mask).to(dtype)
        z = encode_mask(m, latent_shape, scheme)
        assert z.dtype == torch.float32 and z.shape == (*mask.shape[:-2], *latent_shape)
        if scheme == "int":  # finite exact integers in [0, 2**k)
            k = -(-mask.shape[-1] * mask.shape[-2] // math.prod(latent_shape))
            assert torch.isfinite(z).all() and (z >= 0).all() and (z < 2**k).all()
            assert torch.equal(z, z.round())
        back = decode_mask(z.clone(), mask.shape[-2:], latent_shape, scheme, dtype=torch.bool)
        assert torch.equal(back, torch.from_numpy(mask))

    check()


SIGNED_PERMUTATIONS = [
    np.array([[s[i] if j == p[i] else 0.0 for j in range(3)] for i in range(3)])
    for p in itertools.permutations(range(3))
    for s in itertools.product((1.0, -1.0), repeat=3)
]  # all 48 axis-aligned directions (rows: LPS axis, columns: array axis)


@st.composite
def volumes(draw):
    shape = tuple(draw(st.integers(1, 4)) for _ in range(3))
    spacing = tuple(draw(st.sampled_from([0.5, 0.8, 1.0, 2.5])) for _ in range(3))
    origin = tuple(draw(st.integers(-50, 50)) / 4 for _ in range(3))
    direction = SIGNED_PERMUTATIONS[draw(st.integers(0, len(SIGNED_PERMUTATIONS) - 1))]
    array = np.arange(math.prod(shape), dtype=np.float32).reshape(shape)  # every voxel unique
    return Volume(array=array, spacing=spacing, origin=origin, direction=direction.copy())


def _voxels_by_position(vol: Volume) -> dict:
    """{rounded physical LPS point: voxel value} over every voxel of ``vol``."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in vol.shape], indexing="ij"), -1)
    idx = idx.reshape(-1, 3).astype(np.float64) * np.asarray(vol.spacing)
    points = np.asarray(vol.origin) + idx @ np.asarray(vol.direction).T
    return {tuple(np.round(p, 6)): v for p, v in zip(points, vol.array.reshape(-1), strict=True)}


@SETTINGS
@given(volumes(), st.sampled_from(["LPS", "RAS"]))
def test_data_orientation_round_trip_property(vol, target):
    """Any axis-aligned volume reoriented to ``target`` has that code, every voxel at the same
    physical point with the same value, and reorienting back gives the original arrays."""
    out = to_canonical(vol, target)
    assert orientation_code(out) == target
    assert _voxels_by_position(out) == _voxels_by_position(vol)
    back = (
        to_canonical(out, orientation_code(vol))
        if orientation_code(vol) in ("LPS", "RAS")
        else None
    )
    if back is not None:
        np.testing.assert_array_equal(back.array, vol.array)
        np.testing.assert_allclose(back.direction, vol.direction)
        np.testing.assert_allclose(back.origin, vol.origin, atol=1e-9)
    lps = to_canonical(to_canonical(vol, "RAS"), "LPS")  # via the other canonical orientation
    np.testing.assert_array_equal(lps.array, to_canonical(vol, "LPS").array)
    np.testing.assert_allclose(lps.origin, to_canonical(vol, "LPS").origin, atol=1e-9)
