"""``LatentDataset``: the items of a latent cache (``medgen-train encode``) for training.

A latent cache is a MedGen cache whose shards hold ``latent`` (N, C, *latent spatial), the
autoencoder's raw (unscaled) latents, instead of ``image``, and keep everything else of the
pixel cache: ``mask`` at full resolution (priors, control maps, lesion weights), the per-item
metadata and, for volumes, ``valid_box``. Items are dicts of CPU tensors: ``latent`` float32,
``mask`` uint8 (with masks), ``valid`` bool (1, *spatial) on the pixel grid (volumes),
``token`` / ``z_bin`` / ``class_id`` int64 0-d, as :class:`medgen.data.CacheDataset` gives.
"""

from __future__ import annotations

import operator
from pathlib import Path

import numpy as np
import torch

from medgen.data import CacheDataset
from medgen.train.errors import ConfigError

LATENT = "latent"  # the shard array and the manifest section of a latent cache


def is_latent_cache(manifest: dict) -> bool:
    """Whether ``manifest`` is a latent cache's."""
    return isinstance(manifest.get(LATENT), dict)


def valid_mask(box: np.ndarray, shape) -> torch.Tensor:
    """(1, *shape) bool: True inside ``box`` (d0, d1, h0, h1, w0, w1), the real voxels of a
    padded volume."""
    valid = torch.zeros((1, *shape), dtype=torch.bool)
    pairs = np.asarray(box).reshape(-1, 2)
    valid[(0, *(slice(int(a), int(b)) for a, b in pairs))] = True
    return valid


class LatentDataset(CacheDataset):
    """The items of ``split`` of a latent cache (see the module docstring)."""

    def __init__(self, directory: str | Path, split="train", *, verify: bool = True) -> None:
        super().__init__(directory, split, verify=verify)
        if not is_latent_cache(self.manifest):
            raise ConfigError(f"{directory}: not a latent cache (made by medgen-train encode)")
        self.pixel_shape = [int(s) for s in self.manifest["item_shape"][1:]]

    @property
    def channels(self) -> int:
        """Latent channels per item."""
        return int(self.manifest[LATENT]["shape"][0])

    def __getitem__(self, index) -> dict[str, torch.Tensor]:
        if isinstance(index, tuple):  # (index, crop seed): latents are never cropped
            index = index[0]
        i = operator.index(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        arrays, k = self.stored_item(i)
        item = {LATENT: torch.from_numpy(np.array(arrays[LATENT][k], copy=True))}
        if "mask" in arrays:
            item["mask"] = torch.from_numpy(np.array(arrays["mask"][k], copy=True))
        if "valid_box" in arrays:
            item["valid"] = valid_mask(arrays["valid_box"][k], self.pixel_shape)
        item.update(self.item_metadata(i))
        return item
