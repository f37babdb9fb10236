"""A subject's REAL thick series (the table's ``thick`` column) brought into its thin frame.

Both series come from one acquisition (one frame of reference). The thin image is read again
(``orientation``, then ``spacing`` resampling, as :func:`~medgen.data.cache.load.load_subject`
does) for its grid and intensity scale. The thick series is read with its own geometry and
brought to ``orientation``; a series stored in reverse slice order is flipped. Then:

* its slice axis must be parallel to the thin one (cosine of the axis-0 directions >= 0.999),
  else a one-line DataError naming the subject and file;
* thick slice ``k``'s centre ``z_k`` along the thin slice axis, in mm relative to thin slice
  0's centre, is where its plane crosses the thin slice axis through the centre of the thin
  in-plane field of view (:func:`thick_centres`; for parallel series the projection of the
  slice's origin); the ``z_k`` must increase and at least one must lie inside the thin
  volume's extent ``[-s/2, (n - 1) s + s/2]``;
* every thick slice is resampled (SimpleITK, linear) onto the thin in-plane grid placed at
  ``z_k``: the same in-plane voxels as the thin image, whatever the thick series' in-plane
  field of view, spacing or direction; the slice axis keeps the thick series' own slices.
  Points outside the thick series take its minimum value (air, for CT);
* intensities: the recipe's CT ``window``, else the THIN image's ``percentiles`` values (so thin
  and thick share one intensity scale).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk

from medgen.data.cache.recipe import CacheRecipe
from medgen.data.cache.sources import Subject
from medgen.data.errors import DataError
from medgen.data.intensity import to_signed_unit, window
from medgen.data.orientation import to_canonical
from medgen.data.read import read_volume
from medgen.data.resample import resample
from medgen.data.sitk_image import to_sitk
from medgen.data.volume import Volume

MIN_COSINE = 0.999


@dataclass(frozen=True)
class ThickSeries:
    """A real thick series on the thin in-plane grid: ``array`` float32 ``(Dk, Y, X)`` in
    [-1, 1] and ``centres`` float64 ``(Dk,)``, mm along the thin slice axis from thin slice 0."""

    array: np.ndarray
    centres: np.ndarray


def _read(path, orientation: str) -> Volume:
    vol = read_volume(path)
    return to_canonical(vol, orientation) if orientation else vol


def _scaler(thin: Volume, recipe: CacheRecipe, where: str):
    """The thin image's intensity map, as a function of raw values."""
    if recipe.window:
        return lambda a: window(a, preset=recipe.window)
    lo, hi = np.percentile(np.asarray(thin.array, np.float32), recipe.percentiles)
    lo, hi = np.float32(lo), np.float32(hi)
    if hi <= lo:
        raise DataError(f"{where}: cannot scale intensities (constant thin image)")
    return lambda a: to_signed_unit(np.clip((np.asarray(a, np.float32) - lo) / (hi - lo), 0, 1))


def _slice_first(vol: Volume, d: np.ndarray) -> Volume:
    """``vol`` with its slice order flipped when its slice axis runs against ``d``."""
    direction = np.asarray(vol.direction, dtype=np.float64)
    if float(direction[:, 0] @ d) >= 0:
        return vol
    last = np.asarray(vol.origin) + direction[:, 0] * vol.spacing[0] * (vol.shape[0] - 1)
    flipped = direction.copy()
    flipped[:, 0] *= -1
    return replace(
        vol, array=vol.array[::-1].copy(), origin=tuple(float(v) for v in last), direction=flipped
    )


def thick_centres(thick: Volume, thin: Volume) -> np.ndarray:
    """``z_k`` of the module docstring: where each thick slice plane crosses the thin slice
    axis through the centre of the thin in-plane field of view, in mm from thin slice 0's
    centre (float64 ``(Dk,)``). For parallel slices this is the plain projection of the slice
    origin; for a slightly tilted series it is the position at the thin image's centre."""
    dk = np.asarray(thick.direction, dtype=np.float64)
    normal = np.cross(dk[:, 1], dk[:, 2])
    normal *= np.sign(normal @ dk[:, 0]) / np.linalg.norm(normal)
    planes = np.asarray(thick.origin) + np.outer(
        np.arange(thick.shape[0]) * thick.spacing[0], dk[:, 0]
    )
    dt = np.asarray(thin.direction, dtype=np.float64)
    half = (np.asarray(thin.shape[1:], dtype=np.float64) - 1) / 2 * np.asarray(thin.spacing[1:])
    centre = np.asarray(thin.origin) + dt[:, 1:] @ half
    return (planes - centre) @ normal / float(dt[:, 0] @ normal)


def _on_thin_plane(thick: Volume, thin: Volume, centres: np.ndarray) -> np.ndarray:
    """Every thick slice resampled onto the thin in-plane grid placed at its centre."""
    image = to_sitk(thick)
    direction = np.asarray(thin.direction, dtype=np.float64)
    size = [int(thin.shape[2]), int(thin.shape[1]), 1]
    spacing = [float(thin.spacing[2]), float(thin.spacing[1]), float(thin.spacing[0])]
    fill = float(np.min(thick.array))
    out = np.empty((len(centres), *thin.shape[1:]), dtype=np.float32)
    for k, z in enumerate(centres):
        origin = np.asarray(thin.origin, dtype=np.float64) + direction[:, 0] * z
        plane = sitk.Resample(
            image,
            size,
            sitk.Transform(),
            sitk.sitkLinear,
            origin.tolist(),
            spacing,
            direction[:, ::-1].flatten().tolist(),
            fill,
            sitk.sitkFloat32,
        )
        out[k] = sitk.GetArrayFromImage(plane)[0]
    return out


def load_thick(subject: Subject, modality: str, recipe: CacheRecipe) -> ThickSeries:
    """``subject.thick`` in the frame of its ``modality`` image (see the module docstring)."""
    where = f"{subject.where}: subject {subject.id!r}: {subject.thick}"
    thin = _read(subject.images[modality], recipe.orientation)
    if recipe.spacing is not None:
        thin = resample(thin, recipe.spacing)
    d = np.asarray(thin.direction, dtype=np.float64)[:, 0]
    thick = _read(subject.thick, recipe.orientation)
    dk = np.asarray(thick.direction, dtype=np.float64)[:, 0]
    cosine = abs(float(dk @ d))
    if cosine < MIN_COSINE:
        raise DataError(
            f"{where}: thick slice direction is not parallel to the thin image's "
            f"(cosine {cosine:.5f} < {MIN_COSINE}); give a series of the same acquisition"
        )
    thick = _slice_first(thick, d)
    centres = thick_centres(thick, thin)
    if thick.shape[0] > 1 and not np.all(np.diff(centres) > 0):
        raise DataError(f"{where}: thick slice positions do not increase along the thin axis")
    s, n = float(thin.spacing[0]), thin.shape[0]
    inside = (centres >= -s / 2) & (centres <= (n - 1) * s + s / 2)
    if not inside.any():
        raise DataError(
            f"{where}: no thick slice lies inside the thin image's extent "
            f"[{-s / 2:g}, {(n - 1) * s + s / 2:g}] mm (thick centres {centres[0]:g} .. "
            f"{centres[-1]:g} mm); is it the same subject and frame of reference?"
        )
    array = _on_thin_plane(thick, thin, centres)
    return ThickSeries(_scaler(thin, recipe, where)(array).astype(np.float32), centres)
