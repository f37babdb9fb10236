"""A subject's voxels (:class:`~medgen.data.cache.load.SubjectVolumes`) -> the arrays of its shard.

z selection first (``z_from``: the inclusive ``z_range``, the extent of mask > 0 slices, or the
extent of image > ``foreground_threshold``), then per ``kind``:

* slices: in-plane ``fit`` (crop to the foreground box of the kept slices, pad square with -1,
  resize to ``size``) or ``crop`` (centre pad/crop to ``size``), LOCAL z-bins over the extent,
  class per slice, ``token = z_bin + n_bins * class_id``;
* volumes: centre pad (-1) / crop to ``shape`` with the box of real data (``valid_box``);
* pairs: in-plane as slices, then simulated thick slices per channel
  (:func:`~medgen.data.slicing.thick.simulate_thick`) or the subject's real thick series
  (:mod:`~medgen.data.cache.thick_series`, in-plane processed exactly like the thin slices);
  ``thick_z`` the thick slice centres; masks by nearest neighbour (thin slice nearest each).

``lesion_voxels`` counts mask > 0 voxels (probability > 0.5) in the in-plane region kept,
before any resize; ``class_from="mask"`` gives class 1 where it reaches ``min_lesion_voxels``.
"""

from __future__ import annotations

import numpy as np

from medgen.data.cache.load import SubjectVolumes
from medgen.data.cache.recipe import CacheRecipe
from medgen.data.cache.thick_series import ThickSeries
from medgen.data.errors import DataError
from medgen.data.slicing.slices import (
    center_pad_crop,
    foreground_box,
    resize_labels,
    resize_stack,
    square_pad,
)
from medgen.data.slicing.thick import simulate_thick, slab_centres
from medgen.data.slicing.zbin import quantize_z
from medgen.data.volume import Volume


def z_extent(vols: SubjectVolumes, recipe: CacheRecipe, where: str) -> tuple[int, int]:
    """The inclusive axial extent ``(z0, z1)`` the recipe selects for this subject."""
    depth = vols.images.shape[1]
    if recipe.z_from == "range":
        z0, z1 = recipe.z_range if recipe.z_range is not None else (0, depth - 1)
        if z1 >= depth:
            raise DataError(
                f"z_range: [{z0}, {z1}] lies outside the {depth} axial slices of {where}"
            )
    else:
        if recipe.z_from == "mask":
            if vols.mask is None:
                raise DataError(f"z_from: 'mask' needs a mask, and {where} has none")
            hit = vols.lesion().any(axis=(1, 2))
        else:
            hit = (vols.images > recipe.foreground_threshold).any(axis=(0, 2, 3))
        rows = np.flatnonzero(hit)
        if rows.size == 0:
            what = "mask > 0" if recipe.z_from == "mask" else "image > foreground_threshold"
            raise DataError(f"z_from: {where} has no slice with {what}")
        z0, z1 = int(rows[0]), int(rows[-1])
    count = z1 - z0 + 1
    if recipe.kind == "slices" and recipe.n_bins > count:
        raise DataError(
            f"n_bins: {recipe.n_bins} bins over the {count} slices of {where} (z [{z0}, {z1}])"
        )
    return z0, z1


def _class_ids(
    lesion_voxels: np.ndarray, recipe: CacheRecipe, has_mask: bool, source_class, where: str
) -> np.ndarray:
    if recipe.class_from == "none":
        return np.zeros_like(lesion_voxels)
    if recipe.class_from == "mask":
        if not has_mask:
            raise DataError(f"class_from: 'mask' needs a mask, and {where} has none")
        return (lesion_voxels >= recipe.min_lesion_voxels).astype(np.int64)
    if source_class is None:
        raise DataError(f"class_from: 'source' needs the table's class column; {where} has none")
    return np.full_like(lesion_voxels, int(source_class))


def _fit_box(images: np.ndarray, recipe: CacheRecipe, where: str, z0: int, z1: int):
    """``(rows, cols)`` slices of the foreground box of the kept thin slices (``fit``)."""
    try:
        return foreground_box(images, recipe.foreground_threshold)
    except DataError:
        raise DataError(
            f"in_plane: {where} has no voxel above foreground_threshold "
            f"{recipe.foreground_threshold:g} in z [{z0}, {z1}]: cannot fit"
        ) from None


