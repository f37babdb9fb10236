"""thick_to_thin against independent references: torch grid_sample, np.interp, SimpleITK
resampling in physical space, and closed forms (Keys cubic reproduces quadratics)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from medgen.data import (
    INTERPOLATIONS,
    DataError,
    Volume,
    interpolation_weights,
    simulate_thick,
    thick_positions,
    thick_to_thin,
)
from medgen.data.slicing.thick import slab_centres


def grid_sample_1d(values: np.ndarray, positions: np.ndarray, mode: str) -> np.ndarray:
    """PyTorch's interpolation of the 1D ``values`` at fractional ``positions`` (indices):
    align_corners=True maps index u to the normalised coordinate 2u / (n - 1) - 1."""
    n = len(values)
    image = torch.from_numpy(np.asarray(values, np.float64)).reshape(1, 1, n, 1)
    g = torch.from_numpy(2.0 * np.asarray(positions, np.float64) / (n - 1) - 1.0)
    grid = torch.stack([torch.zeros_like(g), g], dim=-1).reshape(1, -1, 1, 2)
    out = F.grid_sample(image, grid, mode=mode, padding_mode="border", align_corners=True)
    return out.reshape(-1).numpy()


def test_linear_equals_grid_sample_bilinear_and_np_interp():
    rng = np.random.default_rng(0)
    values = rng.normal(size=9)
    u = np.concatenate([rng.uniform(-2.0, 10.0, 200), np.arange(9.0), [-0.5, 8.5, 8.0, 0.0]])
    ours = interpolation_weights(u, 9, "linear") @ values
    # border padding clamps the coordinate itself, so the unclamped u is the reference's input
    np.testing.assert_allclose(ours, grid_sample_1d(values, u, "bilinear"), atol=1e-12)
    np.testing.assert_allclose(ours, np.interp(u, np.arange(9.0), values), atol=1e-12)


@pytest.mark.parametrize("n_in", [2, 3, 4, 9])
def test_cubic_a075_equals_grid_sample_bicubic_interior_and_edges(n_in):
    rng = np.random.default_rng(n_in)
    values = rng.normal(size=n_in)
    top = n_in - 1
    u = np.concatenate(
        [rng.uniform(0, top, 100), [0.0, 0.1, 0.5, 0.9, top - 0.9, top - 0.5, top - 0.1, top]]
    )
    ours = interpolation_weights(u, n_in, "cubic", a=-0.75) @ values
    np.testing.assert_allclose(ours, grid_sample_1d(values, u, "bicubic"), atol=1e-12)
    # outside [0, n - 1]: clamped to the edge value (grid_sample at the clamped position)
    out = np.array([-3.0, -0.2, top + 0.3, top + 5.0])
    np.testing.assert_allclose(
        interpolation_weights(out, n_in, "cubic", a=-0.75) @ values,
        values[[0, 0, top, top]],
        atol=1e-12,
    )


def test_cubic_catmull_rom_reproduces_quadratics_at_interior_positions():
    rng = np.random.default_rng(1)
    k = np.arange(12.0)
    u = rng.uniform(1.0, 10.0, 300)  # all four taps inside [0, 12)
    for alpha, beta, gamma in rng.normal(size=(5, 3)):
        samples = alpha + beta * k + gamma * k**2
        exact = alpha + beta * u + gamma * u**2
        got = interpolation_weights(u, 12, "cubic") @ samples
        np.testing.assert_allclose(got, exact, atol=1e-10)
        # a = -0.75 is only exact up to linear functions: the closed form tells them apart
        other = interpolation_weights(u, 12, "cubic", a=-0.75) @ samples
        assert np.abs(other - exact).max() > 1e-3 * abs(gamma)


@pytest.mark.parametrize("kind", INTERPOLATIONS)
def test_weights_rows_sum_to_one_and_single_sample(kind):
    u = np.linspace(-1.0, 6.0, 57)
    w = interpolation_weights(u, 6, kind)
    assert w.shape == (57, 6) and w.dtype == np.float64
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(interpolation_weights(u, 1, kind), np.ones((57, 1)))


def test_positions_are_simulate_thick_slab_centres():
    # s = 1 mm, T = 3 mm: c_0 = 1 mm, so thin slices 1, 4, 7 sit exactly on slab centres 0, 1, 2
    u = thick_positions(10, 1.0, 3.0)
    np.testing.assert_allclose(u[[1, 4, 7]], [0.0, 1.0, 2.0], atol=1e-12)
    np.testing.assert_allclose(np.diff(u), 1.0 / 3.0, atol=1e-12)
    # overlapping slabs, fractional geometry: u of slab centre k's position is k
    s, t, sp = 0.7, 2.5, 1.5
    centres = slab_centres(20, s, t, sp)
    thin_index = centres / s  # where each centre sits on the thin grid
    np.testing.assert_allclose(
        np.interp(thin_index, np.arange(20.0), thick_positions(20, s, t, sp)),
        np.arange(len(centres)),
        atol=1e-12,
    )
    np.testing.assert_array_equal(thick_positions(20, s, t), thick_positions(20, s, t, t))


def _sitk(vol: Volume) -> sitk.Image:
    """Volume (z, y, x) -> SimpleITK image (x, y, z), written out independently."""
    image = sitk.GetImageFromArray(np.asarray(vol.array, np.float64))
    image.SetSpacing([float(v) for v in reversed(vol.spacing)])
    image.SetOrigin([float(v) for v in vol.origin])
    image.SetDirection(np.asarray(vol.direction, np.float64)[:, ::-1].flatten().tolist())
    return image


def _rotation(seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


@pytest.mark.parametrize(
    "profile,s,thickness,spacing",
    [
        ("box", 1.0, 5.0, None),
        ("gaussian", 1.0, 3.0, None),
        ("box", 0.7, 2.5, 1.5),  # overlapping slabs, fractional geometry
        ("gaussian", 0.5, 2.0, 1.25),
    ],
)
def test_linear_equals_simpleitk_resample_of_the_thick_volume(profile, s, thickness, spacing):
    rng = np.random.default_rng(3)
    thin = Volume(
        rng.normal(size=(23, 5, 4)).astype(np.float32),
        (s, 0.8, 0.6),
        (12.0, -7.0, 3.5),
        _rotation(4),
    )
    thick = simulate_thick(thin, thickness, spacing, profile)
    ours = thick_to_thin(thick.array, 23, s, thickness, spacing, kind="linear")
    ref = sitk.GetArrayFromImage(
        sitk.Resample(_sitk(thick), _sitk(thin), sitk.Transform(), sitk.sitkLinear, float("nan"))
    )
    centres = slab_centres(23, s, thickness, spacing or thickness)
    inside = np.arange(23) * s
    inside = (inside >= centres[0] - 1e-9) & (inside <= centres[-1] + 1e-9)
    assert inside.sum() >= 10 and not np.isnan(ref[inside]).any()
    # SimpleITK also answers within half a thick slice beyond the end centres, holding the edge
    # value there as we do (clamping); further out it gives the default (NaN)
    answered = ~np.isnan(ref[:, 0, 0])
    assert answered.sum() > inside.sum()
    np.testing.assert_allclose(ours[answered], ref[answered], atol=1e-6)
    assert ours.shape == thin.shape and ours.dtype == np.float32


@pytest.mark.parametrize("kind", INTERPOLATIONS)
def test_edges_take_the_edge_slab_and_constants_stay_constant(kind):
    rng = np.random.default_rng(5)
    thick = rng.normal(size=(2, 4, 3, 3)).astype(np.float32)  # 4 slabs of 3 thin slices
    thin = thick_to_thin(thick, 13, 1.0, 3.0, kind=kind)
    u = thick_positions(13, 1.0, 3.0)
    np.testing.assert_allclose(thin[:, u <= 0], np.repeat(thick[:, :1], (u <= 0).sum(), 1))
    np.testing.assert_allclose(thin[:, u >= 3], np.repeat(thick[:, 3:], (u >= 3).sum(), 1))
    const = np.full((1, 4, 3, 3), 0.375, np.float32)
    np.testing.assert_array_equal(thick_to_thin(const, 13, 1.0, 3.0, kind=kind), 0.375)
    t = thick_to_thin(torch.full((1, 4, 3, 3), -0.625), 13, 1.0, 3.0, kind=kind)
    assert torch.equal(t, torch.full((1, 13, 3, 3), -0.625))


@pytest.mark.parametrize("kind", INTERPOLATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_torch_matches_numpy_and_keeps_type_and_dtype(kind, dtype):
    rng = np.random.default_rng(6)
    thick = rng.normal(size=(2, 3, 8, 4, 2))  # batch and channel dims before (Dk, H, W)
    ref = thick_to_thin(thick, 17, 0.6, 1.8, 1.2, kind=kind)
    assert isinstance(ref, np.ndarray) and ref.dtype == np.float64 and ref.shape == (2, 3, 17, 4, 2)
    got = thick_to_thin(torch.from_numpy(thick).to(dtype), 17, 0.6, 1.8, 1.2, kind=kind)
    assert isinstance(got, torch.Tensor) and got.dtype == dtype
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 5e-3}[dtype]
    np.testing.assert_allclose(got.double().numpy(), ref, atol=tol)
    w = interpolation_weights(thick_positions(17, 0.6, 1.8, 1.2), 8, kind)
    np.testing.assert_allclose(ref[1, 2, :, 3, 1], w @ thick[1, 2, :, 3, 1], atol=1e-12)


def test_bad_input_is_one_clear_data_error():
    thick = np.zeros((1, 4, 3, 3), np.float32)
    with pytest.raises(DataError, match=r"'nearest'.*linear, cubic"):
        interpolation_weights([0.5], 4, "nearest")
    with pytest.raises(DataError, match=r"'nearest'.*linear, cubic"):
        thick_to_thin(thick, 12, 1.0, 3.0, kind="nearest")
    with pytest.raises(DataError, match=r"5 thick slices.*12 thin slices.*give 4"):
        thick_to_thin(np.zeros((1, 5, 3, 3), np.float32), 12, 1.0, 3.0)
    with pytest.raises(DataError, match="floating-point"):
        thick_to_thin(thick.astype(np.int16), 12, 1.0, 3.0)
    with pytest.raises(DataError, match=r"\(\.\.\., Dk, H, W\)"):
        thick_to_thin(np.zeros((4, 3), np.float32), 12, 1.0, 3.0)
    with pytest.raises(DataError, match="thickness: 0.5 mm is thinner"):
        thick_positions(12, 1.0, 0.5)
    with pytest.raises(DataError, match="exceeds"):
        thick_positions(2, 1.0, 3.0)
    with pytest.raises(DataError, match="n_thin"):
        thick_positions(0, 1.0, 3.0)
    with pytest.raises(DataError, match="spacing"):
        thick_positions(12, 1.0, 3.0, -1.0)
    with pytest.raises(DataError, match="positions"):
        interpolation_weights([np.nan], 4)
