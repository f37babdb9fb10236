"""Volumes -> 2D training slices: z_range filter, LOCAL z-binning, crop, resize, tokens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medgen.data.errors import DataError
from medgen.data.slicing.zbin import class_token, quantize_z
from medgen.data.volume import Volume


@dataclass
class SliceSet:
    """Axial slices with their conditioning.

    ``images``: float32 ``(N, 1, H, W)`` in [-1, 1]; ``masks``: uint8 ``(N, 1, H, W)`` in {0, 1};
    ``z_index``/``z_bin``/``class_id``/``token``: int64 ``(N,)``; ``volume_id``: the
    pseudonymous id of each slice's source volume.
    """

    images: np.ndarray
    masks: np.ndarray
    z_index: np.ndarray
    z_bin: np.ndarray
    class_id: np.ndarray
    token: np.ndarray
    volume_id: np.ndarray

    ARRAYS = ("images", "masks", "z_index", "z_bin", "class_id", "token", "volume_id")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def counts_per_bin(self, n_bins: int) -> list[int]:
        """Number of slices in each of the ``n_bins`` z-bins."""
        return np.bincount(self.z_bin, minlength=n_bins).astype(int).tolist()

    @classmethod
    def concatenate(cls, parts: list[SliceSet]) -> SliceSet:
        """One SliceSet holding the slices of ``parts`` in order."""
        if not parts:
            raise ValueError("no slice sets to concatenate")
        return cls(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in cls.ARRAYS})


def foreground_box(array: np.ndarray, threshold: float) -> tuple[slice, slice]:
    """Bounding box (rows, cols) of ``array > threshold`` over all slices of a (..., y, x) stack."""
    fg = (array > threshold).reshape(-1, *array.shape[-2:]).any(axis=0)
    rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
    if rows.size == 0:
        raise DataError("no foreground voxel above the threshold: cannot crop")
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def square_pad(stack: np.ndarray, value: float) -> np.ndarray:
    """Pad a (N, H, W) stack symmetrically to a square with ``value``."""
    n, h, w = stack.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    out = np.full((n, side, side), value, dtype=stack.dtype)
    out[:, top : top + h, left : left + w] = stack
    return out


def resize_stack(stack: np.ndarray, size: int) -> np.ndarray:
    """Resize a (N, H, W) float stack to (N, size, size), antialiased bilinear."""
    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[:, 0].numpy()


def resize_labels(stack: np.ndarray, size: int) -> np.ndarray:
    """Resize a (N, H, W) integer label stack to (N, size, size) by nearest neighbour
    (``nearest-exact``: pixel centres, no shift), keeping the dtype and every value."""
    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    out = F.interpolate(t, size=(size, size), mode="nearest-exact")
    return out[:, 0].numpy().astype(stack.dtype)


def center_pad_crop(array: np.ndarray, shape, value: float) -> tuple[np.ndarray, list[int]]:
    """Centre-pad (with ``value``) or centre-crop the trailing ``len(shape)`` dims to ``shape``.

    Returns the new array and the box ``[start0, stop0, start1, stop1, ...)`` of the input's
    data inside it (per dim: where padded, the original extent; where cropped, all of it).
    """
    lead = array.shape[: array.ndim - len(shape)]
    out = np.full((*lead, *shape), value, dtype=array.dtype)
    src, dst, box = [slice(None)] * len(lead), [slice(None)] * len(lead), []
    for n, s in zip(array.shape[len(lead) :], shape, strict=True):
        if n >= s:  # crop
            start = (n - s) // 2
            src.append(slice(start, start + s))
            dst.append(slice(0, s))
            box += [0, s]
        else:  # pad
            start = (s - n) // 2
            src.append(slice(0, n))
            dst.append(slice(start, start + n))
            box += [start, start + n]
    out[tuple(dst)] = array[tuple(src)]
    return out, box


def axial_slices(
    image: Volume,
    z_range: tuple[int, int],
    n_bins: int,
    size: int,
    mask_probability: Volume | None = None,
    class_id: int = 0,
    background: float = -1.0,
) -> SliceSet:
    """Cut ``image`` (already scaled to [-1, 1]) into axial slices of ``size`` x ``size``.

    Slices outside ``z_range`` (inclusive, array index along axis 0) are dropped FIRST; the
    rest are binned locally with :func:`quantize_z`. Each slice stack is cropped to the
    foreground box of the kept slices, padded to a square with ``background`` and resized.
    ``mask_probability`` (values in [0, 1], same grid) is resized as a probability and then
    thresholded at 0.5, which keeps thin structures better than nearest-neighbour resizing.
    """
    z_min, z_max = z_range
    if not 0 <= z_min <= z_max < image.shape[0]:
        raise DataError(
            f"volume {image.id}: z_range {z_range} outside its {image.shape[0]} axial slices"
        )
    if mask_probability is not None and mask_probability.shape != image.shape:
        raise DataError(
            f"volume {image.id}: mask shape {mask_probability.shape} != image shape {image.shape}"
        )
    kept = np.arange(z_min, z_max + 1)
    stack = image.array[kept]
    rows, cols = foreground_box(stack, background + 1e-3)
    images = resize_stack(square_pad(stack[:, rows, cols], background), size)
    if mask_probability is not None:
        prob = mask_probability.array[kept][:, rows, cols]
        if prob.min() < 0.0 or prob.max() > 1.0:
            raise DataError(f"volume {mask_probability.id}: mask probabilities outside [0, 1]")
        masks = resize_stack(square_pad(prob, 0.0), size) > 0.5
    else:
        masks = np.zeros_like(images, dtype=bool)
    z_bin = np.array([quantize_z(int(z), z_range, n_bins) for z in kept], dtype=np.int64)
    return SliceSet(
        images=np.clip(images, -1.0, 1.0)[:, None].astype(np.float32),
        masks=masks[:, None].astype(np.uint8),
        z_index=kept.astype(np.int64),
        z_bin=z_bin,
        class_id=np.full(kept.shape, class_id, dtype=np.int64),
        token=np.array([class_token(int(b), class_id, n_bins) for b in z_bin], dtype=np.int64),
        volume_id=np.array([image.id] * kept.size),
    )
