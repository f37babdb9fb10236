"""A :class:`~medgen.data.cache.sources.Subject` -> its voxels on one grid, ready to cut.

Order of operations, per subject: read every modality and the mask (:func:`read_volume`), bring
each to ``orientation`` (before anything else), check that all share one grid, check the mask
values against ``labels``, resample to ``spacing`` (images linear; label masks nearest;
probability maps linear), then scale every image to [-1, 1] (CT ``window`` preset, else MR
percentile scaling).

Grids agree when the shapes are equal, spacings within a relative 1e-4, origins within 1e-3 mm
times the largest spacing and direction cosines within 1e-4.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medgen.data.cache.recipe import CacheRecipe
from medgen.data.cache.sources import Subject
from medgen.data.errors import DataError
from medgen.data.intensity import percentile_scale, window
from medgen.data.orientation import to_canonical
from medgen.data.read import read_volume
from medgen.data.resample import resample
from medgen.data.volume import Volume


@dataclass(frozen=True)
class SubjectVolumes:
    """A subject's voxels on one grid: ``images`` float32 ``(M, Z, Y, X)`` in [-1, 1];
    ``mask`` ``(Z, Y, X)`` uint8 labels or float32 probabilities (``mask_kind``), or None."""

    images: np.ndarray
    mask: np.ndarray | None
    mask_kind: str
    spacing: tuple[float, float, float]

    def lesion(self) -> np.ndarray:
        """Boolean ``(Z, Y, X)``: label > 0, or probability > 0.5."""
        if self.mask is None:
            raise ValueError("no mask")
        return self.mask > 0.5 if self.mask_kind == "probability" else self.mask > 0


def grid_difference(a: Volume, b: Volume) -> str:
    """ "" when ``a`` and ``b`` share a grid, else what differs (see the module docstring)."""
    if a.shape != b.shape:
        return f"shape {list(a.shape)} vs {list(b.shape)}"
    sa, sb = np.asarray(a.spacing), np.asarray(b.spacing)
    if not np.allclose(sa, sb, rtol=1e-4, atol=0):
        return f"spacing {sa.round(6).tolist()} vs {sb.round(6).tolist()} mm"
    tol = 1e-3 * float(max(sa.max(), sb.max()))
    oa, ob = np.asarray(a.origin), np.asarray(b.origin)
    if np.abs(oa - ob).max() > tol:
        return f"origin {oa.round(4).tolist()} vs {ob.round(4).tolist()} mm"
    da, db = np.asarray(a.direction), np.asarray(b.direction)
    if np.abs(da - db).max() > 1e-4:
        return f"direction {da.round(5).tolist()} vs {db.round(5).tolist()}"
    return ""


def _check_grid(a: Volume, a_path: Path, b: Volume, b_path: Path) -> None:
    problem = grid_difference(a, b)
    if problem:
        raise DataError(f"{b_path} does not lie on the grid of {a_path}: {problem}")


def check_labels(mask: Volume, path: Path, labels: tuple[int, ...]) -> None:
    """Every mask value must be one of ``labels``; the first other value names the file."""
    values = np.unique(mask.array)
    bad = values[~np.isin(values, np.asarray(labels, dtype=np.float64))]
    if bad.size:
        raise DataError(
            f"{path}: mask value {bad[0]:g} is not one of the labels {list(labels)} "
            f"({bad.size} other value{'s' if bad.size > 1 else ''} found)"
        )


def _read(path: Path, orientation: str, volume_index: int | None = None) -> Volume:
    vol = read_volume(path, volume_index=volume_index)
    return to_canonical(vol, orientation) if orientation else vol


def _scale(array: np.ndarray, recipe: CacheRecipe, path: Path) -> np.ndarray:
    try:
        if recipe.window:
            return window(array, preset=recipe.window)
        return percentile_scale(array, *recipe.percentiles)
    except ValueError as exc:
        raise DataError(f"{path}: cannot scale intensities ({exc})") from None


def load_subject(subject: Subject, modalities: tuple[str, ...], recipe: CacheRecipe):
    """Read, reorient, check, resample and scale ``subject``: a :class:`SubjectVolumes`."""
    paths = [subject.images[m] for m in modalities]
    vols = [
        _read(p, recipe.orientation, subject.volumes.get(m))
        for p, m in zip(paths, modalities, strict=True)
    ]
    for vol, path in zip(vols[1:], paths[1:], strict=True):
        _check_grid(vols[0], paths[0], vol, path)
    mask = None
    if subject.mask is not None:
        mask = _read(subject.mask, recipe.orientation)
        if subject.mask_kind == "probability":  # the template's uint8 map: 255 = 1.0
            mask = dataclasses.replace(mask, array=mask.array / np.float32(255.0))
        else:
            check_labels(mask, subject.mask, recipe.labels)
        _check_grid(vols[0], paths[0], mask, subject.mask)
    if recipe.spacing is not None:
        vols = [resample(v, recipe.spacing) for v in vols]
        if mask is not None:
            how = "linear" if subject.mask_kind == "probability" else "nearest"
            mask = resample(mask, recipe.spacing, interpolation=how)
    images = np.stack([_scale(v.array, recipe, p) for v, p in zip(vols, paths, strict=True)])
    if mask is None:
        mask_array = None
    elif subject.mask_kind == "probability":
        mask_array = np.clip(mask.array, 0.0, 1.0).astype(np.float32)
    else:
        mask_array = np.rint(mask.array).astype(np.uint8)
    return SubjectVolumes(images, mask_array, subject.mask_kind, vols[0].spacing)