def _plane_images(stack: np.ndarray, recipe: CacheRecipe, box) -> np.ndarray:
    """``stack`` (M, N, H, W) in-plane processed: centre pad/crop, or crop to ``box``, pad
    square with -1 and resize; float32 in [-1, 1]."""
    m, n = stack.shape[:2]
    size = recipe.size
    if recipe.in_plane == "crop":
        out, _ = center_pad_crop(stack, (size, size), -1.0)
    else:
        rows, cols = box
        crop = stack[:, :, rows, cols]
        flat = square_pad(crop.reshape(m * n, *crop.shape[-2:]), -1.0)
        out = resize_stack(flat, size).reshape(m, n, size, size)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def in_plane(vols: SubjectVolumes, z0: int, z1: int, recipe: CacheRecipe, where: str):
    """The kept slices in-plane processed: ``(images (M, N, s, s), mask (N, s, s) uint8 or None,
    lesion_voxels (N,) int64, in-plane spacing (sy, sx), box)``; ``box`` (the ``fit`` crop, None
    for ``crop``) lets :func:`_plane_images` treat another stack on this grid the same way."""
    images = vols.images[:, z0 : z1 + 1]
    n = images.shape[1]
    lesion = vols.lesion()[z0 : z1 + 1] if vols.mask is not None else None
    mask = vols.mask[z0 : z1 + 1] if vols.mask is not None else None
    size = recipe.size
    sy, sx = vols.spacing[1:]
    box = None
    if recipe.in_plane == "crop":
        if mask is not None:
            lesion, _ = center_pad_crop(lesion, (size, size), False)
            mask, _ = center_pad_crop(mask, (size, size), 0)
            mask = mask > 0.5 if vols.mask_kind == "probability" else mask
        spacing = (sy, sx)
    else:
        box = rows, cols = _fit_box(images, recipe, where, z0, z1)
        side = max(images[:, :, rows, cols].shape[-2:])
        if mask is not None:
            lesion, square = lesion[:, rows, cols], square_pad(mask[:, rows, cols], 0)
            if vols.mask_kind == "probability":
                mask = resize_stack(square, size) > 0.5
            else:
                mask = resize_labels(square, size)
        spacing = (sy * side / size, sx * side / size)
    voxels = (
        lesion.sum(axis=(1, 2)).astype(np.int64) if lesion is not None else np.zeros(n, np.int64)
    )
    mask = mask.astype(np.uint8) if mask is not None else None
    return (
        _plane_images(images, recipe, box),
        mask,
        voxels,
        (float(spacing[0]), float(spacing[1])),
        box,
    )


def slice_arrays(vols: SubjectVolumes, recipe: CacheRecipe, source_class, where: str) -> tuple:
    """``(arrays, spacing)`` of a slices shard: image (N, M, s, s), mask (N, 1, s, s), z_index,
    z_bin, class_id, token, lesion_voxels (N,)."""
    z0, z1 = z_extent(vols, recipe, where)
    images, mask, voxels, (sy, sx), _ = in_plane(vols, z0, z1, recipe, where)
    z_index = np.arange(z0, z1 + 1, dtype=np.int64)
    z_bin = np.array([quantize_z(int(z), (z0, z1), recipe.n_bins) for z in z_index], np.int64)
    class_id = _class_ids(voxels, recipe, mask is not None, source_class, where)
    arrays = {"image": np.ascontiguousarray(images.transpose(1, 0, 2, 3))}
    if mask is not None:
        arrays["mask"] = mask[:, None]
    arrays.update(
        z_index=z_index,
        z_bin=z_bin,
        class_id=class_id,
        token=z_bin + recipe.n_bins * class_id,
        lesion_voxels=voxels,
    )
    return arrays, (float(vols.spacing[0]), sy, sx)


