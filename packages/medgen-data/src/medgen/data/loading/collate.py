"""Thick/thin pairs as a Dataset, and a collate_fn that pads variable sizes with validity masks.

Volumes differ in depth (and sometimes in-plane size), so a batch is padded at the *end* of
every spatial dim to the largest item. Images are padded with -1 (air / background in [-1, 1]
intensities, never 0, which is mid-grey); integer or bool label maps with 0 (background). Each
padded key ``k`` gets ``k_valid``: a bool tensor ``(B, 1, *spatial)`` that is True exactly on
real voxels (broadcasts over channels), and ``k_shape``: int64 ``(B, n_spatial)`` with each
item's true spatial size, so losses can be masked and outputs cropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medgen.data.errors import DataError
from medgen.data.slicing.thick import simulate_thick, thick_mask, uint8_labels
from medgen.data.volume import Volume

IMAGE_PAD = -1.0
LABEL_PAD = 0


def pad_stack(items: Sequence[torch.Tensor], value: float | None = None):
    """Stack ``(C, *spatial)`` tensors of equal ``C`` and rank, padding spatial dims at the end.

    ``value`` defaults to -1 for floating tensors and 0 for integer/bool ones. Returns
    ``(padded (B, C, *max_spatial), valid (B, 1, *max_spatial) bool, shapes (B, n) int64)``.
    """
    if not items:
        raise DataError("cannot pad an empty batch")
    first = items[0]
    for i, t in enumerate(items):
        if t.dim() != first.dim() or t.shape[0] != first.shape[0] or t.dtype != first.dtype:
            raise DataError(
                f"batch item {i} has shape {tuple(t.shape)} / {t.dtype}; item 0 has "
                f"{tuple(first.shape)} / {first.dtype}: channels, rank and dtype must match"
            )
    if value is None:
        value = IMAGE_PAD if first.is_floating_point() else LABEL_PAD
    spatial = [max(int(t.shape[d]) for t in items) for d in range(1, first.dim())]
    out = torch.full((len(items), first.shape[0], *spatial), value, dtype=first.dtype)
    valid = torch.zeros((len(items), 1, *spatial), dtype=torch.bool)
    for b, t in enumerate(items):
        region = tuple(slice(0, s) for s in t.shape[1:])
        out[(b, slice(None), *region)] = t
        valid[(b, slice(None), *region)] = True
    shapes = torch.tensor([list(t.shape[1:]) for t in items], dtype=torch.int64)
    return out, valid, shapes


def collate_padded(batch: Sequence[dict]) -> dict:
    """``collate_fn`` for dict items: tensors with a channel dim and >= 1 spatial dim are padded
    (see :func:`pad_stack`) and gain ``*_valid`` / ``*_shape``; 0-d tensors and numbers are
    stacked; anything else (ids) becomes a list."""
    if not batch:
        raise DataError("cannot collate an empty batch")
    keys = list(batch[0])
    out: dict = {}
    for key in keys:
        values = [item[key] for item in batch]
        first = values[0]
        if isinstance(first, np.ndarray):
            values = [torch.from_numpy(np.ascontiguousarray(v)) for v in values]
            first = values[0]
        if isinstance(first, torch.Tensor) and first.dim() >= 2:
            out[key], out[f"{key}_valid"], out[f"{key}_shape"] = pad_stack(values)
        elif isinstance(first, torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(first, (bool, int, float, np.integer, np.floating)):
            out[key] = torch.tensor(values)
        else:
            out[key] = list(values)
    return out


class PairDataset(Dataset):
    """Thick/thin pairs for slice interpolation, simulated on the fly from thin volumes.

    Item ``i``: ``{"thick": (1, Dk, H, W) float32, "thin": (1, D, H, W) float32}``, plus
    ``"thick_label"`` / ``"thin_label"`` (``(1, ., H, W)`` uint8, nearest neighbour) when
    ``labels`` are given, and ``"index"``. Thin volumes are expected already scaled to [-1, 1].
    """

    def __init__(
        self,
        volumes: Sequence[Volume],
        thickness: float,
        spacing: float | None = None,
        profile: str = "box",
        labels: Sequence[Volume] | None = None,
    ) -> None:
        if labels is not None and len(labels) != len(volumes):
            raise DataError(f"{len(labels)} label volumes for {len(volumes)} image volumes")
        for i, lab in enumerate(labels or ()):
            if lab.shape != volumes[i].shape:
                raise DataError(
                    f"label volume {i} has shape {lab.shape}, its image {volumes[i].shape}"
                )
        self.volumes, self.labels = list(volumes), None if labels is None else list(labels)
        self.thickness, self.spacing, self.profile = thickness, spacing, profile

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> dict:
        thin = self.volumes[i]
        thick = simulate_thick(thin, self.thickness, self.spacing, self.profile)
        item = {
            "thick": torch.from_numpy(thick.array)[None],
            "thin": torch.from_numpy(np.asarray(thin.array, dtype=np.float32))[None],
            "index": i,
        }
        if self.labels is not None:
            lab = self.labels[i]
            thick_lab = thick_mask(lab, self.thickness, self.spacing)
            item["thick_label"] = torch.from_numpy(uint8_labels(thick_lab))[None]
            item["thin_label"] = torch.from_numpy(uint8_labels(lab))[None]
        return item
