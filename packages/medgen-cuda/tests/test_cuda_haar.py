"""Haar DWT/IDWT against PyWavelets (independent reference), plus its algebraic properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medgen.cuda import (
    haar_dwt,
    haar_dwt_multilevel,
    haar_idwt,
    haar_idwt_multilevel,
    reference,
)

SUBBANDS_2D = ("aa", "ad", "da", "dd")  # LL, LH, HL, HH (first letter = first spatial axis)
SUBBANDS_3D = ("aaa", "aad", "ada", "add", "daa", "dad", "dda", "ddd")  # LLL ... HHH

# Non-cubic shapes on purpose, including depth > height/width (WDM-3D breaks there).
SHAPES = [
    (2, 3, 6, 10),
    (1, 1, 16, 4),
    (2, 2, 8, 4, 6),
    (1, 3, 12, 4, 2),  # depth > height > width
    (1, 1, 2, 8, 10),
]

IMPLS = {"public": (haar_dwt, haar_idwt), "reference": (reference.haar_dwt, reference.haar_idwt)}


def _pywt_expected(x: torch.Tensor) -> np.ndarray:
    pywt = pytest.importorskip("pywt")
    keys = SUBBANDS_3D if x.dim() == 5 else SUBBANDS_2D
    B, C = x.shape[:2]
    out = []
    for s, key in enumerate(keys):
        del s
        band = np.stack(
            [
                np.stack(
                    [
                        pywt.dwtn(x[b, c].numpy(), "haar", mode="periodization")[key]
                        for c in range(C)
                    ]
                )
                for b in range(B)
            ]
        )
        out.append(band)
    # subband-major channel layout: channel = s * C + c
    return np.concatenate(out, axis=1)


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cuda_haar_matches_pywavelets_float64(impl, shape):
    dwt, idwt = IMPLS[impl]
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w = dwt(x)
    expected = _pywt_expected(x)
    assert w.shape == expected.shape
    # float64: each coefficient is a sum of 4 (2D) / 8 (3D) terms of N(0, 1) values times
    # 2^(-d/2), a few ulp of ~4, i.e. ~1e-15; 1e-12 leaves 1000x (1e-6 let float32 pass)
    np.testing.assert_allclose(w.numpy(), expected, rtol=0, atol=1e-12)
    # inverse against pywt.idwtn of the same coefficients
    pywt = pytest.importorskip("pywt")
    keys = SUBBANDS_3D if x.dim() == 5 else SUBBANDS_2D
    C = shape[1]
    coeffs = {k: w[0, s * C].numpy() for s, k in enumerate(keys)}
    np.testing.assert_allclose(
        idwt(w)[0, 0].numpy(), pywt.idwtn(coeffs, "haar", mode="periodization"), atol=1e-12
    )


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cuda_haar_perfect_reconstruction_and_energy(impl, shape):
    dwt, idwt = IMPLS[impl]
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    w = dwt(x)
    torch.testing.assert_close(idwt(w), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(w.square().sum(), x.square().sum(), rtol=1e-12, atol=0)
    # also in float32
    x32 = x.float()
    torch.testing.assert_close(idwt(dwt(x32)), x32, rtol=0, atol=1e-5)


def test_cuda_haar_subband_layout_known_values():
    """A constant block lands only in LLL; an x[2k]-x[2k+1] ramp along W lands only in LLH."""
    x = torch.ones(1, 2, 2, 2, 2, dtype=torch.float64)
    x[:, 1] *= 3.0
    w = haar_dwt(x)
    assert w.shape == (1, 16, 1, 1, 1)
    expected = torch.zeros(16, dtype=torch.float64)
    expected[0] = 8 / 8**0.5  # channel 0 = (LLL, c=0)
    expected[1] = 3 * 8 / 8**0.5  # channel 1 = (LLL, c=1)
    torch.testing.assert_close(w.flatten(), expected)
    y = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(1, 1, 2, 2, 1)  # varies along W
    wy = haar_dwt(y).flatten()
    assert wy[1] == pytest.approx(8 / 8**0.5) and torch.count_nonzero(wy) == 1


@pytest.mark.parametrize("shape", [(1, 2, 4, 6), (1, 1, 4, 2, 6)])
def test_cuda_haar_gradcheck(shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(haar_dwt, (x,))
    S = 8 if len(shape) == 5 else 4
    w = torch.randn(
        (shape[0], S * shape[1], *[s // 2 for s in shape[2:]]),
        dtype=torch.float64,
        requires_grad=True,
    )
    assert torch.autograd.gradcheck(haar_idwt, (w,))
    assert torch.autograd.gradgradcheck(haar_dwt, (x,))


def test_cuda_haar_backward_is_inverse():
    x = torch.randn(2, 3, 4, 6, 8, requires_grad=True, dtype=torch.float64)
    g = torch.randn(2, 24, 2, 3, 4, dtype=torch.float64)
    haar_dwt(x).backward(g)
    torch.testing.assert_close(x.grad, haar_idwt(g))


@pytest.mark.parametrize(
    ("shape", "axis"),
    [((1, 1, 5, 4), "H"), ((1, 1, 4, 7), "W"), ((1, 1, 3, 4, 4), "D"), ((1, 1, 4, 4, 9), "W")],
)
@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_cuda_haar_odd_size_names_axis(shape, axis, impl):
    with pytest.raises(ValueError, match=f"axis {axis} "):
        IMPLS[impl][0](torch.zeros(shape))


def test_cuda_haar_rejects_bad_rank_and_channels():
    with pytest.raises(ValueError, match="4-D"):
        haar_dwt(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="8\\*C channels"):
        haar_idwt(torch.zeros(1, 4, 2, 2, 2))
    with pytest.raises(TypeError, match="dtype"):
        haar_dwt(torch.zeros(1, 1, 4, 4, dtype=torch.int32))


def test_cuda_haar_multilevel_roundtrip():
    x = torch.randn(1, 2, 8, 16, 8, dtype=torch.float64)
    low, highs = haar_dwt_multilevel(x, 3)
    assert low.shape == (1, 2, 1, 2, 1)
    assert [h.shape[1] for h in highs] == [14, 14, 14]
    torch.testing.assert_close(haar_idwt_multilevel(low, highs), x)
    # level 2 low band equals dwt(dwt(x)[:, :C])[:, :C]
    torch.testing.assert_close(haar_dwt(haar_dwt(x)[:, :2])[:, :2], haar_dwt_multilevel(x, 2)[0])


def test_cuda_haar_noncontiguous_input():
    base = torch.randn(1, 2, 8, 12, dtype=torch.float64)
    x = base.transpose(-1, -2)  # (1, 2, 12, 8), non-contiguous
    torch.testing.assert_close(haar_dwt(x), reference.haar_dwt(x.contiguous()))


@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("shape", [(2, 3, 6, 10), (1, 2, 8, 4, 6)], ids=["2d", "3d"])
def test_cuda_haar_out_writes_in_place_and_equals_pywavelets(backend, shape, monkeypatch):
    if backend == "reference":
        monkeypatch.setenv("MEDGEN_CUDA_DISABLE_EXTENSION", "1")
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    w_out = torch.full(haar_dwt(x).shape, float("nan"), dtype=torch.float64)
    assert haar_dwt(x, out=w_out) is w_out
    np.testing.assert_allclose(w_out.numpy(), _pywt_expected(x), atol=1e-12)
    x_out = torch.empty_like(x)
    assert haar_idwt(w_out, out=x_out) is x_out
    torch.testing.assert_close(x_out, x, atol=1e-12, rtol=0)


def test_cuda_haar_out_is_checked():
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"shape \(1, 4, 2, 2\)"):
        haar_dwt(x, out=torch.empty(1, 4, 2, 3))
    with pytest.raises(ValueError, match="dtype"):
        haar_dwt(x, out=torch.empty(1, 4, 2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="contiguous"):
        haar_dwt(x, out=torch.empty(1, 4, 2, 4)[..., ::2])
    with pytest.raises(ValueError, match="shares memory"):
        w = torch.randn(1, 4, 2, 2)
        haar_idwt(w, out=w.view(1, 1, 4, 4))  # right shape, but the input's own memory
    with pytest.raises(RuntimeError, match="autograd"):
        haar_dwt(x.requires_grad_(), out=torch.empty(1, 4, 2, 2))