def volume_arrays(vols: SubjectVolumes, recipe: CacheRecipe, source_class, where: str) -> tuple:
    """``(arrays, spacing)`` of a volumes shard: image (1, M, D, H, W), mask (1, 1, D, H, W),
    valid_box (1, 6), class_id, token, lesion_voxels (1,)."""
    z0, z1 = z_extent(vols, recipe, where)
    image, box = center_pad_crop(vols.images[:, z0 : z1 + 1], recipe.shape, -1.0)
    arrays = {"image": image[None]}
    voxels = np.zeros(1, np.int64)
    if vols.mask is not None:
        lesion = vols.lesion()[z0 : z1 + 1]
        labels = lesion if vols.mask_kind == "probability" else vols.mask[z0 : z1 + 1]
        stored, _ = center_pad_crop(labels.astype(np.uint8), recipe.shape, 0)
        arrays["mask"] = stored[None, None]
        voxels[0] = int(center_pad_crop(lesion, recipe.shape, False)[0].sum())
    class_id = _class_ids(voxels, recipe, vols.mask is not None, source_class, where)
    arrays.update(
        valid_box=np.array([box], dtype=np.int64),
        class_id=class_id,
        token=class_id.copy(),
        lesion_voxels=voxels,
    )
    return arrays, tuple(float(s) for s in vols.spacing)


def _kept_thick(thick: ThickSeries, z0: int, z1: int, s: float, where: str):
    """The real thick slices whose centres lie in the kept thin slices ``[z0, z1]``:
    ``(array (Dk, Y, X), centres (Dk,) relative to thin slice z0)``."""
    centres = thick.centres - z0 * s
    keep = (centres >= -s / 2) & (centres <= (z1 - z0) * s + s / 2)
    if not keep.any():
        raise DataError(
            f"{where}: no slice of its thick series lies in the kept thin slices z [{z0}, {z1}]"
        )
    return thick.array[keep], centres[keep]


def pair_arrays(
    vols: SubjectVolumes,
    recipe: CacheRecipe,
    source_class,
    where: str,
    thick: ThickSeries | None = None,
) -> tuple:
    """``(arrays, spacing)`` of a pairs shard: thin (1, M, D, s, s), thick (1, M, Dk, s, s),
    thick_z float64 (1, Dk) (thick slice centres, mm from thin slice 0), thin_label /
    thick_label (1, 1, ., s, s) uint8 with a mask, class_id, token (1,).

    ``thick`` None: simulated slabs (``thickness``, ``thick_spacing``, ``profile``); else the
    subject's real thick series (one modality), in-plane processed like the thin slices."""
    z0, z1 = z_extent(vols, recipe, where)
    images, mask, voxels, (sy, sx), box = in_plane(vols, z0, z1, recipe, where)
    s = float(vols.spacing[0])
    spacing = (s, sy, sx)

    def volume(array: np.ndarray) -> Volume:
        """One channel (or the mask) as a Volume on the thin grid."""
        return Volume(array, spacing, (0.0, 0.0, 0.0), np.eye(3), id=where)

    if thick is None:
        stack = np.stack(
            [
                simulate_thick(
                    volume(c), recipe.thickness, recipe.thick_spacing, recipe.profile
                ).array
                for c in images
            ]
        )
        step = recipe.thickness if recipe.thick_spacing is None else recipe.thick_spacing
        centres = slab_centres(images.shape[1], s, recipe.thickness, step)
    else:
        array, centres = _kept_thick(thick, z0, z1, s, where)
        stack = _plane_images(array[None], recipe, box)
    arrays = {
        "thin": images[None],
        "thick": stack[None].astype(np.float32),
        "thick_z": centres[None].astype(np.float64),
    }
    total = voxels.sum(keepdims=True)
    if mask is not None:
        arrays["thin_label"] = mask[None, None]
        nearest = np.clip(np.ceil(centres / s - 0.5 - 1e-9), 0, len(mask) - 1).astype(np.int64)
        arrays["thick_label"] = np.ascontiguousarray(mask[nearest])[None, None]
    class_id = _class_ids(total, recipe, mask is not None, source_class, where)
    arrays.update(class_id=class_id, token=class_id.copy(), lesion_voxels=total)
    return arrays, spacing


BUILDERS = {"slices": slice_arrays, "volumes": volume_arrays, "pairs": pair_arrays}
