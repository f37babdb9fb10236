"""The thick stack on the thin grid: geometry-aware linear and cubic interpolation along the
slice axis.

The geometry is :mod:`~medgen.data.slicing.thick`'s (in mm, relative to the centre of thin
slice 0): thin slice ``i`` has centre ``i * s``, thick slice ``k`` has centre
``c_k = c_0 + k * S`` with ``c_0 = T/2 - s/2``. Thin slice ``i`` therefore sits at the
fractional thick index ``u_i = (i * s - c_0) / S`` (:func:`thick_positions`). Positions before
the first or after the last slab centre are clamped to it: those thin slices take the edge
value, nothing is extrapolated.

Interpolation is a ``(n_thin, n_thick)`` float64 weight matrix (:func:`interpolation_weights`)
applied along the slice axis (:func:`thick_to_thin`):

* ``"linear"``: tent weights (what SimpleITK's ``sitkLinear`` and ``np.interp`` give);
* ``"cubic"``: Keys cubic convolution (R. Keys, IEEE TASSP 1981) with parameter ``a``
  (``-0.5``: Catmull-Rom, exact for quadratics; PyTorch's ``bicubic`` uses ``-0.75``); taps
  outside ``[0, n_thick)`` replicate the edge sample.

A real thick series stores its own slice centres (mm from thin slice 0): thin slice ``i`` then
sits at ``np.interp(i * s, centres, arange(Dk))`` (:func:`positions_from_centres`) and
:func:`centres_to_thin` applies the same weights; cubic needs evenly spaced centres.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from medgen.data.errors import DataError
from medgen.data.slicing.thick import slab_centres

INTERPOLATIONS = ("linear", "cubic")
UNIFORM_ATOL = 1e-6  # mm: centres evenly spaced within this are a uniform grid


def _check_geometry(n_thin, thin_spacing, thickness, spacing) -> float:
    """Validate the slice geometry like :func:`~medgen.data.slicing.thick.simulate_thick`;
    return the thick spacing (``thickness`` when ``spacing`` is None)."""
    if isinstance(n_thin, bool) or not isinstance(n_thin, (int, np.integer)) or n_thin < 1:
        raise DataError(f"n_thin: expected an integer >= 1, got {n_thin!r}")
    for key, value in (("thin_spacing", thin_spacing), ("thickness", thickness)):
        if not (isinstance(value, (int, float, np.number)) and math.isfinite(value) and value > 0):
            raise DataError(f"{key}: expected a positive number of mm, got {value!r}")
    spacing = thickness if spacing is None else spacing
    if not (
        isinstance(spacing, (int, float, np.number)) and math.isfinite(spacing) and spacing > 0
    ):
        raise DataError(f"spacing: expected a positive number of mm or None, got {spacing!r}")
    if thickness < thin_spacing - 1e-9:
        raise DataError(
            f"thickness: {thickness} mm is thinner than the {thin_spacing} mm thin slices"
        )
    return float(spacing)


def thick_positions(
    n_thin: int, thin_spacing: float, thickness: float, spacing: float | None = None
) -> np.ndarray:
    """The fractional thick-slice index ``u_i = (i * s - c_0) / S`` of every thin slice centre
    (float64, ``(n_thin,)``, not clamped), on the grid of
    :func:`~medgen.data.slicing.thick.simulate_thick` (``spacing`` None = ``thickness``)."""
    spacing = _check_geometry(n_thin, thin_spacing, thickness, spacing)
    c0 = slab_centres(n_thin, float(thin_spacing), float(thickness), spacing)[0]
    return (float(thin_spacing) * np.arange(n_thin, dtype=np.float64) - c0) / spacing


def _keys(x: np.ndarray, a: float) -> np.ndarray:
    """The Keys cubic convolution kernel ``W(x)`` (support ``|x| < 2``)."""
    x = np.abs(x)
    inner = ((a + 2) * x - (a + 3)) * x * x + 1
    outer = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, inner, np.where(x < 2, outer, 0.0))


def interpolation_weights(positions, n_in: int, kind: str = "linear", a: float = -0.5):
    """The ``(n_out, n_in)`` float64 matrix that interpolates ``n_in`` samples at the fractional
    ``positions`` (clamped to ``[0, n_in - 1]`` first); rows sum to 1. ``kind`` is
    ``"linear"`` (tent) or ``"cubic"`` (Keys, parameter ``a``, edge samples replicated)."""
    if kind not in INTERPOLATIONS:
        raise DataError(f"kind: unknown interpolation {kind!r}; known: {', '.join(INTERPOLATIONS)}")
    if isinstance(n_in, bool) or not isinstance(n_in, (int, np.integer)) or n_in < 1:
        raise DataError(f"n_in: expected an integer >= 1, got {n_in!r}")
    u = np.asarray(positions, dtype=np.float64).reshape(-1)
    if not np.isfinite(u).all():
        raise DataError("positions: expected finite fractional indices, got NaN or inf")
    w = np.zeros((u.size, n_in), dtype=np.float64)
    if n_in == 1:
        w[:, 0] = 1.0
        return w
    u = np.clip(u, 0.0, n_in - 1)
    rows = np.arange(u.size)
    if kind == "linear":
        i0 = np.minimum(np.floor(u).astype(np.int64), n_in - 2)
        t = u - i0
        w[rows, i0] = 1.0 - t
        w[rows, i0 + 1] += t
        return w
    i0 = np.floor(u).astype(np.int64)
    t = u - i0
    for offset in (-1, 0, 1, 2):
        taps = np.clip(i0 + offset, 0, n_in - 1)
        np.add.at(w, (rows, taps), _keys(t - offset, a))
    return w


def thick_to_thin(
    thick,
    n_thin: int,
    thin_spacing: float,
    thickness: float,
    spacing: float | None = None,
    kind: str = "linear",
):
    """``thick`` ``(..., Dk, H, W)`` (numpy array or torch tensor, slice axis third from last)
    interpolated onto the ``n_thin`` thin slices of the grid it was simulated from: the same
    type and dtype, ``(..., n_thin, H, W)``. numpy computes in float64; torch in float64 for
    float64 input, else float32 (on the input's device). Thin slices beyond the first/last slab
    centre take the edge slab's value."""
    spacing = _check_geometry(n_thin, thin_spacing, thickness, spacing)
    _check_thick(thick)
    n_thick = len(slab_centres(n_thin, float(thin_spacing), float(thickness), spacing))
    if thick.shape[-3] != n_thick:
        raise DataError(
            f"thick: {thick.shape[-3]} thick slices, but {n_thin} thin slices of {thin_spacing} mm "
            f"with thickness {thickness} mm and spacing {spacing} mm give {n_thick}"
        )
    u = thick_positions(n_thin, thin_spacing, thickness, spacing)
    return _apply(thick, interpolation_weights(u, n_thick, kind))


def _check_thick(thick):
    """``thick`` must be a floating numpy array or torch tensor ``(..., Dk, H, W)``."""
    is_torch = isinstance(thick, torch.Tensor)
    if not is_torch and not isinstance(thick, np.ndarray):
        raise DataError(
            f"thick: expected a numpy array or torch tensor, got {type(thick).__name__}"
        )
    if thick.ndim < 3:
        raise DataError(f"thick: expected (..., Dk, H, W), got shape {tuple(thick.shape)}")
    floating = thick.is_floating_point() if is_torch else np.issubdtype(thick.dtype, np.floating)
    if not floating:
        raise DataError(f"thick: expected a floating-point array, got {thick.dtype}")


def _apply(thick, w: np.ndarray):
    """The ``(n_thin, Dk)`` weights ``w`` applied along axis -3 of ``thick``."""
    n_thin, n_thick = w.shape
    *lead, _, h, width = thick.shape
    if not isinstance(thick, torch.Tensor):  # (n_thin, Dk) @ (..., Dk, H*W): one BLAS matmul
        flat = thick.astype(np.float64, copy=False).reshape(*lead, n_thick, h * width)
        return np.matmul(w, flat).reshape(*lead, n_thin, h, width).astype(thick.dtype, copy=False)
    compute = torch.float64 if thick.dtype == torch.float64 else torch.float32
    wt = torch.from_numpy(w).to(device=thick.device, dtype=compute)
    flat = thick.to(compute).reshape(*lead, n_thick, h * width)
    return torch.matmul(wt, flat).reshape(*lead, n_thin, h, width).to(thick.dtype)


def uniform_step(centres, atol: float = UNIFORM_ATOL) -> float | None:
    """The spacing of ``centres`` (mm) when they are evenly spaced within ``atol`` mm (one
    centre: None too), else None."""
    c = np.asarray(centres, dtype=np.float64).reshape(-1)
    if c.size < 2:
        return None
    steps = np.diff(c)
    return float(steps.mean()) if np.abs(steps - steps.mean()).max() <= atol else None


def positions_from_centres(n_thin: int, thin_spacing: float, centres) -> np.ndarray:
    """The fractional thick index of every thin slice centre ``i * s`` given the thick slice
    ``centres`` (mm from thin slice 0, strictly increasing): piecewise linear between centres,
    held at the first/last (``np.interp(i * s, centres, arange(Dk))``), float64 ``(n_thin,)``."""
    _check_geometry(n_thin, thin_spacing, thin_spacing, None)
    c = np.asarray(centres, dtype=np.float64).reshape(-1)
    if c.size < 1 or not np.isfinite(c).all():
        raise DataError(f"centres: expected >= 1 finite positions in mm, got {c.tolist()}")
    if c.size > 1 and not np.all(np.diff(c) > 0):
        raise DataError(f"centres: expected strictly increasing positions, got {c.tolist()}")
    x = float(thin_spacing) * np.arange(n_thin, dtype=np.float64)
    return np.interp(x, c, np.arange(c.size, dtype=np.float64))


def centres_to_thin(thick, n_thin: int, thin_spacing: float, centres, kind: str = "linear"):
    """``thick`` ``(..., Dk, H, W)`` whose slices sit at ``centres`` (mm from thin slice 0)
    interpolated onto ``n_thin`` thin slices of ``thin_spacing`` mm; types as
    :func:`thick_to_thin`. ``"linear"`` is ``np.interp`` along the slice axis (edge values
    held); ``"cubic"`` (Keys) needs evenly spaced centres (:func:`uniform_step`) and then
    equals :func:`thick_to_thin`'s on the grid ``c_k = centres[0] + k * step``."""
    _check_thick(thick)
    c = np.asarray(centres, dtype=np.float64).reshape(-1)
    if thick.shape[-3] != c.size:
        raise DataError(f"thick: {thick.shape[-3]} thick slices, but {c.size} centres")
    u = positions_from_centres(n_thin, thin_spacing, c)
    if kind == "cubic" and c.size > 1 and uniform_step(c) is None:
        raise DataError(
            "kind: 'cubic' needs evenly spaced thick centres (within "
            f"{UNIFORM_ATOL:g} mm); these are not: use 'linear'"
        )
    return _apply(thick, interpolation_weights(u, c.size, kind))
