"""Converting between :class:`Volume` (``(z, y, x)``) and ``SimpleITK.Image`` (``(x, y, z)``).

``Volume.spacing`` and the columns of ``Volume.direction`` follow the array axes ``(z, y, x)``;
SimpleITK lists them for ``(x, y, z)``. The origin is a physical (LPS) point in both.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import SimpleITK as sitk

from medgen.data.volume import Volume


def sitk_reason(exc: BaseException) -> str:
    """SimpleITK's own reason from one of its exceptions, on one line: the text after the
    "Exception thrown in ...: file.cxx:NN:" location line (``sitk::ERROR:`` stripped)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    reason = [ln for ln in lines if not ln.startswith("Exception thrown in")] or lines
    text = " ".join(reason).replace("sitk::ERROR:", "").strip()
    return text or "unknown reason"


def to_sitk(vol: Volume) -> sitk.Image:
    """A float32 SimpleITK image with ``vol``'s voxels and geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(vol.array, dtype=np.float32))
    image.SetSpacing([float(s) for s in reversed(vol.spacing)])
    image.SetOrigin([float(o) for o in vol.origin])
    direction_xyz = np.asarray(vol.direction, dtype=np.float64)[:, ::-1]
    image.SetDirection(direction_xyz.flatten().tolist())
    return image


def geometry_from_sitk(image: sitk.Image) -> dict:
    """``spacing``, ``origin`` and ``direction`` of a 3D ``image`` in :class:`Volume` order."""
    direction_xyz = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    return {
        "spacing": tuple(float(s) for s in reversed(image.GetSpacing())),
        "origin": tuple(float(o) for o in image.GetOrigin()),
        "direction": direction_xyz[:, ::-1].copy(),  # columns reordered to (z, y, x) axes
    }


def from_sitk(image: sitk.Image, like: Volume) -> Volume:
    """``like`` with voxels and geometry taken from ``image`` (modality, id, meta kept)."""
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    return replace(like, array=array, meta=dict(like.meta), **geometry_from_sitk(image))
